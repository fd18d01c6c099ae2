-- Fewer pages written per event (same meaning as migrations/sqlite/0019_lean_writes.sql).
--
-- The inbox loses its index by status. Every event moved through it three times (pending,
-- leased, done), and all it served were the admin pages' counts and lists: open events are in
-- `inbox_open`, failed and retried ones now in a small index of their own, and the done ones
-- are the rest (newest first by id). (SQLite's second change, notes reaching the full-text
-- index once per transaction, has no counterpart here: the `search` column is computed with
-- its row.)
DROP INDEX inbox_by_status;
CREATE INDEX inbox_failed ON inbox (status, id) WHERE status IN ('failed', 'retried');
