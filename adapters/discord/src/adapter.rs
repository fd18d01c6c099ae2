//! The adapter as the core sees it: [`Discord`] bundles the gateway, the HTTP interactions
//! route and [`DiscordAdapter`], the outbound half the bus delivers replies through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, EventSink, FetchError, Limits,
    LiveHandle, LiveMessage, LiveSettings, LiveView, RemoteFile, Reply,
};

use crate::acks::Acks;
use crate::attachments::Downloader;
use crate::channels::Channels;
use crate::deliver::{Outbox, Typing};
use crate::gateway::GatewayHandle;
use crate::health::Health;
use crate::rest::Rest;
use crate::route::Route;
use crate::{DEFAULT_MAX_FILE_BYTES, DiscordError, MAX_MESSAGE_CHARS, PLATFORM, Settings};

/// State shared by the gateway, the HTTP endpoint and delivery.
pub(crate) struct Shared {
    pub settings: Settings,
    pub rest: Arc<Rest>,
    pub sink: Arc<dyn EventSink>,
    pub channels: Channels,
    pub acks: Acks,
    pub health: Health,
    pub downloader: Downloader,
    pub typing: Typing,
    pub outbox: Outbox,
    /// Parsed `DISCORD_PUBLIC_KEY`, when the HTTP interactions endpoint is on.
    pub public_key: Option<ed25519_dalek::VerifyingKey>,
    /// Catch-up after downtime, once the core turned it on.
    pub catch_up: std::sync::OnceLock<ecdysis_chat::CatchUp>,
}

/// The Discord adapter: start its gateway, mount its HTTP route, register its
/// [`DiscordAdapter`] with the bus. Cheap to clone.
#[derive(Clone)]
pub struct Discord {
    pub(crate) shared: Arc<Shared>,
}

impl Discord {
    /// Check the settings and build the adapter; nothing connects yet.
    pub fn new(settings: Settings, sink: Arc<dyn EventSink>) -> Result<Self, DiscordError> {
        if settings.token.is_none() && settings.public_key.is_none() {
            return Err(DiscordError::Config(
                "set DISCORD_TOKEN (gateway) or DISCORD_PUBLIC_KEY (HTTP interactions)".into(),
            ));
        }
        let public_key = settings
            .public_key
            .as_deref()
            .map(crate::http_interactions::parse_public_key)
            .transpose()?;
        let rest = Rest::new(&settings);
        let health = Health::new(settings.token.is_some(), public_key.is_some());
        Ok(Self {
            shared: Arc::new(Shared {
                channels: Channels::new(rest.clone()),
                downloader: Downloader::new(settings.max_inbound_file_bytes, &settings.api_url),
                typing: Typing::default(),
                outbox: Outbox::default(),
                acks: Acks::default(),
                health,
                rest,
                sink,
                public_key,
                settings,
                catch_up: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The outbound half, for `Bus::register_adapter`.
    pub fn adapter(&self) -> DiscordAdapter {
        DiscordAdapter {
            shared: self.shared.clone(),
        }
    }

    /// `POST /discord/interactions`, when `DISCORD_PUBLIC_KEY` is set.
    pub fn router(&self) -> Option<axum::Router> {
        self.shared
            .public_key
            .is_some()
            .then(|| crate::http_interactions::router(self.shared.clone()))
    }

    /// Connect to the gateway, when `DISCORD_TOKEN` is set. The connection runs (and
    /// reconnects) in the background until [`GatewayHandle::shutdown`].
    pub async fn start_gateway(&self) -> Result<Option<GatewayHandle>, DiscordError> {
        if self.shared.settings.token.is_none() {
            return Ok(None);
        }
        crate::gateway::start(self.shared.clone()).await.map(Some)
    }
}

/// Replies into Discord: channel messages (in threads), DMs, and interaction responses.
#[derive(Clone)]
pub struct DiscordAdapter {
    shared: Arc<Shared>,
}

/// How long a reply waits for its interaction's deferral to be acknowledged.
const ACK_WAIT: Duration = Duration::from_secs(3);

#[async_trait]
impl ChatAdapter for DiscordAdapter {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn limits(&self) -> Limits {
        Limits {
            max_text_chars: MAX_MESSAGE_CHARS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }

    fn health(&self) -> Option<serde_json::Value> {
        Some(self.shared.health.to_json())
    }

    async fn working(&self, _conversation: &ConversationRef, route: &serde_json::Value) {
        if let Some(route) = Route::from_value(route)
            && route.interaction.is_none()
        {
            // An interaction already shows "thinking…"; a message gets its thread started
            // and a typing indicator in it, without holding up the agent.
            crate::deliver::start_working(self.shared.clone(), route);
        }
    }

    async fn fetch_file(
        &self,
        _conversation: &ConversationRef,
        file: &RemoteFile,
    ) -> Result<Bytes, FetchError> {
        self.shared.downloader.fetch(file).await
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        let route = Route::from_value(&reply.route)
            .ok_or_else(|| DeliveryError::Permanent("the reply has no Discord route".into()))?;
        if let Some(interaction) = &route.interaction {
            self.shared.acks.wait(&interaction.id, ACK_WAIT).await;
        }
        crate::deliver::deliver(&self.shared, &route, reply).await
    }

    fn live(&self, route: &serde_json::Value) -> Option<LiveSettings> {
        Route::from_value(route).map(|_| crate::live::settings())
    }

    async fn start_live(
        &self,
        message: &LiveMessage,
        view: &LiveView,
    ) -> Result<LiveHandle, DeliveryError> {
        let route = Route::from_value(&message.route)
            .ok_or_else(|| DeliveryError::Permanent("the reply has no Discord route".into()))?;
        if let Some(interaction) = &route.interaction {
            self.shared.acks.wait(&interaction.id, ACK_WAIT).await;
        }
        crate::live::start(&self.shared, message, view).await
    }

    async fn update_live(
        &self,
        _message: &LiveMessage,
        handle: &LiveHandle,
        _shown: &LiveView,
        view: &LiveView,
    ) -> Result<Option<LiveHandle>, DeliveryError> {
        crate::live::update(&self.shared, handle, view).await?;
        Ok(None)
    }

    /// A message posted later into the channel, DM or thread of `route`, as a plain message
    /// (an interaction's token expires after 15 minutes).
    fn later_route(&self, route: &serde_json::Value, _now_ms: i64) -> serde_json::Value {
        match Route::from_value(route) {
            Some(mut route) => {
                route.interaction = None;
                route.to_value()
            }
            None => route.clone(),
        }
    }
}
