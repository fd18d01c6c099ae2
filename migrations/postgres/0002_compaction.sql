-- Compaction (same meaning as migrations/sqlite): older turns of a long conversation are
-- summarised for the agent and archived verbatim (JSON lines) in the blob store; the rows stay,
-- flagged, with tool detail moved out.

ALTER TABLE messages ADD COLUMN compacted BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE compactions (
    id                  BIGSERIAL PRIMARY KEY,
    conversation_id     BIGINT NOT NULL REFERENCES conversations(id),
    summary_message_id  BIGINT NOT NULL REFERENCES messages(id),
    first_message_id    BIGINT NOT NULL,
    last_message_id     BIGINT NOT NULL,
    message_count       BIGINT NOT NULL,
    archive_key         TEXT NOT NULL,
    created_at          BIGINT NOT NULL
);
CREATE INDEX compactions_by_conversation ON compactions (conversation_id, id);
