//! What the adapter needs later to answer an event, kept in [`ecdysis_chat::Event::route`] and
//! read back from [`ecdysis_chat::Reply::route`].

use serde::{Deserialize, Serialize};

/// How a reply reaches Slack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `chat.postMessage` into `channel`, in `thread_ts` when set.
    #[default]
    Message,
    /// The slash command's `response_url` (falling back to `chat.postMessage` in the channel).
    ResponseUrl,
}

/// The delivery details of one Slack event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The workspace (team id): picks the bot token.
    pub team: String,
    pub channel: String,
    /// The thread replies go into; `None` only for a DM's root and slash commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_ts: Option<String>,
    /// The message that triggered the event (gets the 👀 reaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_url: Option<String>,
    #[serde(default)]
    pub via: Via,
    /// When the adapter accepted the event (ms since the Unix epoch).
    #[serde(default)]
    pub received_ms: i64,
    /// Who sent the event (a streamed answer names its recipient in channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Route {
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_value(value: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(value.clone()).ok()
    }
}
