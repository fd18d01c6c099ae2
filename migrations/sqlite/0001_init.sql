-- ecdysis schema, SQLite. Times are milliseconds since the Unix epoch.

CREATE TABLE conversations (
    id          INTEGER PRIMARY KEY,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    thread      TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    UNIQUE (platform, workspace, channel, thread)
);

-- The durable inbox: an event is here before the platform gets its acknowledgement.
CREATE TABLE inbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    platform           TEXT NOT NULL,
    platform_event_id  TEXT NOT NULL,
    conversation_id    INTEGER NOT NULL REFERENCES conversations(id),
    payload            TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending', -- pending | leased | done | failed
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        INTEGER,
    available_at       INTEGER NOT NULL,
    received_at        INTEGER NOT NULL,
    finished_at        INTEGER,
    error              TEXT,
    UNIQUE (platform, platform_event_id)
);
CREATE INDEX inbox_open ON inbox (id) WHERE status IN ('pending', 'leased');
CREATE INDEX inbox_open_by_conversation ON inbox (conversation_id, id) WHERE status IN ('pending', 'leased');

-- The transcript.
CREATE TABLE messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id  INTEGER NOT NULL REFERENCES conversations(id),
    event_id         INTEGER REFERENCES inbox(id),
    role             TEXT NOT NULL, -- user | assistant | tool | summary
    text             TEXT NOT NULL,
    meta             TEXT,
    created_at       INTEGER NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

-- Files: the bytes live in the blob store, written before this row.
CREATE TABLE artifacts (
    id               TEXT PRIMARY KEY,
    conversation_id  INTEGER NOT NULL REFERENCES conversations(id),
    message_id       INTEGER REFERENCES messages(id),
    blob_key         TEXT NOT NULL,
    name             TEXT NOT NULL,
    mime             TEXT NOT NULL,
    size             INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX artifacts_by_message ON artifacts (message_id);

-- Replies to deliver; the idempotency key makes a re-run post nothing twice.
CREATE TABLE outbox (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key      TEXT NOT NULL UNIQUE,
    event_id             INTEGER NOT NULL REFERENCES inbox(id),
    conversation_id      INTEGER NOT NULL REFERENCES conversations(id),
    payload              TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'pending', -- pending | sent | failed
    attempts             INTEGER NOT NULL DEFAULT 0,
    lease_until          INTEGER,
    platform_message_id  TEXT,
    error                TEXT,
    created_at           INTEGER NOT NULL,
    sent_at              INTEGER
);
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_by_event ON outbox (event_id);

-- Memory notes, scoped to a channel, with full-text search.
CREATE TABLE memory_notes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    text        TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    source      TEXT UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX memory_notes_by_channel ON memory_notes (platform, workspace, channel, id);

CREATE VIRTUAL TABLE memory_fts USING fts5 (
    text,
    content = 'memory_notes',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);
CREATE TRIGGER memory_notes_ai AFTER INSERT ON memory_notes BEGIN
    INSERT INTO memory_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER memory_notes_ad AFTER DELETE ON memory_notes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER memory_notes_au AFTER UPDATE OF text ON memory_notes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO memory_fts (rowid, text) VALUES (new.id, new.text);
END;

-- LLM usage, one row per model call.
CREATE TABLE llm_usage (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id     INTEGER NOT NULL REFERENCES conversations(id),
    model               TEXT NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cache_read_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL
);
CREATE INDEX llm_usage_by_conversation ON llm_usage (conversation_id);
