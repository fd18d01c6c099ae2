-- Each conversation points at its head: its oldest unfinished (pending or leased) event, or
-- NULL when it has none. Only a head can be claimed (order per conversation), so a claim walks
-- the conversations that have work instead of every queued event: a deep queue behind busy
-- conversations no longer makes each claim scan it. Same meaning as
-- migrations/postgres/0006_conversation_heads.sql.
--
-- Triggers keep the pointer: every way an event is added or finishes (insert, completion,
-- failure, an admin retry, an import) moves it inside the statement that does so, without a
-- second round trip and without a code path that could forget it.
ALTER TABLE conversations ADD COLUMN head_id INTEGER;
UPDATE conversations SET head_id = (
    SELECT MIN(i.id) FROM inbox i
    WHERE i.conversation_id = conversations.id AND i.status IN ('pending', 'leased'));
CREATE INDEX conversations_head ON conversations (head_id) WHERE head_id IS NOT NULL;

-- A new unfinished event is the head unless an older one is.
CREATE TRIGGER inbox_head_insert AFTER INSERT ON inbox
WHEN new.status IN ('pending', 'leased')
BEGIN
    UPDATE conversations SET head_id = new.id
    WHERE id = new.conversation_id AND (head_id IS NULL OR head_id > new.id);
END;

-- An event finished (or became unfinished again): the head is the oldest unfinished event.
CREATE TRIGGER inbox_head_status AFTER UPDATE OF status ON inbox
WHEN (old.status IN ('pending', 'leased')) <> (new.status IN ('pending', 'leased'))
BEGIN
    UPDATE conversations SET head_id = (
        SELECT MIN(i.id) FROM inbox i
        WHERE i.conversation_id = new.conversation_id AND i.status IN ('pending', 'leased'))
    WHERE id = new.conversation_id;
END;

CREATE TRIGGER inbox_head_delete AFTER DELETE ON inbox
WHEN old.status IN ('pending', 'leased')
BEGIN
    UPDATE conversations SET head_id = (
        SELECT MIN(i.id) FROM inbox i
        WHERE i.conversation_id = old.conversation_id AND i.status IN ('pending', 'leased'))
    WHERE id = old.conversation_id;
END;
