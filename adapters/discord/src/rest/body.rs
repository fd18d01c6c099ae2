//! What the bot sends in a message, an edit, a follow-up or an interaction's response: text
//! that pings nobody, an idempotency nonce, buttons, and files (sent as a multipart body
//! with the JSON as `payload_json`).

use ecdysis_chat::Attachment;
use serde::Serialize;

/// Discord's message flag for "only the user who invoked the interaction sees this".
pub(crate) const EPHEMERAL: u64 = 1 << 6;

/// A message's content. Every message the bot sends pings nobody (`allowed_mentions` empty):
/// a model's text cannot mention `@everyone`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessageBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// With `enforce_nonce`, Discord posts a message with a nonce it saw in the last minutes
    /// once, and answers a repeat with that message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub enforce_nonce: bool,
    pub allowed_mentions: AllowedMentions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<ActionRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    /// The files' descriptions (`id` is the index of the multipart part `files[id]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<FileRef>,
    /// The files themselves, sent as multipart parts.
    #[serde(skip)]
    pub files: Vec<Attachment>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct AllowedMentions {
    parse: [&'static str; 0],
}

#[derive(Clone, Debug, Serialize)]
struct FileRef {
    id: usize,
    filename: String,
}

impl MessageBody {
    /// A message with `text`.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            content: Some(text.into()),
            nonce: None,
            enforce_nonce: false,
            allowed_mentions: AllowedMentions::default(),
            components: None,
            flags: None,
            attachments: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Post it once even when the request is repeated (see [`MessageBody::nonce`]).
    pub fn with_nonce(mut self, nonce: String) -> Self {
        self.nonce = Some(nonce);
        self.enforce_nonce = true;
        self
    }

    /// Buttons, when there are any.
    pub fn with_rows(mut self, rows: &[ActionRow]) -> Self {
        if !rows.is_empty() {
            self.components = Some(rows.to_vec());
        }
        self
    }

    /// Files to attach.
    pub fn with_files(mut self, files: Vec<Attachment>) -> Self {
        self.attachments = files
            .iter()
            .enumerate()
            .map(|(id, file)| FileRef {
                id,
                filename: file.name.clone(),
            })
            .collect();
        self.files = files;
        self
    }

    /// Seen only by the user who invoked the interaction.
    pub fn ephemeral(mut self) -> Self {
        self.flags = Some(EPHEMERAL);
        self
    }
}

/// A row of up to five buttons.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ActionRow {
    #[serde(rename = "type")]
    kind: u8,
    components: Vec<ButtonComponent>,
}

impl ActionRow {
    pub fn buttons(buttons: Vec<ButtonComponent>) -> Self {
        Self {
            kind: 1,
            components: buttons,
        }
    }
}

/// Button styles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Primary = 1,
    Secondary = 2,
    Danger = 4,
}

/// A button that sends its `custom_id` back when pressed.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ButtonComponent {
    #[serde(rename = "type")]
    kind: u8,
    style: u8,
    label: String,
    custom_id: String,
}

impl ButtonComponent {
    pub fn new(custom_id: String, label: String, style: Style) -> Self {
        Self {
            kind: 2,
            style: style as u8,
            label,
            custom_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_as_discord_reads_them() {
        let body = MessageBody::text("hi")
            .with_nonce("17:0".into())
            .with_rows(&[ActionRow::buttons(vec![ButtonComponent::new(
                "1:ax".into(),
                "Approve".into(),
                Style::Primary,
            )])])
            .with_files(vec![Attachment::new("a.png", "image/png", vec![1u8])]);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "content": "hi", "nonce": "17:0", "enforce_nonce": true,
                "allowed_mentions": {"parse": []},
                "components": [{"type": 1, "components": [
                    {"type": 2, "style": 1, "label": "Approve", "custom_id": "1:ax"}
                ]}],
                "attachments": [{"id": 0, "filename": "a.png"}]
            })
        );
        assert_eq!(
            serde_json::to_value(MessageBody::text("no").ephemeral()).unwrap(),
            json!({"content": "no", "allowed_mentions": {"parse": []}, "flags": 64})
        );
    }
}
