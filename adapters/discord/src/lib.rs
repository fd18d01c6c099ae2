//! The Discord adapter: gateway connection, slash commands with deferred interactions, threads,
//! attachments both ways, buttons, and the HTTP interactions endpoint.
//!
//! Like every adapter it only translates: gateway and HTTP payloads become
//! [`ecdysis_chat::Event`]s for an [`ecdysis_chat::EventSink`]; [`ecdysis_chat::Reply`]s come
//! back through [`DiscordAdapter`]'s `deliver` and become REST calls. Mention gating,
//! de-duplication, memory and the agent live in the core.
//!
//! Every REST call goes to `api_url`, so a self-hosted proxy or a test fake can stand in for
//! `https://discord.com`. The gateway connection, the REST calls and the payload types are the
//! adapter's own (`gateway`, `rest`, `model`): small, and reading only the fields it uses.

mod acks;
mod adapter;
mod attachments;
mod catch_up;
mod channels;
pub mod commands;
mod deliver;
mod gateway;
mod health;
mod http_interactions;
mod intake;
mod interactions;
mod live;
mod model;
mod rest;
mod route;
mod translate;

pub use adapter::{Discord, DiscordAdapter};
pub use commands::register_commands;
pub use gateway::GatewayHandle;
pub use rest::{RestError, current_user};

/// The platform name in every [`ecdysis_chat::ConversationRef`] this adapter makes.
pub const PLATFORM: &str = "discord";

/// Discord's limit on the text of one message.
pub const MAX_MESSAGE_CHARS: usize = 2_000;

/// The upload limit of a server without boosts, used until Discord reports another.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// What the adapter needs to know; built by the core from its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The bot token (`DISCORD_TOKEN`); `None` runs the HTTP interactions endpoint only.
    pub token: Option<String>,
    /// `DISCORD_APPLICATION_ID`; learnt from the gateway's READY when unset.
    pub application_id: Option<u64>,
    /// `DISCORD_PUBLIC_KEY` (hex), for `POST /discord/interactions`.
    pub public_key: Option<String>,
    /// The REST base (`DISCORD_API_URL`), `https://discord.com` by default.
    pub api_url: String,
    /// Largest file a user may attach that is still downloaded for the agent.
    pub max_inbound_file_bytes: u64,
    /// How old an HTTP interaction's `X-Signature-Timestamp` may be.
    pub max_signature_age_secs: u64,
}

impl Settings {
    pub fn new(api_url: impl Into<String>) -> Self {
        Self {
            token: None,
            application_id: None,
            public_key: None,
            api_url: api_url.into(),
            max_inbound_file_bytes: 25 * 1024 * 1024,
            max_signature_age_secs: 300,
        }
    }
}

/// What went wrong in the adapter.
#[derive(Debug, thiserror::Error)]
pub enum DiscordError {
    #[error("Discord configuration: {0}")]
    Config(String),
    #[error("Discord API: {0}")]
    Api(#[from] RestError),
    #[error("Discord gateway: {0}")]
    Gateway(String),
    /// The core could not say where conversations were last heard from.
    #[error("catch-up: {0}")]
    CatchUp(ecdysis_chat::BackendError),
}
