//! The Slack app manifest (`ecdysis slack manifest --url https://HOST`): scopes, events, slash
//! commands, interactivity and the OAuth redirect, pointing at one ecdysis server.

use serde_json::{Value, json};

/// The bot token scopes the app asks for.
pub const BOT_SCOPES: &[&str] = &[
    "app_mentions:read",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "chat:write",
    "reactions:write",
    "files:read",
    "files:write",
    "commands",
    // `users.info`: a user's time zone, for the clock times of `remind`.
    "users:read",
];

/// The bot events the app subscribes to.
pub const BOT_EVENTS: &[&str] = &[
    "app_mention",
    "message.channels",
    "message.groups",
    "message.im",
    "message.mpim",
    "app_uninstalled",
    "tokens_revoked",
];

/// The native commands offered next to `/ecdysis` with `--native-commands` (Slack's own
/// `/status` and `/remind` and the generic `/help` are left out so they do not clash:
/// reminders are `/ecdysis remind …`).
pub const NATIVE_COMMANDS: &[(&str, &str, &str)] = &[
    ("/ask", "Ask the agent", "<question>"),
    (
        "/run",
        "Run a command in the channel's sandbox",
        "<command>",
    ),
    ("/screenshot", "Screenshot a web page", "<url>"),
    (
        "/record",
        "Record a short video of a web page",
        "<url> [seconds]",
    ),
    ("/remember", "Save a note for this channel", "<text>"),
    ("/recall", "Search this channel's notes", "<words>"),
    ("/forget", "Delete a note", "<id>"),
    ("/memory", "List this channel's notes", ""),
    ("/schedules", "List this channel's scheduled jobs", ""),
    ("/unschedule", "Cancel a scheduled job", "<id>"),
];

/// The manifest for a server reachable at `base_url` (`https://HOST`, no trailing slash
/// needed). `socket_mode` switches event delivery to Socket Mode (no public URL needed for
/// events); `native_commands` adds `/ask`, `/remember`, … next to `/ecdysis`.
pub fn manifest(base_url: &str, socket_mode: bool, native_commands: bool) -> Value {
    let base = base_url.trim_end_matches('/');
    let command = |name: &str, description: &str, hint: &str| {
        let mut c = json!({
            "command": name,
            "description": description,
            "should_escape": false,
        });
        if !socket_mode {
            c["url"] = json!(format!("{base}/slack/commands"));
        }
        if !hint.is_empty() {
            c["usage_hint"] = json!(hint);
        }
        c
    };
    let mut commands = vec![command(
        "/ecdysis",
        "Talk to ecdysis",
        "ask | run | screenshot | record | remember | recall | forget | memory | status | help",
    )];
    if native_commands {
        commands.extend(
            NATIVE_COMMANDS
                .iter()
                .map(|(name, description, hint)| command(name, description, hint)),
        );
    }
    let mut events = json!({ "bot_events": BOT_EVENTS });
    let mut interactivity = json!({ "is_enabled": true });
    if !socket_mode {
        events["request_url"] = json!(format!("{base}/slack/events"));
        interactivity["request_url"] = json!(format!("{base}/slack/interactivity"));
    }
    json!({
        "_metadata": { "major_version": 1, "minor_version": 1 },
        "display_information": {
            "name": "ecdysis",
            "description": "A self-hosted AI agent: memory per channel, sandboxed commands, browser screenshots.",
            "background_color": "#1d2b36",
        },
        "features": {
            "app_home": {
                "home_tab_enabled": false,
                "messages_tab_enabled": true,
                "messages_tab_read_only_enabled": false,
            },
            "bot_user": { "display_name": "ecdysis", "always_online": true },
            "slash_commands": commands,
        },
        "oauth_config": {
            "redirect_urls": [format!("{base}/slack/oauth/callback")],
            "scopes": { "bot": BOT_SCOPES },
        },
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": false,
            "socket_mode_enabled": socket_mode,
            "token_rotation_enabled": false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_scopes_and_commands() {
        let m = manifest("https://bot.example.com/", false, false);
        assert_eq!(
            m["settings"]["event_subscriptions"]["request_url"],
            "https://bot.example.com/slack/events"
        );
        assert_eq!(
            m["settings"]["interactivity"]["request_url"],
            "https://bot.example.com/slack/interactivity"
        );
        assert_eq!(
            m["oauth_config"]["redirect_urls"][0],
            "https://bot.example.com/slack/oauth/callback"
        );
        assert_eq!(m["features"]["slash_commands"][0]["command"], "/ecdysis");
        assert_eq!(
            m["features"]["slash_commands"][0]["url"],
            "https://bot.example.com/slack/commands"
        );
        assert!(
            m["oauth_config"]["scopes"]["bot"]
                .as_array()
                .unwrap()
                .contains(&json!("chat:write"))
        );
        let native = manifest("https://h", true, true);
        assert_eq!(
            native["features"]["slash_commands"]
                .as_array()
                .unwrap()
                .len(),
            11
        );
        assert!(native["settings"]["event_subscriptions"]["request_url"].is_null());
        assert_eq!(native["settings"]["socket_mode_enabled"], true);
    }
}
