-- Platform retries are recognised by (conversation, platform event id), two columns: one joined
-- string (`{conversation}:{id}`) let two different events share a key (issue 19, finding 7).
-- Same meaning as migrations/sqlite/0005_event_key.sql. Stored events keep their ids, so every
-- one of them is still recognised.

ALTER TABLE inbox DROP CONSTRAINT IF EXISTS inbox_platform_platform_event_id_key;
ALTER TABLE inbox ADD CONSTRAINT inbox_event_key UNIQUE (conversation_id, platform_event_id);
