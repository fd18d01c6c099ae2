//! Discord payloads → [`Event`]s: which conversation a message belongs to, how it was
//! addressed, and the route its replies take.
//!
//! - DM: workspace `dm`, the DM channel, no thread; answered inline.
//! - A guild channel message: workspace = guild, channel = the channel. Mentioning the bot
//!   starts a thread on the message; the conversation's thread is the message id, which is the
//!   id Discord gives that thread, so later messages in the thread land in the same conversation.
//! - A thread message: channel = the parent (memory is per channel), thread = the thread.

use ecdysis_chat::{Addressed, ConversationRef, Event, EventKind, UserRef};

use crate::PLATFORM;
use crate::channels::Place;
use crate::commands::command_from_options;
use crate::model::{Interaction, InteractionData, Message, User, interaction_type, message_type};
use crate::route::{InteractionRoute, Route};

/// Workspace name of direct messages.
pub(crate) const DM_WORKSPACE: &str = "dm";
/// Longest thread name Discord accepts is 100; keep names short and readable.
const THREAD_NAME_CHARS: usize = 80;

/// Messages the adapter drops before the core sees them: the bot's own, other bots', and
/// system messages (thread created, pins, joins…).
pub(crate) fn is_user_input(message: &Message, bot_user_id: Option<u64>) -> bool {
    let own = bot_user_id.is_some_and(|id| message.author.id.get() == id);
    !own && !message.author.bot
        && !message.author.system
        && message.webhook_id.is_none()
        && matches!(message.kind, message_type::DEFAULT | message_type::REPLY)
}

/// Whether the message mentions the bot (by user mention, `<@id>` or `<@!id>`).
pub(crate) fn mentions_bot(message: &Message, bot_user_id: Option<u64>) -> bool {
    let Some(bot) = bot_user_id else {
        return false;
    };
    message.mentions.iter().any(|u| u.id.get() == bot)
        || message.content.contains(&format!("<@{bot}>"))
        || message.content.contains(&format!("<@!{bot}>"))
}

/// The text without the bot's mention.
fn strip_mention(content: &str, bot_user_id: Option<u64>) -> String {
    match bot_user_id {
        Some(bot) => content
            .replace(&format!("<@!{bot}>"), "")
            .replace(&format!("<@{bot}>"), ""),
        None => content.to_string(),
    }
    .trim()
    .to_string()
}

fn user_ref(user: &User) -> UserRef {
    UserRef {
        id: user.id.get().to_string(),
        name: Some(
            user.global_name
                .clone()
                .unwrap_or_else(|| user.username.clone()),
        ),
    }
}

fn thread_name(text: &str) -> String {
    let first_line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let name: String = first_line.trim().chars().take(THREAD_NAME_CHARS).collect();
    if name.is_empty() {
        "ecdysis".into()
    } else {
        name
    }
}

/// A user message as an event. `place` is `None` in a DM; `max_file_bytes` is the guild's
/// upload limit when Discord reported it. Attachments are added by the caller.
pub(crate) fn message_event(
    message: &Message,
    bot_user_id: Option<u64>,
    place: Option<Place>,
    max_file_bytes: Option<u64>,
) -> Event {
    let mentioned = mentions_bot(message, bot_user_id);
    let text = strip_mention(&message.content, bot_user_id);
    let channel = message.channel_id.get().to_string();
    let message_id = message.id.get().to_string();
    let (conversation, addressed, route) = match (message.guild_id, place) {
        (None, _) | (_, None) => (
            ConversationRef::new(PLATFORM, DM_WORKSPACE, &channel, None),
            Addressed::Direct,
            Route {
                channel_id: channel.clone(),
                ..Route::default()
            },
        ),
        (Some(guild), Some(Place::Thread { parent })) => (
            ConversationRef::new(
                PLATFORM,
                guild.get().to_string(),
                parent.to_string(),
                Some(channel.clone()),
            ),
            if mentioned {
                Addressed::Mention
            } else {
                Addressed::ThreadReply
            },
            Route {
                channel_id: channel.clone(),
                ..Route::default()
            },
        ),
        (Some(guild), Some(Place::Channel)) if mentioned => (
            ConversationRef::new(
                PLATFORM,
                guild.get().to_string(),
                &channel,
                Some(message_id.clone()),
            ),
            Addressed::Mention,
            Route {
                channel_id: channel.clone(),
                thread_on: Some(message_id.clone()),
                thread_name: Some(thread_name(&text)),
                ..Route::default()
            },
        ),
        (Some(guild), Some(Place::Channel)) => (
            ConversationRef::new(PLATFORM, guild.get().to_string(), &channel, None),
            Addressed::Ambient,
            Route {
                channel_id: channel.clone(),
                ..Route::default()
            },
        ),
    };
    let mut event = Event::from_text(message_id, conversation, user_ref(&message.author), text);
    event.addressed = addressed;
    event.route = Route {
        max_file_bytes,
        ..route
    }
    .to_value();
    event
}

/// An interaction as an event: slash commands and button presses. `place` is the channel's
/// place in a guild (`None` in a DM). Pings, autocomplete and modals are not events, nor is an
/// interaction that does not say who sent it or where.
pub(crate) fn interaction_event(interaction: &Interaction, place: Option<Place>) -> Option<Event> {
    let no_data = InteractionData::default();
    let data = interaction.data.as_ref().unwrap_or(&no_data);
    let (kind, text) = match interaction.kind {
        interaction_type::APPLICATION_COMMAND => {
            let parsed = command_from_options(&data.name, &data.options);
            let text = parsed.args.clone();
            (EventKind::Command(parsed), text)
        }
        interaction_type::MESSAGE_COMPONENT => {
            let (action_id, value) = crate::deliver::parse_custom_id(&data.custom_id);
            let text = value.clone();
            (EventKind::Action { action_id, value }, text)
        }
        _ => return None,
    };
    let common = Common {
        id: interaction.id.get().to_string(),
        application_id: interaction.application_id.get().to_string(),
        token: &interaction.token,
        guild: interaction.guild_id.map(|g| g.get()),
        channel: interaction.channel()?,
        user: interaction.sender()?,
        attachment_size_limit: interaction.attachment_size_limit,
    };
    Some(common_event(common, place, kind, text))
}

struct Common<'a> {
    id: String,
    application_id: String,
    token: &'a str,
    guild: Option<u64>,
    channel: u64,
    user: &'a User,
    attachment_size_limit: u64,
}

fn common_event(common: Common<'_>, place: Option<Place>, kind: EventKind, text: String) -> Event {
    let channel = common.channel.to_string();
    let conversation = match (common.guild, place) {
        (Some(guild), Some(Place::Thread { parent })) => ConversationRef::new(
            PLATFORM,
            guild.to_string(),
            parent.to_string(),
            Some(channel.clone()),
        ),
        (Some(guild), _) => ConversationRef::new(PLATFORM, guild.to_string(), &channel, None),
        (None, _) => ConversationRef::new(PLATFORM, DM_WORKSPACE, &channel, None),
    };
    let route = Route {
        channel_id: channel,
        interaction: Some(InteractionRoute {
            id: common.id.clone(),
            application_id: common.application_id,
            token: common.token.to_string(),
        }),
        max_file_bytes: (common.attachment_size_limit > 0).then_some(common.attachment_size_limit),
        ..Route::default()
    };
    Event {
        platform_event_id: common.id,
        conversation,
        user: user_ref(common.user),
        kind,
        addressed: Addressed::Direct,
        text,
        attachments: Vec::new(),
        remote_files: Vec::new(),
        route: route.to_value(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecdysis_chat::{Command, CommandName};
    use serde_json::json;

    const BOT: u64 = 900;

    fn message(content: &str, guild: Option<&str>, author_bot: bool) -> Message {
        let mut value = json!({
            "id": "500", "channel_id": "100", "content": content,
            "author": {"id": if author_bot { "901" } else { "42" }, "username": "ann", "bot": author_bot},
            "timestamp": "2026-01-01T00:00:00.000Z", "edited_timestamp": null, "tts": false,
            "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
            "embeds": [], "pinned": false, "type": 0
        });
        if let Some(guild) = guild {
            value["guild_id"] = json!(guild);
        }
        if content.contains("<@900>") {
            value["mentions"] = json!([{"id": "900", "username": "ecdysis", "bot": true}]);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_mention_in_a_channel_starts_a_thread_on_the_message() {
        let m = message("<@900> /remember the sky is blue", Some("7"), false);
        assert!(is_user_input(&m, Some(BOT)));
        let e = message_event(&m, Some(BOT), Some(Place::Channel), None);
        assert_eq!(e.addressed, Addressed::Mention);
        assert_eq!(
            e.conversation,
            ConversationRef::new("discord", "7", "100", Some("500".into()))
        );
        assert_eq!(
            e.kind,
            EventKind::Command(Command {
                name: CommandName::Remember,
                args: "the sky is blue".into()
            })
        );
        let route = Route::from_value(&e.route).unwrap();
        assert_eq!(route.thread_on.as_deref(), Some("500"));
        assert_eq!(
            route.thread_name.as_deref(),
            Some("/remember the sky is blue")
        );
    }

    #[test]
    fn thread_messages_belong_to_the_parent_channel() {
        let m = message("and then?", Some("7"), false);
        let e = message_event(&m, Some(BOT), Some(Place::Thread { parent: 99 }), None);
        assert_eq!(e.addressed, Addressed::ThreadReply);
        assert_eq!(
            e.conversation,
            ConversationRef::new("discord", "7", "99", Some("100".into()))
        );
        assert_eq!(Route::from_value(&e.route).unwrap().target_channel(), "100");
    }

    #[test]
    fn dms_plain_messages_and_bots() {
        let e = message_event(&message("hi", None, false), Some(BOT), None, None);
        assert_eq!(e.addressed, Addressed::Direct);
        assert_eq!(e.conversation.workspace, "dm");
        assert_eq!(e.conversation.thread, None);
        let e = message_event(
            &message("hi all", Some("7"), false),
            Some(BOT),
            Some(Place::Channel),
            Some(50),
        );
        assert_eq!(e.addressed, Addressed::Ambient);
        assert_eq!(
            Route::from_value(&e.route).unwrap().max_file_bytes,
            Some(50)
        );
        assert!(!is_user_input(&message("beep", Some("7"), true), Some(BOT)));
        let mut own = message("me", Some("7"), false);
        own.author.id = crate::model::Id(BOT);
        assert!(!is_user_input(&own, Some(BOT)));
    }

    #[test]
    fn slash_commands_and_buttons() {
        let interaction: Interaction = serde_json::from_value(json!({
            "id": "800", "application_id": "1", "type": 2, "token": "tok", "version": 1,
            "channel_id": "100", "guild_id": "7", "locale": "en-US", "entitlements": [],
            "attachment_size_limit": 26214400,
            "member": {"user": {"id": "42", "username": "ann"}, "roles": [], "joined_at": "2026-01-01T00:00:00.000Z", "deaf": false, "mute": false, "flags": 0},
            "data": {"id": "5", "name": "remember", "type": 1,
                     "options": [{"name": "text", "type": 3, "value": "blue"}]}
        }))
        .unwrap();
        let e = interaction_event(&interaction, Some(Place::Channel)).unwrap();
        assert_eq!(e.platform_event_id, "800");
        assert_eq!(e.user.id, "42");
        assert_eq!(e.text, "blue");
        assert_eq!(
            e.conversation,
            ConversationRef::new("discord", "7", "100", None)
        );
        let route = Route::from_value(&e.route).unwrap();
        assert_eq!(route.interaction.unwrap().token, "tok");
        assert_eq!(route.max_file_bytes, Some(26_214_400));
    }
}
