//! The gateway's wire format (API v10, JSON text frames, no compression): frames, the opcodes
//! the bot speaks, the IDENTIFY and RESUME payloads, what a close code means, and the few
//! dispatch payloads read besides messages and interactions (which are in `model`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{Channel, Id};

/// The API version in the websocket URL.
pub(crate) const VERSION: u8 = 10;

/// Opcodes (Discord's "Gateway Opcodes").
pub(crate) mod op {
    pub const DISPATCH: u8 = 0;
    pub const HEARTBEAT: u8 = 1;
    pub const IDENTIFY: u8 = 2;
    pub const RESUME: u8 = 6;
    pub const RECONNECT: u8 = 7;
    pub const INVALID_SESSION: u8 = 9;
    pub const HELLO: u8 = 10;
    pub const HEARTBEAT_ACK: u8 = 11;
}

/// A frame from the gateway; `d` is read once `op` (and `t`) say what it is.
#[derive(Debug, Deserialize)]
pub(crate) struct Frame<'a> {
    pub op: u8,
    #[serde(borrow, default)]
    pub d: Option<&'a RawValue>,
    #[serde(default)]
    pub s: Option<u64>,
    #[serde(default)]
    pub t: Option<String>,
}

impl Frame<'_> {
    /// `d` as `T` (JSON `null` when absent).
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        // From bytes: the same code the REST client reads its answers with.
        let raw = self.d.map_or("null", RawValue::get);
        serde_json::from_slice(raw.as_bytes())
    }
}

/// HELLO's `d`.
#[derive(Debug, Deserialize)]
pub(crate) struct Hello {
    pub heartbeat_interval: u64,
}

/// READY's `d`: what a new session needs to know.
#[derive(Debug, Deserialize)]
pub(crate) struct Ready {
    pub session_id: String,
    pub resume_gateway_url: String,
    pub user: ReadyUser,
    pub application: ReadyApplication,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReadyUser {
    pub id: Id,
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReadyApplication {
    pub id: Id,
}

/// GUILD_CREATE's `d`: the server's boost tier (its upload limit) and its channels and
/// active threads.
#[derive(Debug, Deserialize)]
pub(crate) struct GuildCreate {
    pub id: Id,
    #[serde(default)]
    pub premium_tier: u8,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub threads: Vec<Channel>,
}

/// THREAD_LIST_SYNC's `d`.
#[derive(Debug, Deserialize)]
pub(crate) struct ThreadListSync {
    #[serde(default)]
    pub threads: Vec<Channel>,
}

/// A frame the bot sends.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing<'a, D: Serialize> {
    pub op: u8,
    pub d: &'a D,
}

/// IDENTIFY's `d`.
#[derive(Debug, Serialize)]
pub(crate) struct Identify<'a> {
    pub token: &'a str,
    pub intents: u64,
    pub properties: Properties,
}

#[derive(Debug, Serialize)]
pub(crate) struct Properties {
    pub os: &'static str,
    pub browser: &'static str,
    pub device: &'static str,
}

impl Properties {
    pub fn ecdysis() -> Self {
        Self {
            os: std::env::consts::OS,
            browser: "ecdysis",
            device: "ecdysis",
        }
    }
}

/// RESUME's `d`.
#[derive(Debug, Serialize)]
pub(crate) struct Resume<'a> {
    pub token: &'a str,
    pub session_id: &'a str,
    pub seq: u64,
}

/// A frame as text.
pub(crate) fn encode<D: Serialize>(op: u8, d: &D) -> String {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_string(&Outgoing { op, d }).unwrap_or_default()
}

/// What to do after the gateway closed the socket with `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterClose {
    /// Connect again and resume the session.
    Resume,
    /// The session is gone: connect again and identify.
    Identify,
    /// Connecting again would fail the same way (bad token, intents not allowed, …).
    Refused(&'static str),
}

/// Discord's gateway close codes.
pub(crate) fn after_close(code: u16) -> AfterClose {
    match code {
        4004 => {
            AfterClose::Refused("authentication failed: DISCORD_TOKEN is not a valid bot token")
        }
        4010 => AfterClose::Refused("invalid shard"),
        4011 => AfterClose::Refused(
            "sharding required: the bot is in too many servers for one gateway connection",
        ),
        4012 => AfterClose::Refused("invalid API version"),
        4013 => AfterClose::Refused("invalid intents"),
        4014 => AfterClose::Refused(
            "disallowed intents: turn on the Message Content intent for the bot in the Discord developer portal",
        ),
        // Invalid sequence, session timed out.
        4007 | 4009 => AfterClose::Identify,
        _ => AfterClose::Resume,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_lazily_and_written_as_discord_expects() {
        let text = r#"{"op":0,"s":42,"t":"THREAD_UPDATE","d":{"id":"10","type":11,"parent_id":"9","name":"x"}}"#;
        let frame: Frame = serde_json::from_str(text).unwrap();
        assert_eq!(
            (frame.op, frame.s, frame.t.as_deref()),
            (op::DISPATCH, Some(42), Some("THREAD_UPDATE"))
        );
        let thread: Channel = frame.data().unwrap();
        assert_eq!(thread.id.get(), 10);
        assert_eq!(thread.kind, crate::model::channel_type::PUBLIC_THREAD);
        assert_eq!(thread.parent_id.map(Id::get), Some(9));

        let ack: Frame = serde_json::from_str(r#"{"op":11}"#).unwrap();
        assert_eq!(ack.op, op::HEARTBEAT_ACK);
        assert!(ack.data::<Option<u64>>().unwrap().is_none());

        let heartbeat = encode(op::HEARTBEAT, &Some(7u64));
        assert_eq!(heartbeat, r#"{"op":1,"d":7}"#);
        let resume = encode(
            op::RESUME,
            &Resume {
                token: "Bot t",
                session_id: "s",
                seq: 3,
            },
        );
        let resume: serde_json::Value = serde_json::from_str(&resume).unwrap();
        assert_eq!(
            resume,
            serde_json::json!({"op": 6, "d": {"token": "Bot t", "session_id": "s", "seq": 3}})
        );
    }

    #[test]
    fn a_guild_create_is_read_without_the_rest_of_the_guild() {
        let text = r#"{"id":"1","name":"g","premium_tier":2,"roles":[{"id":"5"}],
            "channels":[{"id":"2","type":0},{"id":"3","type":4}],
            "threads":[{"id":"4","type":11,"parent_id":"2"}],"members":[]}"#;
        let guild: GuildCreate = serde_json::from_str(text).unwrap();
        assert_eq!((guild.id.get(), guild.premium_tier), (1, 2));
        assert_eq!(guild.channels.len(), 2);
        assert_eq!(guild.threads[0].parent_id.map(Id::get), Some(2));
    }

    #[test]
    fn close_codes_say_whether_to_resume_identify_or_stop() {
        assert_eq!(after_close(1001), AfterClose::Resume);
        assert_eq!(after_close(4000), AfterClose::Resume);
        assert_eq!(after_close(4009), AfterClose::Identify);
        assert!(
            matches!(after_close(4004), AfterClose::Refused(why) if why.contains("DISCORD_TOKEN"))
        );
        assert!(
            matches!(after_close(4014), AfterClose::Refused(why) if why.contains("Message Content"))
        );
    }
}
