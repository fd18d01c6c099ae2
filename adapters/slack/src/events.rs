//! Events API payloads (`event_callback`, from HTTP or Socket Mode) turned into [`Event`]s.
//!
//! Only the fields the adapter needs are read, so payload shapes Slack adds later do not break
//! parsing. Messages that are not user input at all (the bot's own and other bots' messages,
//! edits, deletions, joins) are dropped here; whether a user's message is for the bot is the
//! core's decision, made from [`Addressed`].

use ecdysis_chat::{Addressed, ConversationRef, Event, UserRef};
use serde::Deserialize;

use crate::route::{Route, Via};

/// The outer Events API body.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Envelope {
    UrlVerification {
        challenge: String,
    },
    EventCallback(Box<Callback>),
    #[serde(other)]
    Other,
}

/// An `event_callback`.
#[derive(Debug, Deserialize)]
pub(crate) struct Callback {
    pub team_id: String,
    pub event_id: String,
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
    pub event: Inner,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Authorization {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub is_bot: Option<bool>,
}

/// The inner `event` (a message, an app mention, an uninstall, …).
#[derive(Debug, Deserialize)]
pub(crate) struct Inner {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub subtype: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub bot_id: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub thread_ts: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub channel_type: Option<String>,
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// `tokens_revoked`: the users and bots whose tokens were revoked.
    #[serde(default)]
    pub tokens: Option<RevokedTokens>,
}

/// A file attached to a message.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct FileRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub mimetype: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub url_private_download: Option<String>,
    #[serde(default)]
    pub url_private: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RevokedTokens {
    #[serde(default)]
    pub bot: Vec<String>,
}

/// What a callback means for the adapter.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A user's message: submit it with references to its `files` (fetched after the ack).
    Message {
        event: Box<Event>,
        files: Vec<FileRef>,
    },
    /// The app was uninstalled from the workspace, or its bot token revoked.
    Uninstalled { team: String },
    /// Not user input (or covered by another event); acknowledge and forget.
    Drop(&'static str),
}

/// Message subtypes that are a user writing something. Everything else (edits, deletions,
/// joins, bot messages, …) never starts a run.
const USER_SUBTYPES: &[&str] = &["file_share", "thread_broadcast", "me_message"];

/// Translate one callback; `received_ms` is when the adapter got it.
pub(crate) fn translate(callback: Callback, received_ms: i64) -> Inbound {
    let bot_user = callback
        .authorizations
        .iter()
        .find(|a| a.is_bot != Some(false))
        .and_then(|a| a.user_id.clone());
    let Callback { team_id, event, .. } = callback;
    match event.kind.as_str() {
        "app_uninstalled" => Inbound::Uninstalled { team: team_id },
        "tokens_revoked" => {
            if event.tokens.as_ref().is_some_and(|t| !t.bot.is_empty()) {
                Inbound::Uninstalled { team: team_id }
            } else {
                Inbound::Drop("a user token was revoked; the bot token stays")
            }
        }
        "app_mention" | "message" => message(team_id, event, bot_user.as_deref(), received_ms),
        _ => Inbound::Drop("an event type the adapter does not handle"),
    }
}

/// The event id of a user's message: its channel and `ts`, which the Events API, Socket Mode
/// and a channel's history all agree on (Slack's own `event_id` differs between an
/// `app_mention` and a `message` of the same text, and history has none), so the inbox drops
/// a retried delivery and a caught-up message that did arrive alike.
pub(crate) fn message_key(channel: &str, ts: &str) -> String {
    format!("{channel}:{ts}")
}

/// A user's message (live, or read back from history by catch-up) as an event, or why not.
pub(crate) fn message(
    team: String,
    event: Inner,
    bot_user: Option<&str>,
    received_ms: i64,
) -> Inbound {
    let mention = event.kind == "app_mention";
    if let Some(subtype) = &event.subtype
        && !USER_SUBTYPES.contains(&subtype.as_str())
    {
        return Inbound::Drop("not user input (edit, deletion, join, bot message, …)");
    }
    if event.bot_id.is_some() {
        return Inbound::Drop("a bot's message (ours or another bot's)");
    }
    let (Some(user), Some(channel), Some(ts)) = (event.user, event.channel, event.ts) else {
        return Inbound::Drop("a message without user, channel or ts");
    };
    if bot_user == Some(user.as_str()) {
        return Inbound::Drop("the bot's own message");
    }
    let direct = event.channel_type.as_deref() == Some("im")
        || (event.channel_type.is_none() && channel.starts_with('D'));
    let text = event.text.unwrap_or_default();
    let mentions_bot = bot_user.is_some_and(|bot| text.contains(&format!("<@{bot}>")));
    // A thread reply has a `thread_ts` different from its own `ts`.
    let reply_in_thread = event.thread_ts.as_ref().filter(|t| **t != ts).cloned();
    let (addressed, thread) = if mention {
        if direct {
            // DMs arrive as `message.im` too; that one is answered.
            return Inbound::Drop("a mention in a DM (the DM message itself is answered)");
        }
        (
            Addressed::Mention,
            Some(reply_in_thread.unwrap_or_else(|| ts.clone())),
        )
    } else if direct {
        (Addressed::Direct, reply_in_thread)
    } else if mentions_bot {
        return Inbound::Drop("a channel message mentioning the bot (its app_mention is answered)");
    } else if let Some(root) = reply_in_thread {
        (Addressed::ThreadReply, Some(root))
    } else {
        (Addressed::Ambient, Some(ts.clone()))
    };
    let conversation = ConversationRef::new(crate::PLATFORM, &team, &channel, thread.clone());
    let key = message_key(&channel, &ts);
    let route = Route {
        team,
        channel,
        thread_ts: thread,
        message_ts: Some(ts),
        response_url: None,
        via: Via::Message,
        received_ms,
        user: Some(user.clone()),
    };
    let mut event_out = Event::from_text(
        key,
        conversation,
        UserRef {
            id: user,
            name: None,
        },
        clean_text(&text, bot_user),
    );
    event_out.addressed = addressed;
    event_out.route = route.to_value();
    Inbound::Message {
        event: Box::new(event_out),
        files: event.files,
    }
}

/// Slack's message text as the agent should read it: the bot's own mention removed, links
/// shown as `label (url)`, and `&amp;`, `&lt;`, `&gt;` unescaped.
pub(crate) fn clean_text(text: &str, bot_user: Option<&str>) -> String {
    let mut text = text.to_string();
    if let Some(bot) = bot_user {
        text = text.replace(&format!("<@{bot}>"), "");
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        out.push_str(&link_text(inner));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    unescape(out.trim())
}

/// `<https://x|label>` → `label (https://x)`, `<https://x>` → `https://x`, `<mailto:a@b|a@b>` →
/// `a@b`; user, channel and special mentions stay as Slack wrote them.
fn link_text(inner: &str) -> String {
    if inner.starts_with('@') || inner.starts_with('#') || inner.starts_with('!') {
        return format!("<{inner}>");
    }
    match inner.split_once('|') {
        Some((url, label)) if url.starts_with("mailto:") => label.to_string(),
        Some((url, label)) if label == url => url.to_string(),
        Some((url, label)) => format!("{label} ({url})"),
        None => inner.to_string(),
    }
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn callback(event: serde_json::Value) -> Callback {
        let body = json!({
            "type": "event_callback",
            "team_id": "T1",
            "event_id": "Ev1",
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
            "event": event,
        });
        match serde_json::from_value(body).unwrap() {
            Envelope::EventCallback(cb) => *cb,
            other => panic!("{other:?}"),
        }
    }

    fn event(inbound: Inbound) -> Event {
        match inbound {
            Inbound::Message { event, .. } => *event,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn channel_mention_starts_a_thread() {
        let e = event(translate(
            callback(json!({"type": "app_mention", "user": "U1", "channel": "C1",
                "ts": "100.1", "text": "<@UBOT> hello &amp; bye"})),
            5,
        ));
        assert_eq!(e.addressed, Addressed::Mention);
        assert_eq!(e.conversation.thread.as_deref(), Some("100.1"));
        assert_eq!(e.text, "hello & bye");
        let route = Route::from_value(&e.route).unwrap();
        assert_eq!(route.thread_ts.as_deref(), Some("100.1"));
        assert_eq!(route.message_ts.as_deref(), Some("100.1"));
        assert_eq!(route.received_ms, 5);
    }

    #[test]
    fn mention_inside_a_thread_answers_in_that_thread() {
        let e = event(translate(
            callback(json!({"type": "app_mention", "user": "U1", "channel": "C1",
                "ts": "101.0", "thread_ts": "100.1", "text": "<@UBOT> more"})),
            0,
        ));
        assert_eq!(e.conversation.thread.as_deref(), Some("100.1"));
    }

    #[test]
    fn dm_has_no_thread_unless_in_one() {
        let e = event(translate(
            callback(
                json!({"type": "message", "channel_type": "im", "user": "U1",
                "channel": "D1", "ts": "1.0", "text": "hi"}),
            ),
            0,
        ));
        assert_eq!(e.addressed, Addressed::Direct);
        assert_eq!(e.conversation.thread, None);
        let e = event(translate(
            callback(
                json!({"type": "message", "channel_type": "im", "user": "U1",
                "channel": "D1", "ts": "2.0", "thread_ts": "1.0", "text": "hi"}),
            ),
            0,
        ));
        assert_eq!(e.conversation.thread.as_deref(), Some("1.0"));
    }

    #[test]
    fn channel_messages_are_thread_replies_or_ambient() {
        let e = event(translate(
            callback(
                json!({"type": "message", "channel_type": "channel", "user": "U1",
                "channel": "C1", "ts": "2.0", "thread_ts": "1.0", "text": "and?"}),
            ),
            0,
        ));
        assert_eq!(e.addressed, Addressed::ThreadReply);
        assert_eq!(e.conversation.thread.as_deref(), Some("1.0"));
        let e = event(translate(
            callback(
                json!({"type": "message", "channel_type": "channel", "user": "U1",
                "channel": "C1", "ts": "3.0", "text": "lunch?"}),
            ),
            0,
        ));
        assert_eq!(e.addressed, Addressed::Ambient);
    }

    #[test]
    fn drops_what_is_not_user_input() {
        for ev in [
            json!({"type": "message", "subtype": "bot_message", "bot_id": "B1", "channel": "C1", "ts": "1"}),
            json!({"type": "message", "user": "U2", "bot_id": "B2", "channel": "C1", "ts": "1", "text": "x"}),
            json!({"type": "message", "user": "UBOT", "channel": "D1", "channel_type": "im", "ts": "1", "text": "x"}),
            json!({"type": "message", "subtype": "message_changed", "channel": "C1", "ts": "1"}),
            json!({"type": "message", "subtype": "message_deleted", "channel": "C1", "ts": "1"}),
            json!({"type": "message", "subtype": "channel_join", "user": "U1", "channel": "C1", "ts": "1"}),
            json!({"type": "message", "user": "U1", "channel": "C1", "channel_type": "channel", "ts": "1", "text": "<@UBOT> hi"}),
            json!({"type": "app_mention", "user": "U1", "channel": "D1", "ts": "1", "text": "<@UBOT> hi"}),
            json!({"type": "reaction_added", "user": "U1"}),
        ] {
            assert!(
                matches!(translate(callback(ev.clone()), 0), Inbound::Drop(_)),
                "{ev}"
            );
        }
    }

    #[test]
    fn uninstall_and_revocation() {
        assert!(matches!(
            translate(callback(json!({"type": "app_uninstalled"})), 0),
            Inbound::Uninstalled { team } if team == "T1"
        ));
        assert!(matches!(
            translate(
                callback(json!({"type": "tokens_revoked", "tokens": {"bot": ["UBOT"]}})),
                0
            ),
            Inbound::Uninstalled { .. }
        ));
        assert!(matches!(
            translate(
                callback(json!({"type": "tokens_revoked", "tokens": {"oauth": ["U1"]}})),
                0
            ),
            Inbound::Drop(_)
        ));
    }

    #[test]
    fn links_become_readable() {
        assert_eq!(
            clean_text(
                "see <https://a.b/c|the docs> and <https://x.y> <mailto:a@b.c|a@b.c> <@U9>",
                None
            ),
            "see the docs (https://a.b/c) and https://x.y a@b.c <@U9>"
        );
    }

    #[test]
    fn unknown_envelopes_parse() {
        let e: Envelope = serde_json::from_value(json!({"type": "app_rate_limited"})).unwrap();
        assert!(matches!(e, Envelope::Other));
        let e: Envelope =
            serde_json::from_value(json!({"type": "url_verification", "challenge": "c"})).unwrap();
        assert!(matches!(e, Envelope::UrlVerification { challenge } if challenge == "c"));
    }
}
