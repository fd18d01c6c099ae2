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
    ) -> Result<Vec<WebMessage>, String>;

    /// A stored file by its artifact id.
    async fn file(&self, id: &str) -> Result<Option<WebFile>, String>;
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-26T23:15:53.123Z`).
pub fn rfc3339_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_utc(1_795_734_953_123),
            "2026-11-26T23:15:53.123Z"
        );
        assert_eq!(
            super::rfc3339_utc(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
