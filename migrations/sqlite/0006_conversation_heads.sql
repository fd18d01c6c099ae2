-- Each conversation points at its head: its oldest unfinished (pending or leased) event, or
-- NULL when it has none. Only a head can be claimed (order per conversation), so a claim walks
-- the conversations that have work instead of every queued event: a deep queue behind busy
-- conversations no longer makes each claim scan it. Same meaning as
-- migrations/postgres/0006_conversation_heads.sql.
ALTER TABLE conversations ADD COLUMN head_id INTEGER;
UPDATE conversations SET head_id = (
    SELECT MIN(i.id) FROM inbox i
    WHERE i.conversation_id = conversations.id AND i.status IN ('pending', 'leased'));
CREATE INDEX conversations_head ON conversations (head_id) WHERE head_id IS NOT NULL;
