//! Interactivity: a button press (`block_actions`) as an [`Event`] with [`EventKind::Action`],
//! answered in the thread of the message that carried the button.

use ecdysis_chat::{Addressed, ConversationRef, Event, EventKind, UserRef};
use serde::Deserialize;

use crate::route::{Route, Via};

/// The parts of an interaction payload the adapter reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Interaction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    team: Option<Id>,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    channel: Option<Id>,
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    response_url: Option<String>,
    #[serde(default)]
    trigger_id: Option<String>,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
struct Id {
    id: String,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    team_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Container {
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    message_ts: Option<String>,
    #[serde(default)]
    thread_ts: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Message {
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    thread_ts: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    action_ts: Option<String>,
}

impl Interaction {
    /// The event for a button press; `None` for other interactions (shortcuts, modals) and
    /// payloads without the fields a reply needs.
    pub(crate) fn to_event(&self, received_ms: i64) -> Option<Event> {
        if self.kind != "block_actions" {
            return None;
        }
        let action = self.actions.first()?;
        let user = self.user.as_ref()?;
        let team = self
            .team
            .as_ref()
            .map(|t| t.id.clone())
            .or_else(|| user.team_id.clone())?;
        let container = self.container.as_ref();
        let channel = self
            .channel
            .as_ref()
            .map(|c| c.id.clone())
            .or_else(|| container.and_then(|c| c.channel_id.clone()))?;
        let message_ts = self
            .message
            .as_ref()
            .and_then(|m| m.ts.clone())
            .or_else(|| container.and_then(|c| c.message_ts.clone()));
        let thread_ts = self
            .message
            .as_ref()
            .and_then(|m| m.thread_ts.clone())
            .or_else(|| container.and_then(|c| c.thread_ts.clone()));
        // The button's message is in a thread, or starts one; a DM's root message stays there.
        let thread = thread_ts.or_else(|| {
            if channel.starts_with('D') {
                None
            } else {
                message_ts.clone()
            }
        });
        let id = match (&self.trigger_id, &action.action_ts) {
            (Some(trigger), _) => format!("action:{trigger}"),
            (None, Some(ts)) => format!("action:{channel}:{ts}:{}", action.action_id),
            (None, None) => return None,
        };
        let value = action.value.clone().unwrap_or_default();
        let route = Route {
            team: team.clone(),
            channel: channel.clone(),
            thread_ts: thread.clone(),
            message_ts: None,
            response_url: self.response_url.clone(),
            via: Via::Message,
            received_ms,
            user: Some(user.id.clone()),
        };
        Some(Event {
            platform_event_id: id,
            conversation: ConversationRef::new("slack", team, channel, thread),
            user: UserRef {
                id: user.id.clone(),
                name: user.username.clone(),
            },
            kind: EventKind::Action {
                action_id: action.action_id.clone(),
                value: value.clone(),
            },
            addressed: Addressed::Direct,
            text: value,
            attachments: Vec::new(),
            route: route.to_value(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn button_press_in_a_thread() {
        let i: Interaction = serde_json::from_value(json!({
            "type": "block_actions",
            "team": {"id": "T1"},
            "user": {"id": "U1", "username": "ann"},
            "channel": {"id": "C1"},
            "container": {"type": "message", "message_ts": "5.0", "channel_id": "C1", "thread_ts": "1.0"},
            "message": {"ts": "5.0", "thread_ts": "1.0"},
            "response_url": "https://hooks.slack.com/actions/1",
            "trigger_id": "tr9",
            "actions": [{"action_id": "approve", "value": "run:42", "action_ts": "6.0", "type": "button"}]
        }))
        .unwrap();
        let e = i.to_event(0).unwrap();
        assert_eq!(e.platform_event_id, "action:tr9");
        assert_eq!(e.conversation.thread.as_deref(), Some("1.0"));
        assert_eq!(
            e.kind,
            EventKind::Action {
                action_id: "approve".into(),
                value: "run:42".into()
            }
        );
    }

    #[test]
    fn other_interactions_are_not_events() {
        let i: Interaction =
            serde_json::from_value(json!({"type": "shortcut", "callback_id": "x"})).unwrap();
        assert!(i.to_event(0).is_none());
    }
}
