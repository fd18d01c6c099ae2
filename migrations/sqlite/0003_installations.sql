-- OAuth installs of chat apps (Slack workspaces): one row per (platform, team), the bot token
-- encrypted by the application before it gets here. And the single-use OAuth `state`s.

CREATE TABLE installations (
    platform          TEXT NOT NULL,
    team_id           TEXT NOT NULL,
    team_name         TEXT NOT NULL,
    bot_user_id       TEXT NOT NULL,
    app_id            TEXT NOT NULL,
    scopes            TEXT NOT NULL,
    installed_by      TEXT NOT NULL,
    token_ciphertext  TEXT NOT NULL,
    installed_at      INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (platform, team_id)
);

CREATE TABLE oauth_states (
    state       TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX oauth_states_by_expiry ON oauth_states (expires_at);
