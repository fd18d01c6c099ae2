//! What delivery needs to answer an event, carried opaquely through the core in
//! `Event.route` / `Reply.route`.

use serde::{Deserialize, Serialize};

/// Where and how a reply is posted. Ids are strings: JSON numbers lose Discord's 64-bit ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Route {
    /// The channel to post into: a DM, a thread, or (with `thread_on`) the channel whose
    /// message starts the thread.
    pub channel_id: String,
    /// Start (or continue) a thread on this message of `channel_id` and post there. Discord
    /// gives a thread started from a message the message's id, so the conversation's thread id
    /// is known before the thread exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_on: Option<String>,
    /// The name of that thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_name: Option<String>,
    /// An interaction to complete (slash command, button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction: Option<InteractionRoute>,
    /// The upload limit Discord reported for this place, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
}

/// The parts of an interaction its responses need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InteractionRoute {
    pub id: String,
    pub application_id: String,
    pub token: String,
}

impl Route {
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_value(value: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(value.clone()).ok()
    }

    /// The channel replies end up in: the thread when one is (to be) started.
    pub fn target_channel(&self) -> &str {
        self.thread_on.as_deref().unwrap_or(&self.channel_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_big_ids() {
        let route = Route {
            channel_id: "1234567890123456789".into(),
            thread_on: Some("1234567890123456790".into()),
            thread_name: Some("hello".into()),
            interaction: None,
            max_file_bytes: Some(8),
        };
        let value = route.to_value();
        assert_eq!(value["channel_id"], "1234567890123456789");
        assert_eq!(Route::from_value(&value), Some(route.clone()));
        assert_eq!(route.target_channel(), "1234567890123456790");
        assert!(Route::from_value(&serde_json::json!("x")).is_none());
    }
}
