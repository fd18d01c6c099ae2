-- Scheduled work (same meaning as migrations/postgres/0010_schedules.sql).
--
-- `schedules`: reminders, recurring jobs and heartbeats. A job belongs to the conversation it was
-- asked in (its post lands there) and to that conversation's channel (listing, the per-channel
-- cap). `spec` says when it runs (JSON: once at an instant, every N milliseconds from an anchor,
-- or a cron expression, each in `timezone`); `next_due_at` is the next time it is due (NULL once
-- it is finished). A due job becomes an inbox event whose platform event id is
-- `schedule:<id>:<due time>`, so each due time runs exactly once.
CREATE TABLE schedules (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id  INTEGER NOT NULL REFERENCES conversations (id),
    platform         TEXT NOT NULL,
    workspace        TEXT NOT NULL,
    channel          TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    -- `post` (post `text`) or `agent` (run `text` as a prompt).
    kind             TEXT NOT NULL,
    text             TEXT NOT NULL,
    spec             TEXT NOT NULL,
    -- When it runs, as the user said it (`every weekday at 9:00`).
    description      TEXT NOT NULL,
    timezone         TEXT NOT NULL,
    -- The adapter's route of the event that created it (where to post later).
    route            TEXT NOT NULL,
    -- `active`, `done`, `cancelled` or `missed` (a one-off job skipped past its grace period).
    status           TEXT NOT NULL,
    next_due_at      INTEGER,
    -- The due time of the last run.
    last_run_at      INTEGER,
    runs             INTEGER NOT NULL DEFAULT 0,
    skipped          INTEGER NOT NULL DEFAULT 0,
    -- Runs after which a recurring job is done (NULL: no limit).
    max_runs         INTEGER,
    -- The last thing worth telling about the job (a skipped run).
    note             TEXT,
    -- `ecdysis import` marks the jobs it writes, so importing twice adds nothing.
    import_key       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_due_at) WHERE status = 'active';
CREATE INDEX schedules_by_channel ON schedules (platform, workspace, channel, status, id);
CREATE UNIQUE INDEX schedules_import_key ON schedules (import_key) WHERE import_key IS NOT NULL;
