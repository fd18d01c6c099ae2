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
use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::{Deserialize, Serialize};

mod admin;
mod backup;
mod clock;
mod conversations;
mod db;
mod dialect;
mod facade;
mod inbox;
mod installations;
mod leases;
mod memory;
mod migrate;
mod outbox;
mod transcript;
mod usage;

pub use clock::Clock;

/// What went wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open database `{url}`: {problem}")]
    Open { url: String, problem: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch: the one time type of the schema (same on both backends).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// An event to put into the inbox, with the user's message for the transcript.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub platform_event_id: String,
    pub conversation: ConversationRef,
    pub user_id: String,
    /// The event as JSON (see `bus::EventPayload`).
    pub payload: String,
    /// What the transcript shows for the user's message.
    pub text: String,
    /// Attachments already written to the blob store, linked to the user's message.
    pub attachments: Vec<NewArtifact>,
}

/// The result of putting an event into the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub event_id: i64,
    /// The (conversation, platform event id) was there already; nothing was written.
    pub duplicate: bool,
}

/// An event claimed by a worker, with its lease.
#[derive(Clone, Debug)]
pub struct ClaimedEvent {
    pub id: i64,
    pub conversation_id: i64,
    pub conversation: ConversationRef,
    pub payload: String,
    /// How many times this event was claimed, this claim included.
    pub attempts: i32,
    pub received_at: i64,
}

/// A transcript role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    /// A tool call or result inside an agent turn.
    Tool,
    /// A compaction summary that stands for older turns.
    Summary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Summary => "summary",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "summary" => Role::Summary,
            other => return Err(StoreError::Corrupt(format!("unknown role `{other}`"))),
        })
    }
}

/// An artifact whose blob is already stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewArtifact {
    /// Public id (a UUID), used in `/api/artifacts/{id}`.
    pub id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

/// An artifact row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub id: String,
    pub conversation_id: i64,
    pub message_id: Option<i64>,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
    pub created_at: i64,
}

/// A message to add to the transcript.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub role: Role,
    pub text: String,
    /// Structured detail (tool call arguments and results, model, …) as JSON; `None` for plain text.
    pub meta: Option<String>,
    pub attachments: Vec<NewArtifact>,
}

/// A transcript message with its attachments.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub id: i64,
    pub event_id: Option<i64>,
    pub role: Role,
    pub text: String,
    pub meta: Option<String>,
    pub attachments: Vec<Artifact>,
    pub created_at: i64,
}

/// A reply to deliver through the outbox.
#[derive(Clone, Debug)]
pub struct NewReply {
    /// Unique forever: a second insert with the same key is ignored, so a re-run never posts twice.
    pub idempotency_key: String,
    /// Text, artifact ids and the adapter's route, as JSON (see `bus::ReplyPayload`).
    pub payload: String,
}

/// What finishing an event writes, in one transaction: transcript rows, replies, and the final
/// state: `done`, or `failed` with `error` (the replies then tell the user what went wrong).
#[derive(Clone, Debug, Default)]
pub struct Completion {
    pub messages: Vec<NewMessage>,
    pub replies: Vec<NewReply>,
    pub error: Option<String>,
    /// When set, the replies are written already claimed for delivery until then, so the worker
    /// that produced them can deliver them at once without another claim.
    pub reply_lease_until: Option<i64>,
}

/// An outbox row waiting for delivery (claimed with a lease).
#[derive(Clone, Debug)]
pub struct OutboxItem {
    pub id: i64,
    pub idempotency_key: String,
    pub event_id: i64,
    pub conversation: ConversationRef,
    pub payload: String,
    pub attempts: i32,
}

/// A memory note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    pub id: i64,
    pub text: String,
    pub created_by: String,
    pub created_at: i64,
}

/// A note to remember.
#[derive(Clone, Debug)]
pub struct NewNote {
    pub channel: ChannelRef,
    pub text: String,
    pub created_by: String,
    /// Makes the write idempotent: the same source never stores a second note.
    pub source: Option<String>,
}

/// One LLM call's token usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

/// Usage totals of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    pub model: String,
    pub calls: i64,
    pub usage: Usage,
}

/// One compaction: older turns of a conversation replaced (for the agent) by a summary, and
/// archived verbatim in the blob store under `archive_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compaction {
    pub id: i64,
    /// The summary message (role `summary`) that stands for the compacted turns.
    pub summary_message_id: i64,
    /// The compacted range of message ids (inclusive).
    pub first_message_id: i64,
    pub last_message_id: i64,
    /// How many messages were compacted.
    pub message_count: i64,
    /// Where the compacted messages are archived (JSON lines in the blob store).
    pub archive_key: String,
    pub created_at: i64,
}

/// A compaction to record.
#[derive(Clone, Debug)]
pub struct NewCompaction {
    /// The event during which the compaction ran.
    pub event_id: Option<i64>,
    pub first_message_id: i64,
    pub last_message_id: i64,
    pub summary: String,
    /// Already written to the blob store.
    pub archive_key: String,
}

/// What the agent reads of a conversation: the latest summary and the messages after it.
#[derive(Clone, Debug, Default)]
pub struct ContextMessages {
    /// The latest compaction's summary message and the compaction itself.
    pub summary: Option<(Message, Compaction)>,
    /// Messages that are not compacted (and not summaries), newest `limit`, in order.
    pub messages: Vec<Message>,
}

/// Compactions of a channel's conversations, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactionStats {
    pub count: i64,
    pub messages: i64,
    pub last_at: Option<i64>,
}

/// Counts of the inbox by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboxCounts {
    pub pending: i64,
    pub leased: i64,
    pub done: i64,
    pub failed: i64,
}

/// A named leader lease (see [`Store::try_lead`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    pub name: String,
    pub owner: String,
    pub lease_until: i64,
    pub acquired_at: i64,
}

/// A conversation with its activity, for the admin pages and exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversationInfo {
    pub id: i64,
    pub conversation: ConversationRef,
    pub messages: i64,
    /// When its newest message was written; `None` without messages.
    pub last_message_at: Option<i64>,
    pub created_at: i64,
}

/// An inbox row as the admin pages show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InboxEvent {
    pub id: i64,
    pub conversation: ConversationRef,
    pub platform_event_id: String,
    /// `pending`, `leased`, `done` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub received_at: i64,
    pub finished_at: Option<i64>,
    /// The user's message as the transcript shows it.
    pub text: Option<String>,
}

/// A memory note with everything an export needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNote {
    pub id: i64,
    pub channel: ChannelRef,
    pub text: String,
    pub created_by: String,
    pub source: Option<String>,
    pub created_at: i64,
}

/// How many notes a channel has (the admin memory page).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelNotes {
    pub channel: ChannelRef,
    pub notes: i64,
    pub last_at: i64,
}

/// Usage totals of one channel and model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelUsage {
    pub channel: ChannelRef,
    pub model: String,
    pub calls: i64,
    pub usage: Usage,
}

/// A note to import: kept with its original time; `source` makes the import idempotent.
#[derive(Clone, Debug)]
pub struct ImportedNote {
    pub channel: ChannelRef,
    pub text: String,
    pub created_by: String,
    pub source: String,
    pub created_at: i64,
}

/// A transcript message to import, with its original time. `import_key` is unique: importing
/// the same message again writes nothing.
#[derive(Clone, Debug)]
pub struct ImportedMessage {
    pub import_key: String,
    pub role: Role,
    pub text: String,
    pub meta: Option<String>,
    pub created_at: i64,
    /// Artifacts of the message (by their original public id; one already there is kept).
    pub attachments: Vec<NewArtifact>,
}

/// A compaction to import, with message ids already mapped to the importing database.
#[derive(Clone, Debug)]
pub struct ImportedCompaction {
    pub summary_message_id: i64,
    pub first_message_id: i64,
    pub last_message_id: i64,
    pub message_count: i64,
    pub archive_key: String,
    pub created_at: i64,
}

/// An OAuth install of a chat app in one workspace (Slack team), with its bot token encrypted
/// by the caller (see `crate::slack_installations`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredInstallation {
    pub platform: String,
    pub team_id: String,
    pub team_name: String,
    pub bot_user_id: String,
    pub app_id: String,
    pub scopes: String,
    pub installed_by: String,
    /// The encrypted bot token; never the token itself.
    pub token_ciphertext: String,
    pub installed_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for StoredInstallation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredInstallation")
            .field("platform", &self.platform)
            .field("team_id", &self.team_id)
            .field("team_name", &self.team_name)
            .field("bot_user_id", &self.bot_user_id)
            .finish_non_exhaustive()
    }
}

/// The storage contract. Both backends pass the same suite (`tests/store_contract.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Check that the database answers.
    async fn ping(&self) -> Result<()>;

    // --- inbox -------------------------------------------------------------------------------

    /// Put an event into the inbox together with the user's transcript message, in one
    /// transaction; a (conversation, platform event id) seen before writes nothing.
    async fn insert_event(&self, event: &NewEvent) -> Result<Inserted>;

    /// Claim the oldest claimable event: the head of its conversation (no earlier unfinished
    /// event there), pending or with an expired lease, and due. The claim lasts until `lease_until`.
    async fn claim_event(&self, owner: &str, lease_until: i64) -> Result<Option<ClaimedEvent>>;

    /// Extend a lease this owner holds; false when the lease was lost.
    async fn renew_lease(&self, event_id: i64, owner: &str, lease_until: i64) -> Result<bool>;

    /// Release every lease `owner` holds (graceful shutdown): the events become pending again.
    async fn release_leases(&self, owner: &str) -> Result<u64>;

    /// Make every leased event pending again (single-instance start-up after a crash).
    async fn release_all_leases(&self) -> Result<u64>;

    /// Finish an event: transcript rows, outbox rows and the done mark in one transaction.
    /// Returns false (and writes nothing) when `owner` no longer holds the event's lease.
    /// Returns the outbox rows written (for delivery), or `None` when the lease was lost.
    async fn complete_event(
        &self,
        event_id: i64,
        owner: &str,
        done: &Completion,
    ) -> Result<Option<Vec<OutboxItem>>>;

    /// Give a claimed event back: retry at `retry_at`, or mark it failed when `retry_at` is None.
    async fn fail_event(
        &self,
        event_id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()>;

    /// Events not yet done or failed (the queue depth).
    async fn open_event_count(&self) -> Result<i64>;

    /// Counts of the inbox by state.
    async fn inbox_counts(&self) -> Result<InboxCounts>;

    // --- outbox ------------------------------------------------------------------------------

    /// Claim undelivered replies, oldest first: of one event when `event_id` is given (the
    /// worker delivering what it just produced), else of any event (the retry sweep).
    async fn claim_replies(
        &self,
        event_id: Option<i64>,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>>;

    /// Mark a reply delivered.
    async fn mark_reply_sent(&self, id: i64, platform_message_id: Option<&str>) -> Result<()>;

    /// Record a failed delivery: retry at `retry_at`, or give up when `None`.
    async fn mark_reply_failed(&self, id: i64, error: &str, retry_at: Option<i64>) -> Result<()>;

    // --- transcript and artifacts ------------------------------------------------------------

    /// The conversation's messages in order, after message id `after` (0 for all), at most `limit`.
    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>>;

    /// The last `limit` messages of the conversation, in order.
    async fn recent_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<Vec<Message>>;

    /// Append messages to a conversation outside an event's completion (agent tool steps).
    async fn append_messages(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
    ) -> Result<Vec<i64>>;

    /// Number of messages in a conversation.
    async fn message_count(&self, conversation: &ConversationRef) -> Result<i64>;

    /// One artifact by its public id.
    async fn artifact(&self, id: &str) -> Result<Option<Artifact>>;

    // --- memory ------------------------------------------------------------------------------

    /// Store a note (one transaction); with a `source` seen before, returns the earlier note's id.
    async fn remember(&self, note: &NewNote) -> Result<i64>;

    /// Notes of this channel matching any word of `query`, best first.
    async fn recall(&self, channel: &ChannelRef, query: &str, limit: i64) -> Result<Vec<Note>>;

    /// Delete a note of this channel; false when the channel has no such note.
    async fn forget(&self, channel: &ChannelRef, id: i64) -> Result<bool>;

    /// The channel's newest notes.
    async fn notes(&self, channel: &ChannelRef, limit: i64) -> Result<Vec<Note>>;

    /// How many notes the channel has.
    async fn note_count(&self, channel: &ChannelRef) -> Result<i64>;

    // --- usage -------------------------------------------------------------------------------

    /// Record one LLM call's usage for a conversation.
    async fn record_usage(
        &self,
        conversation: &ConversationRef,
        model: &str,
        usage: &Usage,
    ) -> Result<()>;

    /// Usage totals of every conversation of a channel, per model.
    async fn channel_usage(&self, channel: &ChannelRef) -> Result<Vec<ModelUsage>>;

    /// What one agent turn produced besides its answer, in one transaction: its tool rows (in
    /// order) and the usage of each of its model calls (model, usage).
    async fn record_turn(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
        usage: &[(String, Usage)],
    ) -> Result<()>;

    // --- compaction --------------------------------------------------------------------------

    /// The agent's context: the latest compaction summary, and the newest `limit` messages
    /// after it that are neither compacted nor summaries, in order.
    async fn context_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<ContextMessages>;

    /// Compact messages `first..=last` of a conversation, in one transaction: mark them (and
    /// earlier summaries) compacted, drop the bulky `meta` of compacted tool rows (the archive
    /// holds it verbatim), add the summary message and the compaction row.
    async fn compact(
        &self,
        conversation: &ConversationRef,
        compaction: &NewCompaction,
    ) -> Result<Compaction>;

    /// A conversation's compactions, oldest first (an export reads the archives they name).
    async fn compactions(&self, conversation: &ConversationRef) -> Result<Vec<Compaction>>;

    /// Compactions of every conversation of a channel.
    async fn compaction_stats(&self, channel: &ChannelRef) -> Result<CompactionStats>;

    // --- installations (OAuth installs of chat apps) ----------------------------------------

    /// Store an installation, replacing the workspace's earlier one (a re-install).
    async fn save_installation(&self, installation: &StoredInstallation) -> Result<()>;

    /// The installation of a workspace on a platform.
    async fn installation(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<Option<StoredInstallation>>;

    /// Delete a workspace's installation; false when there was none.
    async fn remove_installation(&self, platform: &str, team_id: &str) -> Result<bool>;

    /// Remember an OAuth `state` until `expires_at` (expired states are cleared on the way).
    async fn put_oauth_state(&self, state: &str, expires_at: i64) -> Result<()>;

    /// Use up an OAuth `state`: true when it existed and had not expired at `now`. It is gone
    /// afterwards either way, so a state works once.
    async fn take_oauth_state(&self, state: &str, now: i64) -> Result<bool>;

    // --- leadership (several instances) ------------------------------------------------------

    /// Take, keep or renew the named leader lease for `owner`, for `ttl_ms` from now (the
    /// database's clock on Postgres, so machines with skewed clocks agree). True when `owner`
    /// holds it now: it was free, expired, or already `owner`'s.
    async fn try_lead(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool>;

    /// Give the named lease up if `owner` holds it (another instance may take it at once).
    async fn release_lead(&self, name: &str, owner: &str) -> Result<()>;

    /// Every leader lease, held or expired, by name.
    async fn leases(&self) -> Result<Vec<LeaseInfo>>;

    // --- administration ----------------------------------------------------------------------

    /// Conversations, most recently active first: every one, or those of one channel.
    async fn conversations(
        &self,
        channel: Option<&ChannelRef>,
        limit: i64,
    ) -> Result<Vec<ConversationInfo>>;

    /// A conversation by its id.
    async fn conversation_by_id(&self, id: i64) -> Result<Option<ConversationRef>>;

    /// Inbox events in one state (`pending`, `leased`, `done`, `failed`), newest first.
    async fn inbox_events(&self, status: &str, limit: i64) -> Result<Vec<InboxEvent>>;

    /// Run a failed event again: a copy of it is queued as a new event (at the end of its
    /// conversation, so its replies get new idempotency keys and are really posted) and the
    /// failed one is marked `retried`. Returns the new event's id; `None` when the event is
    /// not failed.
    async fn retry_event(&self, id: i64) -> Result<Option<i64>>;

    /// The newest event time per platform (`received_at`).
    async fn last_event_at(&self) -> Result<Vec<(String, i64)>>;

    /// Channels that have notes, with their count and newest note time.
    async fn note_channels(&self) -> Result<Vec<ChannelNotes>>;

    /// One note by id, with its channel.
    async fn note(&self, id: i64) -> Result<Option<StoredNote>>;

    /// Every note of a channel, oldest first, with sources (exports).
    async fn channel_notes(&self, channel: &ChannelRef) -> Result<Vec<StoredNote>>;

    /// Change a note's text (search follows); false when there is no such note.
    async fn update_note(&self, id: i64, text: &str) -> Result<bool>;

    /// Delete a note by id; false when there is no such note.
    async fn delete_note(&self, id: i64) -> Result<bool>;

    /// Usage totals per channel and model, the heaviest channel first.
    async fn usage_by_channel(&self) -> Result<Vec<ChannelUsage>>;

    /// Every installation (OAuth install of a chat app), by platform and team; the token stays
    /// sealed.
    async fn installations(&self) -> Result<Vec<StoredInstallation>>;

    // --- backup ------------------------------------------------------------------------------

    /// Import a note; nothing is written when the channel has a note with the same text and
    /// time (the original, or an earlier import) or one with the same `source`. Returns the
    /// note's id and whether it was written now.
    async fn import_note(&self, note: &ImportedNote) -> Result<(i64, bool)>;

    /// Import a transcript message into a conversation (created if new); nothing is written
    /// when the conversation has a message with the same role, text and time (the original, or
    /// an earlier import) or one with the same `import_key`. Returns the message's id and
    /// whether it was written now.
    async fn import_message(
        &self,
        conversation: &ConversationRef,
        message: &ImportedMessage,
    ) -> Result<(i64, bool)>;

    /// Import a compaction (marking the messages it covers compacted, like [`Store::compact`]);
    /// a compaction of the conversation with the same archive key is not written twice.
    async fn import_compaction(
        &self,
        conversation: &ConversationRef,
        compaction: &ImportedCompaction,
    ) -> Result<bool>;
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
