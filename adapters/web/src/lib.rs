//! The embedded chats: a local web chat (page, JSON API, live updates) and the terminal chat.
//!
//! Like every adapter, these only translate: requests and typed lines become [`Event`]s for an
//! [`EventSink`]; replies come back through [`ChatAdapter::deliver`]. The transcript and files
//! they show are read through the small [`WebBackend`] trait the core implements.
//!
//! [`Event`]: ecdysis_chat::Event
//! [`EventSink`]: ecdysis_chat::EventSink
//! [`ChatAdapter::deliver`]: ecdysis_chat::ChatAdapter::deliver

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

mod auth;
pub mod guard;
pub mod limiter;
mod routes;
pub mod session;
pub mod terminal;
mod upload;

pub use routes::{WebAdapter, WebChat, WebSettings, conversation_ref};

/// One message as the web chat API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct WebMessage {
    pub id: i64,
    /// The event this message belongs to: the `event_id` the POST that sent it returned (a user
    /// message and the replies to it share it); absent for messages made outside an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    pub attachments: Vec<WebAttachment>,
    /// Buttons under the message (approvals); pressing one posts to `/api/chat/{c}/actions`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<ecdysis_chat::Button>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// A file of a message; `url` is a path on this server.
#[derive(Clone, Debug, Serialize)]
pub struct WebAttachment {
    pub name: String,
    pub mime: String,
    pub size: i64,
    pub url: String,
}

/// A stored file's bytes.
#[derive(Clone, Debug)]
pub struct WebFile {
    pub name: String,
    pub mime: String,
    pub bytes: Bytes,
}

/// What the web chat reads from the core.
#[async_trait]
pub trait WebBackend: Send + Sync + 'static {
    /// The user and assistant messages of a conversation after message id `after`, in order.
    async fn messages(
        &self,
        conversation: &ecdysis_chat::ConversationRef,
        after: i64,
    ) -> Result<Vec<WebMessage>, ecdysis_chat::BackendError>;

    /// A stored file by its artifact id.
    async fn file(&self, id: &str) -> Result<Option<WebFile>, ecdysis_chat::BackendError>;
}
