-- Full-text search within a channel (same meaning as migrations/postgres/0017_channel_search.sql).
--
-- A search looks in one channel, but the full-text tables held every channel's rows in one
-- index: a word common elsewhere cost a search here as much as everywhere. Each note's and
-- chunk's channel is now also indexed, as one token (`fts_scope`: the channel's three parts
-- in hex), so a search matches that token and its words together and only touches its
-- channel's rows. The token is a virtual column of the row, so the full-text tables stay
-- external-content tables over the rows themselves.

ALTER TABLE memory_notes ADD COLUMN fts_scope TEXT GENERATED ALWAYS AS
    ('s' || hex(platform || char(31) || workspace || char(31) || channel)) VIRTUAL;
ALTER TABLE memory_chunks ADD COLUMN fts_scope TEXT GENERATED ALWAYS AS
    ('s' || hex(platform || char(31) || workspace || char(31) || channel)) VIRTUAL;

DROP TRIGGER memory_notes_ai;
DROP TRIGGER memory_notes_ad;
DROP TRIGGER memory_notes_au;
DROP TABLE memory_fts;
CREATE VIRTUAL TABLE memory_fts USING fts5 (
    text,
    fts_scope,
    content = 'memory_notes',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);
INSERT INTO memory_fts (memory_fts) VALUES ('rebuild');
CREATE TRIGGER memory_notes_ai AFTER INSERT ON memory_notes BEGIN
    INSERT INTO memory_fts (rowid, text, fts_scope) VALUES (new.id, new.text, new.fts_scope);
END;
CREATE TRIGGER memory_notes_ad AFTER DELETE ON memory_notes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text, fts_scope)
    VALUES ('delete', old.id, old.text, old.fts_scope);
END;
CREATE TRIGGER memory_notes_au AFTER UPDATE OF text, platform, workspace, channel ON memory_notes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text, fts_scope)
    VALUES ('delete', old.id, old.text, old.fts_scope);
    INSERT INTO memory_fts (rowid, text, fts_scope) VALUES (new.id, new.text, new.fts_scope);
END;

DROP TRIGGER memory_chunks_ai;
DROP TRIGGER memory_chunks_ad;
DROP TABLE memory_chunks_fts;
CREATE VIRTUAL TABLE memory_chunks_fts USING fts5 (
    text,
    fts_scope,
    content = 'memory_chunks',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);
INSERT INTO memory_chunks_fts (memory_chunks_fts) VALUES ('rebuild');
CREATE TRIGGER memory_chunks_ai AFTER INSERT ON memory_chunks BEGIN
    INSERT INTO memory_chunks_fts (rowid, text, fts_scope) VALUES (new.id, new.text, new.fts_scope);
    INSERT INTO memory_embed_queue (item_kind, item_id) VALUES ('chunk', new.id)
    ON CONFLICT (item_kind, item_id) DO NOTHING;
END;
CREATE TRIGGER memory_chunks_ad AFTER DELETE ON memory_chunks BEGIN
    INSERT INTO memory_chunks_fts (memory_chunks_fts, rowid, text, fts_scope)
    VALUES ('delete', old.id, old.text, old.fts_scope);
    DELETE FROM memory_vectors WHERE item_kind = 'chunk' AND item_id = old.id;
    DELETE FROM memory_embed_queue WHERE item_kind = 'chunk' AND item_id = old.id;
END;
