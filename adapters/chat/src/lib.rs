//! The contract between ecdysis's core and its chat adapters.
//!
//! An adapter turns platform payloads into [`Event`]s and hands them to an [`EventSink`]; the core
//! answers with [`Reply`]s that the adapter's [`ChatAdapter::deliver`] turns into platform calls.
//! Adapters never touch storage or the agent: mention gating, de-duplication, memory and the model
//! live in the core, once.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod allow;
mod backend;
pub mod backoff;
mod catch_up;
mod command;
mod files;
mod live;
pub mod request;
mod text;
pub mod time;
pub mod tls;

pub use allow::AllowList;
pub use backend::BackendError;
pub use catch_up::{CatchUp, CatchUpLimits, CatchUpReport, LastSeen, Seen, log_run};
pub use command::{Command, CommandName};
pub use files::{FetchError, RemoteFile};
pub use live::{LiveHandle, LiveMessage, LiveSettings, LiveView, Progress};
pub use text::split_text;

/// Where a message lives: platform, workspace (Slack team, Discord guild), channel and thread.
///
/// Work for one conversation runs in arrival order; memory is scoped to the channel
/// (platform + workspace + channel), so every thread of a channel shares its notes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConversationRef {
    pub platform: String,
    pub workspace: String,
    pub channel: String,
    /// The thread root, or `None` for the channel itself (a DM, the web chat).
    #[serde(default)]
    pub thread: Option<String>,
}

impl ConversationRef {
    pub fn new(
        platform: impl Into<String>,
        workspace: impl Into<String>,
        channel: impl Into<String>,
        thread: Option<String>,
    ) -> Self {
        Self {
            platform: platform.into(),
            workspace: workspace.into(),
            channel: channel.into(),
            thread: thread.filter(|t| !t.is_empty()),
        }
    }

    /// The channel this conversation belongs to, which is what memory is scoped to.
    pub fn channel_ref(&self) -> ChannelRef {
        ChannelRef {
            platform: self.platform.clone(),
            workspace: self.workspace.clone(),
            channel: self.channel.clone(),
        }
    }
}

impl std::fmt::Display for ConversationRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.platform, self.workspace, self.channel)?;
        if let Some(thread) = &self.thread {
            write!(f, ":{thread}")?;
        }
        Ok(())
    }
}

/// A channel: the scope of memory notes and sandbox workspaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelRef {
    pub platform: String,
    pub workspace: String,
    pub channel: String,
}

/// Who sent an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A file travelling with an event or a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub mime: String,
    pub bytes: Bytes,
}

impl Attachment {
    pub fn new(name: impl Into<String>, mime: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            mime: mime.into(),
            bytes: bytes.into(),
        }
    }
}

/// What arrived: a plain message, a command, or a button press.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// Free text for the agent.
    Message,
    /// One of the commands every platform shares (`remember`, `recall`, …).
    Command(Command),
    /// A button press (approvals); `action_id` names the button, `value` carries its payload.
    Action { action_id: String, value: String },
}

/// How a message reached the bot; the core decides from this whether to answer (mention gating
/// lives in the core, once, not in every adapter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Addressed {
    /// Meant for the bot: a DM, a slash command, a button, the web or terminal chat.
    #[default]
    Direct,
    /// The bot was mentioned.
    Mention,
    /// A reply in a thread: answered when the bot already takes part in that conversation.
    ThreadReply,
    /// A channel message not meant for the bot: never answered.
    Ambient,
}

/// One inbound event, as an adapter hands it to the core.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The platform's own id for this delivery (Slack `event_id`, Discord message or interaction
    /// id, a web-chat generated id). The core accepts each (conversation, id) once.
    pub platform_event_id: String,
    pub conversation: ConversationRef,
    pub user: UserRef,
    pub kind: EventKind,
    pub addressed: Addressed,
    /// The text as the user wrote it (for commands: the arguments).
    pub text: String,
    /// Files the user attached whose bytes the adapter already has (web uploads).
    pub attachments: Vec<Attachment>,
    /// Files the user attached that are still on the platform: the core fetches them after the
    /// event is acknowledged (see [`ChatAdapter::fetch_file`]).
    pub remote_files: Vec<RemoteFile>,
    /// Whatever the adapter needs later to answer this event (a `response_url`, an interaction
    /// token, the message `ts`). Opaque to the core; copied onto every [`Reply`].
    pub route: serde_json::Value,
}

impl Event {
    /// A plain message, or a command when `text` starts with `/` and names a known command
    /// (the web and terminal chats' convention). An unknown `/word` stays a command named
    /// [`CommandName::Unknown`] so the core can answer with help.
    pub fn from_text(
        platform_event_id: impl Into<String>,
        conversation: ConversationRef,
        user: UserRef,
        text: impl Into<String>,
    ) -> Self {
        let text = text.into();
        let (kind, text) = match Command::parse_slash(&text) {
            Some(command) => {
                let args = command.args.clone();
                (EventKind::Command(command), args)
            }
            None => (EventKind::Message, text),
        };
        Self {
            platform_event_id: platform_event_id.into(),
            conversation,
            user,
            kind,
            addressed: Addressed::Direct,
            text,
            attachments: Vec::new(),
            remote_files: Vec::new(),
            route: serde_json::Value::Null,
        }
    }
}

/// How a button looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ButtonStyle {
    #[default]
    Default,
    Primary,
    Danger,
}

/// A button under a reply (approvals). Pressing it comes back as [`EventKind::Action`] with the
/// same `action_id` and `value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub action_id: String,
    pub label: String,
    pub value: String,
    #[serde(default)]
    pub style: ButtonStyle,
}

/// One outbound reply. The idempotency key is stable across retries: an adapter that can tell
/// (platform metadata, its own bookkeeping) must not post the same key twice.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub idempotency_key: String,
    pub conversation: ConversationRef,
    pub text: String,
    pub attachments: Vec<Attachment>,
    /// Buttons to show under the text (empty for most replies).
    pub buttons: Vec<Button>,
    /// Copied from the event this answers.
    pub route: serde_json::Value,
    /// The live message this reply finishes (see [`ChatAdapter::start_live`]): the adapter
    /// edits it into this reply instead of posting a new message, or removes it when the reply
    /// has no text. `None` for replies that were not shown while written.
    pub live: Option<LiveHandle>,
}

/// What a platform said about a delivered reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The platform's id of the posted message, when it has one.
    pub platform_message_id: Option<String>,
}

/// The limits a platform puts on one reply; the core splits or converts to stay within them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Characters of text in one message.
    pub max_text_chars: usize,
    /// Bytes of one uploaded file.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 40_000,
            max_file_bytes: 25 * 1024 * 1024,
        }
    }
}

/// Why a delivery failed. `Retryable` errors are tried again later; `Permanent` ones are recorded.
/// `RateLimited`: the platform said to wait (Slack `Retry-After`, Discord `retry_after`); the
/// reply is tried again then, however often that happens.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("temporary delivery failure: {0}")]
    Retryable(String),
    #[error("rate limited by the platform ({detail}); retrying in {} ms", retry_after.as_millis())]
    RateLimited {
        retry_after: std::time::Duration,
        detail: String,
    },
    #[error("delivery failed: {0}")]
    Permanent(String),
}

/// The outbound half of an adapter: turn a [`Reply`] into platform calls.
#[async_trait]
pub trait ChatAdapter: Send + Sync + 'static {
    /// The platform name used in [`ConversationRef::platform`] (`slack`, `discord`, `web`, `local`).
    fn platform(&self) -> &str;

    /// The platform's limits for one message.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// The adapter's state for `/readyz` (connection state, time of the last event), if any.
    fn health(&self) -> Option<serde_json::Value> {
        None
    }

    /// Show that an event was received while the agent works (a reaction, a typing indicator).
    async fn working(&self, _conversation: &ConversationRef, _route: &serde_json::Value) {}

    /// Post a reply into the conversation it belongs to (finishing [`Reply::live`] when set).
    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError>;

    /// Download a file an event of `conversation` referred to (see [`Event::remote_files`]),
    /// with the platform's credentials sent only to the platform's own hosts, and at most the
    /// adapter's size limit. Called by the core's workers, after the acknowledgement.
    async fn fetch_file(
        &self,
        _conversation: &ConversationRef,
        _file: &RemoteFile,
    ) -> Result<Bytes, FetchError> {
        Err(FetchError::Unsupported)
    }

    /// Whether replies to an event with this route are shown while they are written, and how
    /// often a live message may change. `None` (the default): one final message.
    fn live(&self, _route: &serde_json::Value) -> Option<LiveSettings> {
        None
    }

    /// Create a live message showing `view`; its handle is stored by the core before any
    /// update. Adapters that return `Some` from [`ChatAdapter::live`] implement this.
    async fn start_live(
        &self,
        _message: &LiveMessage,
        _view: &LiveView,
    ) -> Result<LiveHandle, DeliveryError> {
        Err(DeliveryError::Permanent(
            "this adapter does not show replies while they are written".into(),
        ))
    }

    /// Change a live message from `shown` (what the last successful call showed; empty after
    /// a restart) to `view`. Returns a new handle when the adapter changed how it reaches the
    /// message (the core stores it), `None` otherwise.
    async fn update_live(
        &self,
        _message: &LiveMessage,
        _handle: &LiveHandle,
        _shown: &LiveView,
        _view: &LiveView,
    ) -> Result<Option<LiveHandle>, DeliveryError> {
        Err(DeliveryError::Permanent(
            "this adapter does not show replies while they are written".into(),
        ))
    }

    /// The route of a message the bot posts later on its own (a reminder) into the place the
    /// event of `route` came from: one-time parts (a slash command's response URL, an
    /// interaction token, the triggering message) dropped. `now_ms` is when it is posted.
    fn later_route(&self, route: &serde_json::Value, now_ms: i64) -> serde_json::Value {
        let _ = now_ms;
        route.clone()
    }

    /// A user's IANA time zone, when the platform knows it (Slack's `users.info`).
    async fn user_timezone(&self, _user_id: &str, _route: &serde_json::Value) -> Option<String> {
        None
    }
}

/// The answer of the core to an accepted event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The core's id for the event.
    pub event_id: String,
    /// True when this (platform, platform event id) was accepted before; nothing new was stored.
    pub duplicate: bool,
    /// True when the core decided the event is not for the bot (see [`Addressed`]); nothing
    /// was stored and nothing will be answered. Acknowledge it all the same.
    #[serde(default)]
    pub ignored: bool,
}

/// Why the core did not accept an event.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The event itself is bad (empty text, …): tell the sender, store nothing.
    #[error("{0}")]
    Invalid(String),
    /// Too much work is queued: try again later (back-pressure).
    #[error("busy: {0}")]
    Busy(String),
    /// Storage failed: nothing was accepted.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The inbound half: where adapters hand events. An event is durable once `submit` returns `Ok`,
/// so an adapter acknowledges the platform only after that.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn submit(&self, event: Event) -> Result<Accepted, SubmitError>;
}
