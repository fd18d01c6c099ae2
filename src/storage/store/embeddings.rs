//! The semantic index: memory chunks (compaction summaries and archived turns), the queue of
//! rows waiting to be embedded, and the vectors, per channel, each tagged with its model.
//!
//! Notes and chunks are queued by triggers in the same transaction that writes them
//! (`migrations/*/0016_semantic_memory.sql`), so the queue survives restarts and misses
//! nothing. Vectors are little-endian `f32` blobs: both backends search them by an exact scan
//! that the application runs over a channel's vectors (see `crate::embeddings::cache`).

use async_trait::async_trait;
use ecdysis_chat::ChannelRef;
use serde::Serialize;

use super::conversations::channel_from_row;
use super::db::{Columns, on_reader, rows};
use super::dialect::{RECALL_CHUNKS, text_query};
use super::{CompactionId, Result, SqlStore, StoreError, UnixMs};

/// What kind of row an embedding belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// A memory note (`memory_notes`).
    Note,
    /// A compaction summary or a chunk of archived turns (`memory_chunks`).
    Chunk,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Note => "note",
            ItemKind::Chunk => "chunk",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "note" => Ok(ItemKind::Note),
            "chunk" => Ok(ItemKind::Chunk),
            other => Err(StoreError::Corrupt(format!(
                "unknown memory item kind `{other}`"
            ))),
        }
    }
}

/// A searchable row: a note or a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ItemRef {
    pub kind: ItemKind,
    pub id: i64,
}

/// Where a searchable text came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "source")]
pub enum ItemSource {
    /// A note someone (or the agent) saved.
    Note { created_by: String },
    /// The summary of a compaction.
    Summary,
    /// Turns of a conversation archived by a compaction.
    Transcript,
}

/// A searchable text of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryItem {
    pub item: ItemRef,
    pub text: String,
    #[serde(flatten)]
    pub source: ItemSource,
    pub created_at: UnixMs,
}

/// A chunk kind in `memory_chunks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Summary,
    Transcript,
}

impl ChunkKind {
    fn as_str(self) -> &'static str {
        match self {
            ChunkKind::Summary => "summary",
            ChunkKind::Transcript => "transcript",
        }
    }
}

/// A chunk to index for a compaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChunk {
    pub kind: ChunkKind,
    /// Its position among the compaction's chunks of that kind.
    pub seq: i64,
    pub text: String,
}

/// A compaction whose summary and turns are not chunked yet.
#[derive(Clone, Debug)]
pub struct CompactionSource {
    pub compaction: CompactionId,
    pub channel: ChannelRef,
    pub created_at: UnixMs,
    pub summary: String,
    /// The compacted user and assistant turns, in order: (role, text).
    pub turns: Vec<(String, String)>,
}

/// A row claimed for embedding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedJob {
    pub item: ItemRef,
    /// The queue row's version when claimed: a vector is stored only if it has not changed.
    pub version: i64,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub channel: ChannelRef,
    pub text: String,
}

/// One stored vector of a channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelVector {
    /// Grows with every vector written: a cache loads the ones above what it has.
    pub seq: i64,
    pub item: ItemRef,
    pub vector: Vec<f32>,
}

/// What a cache of a channel's vectors compares with to know whether it is current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorState {
    /// The newest vector's `seq` (0: none).
    pub max_seq: i64,
    /// Bumped whenever a vector of the channel is deleted.
    pub epoch: i64,
}

/// The embedding queue and the index, for `doctor` and `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexStatus {
    /// Rows waiting to be embedded (retries included).
    pub waiting: i64,
    /// Of those, rows whose last attempt failed.
    pub failing: i64,
    /// The most recent failure's message.
    pub last_error: Option<String>,
    /// Vectors made by the model asked about.
    pub vectors: i64,
}

/// The semantic index of memory, always scoped to one channel for search.
#[async_trait]
pub trait SemanticIndex: Send + Sync {
    /// Lease up to `limit` due queue rows to `owner` for `lease_ms`, with their texts. Rows whose
    /// note or chunk is gone are dropped.
    async fn claim_embed_jobs(
        &self,
        owner: &str,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<EmbedJob>>;

    /// Store the vectors `model` made for claimed jobs (one transaction), replacing the item's
    /// vectors of any model, and take the jobs off the queue. A job whose row changed since it
    /// was claimed keeps waiting and its vector is dropped. Returns how many were stored.
    async fn store_vectors(&self, model: &str, done: &[(EmbedJob, Vec<f32>)]) -> Result<usize>;

    /// Put claimed jobs back, due again `retry_in_ms` from now, noting the error.
    async fn fail_embed_jobs(&self, jobs: &[EmbedJob], error: &str, retry_in_ms: i64)
    -> Result<()>;

    /// Queue every note and chunk that has no vector of `model` (a changed model re-embeds).
    /// Runs in small transactions. Returns how many rows were queued.
    async fn queue_missing(&self, model: &str) -> Result<i64>;

    /// Queue every note and chunk again (`ecdysis memory reindex`). Returns how many.
    async fn queue_all(&self) -> Result<i64>;

    /// Where a channel's vectors of `model` stand.
    async fn vector_state(&self, channel: &ChannelRef, model: &str) -> Result<VectorState>;

    /// A channel's vectors of `model` with `seq` above `after`, in `seq` order, at most `limit`.
    async fn channel_vectors(
        &self,
        channel: &ChannelRef,
        model: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChannelVector>>;

    /// The channel's notes and chunks among `items` (others are left out), in no order.
    async fn memory_items(
        &self,
        channel: &ChannelRef,
        items: &[ItemRef],
    ) -> Result<Vec<MemoryItem>>;

    /// Chunks of the channel matching any word of `query`, best first.
    async fn recall_chunks(
        &self,
        channel: &ChannelRef,
        query: &str,
        limit: i64,
    ) -> Result<Vec<MemoryItem>>;

    /// Compactions that have no chunks yet, oldest first.
    async fn unchunked_compactions(&self, limit: i64) -> Result<Vec<CompactionSource>>;

    /// Store a compaction's chunks (one transaction; chunks it has already are kept).
    async fn add_chunks(&self, source: &CompactionSource, chunks: &[NewChunk]) -> Result<()>;

    /// The queue and the vectors of `model`.
    async fn index_status(&self, model: &str) -> Result<IndexStatus>;
}

/// A vector as stored: little-endian `f32`s.
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A stored vector back as `f32`s.
pub fn decode_vector(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "a stored vector has {} bytes, not a multiple of 4",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn item_from_row(row: &impl Columns) -> Result<MemoryItem> {
    let kind = ItemKind::parse(&row.col::<String>("item_kind")?)?;
    let source = match (kind, row.col::<String>("source_kind")?.as_str()) {
        (ItemKind::Note, _) => ItemSource::Note {
            created_by: row.col("created_by")?,
        },
        (ItemKind::Chunk, "summary") => ItemSource::Summary,
        (ItemKind::Chunk, _) => ItemSource::Transcript,
    };
    Ok(MemoryItem {
        item: ItemRef {
            kind,
            id: row.col("id")?,
        },
        text: row.col("text")?,
        source,
        created_at: row.col("created_at")?,
    })
}

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids per transaction when queueing in bulk: short transactions keep the single SQLite writer
/// free for the inbox.
const QUEUE_BATCH: i64 = 2_000;

#[async_trait]
impl SemanticIndex for SqlStore {
    async fn claim_embed_jobs(
        &self,
        owner: &str,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<EmbedJob>> {
        // A token of this claim alone: the rows it leased are read back by it.
        let owner = format!("{owner}:{}", uuid::Uuid::new_v4().simple());
        self.db
            .write((owner, limit, lease_ms), |tx, (owner, limit, lease_ms)| {
                Box::pin(async move {
                    let now = tx.now;
                    {
                        tx.query(
                            "UPDATE memory_embed_queue
                             SET lease_owner = $1, lease_until = $2, attempts = attempts + 1
                             WHERE (item_kind, item_id) IN (
                                 SELECT item_kind, item_id FROM memory_embed_queue
                                 WHERE available_at <= $3
                                   AND (lease_until IS NULL OR lease_until < $3)
                                 ORDER BY available_at, item_id
                                 LIMIT $4)
                               AND (lease_until IS NULL OR lease_until < $3)",
                        )
                        .bind(owner.as_str())
                        .bind(now.0 + *lease_ms)
                        .bind(now)
                        .bind(*limit)
                        .execute()
                        .await?;
                    };
                    let found: Vec<(EmbedJob, Option<ChannelRef>)> = {
                        let found = tx
                            .query(
                                "SELECT q.item_kind, q.item_id, q.version, q.attempts,
                                    COALESCE(n.platform, m.platform) AS platform,
                                    COALESCE(n.workspace, m.workspace) AS workspace,
                                    COALESCE(n.channel, m.channel) AS channel,
                                    COALESCE(n.text, m.text) AS text
                             FROM memory_embed_queue q
                             LEFT JOIN memory_notes n
                                    ON q.item_kind = 'note' AND n.id = q.item_id
                             LEFT JOIN memory_chunks m
                                    ON q.item_kind = 'chunk' AND m.id = q.item_id
                             WHERE q.lease_owner = $1 AND q.lease_until = $2
                             ORDER BY q.available_at, q.item_id",
                            )
                            .bind(owner.as_str())
                            .bind(now.0 + *lease_ms)
                            .fetch_all()
                            .await?;
                        rows(&found, |row| {
                            let text: Option<String> = row.col("text")?;
                            let platform: Option<String> = row.col("platform")?;
                            let channel = match (platform, text.is_some()) {
                                (Some(platform), true) => Some(ChannelRef {
                                    platform,
                                    workspace: row.col("workspace")?,
                                    channel: row.col("channel")?,
                                }),
                                _ => None,
                            };
                            let job = EmbedJob {
                                item: ItemRef {
                                    kind: ItemKind::parse(&row.col::<String>("item_kind")?)?,
                                    id: row.col("item_id")?,
                                },
                                version: row.col("version")?,
                                attempts: row.col("attempts")?,
                                channel: ChannelRef {
                                    platform: String::new(),
                                    workspace: String::new(),
                                    channel: String::new(),
                                },
                                text: text.unwrap_or_default(),
                            };
                            Ok((job, channel))
                        })?
                    };
                    let mut jobs = Vec::new();
                    for (mut job, channel) in found {
                        let Some(channel) = channel else {
                            // The note or chunk is gone (its trigger normally takes the row
                            // along): nothing to embed.
                            {
                                tx.query(
                                    "DELETE FROM memory_embed_queue
                                     WHERE item_kind = $1 AND item_id = $2",
                                )
                                .bind(job.item.kind.as_str())
                                .bind(job.item.id)
                                .execute()
                                .await?;
                            };
                            continue;
                        };
                        job.channel = channel;
                        jobs.push(job);
                    }
                    Ok(jobs)
                })
            })
            .await
    }

    async fn store_vectors(&self, model: &str, done: &[(EmbedJob, Vec<f32>)]) -> Result<usize> {
        let rows: Vec<(EmbedJob, Vec<u8>, i64)> = done
            .iter()
            .map(|(job, v)| (job.clone(), encode_vector(v), v.len() as i64))
            .collect();
        self.db
            .write((model.to_string(), rows), |tx, (model, rows)| {
                Box::pin(async move {
                    let now = tx.now;
                    let mut stored = 0;
                    for (job, bytes, dim) in rows {
                        let current = tx
                            .query(
                                "DELETE FROM memory_embed_queue
                                 WHERE item_kind = $1 AND item_id = $2 AND version = $3",
                            )
                            .bind(job.item.kind.as_str())
                            .bind(job.item.id)
                            .bind(job.version)
                            .execute()
                            .await?
                            .rows_affected();
                        if current == 0 {
                            continue;
                        }
                        {
                            tx.query(
                                "DELETE FROM memory_vectors WHERE item_kind = $1 AND item_id = $2",
                            )
                            .bind(job.item.kind.as_str())
                            .bind(job.item.id)
                            .execute()
                            .await?;
                        };
                        {
                            tx.query(
                                "INSERT INTO memory_vectors (item_kind, item_id, platform,
                                                            workspace, channel, model, dim,
                                                            vector, created_at)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            )
                            .bind(job.item.kind.as_str())
                            .bind(job.item.id)
                            .bind(&job.channel.platform)
                            .bind(&job.channel.workspace)
                            .bind(&job.channel.channel)
                            .bind(model.as_str())
                            .bind(*dim as i32)
                            .bind(bytes.as_slice())
                            .bind(now)
                            .execute()
                            .await?;
                        };
                        stored += 1;
                    }
                    Ok(stored)
                })
            })
            .await
    }

    async fn fail_embed_jobs(
        &self,
        jobs: &[EmbedJob],
        error: &str,
        retry_in_ms: i64,
    ) -> Result<()> {
        let keys: Vec<(ItemRef, i64)> = jobs.iter().map(|j| (j.item, j.version)).collect();
        self.db
            .write(
                (keys, error.to_string(), retry_in_ms),
                |tx, (keys, error, retry_in_ms)| {
                    Box::pin(async move {
                        let retry_at = tx.now.0 + *retry_in_ms;
                        for (item, version) in keys {
                            {
                                tx.query(
                                    "UPDATE memory_embed_queue
                                     SET lease_owner = NULL, lease_until = NULL,
                                         available_at = $1, last_error = $2
                                     WHERE item_kind = $3 AND item_id = $4 AND version = $5",
                                )
                                .bind(retry_at)
                                .bind(error.as_str())
                                .bind(item.kind.as_str())
                                .bind(item.id)
                                .bind(*version)
                                .execute()
                                .await?;
                            };
                        }
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn queue_missing(&self, model: &str) -> Result<i64> {
        self.queue_in_batches(Some(model.to_string())).await
    }

    async fn queue_all(&self) -> Result<i64> {
        self.queue_in_batches(None).await
    }

    async fn vector_state(&self, channel: &ChannelRef, model: &str) -> Result<VectorState> {
        on_reader!(&self.db, |pool| {
            let row = sqlx::query(
                "SELECT COALESCE((SELECT MAX(id) FROM memory_vectors
                                  WHERE platform = $1 AND workspace = $2 AND channel = $3
                                    AND model = $4), 0) AS max_seq,
                        COALESCE((SELECT epoch FROM memory_vector_epochs
                                  WHERE platform = $1 AND workspace = $2 AND channel = $3),
                                 0) AS epoch",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .bind(model)
            .fetch_one(pool)
            .await?;
            Ok(VectorState {
                max_seq: row.col("max_seq")?,
                epoch: row.col("epoch")?,
            })
        })
    }

    async fn channel_vectors(
        &self,
        channel: &ChannelRef,
        model: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChannelVector>> {
        on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT id, item_kind, item_id, vector FROM memory_vectors
                 WHERE platform = $1 AND workspace = $2 AND channel = $3 AND model = $4
                   AND id > $5
                 ORDER BY id LIMIT $6",
            )
            .bind(&channel.platform)
            .bind(&channel.workspace)
            .bind(&channel.channel)
            .bind(model)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok(ChannelVector {
                    seq: row.col("id")?,
                    item: ItemRef {
                        kind: ItemKind::parse(&row.col::<String>("item_kind")?)?,
                        id: row.col("item_id")?,
                    },
                    vector: decode_vector(&row.col::<Vec<u8>>("vector")?)?,
                })
            })
        })
    }

    async fn memory_items(
        &self,
        channel: &ChannelRef,
        items: &[ItemRef],
    ) -> Result<Vec<MemoryItem>> {
        let notes: Vec<i64> = items
            .iter()
            .filter(|i| i.kind == ItemKind::Note)
            .map(|i| i.id)
            .collect();
        let chunks: Vec<i64> = items
            .iter()
            .filter(|i| i.kind == ItemKind::Chunk)
            .map(|i| i.id)
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (ids, table) in [(notes, ItemKind::Note), (chunks, ItemKind::Chunk)] {
            if ids.is_empty() {
                continue;
            }
            let sql = match table {
                ItemKind::Note => format!(
                    "SELECT 'note' AS item_kind, 'note' AS source_kind, id, text, created_by,
                            created_at
                     FROM memory_notes
                     WHERE platform = $1 AND workspace = $2 AND channel = $3 AND id IN ({})",
                    placeholders(4, ids.len())
                ),
                ItemKind::Chunk => format!(
                    "SELECT 'chunk' AS item_kind, kind AS source_kind, id, text,
                            '' AS created_by, created_at
                     FROM memory_chunks
                     WHERE platform = $1 AND workspace = $2 AND channel = $3 AND id IN ({})",
                    placeholders(4, ids.len())
                ),
            };
            let found = on_reader!(&self.db, |pool| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&channel.platform)
                    .bind(&channel.workspace)
                    .bind(&channel.channel);
                for id in &ids {
                    query = query.bind(*id);
                }
                let found = query.fetch_all(pool).await?;
                rows(&found, item_from_row)?
            });
            out.extend(found);
        }
        Ok(out)
    }

    async fn recall_chunks(
        &self,
        channel: &ChannelRef,
        query: &str,
        limit: i64,
    ) -> Result<Vec<MemoryItem>> {
        let Some(query) = text_query(&self.db, query) else {
            return Ok(Vec::new());
        };
        on_reader!(&self.db, RECALL_CHUNKS, |pool, sql| {
            let found = sqlx::query(sql)
                .bind(&query)
                .bind(&channel.platform)
                .bind(&channel.workspace)
                .bind(&channel.channel)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows(&found, item_from_row)
        })
    }

    async fn unchunked_compactions(&self, limit: i64) -> Result<Vec<CompactionSource>> {
        let heads = on_reader!(&self.db, |pool| {
            let found = sqlx::query(
                "SELECT k.id, k.conversation_id, k.first_message_id, k.last_message_id,
                        k.created_at, c.platform, c.workspace, c.channel, s.text AS summary
                 FROM compactions k
                 JOIN conversations c ON c.id = k.conversation_id
                 JOIN messages s ON s.id = k.summary_message_id
                 WHERE NOT EXISTS (SELECT 1 FROM memory_chunks m WHERE m.compaction_id = k.id)
                 ORDER BY k.id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows(&found, |row| {
                Ok((
                    row.col::<i64>("conversation_id")?,
                    row.col::<i64>("first_message_id")?,
                    row.col::<i64>("last_message_id")?,
                    CompactionSource {
                        compaction: row.col("id")?,
                        channel: channel_from_row(row)?,
                        created_at: row.col("created_at")?,
                        summary: row.col("summary")?,
                        turns: Vec::new(),
                    },
                ))
            })?
        });
        let mut out = Vec::with_capacity(heads.len());
        for (conversation, first, last, mut source) in heads {
            source.turns = on_reader!(&self.db, |pool| {
                let found = sqlx::query(
                    "SELECT role, text FROM messages
                     WHERE conversation_id = $1 AND id BETWEEN $2 AND $3
                       AND role IN ('user', 'assistant')
                     ORDER BY id",
                )
                .bind(conversation)
                .bind(first)
                .bind(last)
                .fetch_all(pool)
                .await?;
                rows(&found, |row| Ok((row.col("role")?, row.col("text")?)))?
            });
            out.push(source);
        }
        Ok(out)
    }

    async fn add_chunks(&self, source: &CompactionSource, chunks: &[NewChunk]) -> Result<()> {
        let args = (
            source.compaction,
            source.channel.clone(),
            source.created_at,
            chunks.to_vec(),
        );
        self.db
            .write(args, |tx, (compaction, channel, created_at, chunks)| {
                Box::pin(async move {
                    for chunk in chunks {
                        {
                            tx.query(
                                "INSERT INTO memory_chunks (platform, workspace, channel,
                                                           compaction_id, kind, seq, text,
                                                           created_at)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                                 ON CONFLICT (compaction_id, kind, seq) DO NOTHING",
                            )
                            .bind(&channel.platform)
                            .bind(&channel.workspace)
                            .bind(&channel.channel)
                            .bind(*compaction)
                            .bind(chunk.kind.as_str())
                            .bind(chunk.seq)
                            .bind(&chunk.text)
                            .bind(*created_at)
                            .execute()
                            .await?;
                        };
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn index_status(&self, model: &str) -> Result<IndexStatus> {
        on_reader!(&self.db, |pool| {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM memory_embed_queue) AS waiting,
                        (SELECT COUNT(*) FROM memory_embed_queue
                         WHERE last_error IS NOT NULL) AS failing,
                        (SELECT last_error FROM memory_embed_queue
                         WHERE last_error IS NOT NULL
                         ORDER BY available_at DESC LIMIT 1) AS last_error,
                        (SELECT COUNT(*) FROM memory_vectors WHERE model = $1) AS vectors",
            )
            .bind(model)
            .fetch_one(pool)
            .await?;
            Ok(IndexStatus {
                waiting: row.col("waiting")?,
                failing: row.col("failing")?,
                last_error: row.col("last_error")?,
                vectors: row.col("vectors")?,
            })
        })
    }
}

impl SqlStore {
    /// Queue notes and chunks by id ranges, one short transaction per range: all of them, or
    /// (with a model) those without a vector of that model.
    async fn queue_in_batches(&self, model: Option<String>) -> Result<i64> {
        let mut queued = 0;
        for kind in [ItemKind::Note, ItemKind::Chunk] {
            let top: i64 = on_reader!(&self.db, |pool| {
                let sql = match kind {
                    ItemKind::Note => "SELECT COALESCE(MAX(id), 0) AS top FROM memory_notes",
                    ItemKind::Chunk => "SELECT COALESCE(MAX(id), 0) AS top FROM memory_chunks",
                };
                sqlx::query(sql).fetch_one(pool).await?.col("top")?
            });
            let mut from = 0;
            while from < top {
                let to = from + QUEUE_BATCH;
                queued += self
                    .db
                    .write(
                        (kind, model.clone(), from, to),
                        |tx, (kind, model, from, to)| {
                            Box::pin(async move {
                                let sql = match kind {
                                    ItemKind::Note => QUEUE_NOTES,
                                    ItemKind::Chunk => QUEUE_CHUNKS,
                                };
                                let n = tx
                                    .query(sql)
                                    .bind(*from)
                                    .bind(*to)
                                    .bind(model.as_deref())
                                    .execute()
                                    .await?
                                    .rows_affected();
                                Ok(n as i64)
                            })
                        },
                    )
                    .await?;
                from = to;
            }
        }
        Ok(queued)
    }
}

/// Queue notes with ids in `($1, $2]`, due at once; with `$3` a model, only those without its
/// vector (rows waiting already are left as they are). Without a model (a reindex), a row
/// waiting already gets a new version, so a vector being made from it now is dropped and the
/// row embedded again.
const QUEUE_NOTES: &str = "INSERT INTO memory_embed_queue (item_kind, item_id)
     SELECT 'note', n.id FROM memory_notes n
     WHERE n.id > $1 AND n.id <= $2
       AND (CAST($3 AS TEXT) IS NULL OR NOT EXISTS (
             SELECT 1 FROM memory_vectors v
             WHERE v.item_kind = 'note' AND v.item_id = n.id AND v.model = $3))
     ORDER BY n.id
     ON CONFLICT (item_kind, item_id) DO UPDATE
     SET version = memory_embed_queue.version + 1, attempts = 0, available_at = 0,
         lease_owner = NULL, lease_until = NULL, last_error = NULL
     WHERE CAST($3 AS TEXT) IS NULL";

/// [`QUEUE_NOTES`] for chunks.
const QUEUE_CHUNKS: &str = "INSERT INTO memory_embed_queue (item_kind, item_id)
     SELECT 'chunk', m.id FROM memory_chunks m
     WHERE m.id > $1 AND m.id <= $2
       AND (CAST($3 AS TEXT) IS NULL OR NOT EXISTS (
             SELECT 1 FROM memory_vectors v
             WHERE v.item_kind = 'chunk' AND v.item_id = m.id AND v.model = $3))
     ORDER BY m.id
     ON CONFLICT (item_kind, item_id) DO UPDATE
     SET version = memory_embed_queue.version + 1, attempts = 0, available_at = 0,
         lease_owner = NULL, lease_until = NULL, last_error = NULL
     WHERE CAST($3 AS TEXT) IS NULL";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.5, -1.25, f32::MIN_POSITIVE, 3.0e7];
        assert_eq!(decode_vector(&encode_vector(&v)).unwrap(), v);
        assert!(decode_vector(&[1, 2, 3]).is_err());
    }

    #[test]
    fn placeholders_count_from_first() {
        assert_eq!(placeholders(4, 3), "$4, $5, $6");
    }
}
