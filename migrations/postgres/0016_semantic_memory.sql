-- Semantic memory (same meaning as migrations/sqlite/0016_semantic_memory.sql).
--
-- `memory_chunks`: what is searched besides notes: the summary of each compaction and the
-- archived turns it replaced, cut into chunks, per channel, with full-text search like notes.
-- `memory_vectors`: one embedding per (item, model): `vector` is little-endian f32, `model`
-- names the embedder that made it. `id` only grows, so a cache of a channel's vectors can load
-- just the new ones.
-- `memory_embed_queue`: rows waiting to be embedded. Writing a note or a chunk queues it in the
-- same transaction (triggers below), so nothing written is missed across restarts; `version`
-- grows when the text changes while it waits, and a vector made from an older text is dropped.
-- `memory_vector_epochs`: bumped whenever a channel loses a vector, so caches reload it.

CREATE TABLE memory_chunks (
    id             BIGSERIAL PRIMARY KEY,
    platform       TEXT NOT NULL,
    workspace      TEXT NOT NULL,
    channel        TEXT NOT NULL,
    compaction_id  BIGINT NOT NULL REFERENCES compactions(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL, -- summary | transcript
    seq            BIGINT NOT NULL,
    text           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    search         TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    UNIQUE (compaction_id, kind, seq)
);
CREATE INDEX memory_chunks_by_channel ON memory_chunks (platform, workspace, channel, id);
CREATE INDEX memory_chunks_search ON memory_chunks USING GIN (search);

CREATE TABLE memory_vectors (
    id          BIGSERIAL PRIMARY KEY,
    item_kind   TEXT NOT NULL, -- note | chunk
    item_id     BIGINT NOT NULL,
    platform    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    model       TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    vector      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (item_kind, item_id, model)
);
CREATE INDEX memory_vectors_by_channel ON memory_vectors (platform, workspace, channel, model, id);
CREATE INDEX memory_vectors_by_model ON memory_vectors (model);

CREATE TABLE memory_embed_queue (
    item_kind     TEXT NOT NULL,
    item_id       BIGINT NOT NULL,
    version       BIGINT NOT NULL DEFAULT 1,
    attempts      BIGINT NOT NULL DEFAULT 0,
    available_at  BIGINT NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_until   BIGINT,
    last_error    TEXT,
    PRIMARY KEY (item_kind, item_id)
);
CREATE INDEX memory_embed_queue_due ON memory_embed_queue (available_at, item_id);
CREATE INDEX memory_embed_queue_owner ON memory_embed_queue (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE memory_vector_epochs (
    platform   TEXT NOT NULL,
    workspace  TEXT NOT NULL,
    channel    TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    PRIMARY KEY (platform, workspace, channel)
);

CREATE FUNCTION memory_embed_enqueue(kind TEXT, id BIGINT) RETURNS void AS $$
    INSERT INTO memory_embed_queue (item_kind, item_id) VALUES (kind, id)
    ON CONFLICT (item_kind, item_id) DO UPDATE
    SET version = memory_embed_queue.version + 1, attempts = 0, available_at = 0,
        lease_owner = NULL, lease_until = NULL, last_error = NULL;
$$ LANGUAGE sql;

-- Notes: queued when written or changed; their vectors and queue rows go with them.
CREATE FUNCTION memory_notes_embed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM memory_embed_enqueue('note', NEW.id);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.text IS DISTINCT FROM OLD.text THEN
            DELETE FROM memory_vectors WHERE item_kind = 'note' AND item_id = OLD.id;
            PERFORM memory_embed_enqueue('note', NEW.id);
        END IF;
        RETURN NEW;
    ELSE
        DELETE FROM memory_vectors WHERE item_kind = 'note' AND item_id = OLD.id;
        DELETE FROM memory_embed_queue WHERE item_kind = 'note' AND item_id = OLD.id;
        RETURN OLD;
    END IF;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER memory_notes_embed AFTER INSERT OR UPDATE OR DELETE ON memory_notes
    FOR EACH ROW EXECUTE FUNCTION memory_notes_embed();

-- Chunks: queued when written; vectors and queue rows go with them.
CREATE FUNCTION memory_chunks_embed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO memory_embed_queue (item_kind, item_id) VALUES ('chunk', NEW.id)
        ON CONFLICT (item_kind, item_id) DO NOTHING;
        RETURN NEW;
    ELSE
        DELETE FROM memory_vectors WHERE item_kind = 'chunk' AND item_id = OLD.id;
        DELETE FROM memory_embed_queue WHERE item_kind = 'chunk' AND item_id = OLD.id;
        RETURN OLD;
    END IF;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER memory_chunks_embed AFTER INSERT OR DELETE ON memory_chunks
    FOR EACH ROW EXECUTE FUNCTION memory_chunks_embed();

-- A channel that loses a vector gets a new epoch.
CREATE FUNCTION memory_vectors_deleted() RETURNS trigger AS $$
BEGIN
    INSERT INTO memory_vector_epochs (platform, workspace, channel, epoch)
    VALUES (OLD.platform, OLD.workspace, OLD.channel, 1)
    ON CONFLICT (platform, workspace, channel) DO UPDATE
    SET epoch = memory_vector_epochs.epoch + 1;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER memory_vectors_deleted AFTER DELETE ON memory_vectors
    FOR EACH ROW EXECUTE FUNCTION memory_vectors_deleted();

-- Notes written before this migration wait to be embedded like new ones (only drained when an
-- embedder is configured).
INSERT INTO memory_embed_queue (item_kind, item_id) SELECT 'note', id FROM memory_notes;
