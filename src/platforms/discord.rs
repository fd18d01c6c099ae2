//! Wiring the Discord adapter (`adapters/discord`) from the configuration: its settings, the
//! adapter the bus delivers through, the gateway `serve` starts, and slash command
//! registration (`ecdysis discord register`, or on start with
//! `ECDYSIS_DISCORD_REGISTER_ON_START`).

use std::sync::Arc;

use anyhow::Context;
use ecdysis_chat::EventSink;
use ecdysis_discord::{Discord, GatewayHandle, Settings};
use tracing::{info, warn};

use crate::bus::Bus;
use crate::config::Config;
use crate::storage::store::Store;

/// The adapter's settings from `[discord]` / `DISCORD_*`.
pub fn settings(config: &Config) -> Settings {
    let d = &config.discord;
    let mut settings = Settings::new(
        d.api_url
            .clone()
            .unwrap_or_else(|| "https://discord.com".into()),
    );
    settings.token = d.token.clone().filter(|t| !t.trim().is_empty());
    settings.public_key = d.public_key.clone().filter(|k| !k.trim().is_empty());
    settings.application_id = d
        .application_id
        .as_deref()
        .and_then(|id| id.trim().parse().ok());
    settings
}

/// The adapter, registered with the bus, when a token or a public key is configured.
pub fn open(config: &Config, bus: &Bus, store: Arc<dyn Store>) -> anyhow::Result<Option<Discord>> {
    let settings = settings(config);
    if settings.token.is_none() && settings.public_key.is_none() {
        return Ok(None);
    }
    let sink: Arc<dyn EventSink> = Arc::new(bus.clone());
    let discord = Discord::new(settings, sink).context("discord")?;
    if let Some(limits) = config.catch_up {
        discord.enable_catch_up(crate::platforms::catch_up::InboxSeen::new(store), limits);
    }
    bus.register_adapter(Arc::new(discord.adapter()));
    Ok(Some(discord))
}

/// Register the slash commands when configured to, then connect the gateway (when a token is
/// set). A failed registration is logged; the bot still runs.
pub async fn start(
    config: &Config,
    discord: Option<&Discord>,
) -> anyhow::Result<Option<GatewayHandle>> {
    let Some(discord) = discord else {
        return Ok(None);
    };
    if config.discord.register_on_start == Some(true) {
        let guild = register_guild(config);
        match ecdysis_discord::register_commands(&settings(config), guild).await {
            Ok(count) => info!(count, guild, "Discord slash commands registered"),
            Err(e) => warn!(error = %e, "cannot register the Discord slash commands"),
        }
    }
    Ok(discord.start_gateway().await?)
}

fn register_guild(config: &Config) -> Option<u64> {
    config
        .discord
        .register_guild
        .as_deref()
        .and_then(|g| g.trim().parse().ok())
}

/// `ecdysis discord register [--guild ID]`: register every slash command. Returns a line to
/// print.
pub async fn register(config: &Config, guild: Option<u64>) -> anyhow::Result<String> {
    let guild = guild.or_else(|| register_guild(config));
    let count = ecdysis_discord::register_commands(&settings(config), guild).await?;
    Ok(match guild {
        Some(guild) => format!("registered {count} slash commands in guild {guild}"),
        None => format!(
            "registered {count} global slash commands (they can take up to an hour to show everywhere)"
        ),
    })
}
