-- Full-text search within a channel (same meaning as migrations/sqlite/0017_channel_search.sql).
--
-- On SQLite this version indexes each row's channel in the full-text tables, so a search only
-- touches its channel's rows. Postgres needs no change for that: a search there combines the
-- `search` GIN index with the channel's B-tree index (`memory_notes_by_channel`,
-- `memory_chunks_by_channel`) as the planner sees fit. The version exists so both backends
-- keep the same numbering.
SELECT 1;
