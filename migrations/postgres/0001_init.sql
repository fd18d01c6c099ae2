-- ecdysis schema, PostgreSQL (same meaning as migrations/sqlite). Times are milliseconds since the Unix epoch.

CREATE TABLE conversations (
    id          BIGSERIAL PRIMARY KEY,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    thread      TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    UNIQUE (platform, workspace, channel, thread)
);

-- The durable inbox: an event is here before the platform gets its acknowledgement.
CREATE TABLE inbox (
    id                 BIGSERIAL PRIMARY KEY,
    platform           TEXT NOT NULL,
    platform_event_id  TEXT NOT NULL,
    conversation_id    BIGINT NOT NULL REFERENCES conversations(id),
    payload            TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending', -- pending | leased | done | failed
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        BIGINT,
    available_at       BIGINT NOT NULL,
    received_at        BIGINT NOT NULL,
    finished_at        BIGINT,
    error              TEXT,
    UNIQUE (platform, platform_event_id)
);
CREATE INDEX inbox_open ON inbox (id) WHERE status IN ('pending', 'leased');
CREATE INDEX inbox_open_by_conversation ON inbox (conversation_id, id) WHERE status IN ('pending', 'leased');

-- The transcript.
CREATE TABLE messages (
    id               BIGSERIAL PRIMARY KEY,
    conversation_id  BIGINT NOT NULL REFERENCES conversations(id),
    event_id         BIGINT REFERENCES inbox(id),
    role             TEXT NOT NULL, -- user | assistant | tool | summary
    text             TEXT NOT NULL,
    meta             TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

-- Files: the bytes live in the blob store, written before this row.
-- `seq` is the insertion order (what SQLite's implicit rowid gives), so attachments keep their order.
CREATE TABLE artifacts (
    id               TEXT PRIMARY KEY,
    conversation_id  BIGINT NOT NULL REFERENCES conversations(id),
    message_id       BIGINT REFERENCES messages(id),
    blob_key         TEXT NOT NULL,
    name             TEXT NOT NULL,
    mime             TEXT NOT NULL,
    size             BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    seq              BIGSERIAL NOT NULL
);
CREATE INDEX artifacts_by_message ON artifacts (message_id);

-- Replies to deliver; the idempotency key makes a re-run post nothing twice.
CREATE TABLE outbox (
    id                   BIGSERIAL PRIMARY KEY,
    idempotency_key      TEXT NOT NULL UNIQUE,
    event_id             BIGINT NOT NULL REFERENCES inbox(id),
    conversation_id      BIGINT NOT NULL REFERENCES conversations(id),
    payload              TEXT NOT NULL,
    status               TEXT NOT NULL DEFAULT 'pending', -- pending | sent | failed
    attempts             INTEGER NOT NULL DEFAULT 0,
    lease_until          BIGINT,
    platform_message_id  TEXT,
    error                TEXT,
    created_at           BIGINT NOT NULL,
    sent_at              BIGINT
);
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_by_event ON outbox (event_id);

-- Memory notes, scoped to a channel, with full-text search (English stemming, like FTS5's porter).
CREATE TABLE memory_notes (
    id          BIGSERIAL PRIMARY KEY,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    text        TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    source      TEXT UNIQUE,
    created_at  BIGINT NOT NULL,
    search      TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
CREATE INDEX memory_notes_by_channel ON memory_notes (platform, workspace, channel, id);
CREATE INDEX memory_notes_search ON memory_notes USING GIN (search);

-- LLM usage, one row per model call.
CREATE TABLE llm_usage (
    id                  BIGSERIAL PRIMARY KEY,
    conversation_id     BIGINT NOT NULL REFERENCES conversations(id),
    model               TEXT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cache_read_tokens   BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens  BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL
);
CREATE INDEX llm_usage_by_conversation ON llm_usage (conversation_id);
