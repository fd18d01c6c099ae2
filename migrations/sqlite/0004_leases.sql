-- Operating several instances (same meaning as migrations/postgres/0004_leases.sql).
--
-- `leases`: named leader leases. One instance at a time holds e.g. `slack-socket-mode` or
-- `discord-gateway`; it renews the lease well before `lease_until`, and when it dies the lease
-- expires and another instance takes it over.
CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    lease_until  INTEGER NOT NULL,
    acquired_at  INTEGER NOT NULL
);

-- `ecdysis import` marks the messages it writes, so importing the same export twice adds nothing.
ALTER TABLE messages ADD COLUMN import_key TEXT;
CREATE UNIQUE INDEX messages_import_key ON messages (import_key) WHERE import_key IS NOT NULL;

-- The admin pages list conversations by their latest activity and events by state.
CREATE INDEX inbox_by_status ON inbox (status, id);
