//! Wiring the Slack adapter (`adapters/slack`) from the configuration: its settings, the
//! installations it keeps in the store, the routes and Socket Mode `serve` starts, the
//! manifest and the `doctor` line.

use std::sync::Arc;

use anyhow::Context;
use ecdysis_chat::EventSink;
use ecdysis_slack::{Slack, SlackSettings, SocketMode};

use crate::bus::Bus;
use crate::config::Config;
use crate::platforms::slack_installations::SlackInstallations;
use crate::storage::secret_box::SecretBox;
use crate::storage::store::Store;

fn set(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

/// The adapter's settings from `[slack]` / `SLACK_*`.
pub fn settings(config: &Config) -> SlackSettings {
    let s = &config.slack;
    SlackSettings {
        bot_token: set(&s.bot_token),
        signing_secret: set(&s.signing_secret),
        app_token: set(&s.app_token),
        client_id: set(&s.client_id),
        client_secret: set(&s.client_secret),
        api_url: set(&s.api_url).unwrap_or_else(|| ecdysis_slack::DEFAULT_API_URL.into()),
        allowed_teams: s
            .allowed_teams
            .iter()
            .flatten()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        streaming: match s.streaming.as_deref() {
            Some("edit") => ecdysis_slack::Streaming::Edit,
            Some("off") => ecdysis_slack::Streaming::Off,
            _ => ecdysis_slack::Streaming::Native,
        },
        ..SlackSettings::default()
    }
}

/// Whether Slack events can reach this server: a signing secret (HTTP) or an app token
/// (Socket Mode).
pub fn configured(config: &Config) -> bool {
    let s = settings(config);
    s.signing_secret.is_some() || s.app_token.is_some()
}

/// The adapter, registered with the bus, when Slack is configured.
pub fn open(config: &Config, bus: &Bus, store: Arc<dyn Store>) -> anyhow::Result<Option<Slack>> {
    if !configured(config) {
        return Ok(None);
    }
    let settings = settings(config);
    let installs = settings.client_id.is_some() && settings.client_secret.is_some();
    if installs && settings.allowed_teams.is_empty() {
        tracing::warn!(
            "Slack OAuth install is on and ECDYSIS_SLACK_ALLOWED_TEAMS is empty: any Slack workspace may install the bot at /slack/install and use the model key; list your team ids to allow only them"
        );
    } else if !settings.allowed_teams.is_empty() {
        tracing::info!(teams = ?settings.allowed_teams, "Slack answers only the allowed workspaces");
    }
    let secrets = Arc::new(SecretBox::from_config(config).context("ECDYSIS_SECRET_KEY")?);
    let installations = Arc::new(SlackInstallations::new(store.clone(), secrets));
    let sink: Arc<dyn EventSink> = Arc::new(bus.clone());
    let slack = Slack::new(settings, sink, installations).context("slack")?;
    if let Some(limits) = config.catch_up {
        slack.enable_catch_up(crate::platforms::catch_up::InboxSeen::new(store), limits);
    }
    bus.register_adapter(Arc::new(slack.clone()));
    tracing::info!(
        socket_mode = slack.socket_mode(),
        "Slack is on: /slack/events, /slack/commands, /slack/interactivity, /slack/install"
    );
    Ok(Some(slack))
}

/// Start Socket Mode when `SLACK_APP_TOKEN` is set.
pub fn start(slack: Option<&Slack>) -> Option<SocketMode> {
    slack.and_then(Slack::start_socket_mode)
}

/// `ecdysis slack manifest --url https://HOST`: the app manifest as pretty JSON.
pub fn manifest(config: &Config, url: &str, native_commands: bool) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        anyhow::bail!(
            "`{url}` must look like https://HOST (the address Slack reaches this server at)"
        );
    }
    let socket_mode = set(&config.slack.app_token).is_some();
    let manifest = ecdysis_slack::manifest::manifest(url, socket_mode, native_commands);
    Ok(serde_json::to_string_pretty(&manifest)?)
}

/// The `doctor` check: `auth.test` with `SLACK_BOT_TOKEN`. `None` when no bot token is set.
pub async fn auth_test(config: &Config) -> Option<Result<String, String>> {
    let settings = settings(config);
    let token = settings.bot_token.as_ref()?;
    Some(
        ecdysis_slack::auth_test(&settings.api_url, token)
            .await
            .map(|info| {
                format!(
                    "auth.test ok: team {} ({}), bot {}",
                    info.team,
                    info.team_id,
                    info.user.unwrap_or(info.user_id)
                )
            })
            .map_err(|e| e.to_string()),
    )
}
