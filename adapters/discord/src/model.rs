//! The Discord payloads the adapter reads (API v10): messages, users, attachments, channels
//! and interactions, each with only the fields the adapter uses. Whatever else a payload
//! carries is skipped unread, so a field Discord adds or changes elsewhere cannot make an
//! event unreadable.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A snowflake: Discord sends ids as strings (JSON numbers lose 64-bit ids); numbers are
/// read too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Id(pub u64);

impl Id {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = Id;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a snowflake id (a string of digits)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Id, E> {
                text.parse().map(Id).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Id, E> {
                Ok(Id(n))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// A user (a message's author, a mention, an interaction's user).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct User {
    pub id: Id,
    #[serde(default)]
    pub username: String,
    /// The display name, when the user set one.
    #[serde(default)]
    pub global_name: Option<String>,
    #[serde(default)]
    pub bot: bool,
    /// Discord's own system user.
    #[serde(default)]
    pub system: bool,
}

/// Message types (`type`) that are someone writing: a plain message and a reply.
pub(crate) mod message_type {
    pub const DEFAULT: u8 = 0;
    pub const REPLY: u8 = 19;
}

/// A message (MESSAGE_CREATE, `GET /channels/{id}/messages`, what a post returns).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Message {
    pub id: Id,
    pub channel_id: Id,
    /// Set on the gateway for guild messages; REST answers leave it out.
    #[serde(default)]
    pub guild_id: Option<Id>,
    pub author: User,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub mentions: Vec<User>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub webhook_id: Option<Id>,
    #[serde(rename = "type", default)]
    pub kind: u8,
}

/// A file attached to a message.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Attachment {
    pub id: Id,
    pub filename: String,
    #[serde(default)]
    pub size: u64,
    pub url: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Channel types (`type`) the adapter tells apart.
pub(crate) mod channel_type {
    pub const GUILD_CATEGORY: u8 = 4;
    pub const ANNOUNCEMENT_THREAD: u8 = 10;
    pub const PUBLIC_THREAD: u8 = 11;
    pub const PRIVATE_THREAD: u8 = 12;

    pub fn is_thread(kind: u8) -> bool {
        matches!(kind, ANNOUNCEMENT_THREAD | PUBLIC_THREAD | PRIVATE_THREAD)
    }
}

/// A channel or thread as far as routing needs it (`GET /channels/{id}`, thread events,
/// the lists in GUILD_CREATE, an interaction's channel).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Channel {
    pub id: Id,
    #[serde(rename = "type", default)]
    pub kind: u8,
    #[serde(default)]
    pub parent_id: Option<Id>,
}

/// Interaction types (`type`).
pub(crate) mod interaction_type {
    pub const PING: u8 = 1;
    pub const APPLICATION_COMMAND: u8 = 2;
    pub const MESSAGE_COMPONENT: u8 = 3;
}

/// An interaction: a slash command or a button press (INTERACTION_CREATE, or the body of
/// `POST /discord/interactions`).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Interaction {
    pub id: Id,
    pub application_id: Id,
    #[serde(rename = "type")]
    pub kind: u8,
    pub token: String,
    #[serde(default)]
    pub guild_id: Option<Id>,
    #[serde(default)]
    pub channel_id: Option<Id>,
    /// The channel it was sent from, partly (type and parent included).
    #[serde(default)]
    pub channel: Option<Channel>,
    /// In a guild: who sent it.
    #[serde(default)]
    pub member: Option<Member>,
    /// In a DM: who sent it.
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub data: Option<InteractionData>,
    /// The upload limit where it was sent, in bytes (0: not reported).
    #[serde(default)]
    pub attachment_size_limit: u64,
}

impl Interaction {
    /// Who sent it, in a guild or a DM.
    pub fn sender(&self) -> Option<&User> {
        self.member.as_ref().map(|m| &m.user).or(self.user.as_ref())
    }

    /// The channel it was sent in.
    pub fn channel(&self) -> Option<u64> {
        self.channel_id
            .or(self.channel.as_ref().map(|c| c.id))
            .map(Id::get)
    }
}

/// A guild member, as far as an interaction names it.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Member {
    pub user: User,
}

/// What was invoked: a command's name and options, or a component's `custom_id`.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct InteractionData {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub options: Vec<CommandOption>,
    #[serde(default)]
    pub custom_id: String,
}

/// One option of a slash command invocation.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CommandOption {
    pub name: String,
    /// A string, number or boolean (absent for subcommands, which ecdysis does not define).
    #[serde(default)]
    pub value: Option<Value>,
}

/// `GET /oauth2/applications/@me`, as far as it is read.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Application {
    pub id: Id,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_read_from_strings_and_numbers() {
        let id: Id = serde_json::from_value(json!("1200000000000000001")).unwrap();
        assert_eq!(id.get(), 1_200_000_000_000_000_001);
        let id: Id = serde_json::from_value(json!(42)).unwrap();
        assert_eq!(id, Id(42));
        assert!(serde_json::from_value::<Id>(json!("x1")).is_err());
        assert!(serde_json::from_value::<Id>(json!(null)).is_err());
    }

    #[test]
    fn a_message_needs_only_what_the_bot_reads() {
        // No timestamp, tts, embeds, mention lists or type: fields the bot does not use.
        let m: Message = serde_json::from_value(json!({
            "id": "5", "channel_id": "6", "author": {"id": "7"}, "content": "hi",
            "some_future_field": {"x": [1, 2]}
        }))
        .unwrap();
        assert_eq!((m.id, m.channel_id, m.author.id), (Id(5), Id(6), Id(7)));
        assert_eq!(m.kind, message_type::DEFAULT);
        assert!(m.mentions.is_empty() && m.attachments.is_empty() && !m.author.bot);
        // Without an author or a channel it is not a message the bot can answer.
        assert!(serde_json::from_value::<Message>(json!({"id": "5", "content": "hi"})).is_err());
    }

    #[test]
    fn interactions_name_their_sender_in_guilds_and_dms() {
        let guild: Interaction = serde_json::from_value(json!({
            "id": "1", "application_id": "2", "type": 2, "token": "t", "guild_id": "3",
            "channel": {"id": "4", "type": 11, "parent_id": "5"},
            "member": {"user": {"id": "6", "username": "ann"}, "roles": []},
            "data": {"name": "ask", "options": [{"name": "prompt", "type": 3, "value": "hi"}]}
        }))
        .unwrap();
        assert_eq!(guild.sender().map(|u| u.id), Some(Id(6)));
        assert_eq!(guild.channel(), Some(4));
        let dm: Interaction = serde_json::from_value(json!({
            "id": "1", "application_id": "2", "type": 3, "token": "t", "channel_id": "9",
            "user": {"id": "7", "username": "bo"}, "data": {"custom_id": "x", "component_type": 2}
        }))
        .unwrap();
        assert_eq!(dm.sender().map(|u| u.id), Some(Id(7)));
        assert_eq!(dm.channel(), Some(9));
        assert_eq!(dm.data.unwrap().custom_id, "x");
    }
}
