//! The gateway connection (serenity's client): intents for guild messages, DMs and message
//! content; resume and reconnect are serenity's. The gateway URL is whatever
//! `GET /api/v10/gateway/bot` at `api_url` returns ([`crate::gateway_url`]); until it answers,
//! the gateway stays down rather than connect anywhere else.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serenity::all::{
    ChannelType, ClientBuilder, ConnectionStage, Context, Event, EventHandler, GatewayIntents,
    RawEventHandler, ShardManager, ShardStageUpdateEvent,
};
use serenity::gateway::CollectorCallback;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::DiscordError;
use crate::adapter::Shared;
use crate::intake::{Inbound, Intake, process};

/// The running gateway connection.
pub struct GatewayHandle {
    manager: Arc<ShardManager>,
    task: JoinHandle<()>,
    /// Ends the wait for a gateway URL.
    stop: watch::Sender<bool>,
}

impl GatewayHandle {
    /// Close the connection and wait (briefly) for the client to stop.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        self.manager.shutdown_all().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// What the bot subscribes to: guild messages (and threads), DMs, and the content of messages.
pub(crate) fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
}

pub(crate) async fn start(shared: Arc<Shared>) -> Result<GatewayHandle, DiscordError> {
    let intake = Intake::start(shared.clone());
    let handler = Handler {
        shared: shared.clone(),
        intake,
    };
    let http = crate::rest::builder(&shared.settings).build();
    // Building the client asks for the gateway URL too, and on failure serenity puts Discord's
    // own gateway in `ws_url`; that value is replaced below before anything connects.
    let mut client = ClientBuilder::new_with_http(http, intents())
        .raw_event_handler(handler.clone())
        .event_handler(handler)
        .await?;
    let manager = client.shard_manager.clone();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api_url = shared.settings.api_url.clone();
        let Some(url) =
            crate::gateway_url::fetch(&shared.http, &api_url, &shared.health, &mut stopped).await
        else {
            return;
        };
        *client.ws_url.lock().await = url.clone();
        shared.health.set_gateway_url(&url);
        shared.health.set_stage("connecting");
        info!(url = %url, "Discord gateway connecting");
        if let Err(e) = client.start().await {
            error!(error = %e, "the Discord gateway stopped");
            shared.health.set_stage(&format!("failed: {e}"));
        }
    });
    info!("Discord gateway starting");
    Ok(GatewayHandle {
        manager,
        task,
        stop,
    })
}

#[derive(Clone)]
struct Handler {
    shared: Arc<Shared>,
    intake: Arc<Intake>,
}

impl Handler {
    /// Read messages and interactions in order, straight from the shard.
    fn install_collector(&self, ctx: &Context) {
        let intake = self.intake.clone();
        let shared = self.shared.clone();
        ctx.shard
            .add_collector(CollectorCallback(Box::new(move |event| {
                shared.health.event_seen();
                match event {
                    Event::MessageCreate(e) => {
                        intake.push(Inbound::Message(Box::new(e.message.clone())));
                    }
                    Event::InteractionCreate(e) => {
                        intake.push(Inbound::Interaction(Box::new(e.interaction.clone())));
                    }
                    _ => {}
                }
                true
            })));
    }

    fn note_threads<'a>(&self, threads: impl IntoIterator<Item = &'a serenity::all::GuildChannel>) {
        for thread in threads {
            self.shared.channels.note_kind(
                thread.id.get(),
                thread.kind,
                thread.parent_id.map(|p| p.get()),
            );
        }
    }
}

#[async_trait]
impl RawEventHandler for Handler {
    async fn raw_event(&self, ctx: Context, event: Event) {
        self.shared.health.event_seen();
        match event {
            Event::Ready(ready) => {
                let user = ready.ready.user.id.get();
                info!(bot = user, name = %ready.ready.user.name, "Discord gateway ready");
                if self.shared.http.application_id().is_none() {
                    self.shared
                        .http
                        .set_application_id(ready.ready.application.id);
                }
                self.shared.health.ready(user);
                // Registered on every READY: a new session may run on a new shard runner.
                self.install_collector(&ctx);
                // A new session (not a resume): what was said while none was open.
                crate::catch_up::spawn(&self.shared);
            }
            Event::Resumed(_) => {
                info!("Discord gateway session resumed");
                self.shared.health.resumed();
            }
            // Handled here only when the ordered path did not take them.
            Event::MessageCreate(e) if !self.intake.was_taken(e.message.id.get()) => {
                process(&self.shared, Inbound::Message(Box::new(e.message))).await;
            }
            Event::InteractionCreate(e) if !self.intake.was_taken(e.interaction.id().get()) => {
                process(&self.shared, Inbound::Interaction(Box::new(e.interaction))).await;
            }
            Event::ThreadCreate(e) => self.note_threads([&e.thread]),
            Event::ThreadUpdate(e) => self.note_threads([&e.thread]),
            Event::ThreadListSync(e) => self.note_threads(&e.threads),
            Event::GuildCreate(e) => {
                let tier = u8::from(e.guild.premium_tier);
                self.shared
                    .channels
                    .note_upload_limit(e.guild.id.get(), crate::channels::upload_limit(tier));
                self.note_threads(&e.guild.threads);
                for channel in e.guild.channels.values() {
                    if channel.kind != ChannelType::Category {
                        self.shared
                            .channels
                            .note_kind(channel.id.get(), channel.kind, None);
                    }
                }
            }
            _ => {}
        }
    }
}

#[async_trait]
impl EventHandler for Handler {
    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        let stage = match event.new {
            ConnectionStage::Connected => "connected",
            ConnectionStage::Connecting => "connecting",
            ConnectionStage::Disconnected => "disconnected",
            ConnectionStage::Handshake => "handshake",
            ConnectionStage::Identifying => "identifying",
            ConnectionStage::Resuming => "resuming",
            _ => "unknown",
        };
        self.shared.health.set_stage(stage);
    }
}
