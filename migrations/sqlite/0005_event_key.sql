-- Platform retries are recognised by (conversation, platform event id), two columns: one joined
-- string (`{conversation}:{id}`) let two different events share a key (issue 19, finding 7).
-- Same meaning as migrations/postgres/0005_event_key.sql.
--
-- SQLite cannot drop a table's UNIQUE constraint, so the inbox is rebuilt (the documented
-- "12-step" procedure): this migration runs outside sqlx's transaction, with foreign keys off
-- while `inbox` is replaced, in a transaction of its own. Ids and rows are kept, so messages and
-- outbox rows still point at their events and every stored event is still recognised.

PRAGMA foreign_keys = OFF;
BEGIN;
DROP TABLE IF EXISTS inbox_new;
CREATE TABLE inbox_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    platform           TEXT NOT NULL,
    platform_event_id  TEXT NOT NULL,
    conversation_id    INTEGER NOT NULL REFERENCES conversations(id),
    payload            TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending', -- pending | leased | done | failed | retried
    attempts           INTEGER NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        INTEGER,
    available_at       INTEGER NOT NULL,
    received_at        INTEGER NOT NULL,
    finished_at        INTEGER,
    error              TEXT,
    UNIQUE (conversation_id, platform_event_id)
);
INSERT INTO inbox_new (id, platform, platform_event_id, conversation_id, payload, status,
                       attempts, lease_owner, lease_until, available_at, received_at,
                       finished_at, error)
    SELECT id, platform, platform_event_id, conversation_id, payload, status, attempts,
           lease_owner, lease_until, available_at, received_at, finished_at, error
    FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;
CREATE INDEX inbox_open ON inbox (id) WHERE status IN ('pending', 'leased');
CREATE INDEX inbox_open_by_conversation ON inbox (conversation_id, id) WHERE status IN ('pending', 'leased');
CREATE INDEX inbox_by_status ON inbox (status, id);
COMMIT;
PRAGMA foreign_keys = ON;
