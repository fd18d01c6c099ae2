-- Fewer pages written per event (same meaning as migrations/postgres/0019_lean_writes.sql).
--
-- 1. The inbox loses its index by status. Every event moved through it three times (pending,
--    leased, done), and all it served were the admin pages' counts and lists: open events are
--    in `inbox_open`, failed and retried ones now in a small index of their own, and the done
--    ones are the rest (newest first by id).
DROP INDEX inbox_by_status;
CREATE INDEX inbox_failed ON inbox (status, id) WHERE status IN ('failed', 'retried');

-- 2. A note reaches the full-text index once per transaction, not once per statement. FTS5
--    writes what it holds in memory to a new segment whenever a statement after it begins, so
--    with one note indexed per statement, a commit carrying many writes made one tiny segment
--    per note, and merging them was a good part of the writer's time. A new note now waits in
--    `memory_fts_pending`, and the writer indexes every waiting note with one statement just
--    before each commit (`dialect::SQLITE_BEFORE_COMMIT`): searches, which read only
--    committed rows, never see a note without its index entry. A note edited or deleted
--    while it waits has no index entry yet to remove.
CREATE TABLE memory_fts_pending (
    note_id INTEGER PRIMARY KEY
);

DROP TRIGGER memory_notes_ai;
CREATE TRIGGER memory_notes_ai AFTER INSERT ON memory_notes BEGIN
    INSERT INTO memory_fts_pending (note_id) VALUES (new.id);
END;

DROP TRIGGER memory_notes_ad;
CREATE TRIGGER memory_notes_ad AFTER DELETE ON memory_notes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text, fts_scope)
    SELECT 'delete', old.id, old.text, old.fts_scope
    WHERE NOT EXISTS (SELECT 1 FROM memory_fts_pending WHERE note_id = old.id);
    DELETE FROM memory_fts_pending WHERE note_id = old.id;
END;

DROP TRIGGER memory_notes_au;
CREATE TRIGGER memory_notes_au AFTER UPDATE OF text, platform, workspace, channel ON memory_notes
WHEN NOT EXISTS (SELECT 1 FROM memory_fts_pending WHERE note_id = old.id)
BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text, fts_scope)
    VALUES ('delete', old.id, old.text, old.fts_scope);
    INSERT INTO memory_fts (rowid, text, fts_scope) VALUES (new.id, new.text, new.fts_scope);
END;
