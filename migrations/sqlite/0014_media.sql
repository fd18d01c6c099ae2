-- What became of each file an event referred to (fetched by a worker after the
-- acknowledgement): the artifact it was stored as, or a note saying why it was left out. One row
-- per (event, position of the file), so a re-run of the event fetches only what is missing.
CREATE TABLE event_files (
    event_id     INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    artifact_id  TEXT REFERENCES artifacts(id),
    note         TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (event_id, idx)
);

-- What the model reads of an artifact, computed once and kept: a scaled image (a blob), a
-- document's text, an audio file's transcript.
CREATE TABLE artifact_extracts (
    artifact_id  TEXT NOT NULL REFERENCES artifacts(id),
    kind         TEXT NOT NULL,
    text         TEXT,
    blob_key     TEXT,
    mime         TEXT,
    detail       TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (artifact_id, kind)
);
