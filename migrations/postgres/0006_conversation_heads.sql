-- Each conversation points at its head: its oldest unfinished (pending or leased) event, or
-- NULL when it has none. Only a head can be claimed (order per conversation), so a claim walks
-- the conversations that have work instead of every queued event. Same meaning as
-- migrations/sqlite/0006_conversation_heads.sql.
--
-- Triggers keep the pointer: every way an event is added or finishes (insert, completion,
-- failure, an admin retry, an import) moves it inside the statement that does so.
ALTER TABLE conversations ADD COLUMN head_id BIGINT;
UPDATE conversations SET head_id = (
    SELECT MIN(i.id) FROM inbox i
    WHERE i.conversation_id = conversations.id AND i.status IN ('pending', 'leased'));
CREATE INDEX conversations_head ON conversations (head_id) WHERE head_id IS NOT NULL;

-- A new unfinished event is the head unless an older one is. Adding to a conversation locks
-- its row first (the conversation upsert), so events of one conversation commit in id order.
CREATE FUNCTION inbox_head_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET head_id = NEW.id
    WHERE id = NEW.conversation_id AND (head_id IS NULL OR head_id > NEW.id);
    RETURN NULL;
END $$;

-- The head is the conversation's oldest unfinished event. The row is locked by a statement of
-- its own first: the MIN that follows then runs on a snapshot taken after any transaction that
-- was adding to the conversation committed (READ COMMITTED), so it sees that event.
CREATE FUNCTION inbox_head_recompute() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    conversation BIGINT := CASE WHEN TG_OP = 'DELETE' THEN OLD.conversation_id
                                ELSE NEW.conversation_id END;
BEGIN
    PERFORM 1 FROM conversations WHERE id = conversation FOR UPDATE;
    UPDATE conversations SET head_id = (
        SELECT MIN(i.id) FROM inbox i
        WHERE i.conversation_id = conversation AND i.status IN ('pending', 'leased'))
    WHERE id = conversation;
    RETURN NULL;
END $$;

CREATE TRIGGER inbox_head_insert AFTER INSERT ON inbox
FOR EACH ROW WHEN (NEW.status IN ('pending', 'leased'))
EXECUTE FUNCTION inbox_head_insert();

CREATE TRIGGER inbox_head_status AFTER UPDATE OF status ON inbox
FOR EACH ROW WHEN ((OLD.status IN ('pending', 'leased')) <> (NEW.status IN ('pending', 'leased')))
EXECUTE FUNCTION inbox_head_recompute();

CREATE TRIGGER inbox_head_delete AFTER DELETE ON inbox
FOR EACH ROW WHEN (OLD.status IN ('pending', 'leased'))
EXECUTE FUNCTION inbox_head_recompute();
