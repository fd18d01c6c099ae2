-- Compaction: older turns of a long conversation are summarised for the agent and archived
-- verbatim (JSON lines) in the blob store; the rows stay, flagged, with tool detail moved out.

ALTER TABLE messages ADD COLUMN compacted INTEGER NOT NULL DEFAULT 0;

CREATE TABLE compactions (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id     INTEGER NOT NULL REFERENCES conversations(id),
    summary_message_id  INTEGER NOT NULL REFERENCES messages(id),
    first_message_id    INTEGER NOT NULL,
    last_message_id     INTEGER NOT NULL,
    message_count       INTEGER NOT NULL,
    archive_key         TEXT NOT NULL,
    created_at          INTEGER NOT NULL
);
CREATE INDEX compactions_by_conversation ON compactions (conversation_id, id);
