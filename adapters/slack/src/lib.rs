//! The Slack adapter: the Events API (`POST /slack/events`), Socket Mode, slash commands
//! (`POST /slack/commands`), interactivity (`POST /slack/interactivity`), the OAuth install
//! (`GET /slack/install`, `GET /slack/oauth/callback`) and replies with files v2.
//!
//! Like every adapter it only translates: Slack payloads become [`Event`]s for an [`EventSink`]
//! (acknowledged to Slack only once `submit` returned, so nothing acknowledged is lost) and
//! [`Reply`]s become Web API calls (`api`). Mention gating,
//! de-duplication, memory and the agent live in the core. Installations (one bot token per
//! workspace) are kept by the core through the small [`Installations`] trait.
//!
//! The HTTP routes, the signature check, the Socket Mode loop and the Web API calls are written
//! here rather than taken from an SDK's listeners and client: the core must acknowledge only
//! after the event is durable, the routes live in ecdysis's own axum 0.8 router, Socket Mode
//! needs jittered reconnects and a silence watchdog, and only the fields the adapter uses are
//! read from Slack's payloads.
//!
//! [`Event`]: ecdysis_chat::Event
//! [`Reply`]: ecdysis_chat::Reply

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ecdysis_chat::{BackendError, EventSink};

mod api;
mod catch_up;
mod commands;
mod deliver;
mod events;
mod files;
mod health;
mod inbound;
mod interactivity;
mod live;
pub mod manifest;
pub mod mrkdwn;
mod oauth;
mod route;
mod routes;
pub mod signature;
mod socket_mode;
mod timezones;

pub use api::AuthInfo;
pub use deliver::{MAX_FILE_BYTES, MAX_TEXT_CHARS};
pub use route::{Route, Via};
pub use socket_mode::SocketMode;

/// What went wrong talking to Slack or setting the adapter up.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("Slack API `{method}` failed: {detail}")]
    Api { method: String, detail: String },
    #[error(
        "no bot token for workspace `{0}` (set SLACK_BOT_TOKEN or install the app via /slack/install)"
    )]
    NoToken(String),
    #[error("Slack setting `{key}`: {problem}")]
    Config { key: &'static str, problem: String },
    #[error("installation store: {0}")]
    Installations(BackendError),
    /// The core could not say where conversations were last heard from.
    #[error("catch-up: {0}")]
    CatchUp(BackendError),
}

/// One workspace's installation of the app (OAuth install).
#[derive(Clone, PartialEq, Eq)]
pub struct Installation {
    pub team_id: String,
    pub team_name: String,
    pub bot_user_id: String,
    /// The bot token (`xoxb-…`): the core stores it encrypted and never logs it.
    pub bot_token: String,
    pub app_id: String,
    pub scopes: String,
    /// The Slack user who installed the app.
    pub installed_by: String,
}

impl std::fmt::Debug for Installation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installation")
            .field("team_id", &self.team_id)
            .field("team_name", &self.team_name)
            .field("bot_user_id", &self.bot_user_id)
            .field("bot_token", &"***")
            .field("app_id", &self.app_id)
            .field("scopes", &self.scopes)
            .field("installed_by", &self.installed_by)
            .finish()
    }
}

/// Where installations and OAuth `state`s live (the core implements this on its store; the
/// adapter never touches storage itself).
#[async_trait]
pub trait Installations: Send + Sync + 'static {
    /// Store (or replace) a workspace's installation.
    async fn save(&self, installation: &Installation) -> Result<(), BackendError>;
    /// The installation of a workspace, if the app is installed there.
    async fn get(&self, team_id: &str) -> Result<Option<Installation>, BackendError>;
    /// Forget a workspace's installation (uninstalled, tokens revoked); false if there was none.
    async fn remove(&self, team_id: &str) -> Result<bool, BackendError>;
    /// Remember an OAuth `state` until `expires_at_ms` (ms since the Unix epoch).
    async fn put_state(&self, state: &str, expires_at_ms: i64) -> Result<(), BackendError>;
    /// Use up a `state`: true when it existed and had not expired at `now_ms`. A state can be
    /// taken once.
    async fn take_state(&self, state: &str, now_ms: i64) -> Result<bool, BackendError>;
}

/// Socket Mode timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSettings {
    /// How often the client pings Slack.
    pub ping_interval: Duration,
    /// A connection that received nothing (no envelope, ping or pong) for this long is
    /// considered dead and replaced, even though the socket still looks open.
    pub silence_timeout: Duration,
    /// First reconnect delay; doubles (with jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The adapter's configuration (`SLACK_*`).
#[derive(Clone)]
pub struct SlackSettings {
    /// Single-workspace bot token (`SLACK_BOT_TOKEN`); workspaces installed via OAuth use
    /// their own token.
    pub bot_token: Option<String>,
    /// `SLACK_SIGNING_SECRET`: checks the HTTP routes.
    pub signing_secret: Option<String>,
    /// `SLACK_APP_TOKEN` (`xapp-…`): turns Socket Mode on.
    pub app_token: Option<String>,
    /// `SLACK_CLIENT_ID` / `SLACK_CLIENT_SECRET`: the OAuth install.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `SLACK_API_URL`, e.g. `https://slack.com/api/`.
    pub api_url: String,
    /// `ECDYSIS_SLACK_ALLOWED_TEAMS`: the workspaces (team ids) that may install the app and
    /// talk to it; empty lets any workspace in.
    pub allowed_teams: Vec<String>,
    /// Largest user file downloaded and handed to the agent (after the acknowledgement).
    pub max_download_bytes: u64,
    pub socket: SocketSettings,
    /// How answers show while they are written (`ECDYSIS_SLACK_STREAMING`).
    pub streaming: Streaming,
}

/// How answers show in Slack while they are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Streaming {
    /// Slack's streaming messages (`chat.startStream` / `appendStream` / `stopStream`) in
    /// threads, with a task line per tool; elsewhere (a DM's root, slash commands) as `Edit`.
    #[default]
    Native,
    /// A message posted at the first text, then `chat.update` about once a second.
    Edit,
    /// One message when the answer is done.
    Off,
}

impl std::fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "set" } else { "unset" };
        f.debug_struct("SlackSettings")
            .field("bot_token", &set(&self.bot_token))
            .field("signing_secret", &set(&self.signing_secret))
            .field("app_token", &set(&self.app_token))
            .field("client_id", &self.client_id)
            .field("client_secret", &set(&self.client_secret))
            .field("api_url", &self.api_url)
            .field("allowed_teams", &self.allowed_teams)
            .field("streaming", &self.streaming)
            .finish()
    }
}

impl Default for SlackSettings {
    fn default() -> Self {
        Self {
            bot_token: None,
            signing_secret: None,
            app_token: None,
            client_id: None,
            client_secret: None,
            api_url: DEFAULT_API_URL.to_string(),
            allowed_teams: Vec::new(),
            max_download_bytes: 20 * 1024 * 1024,
            socket: SocketSettings::default(),
            streaming: Streaming::default(),
        }
    }
}

/// The platform name in conversations and events.
pub(crate) const PLATFORM: &str = "slack";

/// Slack's Web API.
pub const DEFAULT_API_URL: &str = "https://slack.com/api/";

/// The Slack adapter: routes, Socket Mode and [`ecdysis_chat::ChatAdapter`]. Cheap to clone.
#[derive(Clone)]
pub struct Slack {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SlackSettings,
    sink: Arc<dyn EventSink>,
    installations: Arc<dyn Installations>,
    api: api::Api,
    verifier: signature::Verifier,
    health: health::Health,
    delivery: deliver::Bookkeeping,
    /// The native streams this process has open.
    streams: live::Streams,
    /// Users' time zones (`users.info`).
    timezones: timezones::Timezones,
    /// Plain HTTP: user-file downloads (after the ack) and `response_url` posts.
    http: reqwest::Client,
    /// Catch-up after downtime, once the core turned it on.
    catch_up: std::sync::OnceLock<ecdysis_chat::CatchUp>,
}

impl Slack {
    pub fn new(
        settings: SlackSettings,
        sink: Arc<dyn EventSink>,
        installations: Arc<dyn Installations>,
    ) -> Result<Self, SlackError> {
        let api = api::Api::new(&settings.api_url)?;
        let verifier = signature::Verifier::new(settings.signing_secret.as_deref());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SlackError::Config {
                key: "slack",
                problem: format!("cannot build the download client: {e}"),
            })?;
        let mode = if settings.app_token.is_some() {
            "socket_mode"
        } else {
            "events_api"
        };
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                sink,
                installations,
                api,
                verifier,
                health: health::Health::new(mode),
                delivery: deliver::Bookkeeping::default(),
                streams: live::Streams::default(),
                timezones: timezones::Timezones::default(),
                http,
                catch_up: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Whether Socket Mode is configured (`SLACK_APP_TOKEN`).
    pub fn socket_mode(&self) -> bool {
        self.inner.settings.app_token.is_some()
    }

    /// Whether a workspace may use the app: listed in `allowed_teams`, or no list is set.
    pub fn team_allowed(&self, team_id: &str) -> bool {
        let allowed = &self.inner.settings.allowed_teams;
        allowed.is_empty() || allowed.iter().any(|t| t == team_id)
    }

    /// [`Slack::team_allowed`], logging a refusal (`what` names the input refused).
    pub(crate) fn refuse_team(&self, team_id: &str, what: &str) -> bool {
        if self.team_allowed(team_id) {
            return false;
        }
        tracing::warn!(
            team = team_id,
            what,
            "Slack input from a workspace not in ECDYSIS_SLACK_ALLOWED_TEAMS: acknowledged and ignored"
        );
        true
    }

    /// `auth.test` with the single-workspace bot token (for `ecdysis doctor`).
    pub async fn auth_test(&self) -> Result<AuthInfo, SlackError> {
        let token = self
            .inner
            .settings
            .bot_token
            .clone()
            .ok_or_else(|| SlackError::NoToken("(SLACK_BOT_TOKEN)".into()))?;
        self.inner.api.auth_test(&token).await
    }
}

/// `auth.test` with a bot token against `api_url`, without a running adapter (`doctor`).
pub async fn auth_test(api_url: &str, bot_token: &str) -> Result<AuthInfo, SlackError> {
    api::Api::new(api_url)?.auth_test(bot_token).await
}

pub(crate) use ecdysis_chat::time::now_ms;
