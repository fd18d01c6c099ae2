-- Semantic memory (same meaning as migrations/postgres/0016_semantic_memory.sql).
--
-- `memory_chunks`: what is searched besides notes: the summary of each compaction and the
-- archived turns it replaced, cut into chunks, per channel, with full-text search like notes.
-- `memory_vectors`: one embedding per (item, model): `vector` is little-endian f32, `model`
-- names the embedder that made it. `id` only grows, so a cache of a channel's vectors can load
-- just the new ones.
-- `memory_embed_queue`: rows waiting to be embedded. Writing a note or a chunk queues it in the
-- same transaction (triggers below), so nothing written is missed across restarts; `version`
-- grows when the text changes while it waits, and a vector made from an older text is dropped.
-- `memory_vector_epochs`: bumped whenever a channel loses a vector, so caches reload it.

CREATE TABLE memory_chunks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    platform       TEXT NOT NULL,
    workspace      TEXT NOT NULL,
    channel        TEXT NOT NULL,
    compaction_id  INTEGER NOT NULL REFERENCES compactions(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL, -- summary | transcript
    seq            INTEGER NOT NULL,
    text           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (compaction_id, kind, seq)
);
CREATE INDEX memory_chunks_by_channel ON memory_chunks (platform, workspace, channel, id);

CREATE VIRTUAL TABLE memory_chunks_fts USING fts5 (
    text,
    content = 'memory_chunks',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);

CREATE TABLE memory_vectors (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    item_kind   TEXT NOT NULL, -- note | chunk
    item_id     INTEGER NOT NULL,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    model       TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    vector      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (item_kind, item_id, model)
);
CREATE INDEX memory_vectors_by_channel ON memory_vectors (platform, workspace, channel, model, id);
CREATE INDEX memory_vectors_by_model ON memory_vectors (model);

CREATE TABLE memory_embed_queue (
    item_kind     TEXT NOT NULL,
    item_id       INTEGER NOT NULL,
    version       INTEGER NOT NULL DEFAULT 1,
    attempts      INTEGER NOT NULL DEFAULT 0,
    available_at  INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_until   INTEGER,
    last_error    TEXT,
    PRIMARY KEY (item_kind, item_id)
);
CREATE INDEX memory_embed_queue_due ON memory_embed_queue (available_at, item_id);
CREATE INDEX memory_embed_queue_owner ON memory_embed_queue (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE memory_vector_epochs (
    platform   TEXT NOT NULL,
    workspace  TEXT NOT NULL,
    channel    TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    PRIMARY KEY (platform, workspace, channel)
);

-- Notes: queued when written or changed; their vectors and queue rows go with them.
CREATE TRIGGER memory_notes_embed_ai AFTER INSERT ON memory_notes BEGIN
    INSERT INTO memory_embed_queue (item_kind, item_id) VALUES ('note', new.id)
    ON CONFLICT (item_kind, item_id) DO UPDATE
    SET version = version + 1, attempts = 0, available_at = 0, lease_owner = NULL,
        lease_until = NULL, last_error = NULL;
END;
CREATE TRIGGER memory_notes_embed_au AFTER UPDATE OF text ON memory_notes BEGIN
    DELETE FROM memory_vectors WHERE item_kind = 'note' AND item_id = old.id;
    INSERT INTO memory_embed_queue (item_kind, item_id) VALUES ('note', new.id)
    ON CONFLICT (item_kind, item_id) DO UPDATE
    SET version = version + 1, attempts = 0, available_at = 0, lease_owner = NULL,
        lease_until = NULL, last_error = NULL;
END;
CREATE TRIGGER memory_notes_embed_ad AFTER DELETE ON memory_notes BEGIN
    DELETE FROM memory_vectors WHERE item_kind = 'note' AND item_id = old.id;
    DELETE FROM memory_embed_queue WHERE item_kind = 'note' AND item_id = old.id;
END;

-- Chunks: full text, queued when written; vectors and queue rows go with them.
CREATE TRIGGER memory_chunks_ai AFTER INSERT ON memory_chunks BEGIN
    INSERT INTO memory_chunks_fts (rowid, text) VALUES (new.id, new.text);
    INSERT INTO memory_embed_queue (item_kind, item_id) VALUES ('chunk', new.id)
    ON CONFLICT (item_kind, item_id) DO NOTHING;
END;
CREATE TRIGGER memory_chunks_ad AFTER DELETE ON memory_chunks BEGIN
    INSERT INTO memory_chunks_fts (memory_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    DELETE FROM memory_vectors WHERE item_kind = 'chunk' AND item_id = old.id;
    DELETE FROM memory_embed_queue WHERE item_kind = 'chunk' AND item_id = old.id;
END;

-- A channel that loses a vector gets a new epoch.
CREATE TRIGGER memory_vectors_ad AFTER DELETE ON memory_vectors BEGIN
    INSERT INTO memory_vector_epochs (platform, workspace, channel, epoch)
    VALUES (old.platform, old.workspace, old.channel, 1)
    ON CONFLICT (platform, workspace, channel) DO UPDATE SET epoch = epoch + 1;
END;

-- Notes written before this migration wait to be embedded like new ones (only drained when an
-- embedder is configured).
INSERT INTO memory_embed_queue (item_kind, item_id) SELECT 'note', id FROM memory_notes;
