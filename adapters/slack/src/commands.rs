//! Slash commands: `/ecdysis <command> <args>` and the optional native commands (`/ask`,
//! `/remember`, …) as [`Event`]s with [`EventKind::Command`]. Results go back through the
//! command's `response_url`.

use std::collections::HashMap;

use ecdysis_chat::{Addressed, Command, CommandName, ConversationRef, Event, EventKind, UserRef};

use crate::route::{Route, Via};

/// The fields of a slash command Slack sends (form-encoded over HTTP, JSON in Socket Mode).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SlashCommand {
    pub team_id: String,
    pub channel_id: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub command: String,
    pub text: String,
    pub response_url: Option<String>,
    pub trigger_id: Option<String>,
}

impl SlashCommand {
    /// Read the fields from a form (HTTP) or a JSON object's string fields (Socket Mode).
    pub(crate) fn from_fields(fields: &HashMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
        let need = |k: &str| get(k).ok_or_else(|| format!("the slash command has no `{k}`"));
        Ok(Self {
            team_id: need("team_id")?,
            channel_id: need("channel_id")?,
            user_id: need("user_id")?,
            user_name: get("user_name"),
            command: need("command")?,
            text: fields.get("text").cloned().unwrap_or_default(),
            response_url: get("response_url"),
            trigger_id: get("trigger_id"),
        })
    }

    pub(crate) fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let fields = value
            .as_object()
            .ok_or("the slash command payload is not an object")?
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect();
        Self::from_fields(&fields)
    }

    /// The command it stands for: `/ecdysis remember x` and `/remember x` are the same.
    pub(crate) fn parsed(&self) -> Command {
        let word = self.command.trim_start_matches('/');
        match CommandName::parse(word) {
            CommandName::Unknown(_) => Command::parse(&self.text),
            name => Command {
                name,
                args: self.text.trim().to_string(),
            },
        }
    }

    /// The event for the core. Commands are addressed to the bot; they belong to the channel
    /// (not a thread) and are answered through `response_url`.
    pub(crate) fn to_event(&self, received_ms: i64) -> Event {
        let command = self.parsed();
        let id = match &self.trigger_id {
            Some(trigger) => format!("command:{trigger}"),
            // Slack always sends a trigger_id; without one, a fresh id (commands are not retried).
            None => format!(
                "command:{}:{received_ms}:{}",
                self.user_id,
                rand::random::<u32>()
            ),
        };
        let route = Route {
            team: self.team_id.clone(),
            channel: self.channel_id.clone(),
            thread_ts: None,
            message_ts: None,
            response_url: self.response_url.clone(),
            via: Via::ResponseUrl,
            received_ms,
            user: Some(self.user_id.clone()),
        };
        Event {
            platform_event_id: id,
            conversation: ConversationRef::new("slack", &self.team_id, &self.channel_id, None),
            user: UserRef {
                id: self.user_id.clone(),
                name: self.user_name.clone(),
            },
            text: command.args.clone(),
            kind: EventKind::Command(command),
            addressed: Addressed::Direct,
            attachments: Vec::new(),
            route: route.to_value(),
        }
    }

    /// The immediate (ephemeral) answer Slack shows while the command runs.
    pub(crate) fn ack_body(&self) -> serde_json::Value {
        let shown = format!("{} {}", self.command, self.text.trim());
        serde_json::json!({
            "response_type": "ephemeral",
            "text": format!("Working on `{}`…", shown.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(command: &str, text: &str) -> SlashCommand {
        let fields: HashMap<String, String> = [
            ("team_id", "T1"),
            ("channel_id", "C1"),
            ("user_id", "U1"),
            ("command", command),
            ("text", text),
            ("response_url", "https://hooks.slack.com/commands/1"),
            ("trigger_id", "tr1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        SlashCommand::from_fields(&fields).unwrap()
    }

    #[test]
    fn umbrella_and_native_commands_agree() {
        let a = command("/ecdysis", "remember the sky is blue").parsed();
        let b = command("/remember", "the sky is blue").parsed();
        assert_eq!(a, b);
        assert_eq!(a.name, CommandName::Remember);
        assert_eq!(command("/ecdysis", "").parsed().name, CommandName::Help);
        assert_eq!(
            command("/ecdysis", "frobnicate x").parsed().name,
            CommandName::Unknown("frobnicate".into())
        );
    }

    #[test]
    fn event_is_direct_and_routed_to_the_response_url() {
        let e = command("/ecdysis", "recall sky").to_event(7);
        assert_eq!(e.platform_event_id, "command:tr1");
        assert_eq!(e.addressed, Addressed::Direct);
        assert_eq!(e.text, "sky");
        assert_eq!(e.conversation.thread, None);
        let route = Route::from_value(&e.route).unwrap();
        assert_eq!(route.via, Via::ResponseUrl);
        assert_eq!(
            route.response_url.as_deref(),
            Some("https://hooks.slack.com/commands/1")
        );
    }

    #[test]
    fn missing_fields_are_reported() {
        let e = SlashCommand::from_fields(&HashMap::new()).unwrap_err();
        assert!(e.contains("team_id"), "{e}");
    }
}
