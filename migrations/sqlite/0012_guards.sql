-- Guard rails (same meaning as migrations/postgres/0012_guards.sql).
--
-- Budgets count per user too: each model call remembers whose message it answered ('' for
-- calls made before this version and for work nobody asked for).
ALTER TABLE llm_usage ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
CREATE INDEX llm_usage_by_time ON llm_usage (created_at);
CREATE INDEX llm_usage_by_user ON llm_usage (user_id, created_at);

-- The last time a user was told something by the access policy or the rate limit (`kind`), so
-- a refusal is sent at most once an hour, not for every message.
CREATE TABLE access_notices (
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    noticed_at  INTEGER NOT NULL,
    PRIMARY KEY (platform, user_id, kind)
);

-- DM pairing: an unknown user's DM gets a one-time code; an admin approves it with `/pair`.
CREATE TABLE pairing_codes (
    code         TEXT PRIMARY KEY,
    platform     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    user_name    TEXT,
    workspace    TEXT NOT NULL,
    channel      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    approved_at  INTEGER,
    approved_by  TEXT
);
CREATE INDEX pairing_codes_by_user ON pairing_codes (platform, user_id, expires_at);

-- Users an admin paired: their DMs are answered under `ECDYSIS_DM_POLICY=pairing`.
CREATE TABLE paired_users (
    platform     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    user_name    TEXT,
    approved_by  TEXT NOT NULL,
    approved_at  INTEGER NOT NULL,
    PRIMARY KEY (platform, user_id)
);

-- The 80 % budget warning, once per budget and period.
CREATE TABLE budget_warnings (
    scope         TEXT NOT NULL,
    period_start  INTEGER NOT NULL,
    warned_at     INTEGER NOT NULL,
    PRIMARY KEY (scope, period_start)
);
