//! Storage: one query layer over SQLite and Postgres, each with its own migrations.
//!
//! Everything durable lives here: conversations, the inbox of events, the transcript, memory
//! notes (full-text searchable), artifacts, the outbox of replies and LLM usage. Every method
//! that changes more than one row does so in one transaction.
//!
//! Each query is written once ([`db`] runs it on whichever backend is open); the few that
//! differ sit side by side in [`dialect`]. A table's queries live in the file named after it.

use std::sync::Arc;

use async_trait::async_trait;

mod access;
mod checkpoint;
mod clock;
mod compaction;
mod conversations;
mod db;
mod dialect;
mod embeddings;
mod ids;
mod inbox;
mod installations;
mod leases;
mod live;
mod media;
mod memory;
mod migrate;
mod outbox;
mod query;
mod schedules;
mod transcript;
mod usage;
mod wal_appends;
mod wal_sync;
mod writer;

pub use access::{AccessLog, Approval, NewPairing, PairedUser, PairingCode};
pub use clock::Clock;
pub use compaction::{
    Compaction, CompactionStats, Compactions, ContextMessages, ImportedCompaction, NewCompaction,
};
pub use conversations::{ConversationInfo, Conversations, HeardFrom};
pub use embeddings::{
    ChannelVector, ChunkKind, CompactionSource, EmbedJob, IndexStatus, ItemKind, ItemRef,
    ItemSource, MemoryItem, NewChunk, SemanticIndex, VectorState, decode_vector, encode_vector,
};
pub use ids::{
    CompactionId, ConversationId, EventId, InboxStatus, MessageId, NoteId, ReplyId, ScheduleId,
    UnixMs, UnknownStatus,
};
pub use inbox::{
    ClaimedEvent, Completed, Completion, Inbox, InboxCounts, InboxEvent, Inserted, NewEvent,
};
pub use installations::{Installations, StoredInstallation};
pub use leases::{LeaseInfo, Leases};
pub use live::LiveMessages;
pub use media::{EventFile, Extract, Media};
pub use memory::{ChannelNotes, ImportedNote, Memory, NewNote, Note, StoredNote};
pub use outbox::{NewReply, Outbox, OutboxItem};
pub use schedules::{
    Created, JobKind, JobStatus, NewSchedule, Schedule, Schedules, Step, StepKind,
};
pub use transcript::{
    Artifact, ImportedMessage, Message, NewArtifact, NewMessage, Role, Transcript,
};
pub use usage::{ChannelUsage, ModelUsage, Usage, UsageLog, UsageScope};

/// What went wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// An error of SQLite's write connection.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open database `{url}`: {problem}")]
    Open { url: String, problem: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The transaction a write was batched into did not commit; the write was not made.
    #[error("the write was not committed: {0}")]
    Commit(Arc<StoreError>),
    /// Committed writes could not be put on disk (SQLite's log did not sync).
    #[error("the write-ahead log could not be synced to disk: {0}")]
    Sync(#[source] std::io::Error),
    #[error("the store is closed")]
    Closed,
    /// Too many writes are waiting; new work is refused until the queue drains.
    #[error("the store is busy: too many writes are waiting")]
    Busy,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch: the one time type of the schema (same on both backends).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Everything the store keeps, one trait per concern (each with its queries in the file named
/// after it); [`SqlStore`] implements them all on either backend, and both backends pass one
/// contract suite (`tests/store_contract.rs`). Callers hold an `Arc<dyn Store>`.
#[async_trait]
pub trait Store:
    Inbox
    + Outbox
    + Transcript
    + Compactions
    + Memory
    + SemanticIndex
    + UsageLog
    + AccessLog
    + Leases
    + LiveMessages
    + Installations
    + Conversations
    + Media
    + Schedules
    + Send
    + Sync
    + 'static
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Check that the database answers.
    async fn ping(&self) -> Result<()>;
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.db.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }
}

/// The store: one implementation of [`Store`] for both backends.
pub struct SqlStore {
    db: db::Db,
    conversations: conversations::ConversationCache,
    clock: Arc<Clock>,
}

/// Open (and migrate) the database a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with_clock(url, Arc::new(Clock::default())).await
}

/// [`open`], with the clock the store times its rows and leases by (tests move it ahead).
pub async fn open_with_clock(url: &str, clock: Arc<Clock>) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::open(url, clock).await?))
}

impl SqlStore {
    /// Open (and migrate) the database a URL names.
    pub async fn open(url: &str, clock: Arc<Clock>) -> Result<Self> {
        Ok(SqlStore {
            db: db::Db::open(url, clock.clone()).await?,
            conversations: conversations::ConversationCache::default(),
            clock,
        })
    }

    /// The stored id of `conversation` when the cache knows it and the backend needs no lock
    /// on the conversation's row (else the write looks it up, and locks it, itself).
    fn known_conversation(
        &self,
        conversation: &ecdysis_chat::ConversationRef,
    ) -> Option<ConversationId> {
        if dialect::locks_conversations(&self.db) {
            None
        } else {
            self.conversations.id(conversation)
        }
    }
}

/// The file of a `sqlite:` URL, for messages and the instance lock; `None` for other URLs.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .ok()
        .map(|o| o.get_filename().to_path_buf())
}

/// Words of a free-text query, lower-cased, for the full-text search of either backend.
pub(crate) fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    terms.sort();
    terms.dedup();
    terms.truncate(32);
    terms
}
