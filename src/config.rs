//! Configuration: an optional `ecdysis.toml`, every key overridable by an environment variable.
//!
//! The file and the environment are merged into one TOML table (the environment wins), which is
//! then read into [`Config`]. Unknown keys in the file are reported by name; a bad value stops
//! start-up with one line naming the key and what is wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("config key `{key}`: {problem}")]
    Value { key: String, problem: String },
}

impl ConfigError {
    pub(crate) fn value(key: &str, problem: impl Into<String>) -> Self {
        Self::Value {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

/// How an environment value is read into the merged table.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    /// Comma-separated list.
    List,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
}

/// Every key that can come from the environment: (key path in the file, env names in order of
/// preference, kind). The names follow each ecosystem's convention.
const ENV_KEYS: &[(&str, &[&str], Kind)] = &[
    ("listen", &["ECDYSIS_LISTEN"], Kind::Str),
    ("data_dir", &["ECDYSIS_DATA_DIR"], Kind::Str),
    ("database_url", &["DATABASE_URL"], Kind::Str),
    ("blob_url", &["ECDYSIS_BLOB_URL"], Kind::Str),
    ("secret_key", &["ECDYSIS_SECRET_KEY"], Kind::Str),
    ("admin_token", &["ECDYSIS_ADMIN_TOKEN"], Kind::Str),
    ("cf_access_team", &["ECDYSIS_CF_ACCESS_TEAM"], Kind::Str),
    ("cf_access_aud", &["ECDYSIS_CF_ACCESS_AUD"], Kind::Str),
    ("log_format", &["ECDYSIS_LOG_FORMAT"], Kind::Str),
    ("model", &["ECDYSIS_MODEL"], Kind::Str),
    ("fallback_models", &["ECDYSIS_FALLBACK_MODELS"], Kind::List),
    (
        "s3.endpoint_url",
        &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        Kind::Str,
    ),
    (
        "s3.region",
        &["AWS_REGION", "AWS_DEFAULT_REGION"],
        Kind::Str,
    ),
    ("s3.access_key_id", &["AWS_ACCESS_KEY_ID"], Kind::Str),
    (
        "s3.secret_access_key",
        &["AWS_SECRET_ACCESS_KEY"],
        Kind::Str,
    ),
    ("s3.session_token", &["AWS_SESSION_TOKEN"], Kind::Str),
    ("anthropic.api_key", &["ANTHROPIC_API_KEY"], Kind::Str),
    ("anthropic.base_url", &["ANTHROPIC_BASE_URL"], Kind::Str),
    ("openai.api_key", &["OPENAI_API_KEY"], Kind::Str),
    ("openai.base_url", &["OPENAI_BASE_URL"], Kind::Str),
    ("slack.bot_token", &["SLACK_BOT_TOKEN"], Kind::Str),
    ("slack.signing_secret", &["SLACK_SIGNING_SECRET"], Kind::Str),
    ("slack.app_token", &["SLACK_APP_TOKEN"], Kind::Str),
    ("slack.client_id", &["SLACK_CLIENT_ID"], Kind::Str),
    ("slack.client_secret", &["SLACK_CLIENT_SECRET"], Kind::Str),
    ("slack.api_url", &["SLACK_API_URL"], Kind::Str),
    (
        "slack.allowed_teams",
        &["ECDYSIS_SLACK_ALLOWED_TEAMS"],
        Kind::List,
    ),
    ("slack.streaming", &["ECDYSIS_SLACK_STREAMING"], Kind::Str),
    ("discord.token", &["DISCORD_TOKEN"], Kind::Str),
    (
        "discord.application_id",
        &["DISCORD_APPLICATION_ID"],
        Kind::Str,
    ),
    ("discord.public_key", &["DISCORD_PUBLIC_KEY"], Kind::Str),
    ("discord.api_url", &["DISCORD_API_URL"], Kind::Str),
    (
        "discord.register_on_start",
        &["ECDYSIS_DISCORD_REGISTER_ON_START"],
        Kind::Bool,
    ),
    (
        "discord.register_guild",
        &["ECDYSIS_DISCORD_REGISTER_GUILD"],
        Kind::Str,
    ),
    ("sandbox.backend", &["ECDYSIS_SANDBOX"], Kind::Str),
    ("sandbox.rootfs", &["ECDYSIS_SANDBOX_ROOTFS"], Kind::Str),
    (
        "sandbox.workspaces",
        &["ECDYSIS_SANDBOX_WORKSPACES"],
        Kind::Str,
    ),
    (
        "sandbox.timeout_seconds",
        &["ECDYSIS_SANDBOX_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "sandbox.cpu_seconds",
        &["ECDYSIS_SANDBOX_CPU_SECONDS"],
        Kind::Int,
    ),
    (
        "sandbox.memory_mb",
        &["ECDYSIS_SANDBOX_MEMORY_MB"],
        Kind::Int,
    ),
    (
        "sandbox.max_processes",
        &["ECDYSIS_SANDBOX_MAX_PROCESSES"],
        Kind::Int,
    ),
    (
        "sandbox.max_output_bytes",
        &["ECDYSIS_SANDBOX_MAX_OUTPUT_BYTES"],
        Kind::Int,
    ),
    (
        "sandbox.workspace_max_mb",
        &["ECDYSIS_SANDBOX_WORKSPACE_MAX_MB"],
        Kind::Int,
    ),
    (
        "sandbox.max_parallel",
        &["ECDYSIS_SANDBOX_MAX_PARALLEL"],
        Kind::Int,
    ),
    (
        "sandbox.allow_users",
        &["ECDYSIS_SANDBOX_ALLOW_USERS"],
        Kind::List,
    ),
    (
        "sandbox.allow_channels",
        &["ECDYSIS_SANDBOX_ALLOW_CHANNELS"],
        Kind::List,
    ),
    (
        "sandbox.require_approval",
        &["ECDYSIS_SANDBOX_REQUIRE_APPROVAL"],
        Kind::Bool,
    ),
    ("browser.chromium", &["ECDYSIS_CHROMIUM"], Kind::Str),
    ("browser.cdp_url", &["ECDYSIS_BROWSER_CDP_URL"], Kind::Str),
    ("browser.allow", &["ECDYSIS_BROWSER_ALLOW"], Kind::List),
    (
        "browser.idle_seconds",
        &["ECDYSIS_BROWSER_IDLE_SECONDS"],
        Kind::Int,
    ),
    (
        "browser.max_pages",
        &["ECDYSIS_BROWSER_MAX_PAGES"],
        Kind::Int,
    ),
    (
        "browser.navigation_timeout_seconds",
        &["ECDYSIS_BROWSER_NAVIGATION_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "browser.max_record_seconds",
        &["ECDYSIS_BROWSER_MAX_RECORD_SECONDS"],
        Kind::Int,
    ),
    (
        "browser.rate_per_minute",
        &["ECDYSIS_BROWSER_RATE_PER_MINUTE"],
        Kind::Int,
    ),
    (
        "browser.max_upload_bytes",
        &["ECDYSIS_BROWSER_MAX_UPLOAD_BYTES"],
        Kind::Int,
    ),
    (
        "browser.max_image_pixels",
        &["ECDYSIS_BROWSER_MAX_IMAGE_PIXELS"],
        Kind::Int,
    ),
    (
        "browser.action_timeout_seconds",
        &["ECDYSIS_BROWSER_ACTION_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "browser.snapshot_max_tokens",
        &["ECDYSIS_BROWSER_SNAPSHOT_MAX_TOKENS"],
        Kind::Int,
    ),
    (
        "browser.allow_password_typing",
        &["ECDYSIS_BROWSER_ALLOW_PASSWORD_TYPING"],
        Kind::Bool,
    ),
    ("web_search.provider", &["ECDYSIS_WEB_SEARCH"], Kind::Str),
    ("web_search.url", &["ECDYSIS_WEB_SEARCH_URL"], Kind::Str),
    ("web_search.brave_api_key", &["BRAVE_API_KEY"], Kind::Str),
    ("web_search.tavily_api_key", &["TAVILY_API_KEY"], Kind::Str),
    (
        "web_search.timeout_seconds",
        &["ECDYSIS_WEB_SEARCH_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    ("embeddings.model", &["ECDYSIS_EMBEDDINGS"], Kind::Str),
    (
        "embeddings.base_url",
        &["ECDYSIS_EMBEDDINGS_BASE_URL"],
        Kind::Str,
    ),
    (
        "embeddings.api_key",
        &["ECDYSIS_EMBEDDINGS_API_KEY"],
        Kind::Str,
    ),
    (
        "embeddings.batch_size",
        &["ECDYSIS_EMBEDDINGS_BATCH_SIZE"],
        Kind::Int,
    ),
    (
        "embeddings.timeout_seconds",
        &["ECDYSIS_EMBEDDINGS_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "embeddings.max_retries",
        &["ECDYSIS_EMBEDDINGS_MAX_RETRIES"],
        Kind::Int,
    ),
    (
        "embeddings.min_similarity",
        &["ECDYSIS_EMBEDDINGS_MIN_SIMILARITY"],
        Kind::Str,
    ),
    (
        "embeddings.cache_mb",
        &["ECDYSIS_EMBEDDINGS_CACHE_MB"],
        Kind::Int,
    ),
    ("ffmpeg", &["ECDYSIS_FFMPEG"], Kind::Str),
    ("agent.max_steps", &["ECDYSIS_AGENT_MAX_STEPS"], Kind::Int),
    (
        "agent.turn_timeout_seconds",
        &["ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "agent.request_timeout_seconds",
        &["ECDYSIS_AGENT_REQUEST_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "agent.max_retries",
        &["ECDYSIS_AGENT_MAX_RETRIES"],
        Kind::Int,
    ),
    (
        "agent.compaction_budget_tokens",
        &["ECDYSIS_AGENT_COMPACTION_BUDGET_TOKENS"],
        Kind::Int,
    ),
    (
        "agent.max_output_tokens",
        &["ECDYSIS_AGENT_MAX_OUTPUT_TOKENS"],
        Kind::Int,
    ),
    (
        "agent.memory_notes_in_context",
        &["ECDYSIS_AGENT_MEMORY_NOTES_IN_CONTEXT"],
        Kind::Int,
    ),
    ("bus.workers", &["ECDYSIS_BUS_WORKERS"], Kind::Int),
    ("bus.max_queued", &["ECDYSIS_BUS_MAX_QUEUED"], Kind::Int),
    (
        "bus.lease_seconds",
        &["ECDYSIS_BUS_LEASE_SECONDS"],
        Kind::Int,
    ),
    ("bus.max_attempts", &["ECDYSIS_BUS_MAX_ATTEMPTS"], Kind::Int),
    (
        "bus.max_delivery_attempts",
        &["ECDYSIS_BUS_MAX_DELIVERY_ATTEMPTS"],
        Kind::Int,
    ),
    (
        "bus.leader_lease_seconds",
        &["ECDYSIS_LEADER_LEASE_SECONDS"],
        Kind::Int,
    ),
    (
        "web.max_body_bytes",
        &["ECDYSIS_WEB_MAX_BODY_BYTES"],
        Kind::Int,
    ),
    ("public_url", &["ECDYSIS_PUBLIC_URL"], Kind::Str),
    ("schedule.grace", &["ECDYSIS_SCHEDULE_GRACE"], Kind::Str),
    ("catch_up.window", &["ECDYSIS_CATCH_UP_WINDOW"], Kind::Str),
    (
        "catch_up.messages",
        &["ECDYSIS_CATCH_UP_MESSAGES"],
        Kind::Int,
    ),
    (
        "schedule.max_jobs_per_channel",
        &["ECDYSIS_SCHEDULE_MAX_JOBS"],
        Kind::Int,
    ),
    (
        "schedule.min_interval",
        &["ECDYSIS_SCHEDULE_MIN_INTERVAL"],
        Kind::Str,
    ),
    (
        "web.header_timeout_seconds",
        &["ECDYSIS_WEB_HEADER_TIMEOUT_SECONDS"],
        Kind::Int,
    ),
    (
        "web.max_connections",
        &["ECDYSIS_WEB_MAX_CONNECTIONS"],
        Kind::Int,
    ),
    ("timezone", &["ECDYSIS_TIMEZONE"], Kind::Str),
    ("access.allow_users", &["ECDYSIS_ALLOW_USERS"], Kind::List),
    (
        "access.allow_channels",
        &["ECDYSIS_ALLOW_CHANNELS"],
        Kind::List,
    ),
    ("access.admin_users", &["ECDYSIS_ADMIN_USERS"], Kind::List),
    ("access.dm_policy", &["ECDYSIS_DM_POLICY"], Kind::Str),
    (
        "access.pairing_code_minutes",
        &["ECDYSIS_PAIRING_CODE_MINUTES"],
        Kind::Int,
    ),
    (
        "budget.channel_daily_tokens",
        &["ECDYSIS_BUDGET_CHANNEL_DAILY_TOKENS"],
        Kind::Int,
    ),
    (
        "budget.channel_daily_usd",
        &["ECDYSIS_BUDGET_CHANNEL_DAILY_USD"],
        Kind::Str,
    ),
    (
        "budget.user_daily_tokens",
        &["ECDYSIS_BUDGET_USER_DAILY_TOKENS"],
        Kind::Int,
    ),
    (
        "budget.user_daily_usd",
        &["ECDYSIS_BUDGET_USER_DAILY_USD"],
        Kind::Str,
    ),
    (
        "budget.workspace_monthly_tokens",
        &["ECDYSIS_BUDGET_WORKSPACE_MONTHLY_TOKENS"],
        Kind::Int,
    ),
    (
        "budget.workspace_monthly_usd",
        &["ECDYSIS_BUDGET_WORKSPACE_MONTHLY_USD"],
        Kind::Str,
    ),
    (
        "rate.user_per_minute",
        &["ECDYSIS_RATE_USER_PER_MINUTE"],
        Kind::Int,
    ),
    (
        "rate.channel_per_minute",
        &["ECDYSIS_RATE_CHANNEL_PER_MINUTE"],
        Kind::Int,
    ),
    ("web.upload_max_mb", &["ECDYSIS_UPLOAD_MAX_MB"], Kind::Int),
    ("media.transcribe", &["ECDYSIS_TRANSCRIBE"], Kind::Str),
    (
        "media.transcribe_base_url",
        &["ECDYSIS_TRANSCRIBE_BASE_URL"],
        Kind::Str,
    ),
    (
        "media.transcribe_api_key",
        &["ECDYSIS_TRANSCRIBE_API_KEY"],
        Kind::Str,
    ),
    (
        "media.image_turns",
        &["ECDYSIS_MEDIA_IMAGE_TURNS"],
        Kind::Int,
    ),
    (
        "media.inline_text_kb",
        &["ECDYSIS_MEDIA_INLINE_TEXT_KB"],
        Kind::Int,
    ),
];

/// The file's shape. Every field is optional; unknown keys are an error that names them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<String>,
    database_url: Option<String>,
    blob_url: Option<String>,
    secret_key: Option<String>,
    admin_token: Option<String>,
    cf_access_team: Option<String>,
    cf_access_aud: Option<String>,
    public_url: Option<String>,
    log_format: Option<String>,
    model: Option<String>,
    fallback_models: Option<Vec<String>>,
    ffmpeg: Option<String>,
    #[serde(default)]
    s3: S3Config,
    #[serde(default)]
    anthropic: ProviderKeys,
    #[serde(default)]
    openai: ProviderKeys,
    #[serde(default)]
    slack: SlackConfig,
    #[serde(default)]
    discord: DiscordConfig,
    #[serde(default)]
    sandbox: SandboxConfig,
    #[serde(default)]
    browser: BrowserConfig,
    #[serde(default)]
    web_search: WebSearchFile,
    #[serde(default)]
    embeddings: crate::embeddings::EmbeddingsFile,
    #[serde(default)]
    agent: AgentFile,
    #[serde(default)]
    bus: BusFile,
    #[serde(default)]
    web: WebFile,
    /// IANA time zone for clock times and calendar days when a user's own is unknown.
    timezone: Option<String>,
    #[serde(default)]
    schedule: ScheduleFile,
    #[serde(default)]
    catch_up: CatchUpFile,
    /// `[[mcp]]`: MCP servers whose tools the model may call.
    #[serde(default)]
    mcp: Vec<crate::mcp::config::McpFile>,
    /// `[[profile]]`: per-channel agent profiles.
    #[serde(default)]
    profile: Vec<crate::engine::profile::ProfileFile>,
    /// `[access]`, `[budget]`, `[rate]`, `[prices."<model>"]`: the guard rails.
    #[serde(default)]
    access: crate::engine::guard::settings::AccessFile,
    #[serde(default)]
    budget: crate::engine::guard::settings::BudgetFile,
    #[serde(default)]
    rate: crate::engine::guard::settings::RateFile,
    #[serde(default)]
    prices: std::collections::BTreeMap<String, crate::engine::guard::prices::Price>,
    /// `[media]`: files users send (transcription, how long images stay in context).
    #[serde(default)]
    media: crate::media::settings::MediaFile,
    /// `[models."<provider>/<model>"]`: what a model can do (`vision = false`).
    #[serde(default)]
    models: std::collections::BTreeMap<String, crate::media::settings::ModelFile>,
}

/// S3/R2 settings; unset fields fall back to AWS's defaults (`us-east-1`, its regional endpoint).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

/// An LLM provider's key and base URL (the base URL routes through an AI gateway).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeys {
    pub api_key: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub bot_token: Option<String>,
    pub signing_secret: Option<String>,
    pub app_token: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub api_url: Option<String>,
    /// Workspaces (team ids) that may install the app and talk to it; empty: any.
    pub allowed_teams: Option<Vec<String>>,
    /// How answers show while written: `native` (Slack's streams), `edit` or `off`.
    pub streaming: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    pub token: Option<String>,
    pub application_id: Option<String>,
    pub public_key: Option<String>,
    pub api_url: Option<String>,
    /// `serve` registers the slash commands when it starts (globally, or in `register_guild`).
    pub register_on_start: Option<bool>,
    /// The guild `serve` registers the slash commands in (instant, unlike global commands).
    pub register_guild: Option<String>,
}

/// The `[sandbox]` section as written in the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    pub backend: Option<String>,
    pub rootfs: Option<String>,
    pub workspaces: Option<String>,
    pub timeout_seconds: Option<i64>,
    pub cpu_seconds: Option<i64>,
    pub memory_mb: Option<i64>,
    pub max_processes: Option<i64>,
    pub max_output_bytes: Option<i64>,
    pub workspace_max_mb: Option<i64>,
    pub max_parallel: Option<i64>,
    pub allow_users: Option<Vec<String>>,
    pub allow_channels: Option<Vec<String>>,
    pub require_approval: Option<bool>,
}

/// Which sandbox runs `/run` and the model's `run_command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxBackend {
    /// Linux namespaces through bubblewrap; no daemon.
    Namespace,
    /// One Docker container per channel.
    Docker,
    /// No sandbox: `/run` explains how to enable one.
    Off,
}

/// The validated sandbox settings (`[sandbox]`, `ECDYSIS_SANDBOX_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSettings {
    /// `None`: the namespace backend where the kernel allows it, else off.
    pub backend: Option<SandboxBackend>,
    /// A root file system directory used instead of the host's system (read-only).
    pub rootfs: Option<PathBuf>,
    /// Where the channels' workspaces live (`ECDYSIS_SANDBOX_WORKSPACES`); `None`: in the data
    /// directory, unless the per-channel sandbox users cannot reach it there (see
    /// `crate::sandbox::workspaces_dir`).
    pub workspaces: Option<PathBuf>,
    /// Wall-clock limit of one command.
    pub timeout: Duration,
    /// CPU seconds of each process of a command.
    pub cpu_seconds: u64,
    /// Memory of a command's whole sandbox, in MiB: all its processes plus its `/tmp` and
    /// `/dev/shm` (half of it each), through a cgroup per run where one can be had; also the
    /// address space of each process.
    pub memory_mb: u64,
    /// Processes (and threads) a command may have at once (the whole sandbox, by cgroup where
    /// one can be had, and per sandbox uid).
    pub max_processes: u64,
    /// Output (stdout and stderr together) kept before the command is stopped.
    pub max_output_bytes: usize,
    /// Disk a channel's workspace may take, in MiB, enforced while commands run (a run that
    /// goes past it is stopped and what it added removed); also the largest file a command may
    /// write, and the largest snapshot.
    pub workspace_max_mb: u64,
    /// Commands running at once across all channels.
    pub max_parallel: usize,
    /// Users who may run commands (empty: everyone).
    pub allow_users: Vec<String>,
    /// Channels where commands may run (empty: every channel).
    pub allow_channels: Vec<String>,
    /// The model's `run_command` waits for a human approval (`/run` from a user never does).
    pub require_approval: bool,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            backend: None,
            rootfs: None,
            workspaces: None,
            timeout: Duration::from_secs(30),
            cpu_seconds: 30,
            memory_mb: 1024,
            max_processes: 128,
            max_output_bytes: 4 * 1024 * 1024,
            workspace_max_mb: 256,
            max_parallel: 4,
            allow_users: Vec::new(),
            allow_channels: Vec::new(),
            require_approval: false,
        }
    }
}

/// The `[browser]` section as written in the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserConfig {
    pub chromium: Option<String>,
    pub cdp_url: Option<String>,
    pub allow: Option<Vec<String>>,
    pub idle_seconds: Option<i64>,
    pub max_pages: Option<i64>,
    pub navigation_timeout_seconds: Option<i64>,
    pub max_record_seconds: Option<i64>,
    pub rate_per_minute: Option<i64>,
    pub max_upload_bytes: Option<i64>,
    pub max_image_pixels: Option<i64>,
    pub action_timeout_seconds: Option<i64>,
    pub snapshot_max_tokens: Option<i64>,
    pub allow_password_typing: Option<bool>,
}

/// The validated browser settings (`/screenshot`, `/record` and the browser tools).
#[derive(Clone, Debug, PartialEq)]
pub struct BrowserSettings {
    /// `ECDYSIS_CHROMIUM`: the Chromium executable; `None` looks for `chromium` on PATH.
    pub chromium: Option<PathBuf>,
    /// `ECDYSIS_BROWSER_CDP_URL`: a remote CDP endpoint used instead of a local Chromium.
    pub cdp_url: Option<String>,
    /// Hosts and CIDRs the browser may visit although they are private or loopback.
    pub allow: Vec<String>,
    /// A local Chromium is closed after this long without work.
    pub idle: Duration,
    /// Tabs open at once (across all channels).
    pub max_pages: usize,
    /// How long a page may take to load.
    pub navigation_timeout: Duration,
    /// The longest `/record`.
    pub max_record_seconds: u64,
    /// Browser requests per channel per minute.
    pub rate_per_minute: u32,
    /// Largest file posted into a thread (Discord's free limit by default).
    pub max_upload_bytes: usize,
    /// Longest side of a posted image, in pixels; larger screenshots are downscaled.
    pub max_image_pixels: u32,
    /// How long one interactive action (click, type, back, wait) may take, page load included.
    pub action_timeout: Duration,
    /// The longest page snapshot the model reads, in estimated tokens (characters / 4).
    pub snapshot_max_tokens: usize,
    /// Whether the model may type into `type=password` fields.
    pub allow_password_typing: bool,
}

impl Default for BrowserSettings {
    fn default() -> Self {
        Self {
            chromium: None,
            cdp_url: None,
            allow: Vec::new(),
            idle: Duration::from_secs(60),
            max_pages: 4,
            navigation_timeout: Duration::from_secs(20),
            max_record_seconds: 30,
            rate_per_minute: 20,
            max_upload_bytes: 8 * 1024 * 1024,
            max_image_pixels: 8_000,
            action_timeout: Duration::from_secs(10),
            snapshot_max_tokens: 2_000,
            allow_password_typing: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    max_steps: Option<i64>,
    turn_timeout_seconds: Option<i64>,
    request_timeout_seconds: Option<i64>,
    max_retries: Option<i64>,
    compaction_budget_tokens: Option<i64>,
    max_output_tokens: Option<i64>,
    memory_notes_in_context: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BusFile {
    workers: Option<i64>,
    max_queued: Option<i64>,
    lease_seconds: Option<i64>,
    max_attempts: Option<i64>,
    max_delivery_attempts: Option<i64>,
    leader_lease_seconds: Option<i64>,
}

/// `[catch_up]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatchUpFile {
    window: Option<DurationText>,
    messages: Option<i64>,
}

/// Catch-up after downtime: how far back Slack and Discord are read for messages said while
/// ecdysis was away (`ECDYSIS_CATCH_UP_WINDOW`, default `24h`, `0` turns it off) and how many
/// of them per channel or thread at most (`ECDYSIS_CATCH_UP_MESSAGES`, default 200).
fn catch_up_settings(
    file: CatchUpFile,
) -> Result<Option<ecdysis_chat::CatchUpLimits>, ConfigError> {
    let d = ecdysis_chat::CatchUpLimits::default();
    let window = duration_setting("catch_up.window", file.window, d.window)?;
    if window.is_zero() {
        return Ok(None);
    }
    let messages = positive("catch_up.messages", file.messages, d.per_place as i64)?;
    Ok(Some(ecdysis_chat::CatchUpLimits {
        window,
        per_place: usize::try_from(messages).unwrap_or(usize::MAX),
        ..d
    }))
}

/// `[schedule]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    grace: Option<DurationText>,
    max_jobs_per_channel: Option<i64>,
    min_interval: Option<DurationText>,
}

/// A duration in a file: seconds as a number, or text such as `90s`, `30m`, `1h`, `2d`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(i64),
    Text(String),
}

/// Scheduled jobs (`remind`, `schedules`, the schedule tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleSettings {
    /// A job due while the server was down runs on start if it is at most this late; later
    /// ones are skipped with a note (`ECDYSIS_SCHEDULE_GRACE`).
    pub grace: Duration,
    /// Active jobs one channel may have (`ECDYSIS_SCHEDULE_MAX_JOBS`).
    pub max_jobs_per_channel: usize,
    /// The shortest time between two runs of a recurring job (`ECDYSIS_SCHEDULE_MIN_INTERVAL`).
    pub min_interval: Duration,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            max_jobs_per_channel: 50,
            min_interval: Duration::from_secs(60),
        }
    }
}

/// Read a duration: whole seconds (`3600`) or a number with a unit (`90s`, `30m`, `1h`, `2d`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits].parse().ok()?;
    let unit = match text[digits..].trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit).map(Duration::from_secs)
}

fn duration_setting(
    key: &str,
    value: Option<DurationText>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(DurationText::Seconds(s)) if s >= 0 => Ok(Duration::from_secs(s as u64)),
        Some(DurationText::Seconds(s)) => {
            Err(ConfigError::value(key, format!("{s} must not be negative")))
        }
        Some(DurationText::Text(text)) => parse_duration(&text).ok_or_else(|| {
            ConfigError::value(
                key,
                format!("`{text}` is not a duration such as 3600, 90s, 30m, 1h or 2d"),
            )
        }),
    }
}

fn schedule_settings(file: ScheduleFile) -> Result<ScheduleSettings, ConfigError> {
    let d = ScheduleSettings::default();
    Ok(ScheduleSettings {
        grace: duration_setting("schedule.grace", file.grace, d.grace)?,
        max_jobs_per_channel: positive(
            "schedule.max_jobs_per_channel",
            file.max_jobs_per_channel,
            d.max_jobs_per_channel as i64,
        )? as usize,
        min_interval: duration_setting("schedule.min_interval", file.min_interval, d.min_interval)?
            .max(Duration::from_secs(1)),
    })
}

/// `[web_search]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebSearchFile {
    provider: Option<String>,
    url: Option<String>,
    brave_api_key: Option<String>,
    tavily_api_key: Option<String>,
    timeout_seconds: Option<i64>,
}

/// The search API behind the `web_search` tool (`ECDYSIS_WEB_SEARCH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchProvider {
    /// Brave Search API (`BRAVE_API_KEY`).
    Brave { api_key: String },
    /// Tavily (`TAVILY_API_KEY`).
    Tavily { api_key: String },
    /// A SearXNG instance at this base URL (`searxng:<url>`).
    Searxng,
}

/// The validated `web_search` settings; `None` in [`Config::web_search`] when it is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSearchSettings {
    pub provider: SearchProvider,
    /// Scheme and host (and any path prefix) the provider's paths are appended to.
    pub base_url: Url,
    /// One search request's time limit.
    pub timeout: Duration,
}

fn web_search_settings(file: WebSearchFile) -> Result<Option<WebSearchSettings>, ConfigError> {
    let Some(text) = file.provider.filter(|p| !p.trim().is_empty()) else {
        return Ok(None);
    };
    let key = "web_search.provider";
    let needs = |value: Option<String>, env: &str, name: &str| {
        value.filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            ConfigError::value(
                key,
                format!("`{name}` needs {env} (the provider's API key)"),
            )
        })
    };
    let (provider, default_base) = match text.trim() {
        "brave" => (
            SearchProvider::Brave {
                api_key: needs(file.brave_api_key, "BRAVE_API_KEY", "brave")?,
            },
            "https://api.search.brave.com".to_string(),
        ),
        "tavily" => (
            SearchProvider::Tavily {
                api_key: needs(file.tavily_api_key, "TAVILY_API_KEY", "tavily")?,
            },
            "https://api.tavily.com".to_string(),
        ),
        other => match other.strip_prefix("searxng:") {
            Some(url) if !url.trim().is_empty() => {
                (SearchProvider::Searxng, url.trim().to_string())
            }
            _ => {
                return Err(ConfigError::value(
                    key,
                    format!("`{other}` is not one of brave, tavily, searxng:<url>"),
                ));
            }
        },
    };
    let base = file
        .url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or(default_base);
    let base_url = check_url("web_search.url", &base)?;
    let timeout = positive("web_search.timeout_seconds", file.timeout_seconds, 10)?;
    Ok(Some(WebSearchSettings {
        provider,
        base_url,
        timeout: Duration::from_secs(timeout as u64),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebFile {
    max_body_bytes: Option<i64>,
    upload_max_mb: Option<i64>,
    header_timeout_seconds: Option<i64>,
    max_connections: Option<i64>,
}

/// Which LLM API a model is served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Anthropic,
    OpenAi,
}

/// `anthropic/<model>` or `openai/<model>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub provider: Provider,
    pub name: String,
}

impl ModelSpec {
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        let (prefix, name) = text.split_once('/').ok_or_else(|| {
            ConfigError::value(
                key,
                format!("`{text}` must look like `anthropic/<model>` or `openai/<model>`"),
            )
        })?;
        let provider = match prefix {
            "anthropic" => Provider::Anthropic,
            "openai" => Provider::OpenAi,
            other => {
                return Err(ConfigError::value(
                    key,
                    format!("unknown model prefix `{other}` (use `anthropic/` or `openai/`)"),
                ));
            }
        };
        if name.trim().is_empty() {
            return Err(ConfigError::value(key, "the model name after `/` is empty"));
        }
        Ok(Self {
            provider,
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = match self.provider {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
        };
        write!(f, "{prefix}/{}", self.name)
    }
}

/// Where blobs live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobLocation {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The agent loop's limits (`[agent]`, `ECDYSIS_AGENT_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Model calls in one turn's tool loop.
    pub max_steps: usize,
    /// The whole turn (model calls, retries, tools, compaction).
    pub turn_timeout: Duration,
    /// One HTTP request to the model.
    pub request_timeout: Duration,
    /// Retries of one model call on 429/5xx/overload before the next fallback model.
    pub max_retries: u32,
    /// Estimated prompt tokens above which older turns are summarised.
    pub compaction_budget_tokens: usize,
    /// `max_tokens` of each answer.
    pub max_output_tokens: u32,
    /// Relevant memory notes put into each turn's context.
    pub memory_notes_in_context: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_steps: 8,
            turn_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            max_retries: 4,
            compaction_budget_tokens: 24_000,
            max_output_tokens: 4096,
            memory_notes_in_context: 8,
        }
    }
}

/// The smallest compaction budget: the system prompt and tool definitions alone take up to
/// 2,000 tokens, and some room must be left for the conversation.
pub const MIN_COMPACTION_BUDGET: i64 = 3_000;

/// Durable event bus settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusConfig {
    /// Conversations processed at once. A running event mostly waits (for the model, a tool,
    /// the database), and the sandbox and browser bound their own share, so this can be many
    /// more than the cores: a backlog of `/remember` events over 100 conversations drained at
    /// 640/s with 16 and at 1,000/s with 64 on a 2-core machine.
    pub workers: usize,
    /// Open (unfinished) events above which new ones are refused with "busy".
    pub max_queued: u64,
    /// How long a claimed event is held before another worker may take it.
    pub lease_seconds: u64,
    /// Attempts before an event is marked failed.
    pub max_attempts: u32,
    /// Attempts at delivering a reply (failures that may pass) before it is given up. A
    /// platform's rate limit does not count: its wait is always kept.
    pub max_delivery_attempts: u32,
    /// With several instances (Postgres): how long the holder of the Discord gateway or the
    /// Slack Socket Mode connection keeps it without renewing, i.e. the longest fail-over.
    pub leader_lease_seconds: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            workers: 64,
            max_queued: 10_000,
            lease_seconds: 120,
            max_attempts: 5,
            max_delivery_attempts: 8,
            leader_lease_seconds: 15,
        }
    }
}

/// The validated configuration everything else reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub blob: BlobLocation,
    pub s3: S3Config,
    pub secret_key: Option<String>,
    pub admin_token: Option<String>,
    /// Cloudflare Access in front of `/admin`: (`ECDYSIS_CF_ACCESS_TEAM`,
    /// `ECDYSIS_CF_ACCESS_AUD`), both or neither.
    pub cf_access: Option<(String, String)>,
    pub log_format: LogFormat,
    pub model: Option<ModelSpec>,
    pub fallback_models: Vec<ModelSpec>,
    pub anthropic: ProviderKeys,
    pub openai: ProviderKeys,
    pub slack: SlackConfig,
    pub discord: DiscordConfig,
    pub sandbox: SandboxSettings,
    pub browser: BrowserSettings,
    /// The `web_search` tool's provider (`ECDYSIS_WEB_SEARCH`); `None`: no search tool.
    pub web_search: Option<WebSearchSettings>,
    /// Semantic memory (`ECDYSIS_EMBEDDINGS`); `None`: full-text search only.
    pub embeddings: Option<crate::embeddings::EmbeddingsSettings>,
    /// `ECDYSIS_FFMPEG`: the ffmpeg executable for `/record`.
    pub ffmpeg: PathBuf,
    pub agent: AgentConfig,
    pub bus: BusConfig,
    /// Largest accepted web chat request body.
    pub web_max_body_bytes: usize,
    /// Largest web chat upload (`multipart/form-data`, the whole body; `ECDYSIS_UPLOAD_MAX_MB`).
    pub web_upload_max_bytes: usize,
    /// Files users send (`[media]`) and what each model can do (`[models."…"]`).
    pub media: crate::media::settings::MediaSettings,
    /// `[[mcp]]` servers, in file order.
    pub mcp: Vec<crate::mcp::McpServerConfig>,
    /// `[[profile]]` entries, in file order.
    pub profiles: Vec<crate::engine::profile::Profile>,
    /// `ECDYSIS_PUBLIC_URL`'s origin (`https://chat.example.com`): the name browsers use for
    /// this server besides its loopback names and listen address.
    pub public_url: Option<String>,
    /// A client must send a request head within this (`web.header_timeout_seconds`).
    pub web_header_timeout: Duration,
    /// Connections served at once (`web.max_connections`).
    pub web_max_connections: usize,
    /// Access policy, budgets and rate limits.
    pub guards: crate::engine::guard::GuardSettings,
    /// `ECDYSIS_TIMEZONE`: the IANA time zone used when a user's own is unknown (`UTC`).
    pub timezone: String,
    /// Scheduled jobs (`[schedule]`).
    pub schedule: ScheduleSettings,
    /// Catch-up after downtime (`[catch_up]`); `None` when turned off.
    pub catch_up: Option<ecdysis_chat::CatchUpLimits>,
}

impl Config {
    /// Load from `path` (if any) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, &|name| std::env::var(name).ok())
    }

    /// Load from `path` (if any) and the given environment lookup.
    pub fn load_with(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        overlay_env(&mut table, env)?;
        let file: FileConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File {
                    path: path.map(Path::to_path_buf).unwrap_or_default(),
                    problem: e.message().to_string(),
                })?;
        Self::from_file(file)
    }

    /// The embedded defaults, with everything stored under `data_dir` (used by tests and benches).
    #[allow(
        clippy::expect_used,
        reason = "the embedded defaults are valid by construction (tests::embedded_defaults)"
    )]
    pub fn embedded(data_dir: &Path) -> Self {
        let env = |name: &str| match name {
            "ECDYSIS_DATA_DIR" => Some(data_dir.display().to_string()),
            _ => None,
        };
        // The defaults are valid by construction; a failure here is a bug in this module.
        Self::load_with(None, &env).expect("embedded defaults are valid")
    }

    fn from_file(file: FileConfig) -> Result<Self, ConfigError> {
        let listen = match file.listen {
            Some(text) => text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::value(
                    "listen",
                    format!("`{text}` is not an address like 127.0.0.1:8080"),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let data_dir = PathBuf::from(file.data_dir.unwrap_or_else(|| "./data".into()));
        let database_url = match file.database_url {
            Some(url) => {
                check_database_url(&url)?;
                url
            }
            None => format!("sqlite://{}/ecdysis.db", data_dir.display()),
        };
        let blob = match file.blob_url {
            Some(url) => parse_blob_url(&url)?,
            None => BlobLocation::Dir(data_dir.join("blobs")),
        };
        let log_format = match file.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::value(
                    "log_format",
                    format!("`{other}` is neither `text` nor `json`"),
                ));
            }
        };
        if let Some(mode) = file.slack.streaming.as_deref()
            && !matches!(mode, "native" | "edit" | "off")
        {
            return Err(ConfigError::value(
                "slack.streaming",
                format!("`{mode}` is not `native`, `edit` or `off`"),
            ));
        }
        let anthropic = checked_provider("anthropic.base_url", file.anthropic)?;
        let openai = checked_provider("openai.base_url", file.openai)?;
        let model = match file.model {
            Some(text) => Some(ModelSpec::parse("model", &text)?),
            None => default_model(&anthropic, &openai),
        };
        let fallback_models = file
            .fallback_models
            .unwrap_or_default()
            .iter()
            .map(|m| ModelSpec::parse("fallback_models", m))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(url) = &file.s3.endpoint_url {
            check_url("s3.endpoint_url", url)?;
        }
        if let Some(url) = &file.slack.api_url {
            check_url("slack.api_url", url)?;
        }
        if let Some(url) = &file.discord.api_url {
            check_url("discord.api_url", url)?;
        }
        for (key, value) in [
            ("discord.application_id", &file.discord.application_id),
            ("discord.register_guild", &file.discord.register_guild),
        ] {
            if let Some(value) = value
                && value.trim().parse::<u64>().is_err()
            {
                return Err(ConfigError::value(
                    key,
                    format!("`{value}` is not a Discord id (a number)"),
                ));
            }
        }
        let sandbox = sandbox_settings(file.sandbox)?;
        let browser = browser_settings(file.browser)?;
        let web_search = web_search_settings(file.web_search)?;
        let embeddings = crate::embeddings::config::settings(file.embeddings, &openai)?;
        let ffmpeg = PathBuf::from(
            file.ffmpeg
                .filter(|f| !f.trim().is_empty())
                .unwrap_or_else(|| "ffmpeg".into()),
        );
        let agent = agent_config(&file.agent)?;
        let defaults = BusConfig::default();
        let bus = BusConfig {
            workers: positive("bus.workers", file.bus.workers, defaults.workers as i64)? as usize,
            max_queued: positive(
                "bus.max_queued",
                file.bus.max_queued,
                defaults.max_queued as i64,
            )? as u64,
            lease_seconds: positive(
                "bus.lease_seconds",
                file.bus.lease_seconds,
                defaults.lease_seconds as i64,
            )? as u64,
            max_attempts: positive(
                "bus.max_attempts",
                file.bus.max_attempts,
                defaults.max_attempts as i64,
            )? as u32,
            max_delivery_attempts: positive(
                "bus.max_delivery_attempts",
                file.bus.max_delivery_attempts,
                defaults.max_delivery_attempts as i64,
            )? as u32,
            leader_lease_seconds: positive(
                "bus.leader_lease_seconds",
                file.bus.leader_lease_seconds,
                defaults.leader_lease_seconds as i64,
            )? as u64,
        };
        let web_max_body_bytes =
            positive("web.max_body_bytes", file.web.max_body_bytes, 64 * 1024)? as usize;
        let web_upload_max_bytes =
            positive("web.upload_max_mb", file.web.upload_max_mb, 20)? as usize * 1024 * 1024;
        let media = crate::media::settings::validate(file.media, file.models, &openai)?;
        let mcp = crate::mcp::config::validate(file.mcp)?;
        let server_names: Vec<String> = mcp.iter().map(|m| m.name.clone()).collect();
        let profiles = crate::engine::profile::validate(file.profile, &server_names)?;
        let public_url = file
            .public_url
            .filter(|u| !u.trim().is_empty())
            .map(|u| public_origin(&u))
            .transpose()?;
        let web_header_timeout = Duration::from_secs(positive(
            "web.header_timeout_seconds",
            file.web.header_timeout_seconds,
            10,
        )? as u64);
        let web_max_connections =
            positive("web.max_connections", file.web.max_connections, 1024)? as usize;
        let guards = crate::engine::guard::settings::validate(
            file.access,
            file.budget,
            file.rate,
            file.prices,
            file.timezone.clone(),
        )?;
        let timezone = match file.timezone.map(|t| t.trim().to_string()) {
            None => "UTC".to_string(),
            Some(t) if t.is_empty() => "UTC".to_string(),
            Some(t) => {
                crate::schedule::spec::time_zone(&t)
                    .map_err(|e| ConfigError::value("timezone", e.to_string()))?;
                t
            }
        };
        let schedule = schedule_settings(file.schedule)?;
        let catch_up = catch_up_settings(file.catch_up)?;
        let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let cf_access = match (nonempty(file.cf_access_team), nonempty(file.cf_access_aud)) {
            (Some(team), Some(aud)) => Some((team, aud)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::value(
                    "cf_access_team",
                    "set both ECDYSIS_CF_ACCESS_TEAM and ECDYSIS_CF_ACCESS_AUD (the Access application's audience tag), or neither",
                ));
            }
        };
        Ok(Self {
            listen,
            data_dir,
            database_url,
            blob,
            s3: file.s3,
            secret_key: file.secret_key,
            admin_token: file.admin_token.filter(|t| !t.is_empty()),
            cf_access,
            log_format,
            model,
            fallback_models,
            anthropic,
            openai,
            slack: file.slack,
            discord: file.discord,
            sandbox,
            browser,
            web_search,
            embeddings,
            ffmpeg,
            agent,
            bus,
            web_max_body_bytes,
            web_upload_max_bytes,
            media,
            mcp,
            profiles,
            public_url,
            web_header_timeout,
            web_max_connections,
            guards,
            timezone,
            schedule,
            catch_up,
        })
    }

    /// True when the server listens only on loopback (where it may run without an admin token).
    pub fn listens_on_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        problem: format!("cannot read it: {e}"),
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        problem: format!("not valid TOML: {}", e.message()),
    })
}

/// Put every set environment variable into the table at its key path.
fn overlay_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(port) = env("PORT").filter(|_| env("ECDYSIS_LISTEN").is_none()) {
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| ConfigError::value("PORT", format!("`{port}` is not a port number")))?;
        table.insert(
            "listen".into(),
            toml::Value::String(format!("0.0.0.0:{port}")),
        );
    }
    for (key, names, kind) in ENV_KEYS {
        let Some((name, raw)) = names
            .iter()
            .find_map(|name| env(name).filter(|v| !v.is_empty()).map(|v| (*name, v)))
        else {
            continue;
        };
        let value = match kind {
            Kind::Str => toml::Value::String(raw),
            Kind::Int => toml::Value::Integer(raw.trim().parse().map_err(|_| {
                ConfigError::value(key, format!("{name}=`{raw}` is not a whole number"))
            })?),
            Kind::Bool => toml::Value::Boolean(parse_bool(&raw).ok_or_else(|| {
                ConfigError::value(key, format!("{name}=`{raw}` is neither true nor false"))
            })?),
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
        };
        insert_path(table, key, value);
    }
    Ok(())
}

fn insert_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

fn positive(key: &str, value: Option<i64>, default: i64) -> Result<i64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v > 0 => Ok(v),
        Some(v) => Err(ConfigError::value(
            key,
            format!("{v} must be greater than 0"),
        )),
    }
}

fn browser_settings(file: BrowserConfig) -> Result<BrowserSettings, ConfigError> {
    let defaults = BrowserSettings::default();
    if let Some(url) = &file.cdp_url {
        let parsed = Url::parse(url).map_err(|e| {
            ConfigError::value("browser.cdp_url", format!("`{url}` is not a URL ({e})"))
        })?;
        if !matches!(parsed.scheme(), "ws" | "wss" | "http" | "https") {
            return Err(ConfigError::value(
                "browser.cdp_url",
                format!("`{url}` must be a ws://, wss://, http:// or https:// URL"),
            ));
        }
    }
    let allow = file.allow.unwrap_or_default();
    for rule in &allow {
        crate::browser::url_guard::AllowRule::parse(rule)
            .map_err(|problem| ConfigError::value("browser.allow", problem))?;
    }
    let seconds = |key: &str, value: Option<i64>, default: Duration| {
        positive(key, value, default.as_secs() as i64).map(|s| Duration::from_secs(s as u64))
    };
    Ok(BrowserSettings {
        chromium: file
            .chromium
            .filter(|c| !c.trim().is_empty())
            .map(PathBuf::from),
        cdp_url: file.cdp_url.filter(|u| !u.trim().is_empty()),
        allow,
        idle: seconds("browser.idle_seconds", file.idle_seconds, defaults.idle)?,
        max_pages: positive(
            "browser.max_pages",
            file.max_pages,
            defaults.max_pages as i64,
        )? as usize,
        navigation_timeout: seconds(
            "browser.navigation_timeout_seconds",
            file.navigation_timeout_seconds,
            defaults.navigation_timeout,
        )?,
        max_record_seconds: positive(
            "browser.max_record_seconds",
            file.max_record_seconds,
            defaults.max_record_seconds as i64,
        )? as u64,
        rate_per_minute: positive(
            "browser.rate_per_minute",
            file.rate_per_minute,
            defaults.rate_per_minute as i64,
        )?
        .min(u32::MAX as i64) as u32,
        max_upload_bytes: positive(
            "browser.max_upload_bytes",
            file.max_upload_bytes,
            defaults.max_upload_bytes as i64,
        )? as usize,
        max_image_pixels: positive(
            "browser.max_image_pixels",
            file.max_image_pixels,
            defaults.max_image_pixels as i64,
        )?
        .clamp(16, 65_535) as u32,
        action_timeout: seconds(
            "browser.action_timeout_seconds",
            file.action_timeout_seconds,
            defaults.action_timeout,
        )?,
        snapshot_max_tokens: positive(
            "browser.snapshot_max_tokens",
            file.snapshot_max_tokens,
            defaults.snapshot_max_tokens as i64,
        )?
        .clamp(200, 50_000) as usize,
        allow_password_typing: file
            .allow_password_typing
            .unwrap_or(defaults.allow_password_typing),
    })
}

fn agent_config(file: &AgentFile) -> Result<AgentConfig, ConfigError> {
    let d = AgentConfig::default();
    let max_retries = match file.max_retries {
        None => d.max_retries,
        Some(n) if (0..=20).contains(&n) => n as u32,
        Some(n) => {
            return Err(ConfigError::value(
                "agent.max_retries",
                format!("{n} must be between 0 and 20"),
            ));
        }
    };
    let budget = positive(
        "agent.compaction_budget_tokens",
        file.compaction_budget_tokens,
        d.compaction_budget_tokens as i64,
    )?;
    if budget < MIN_COMPACTION_BUDGET {
        return Err(ConfigError::value(
            "agent.compaction_budget_tokens",
            format!(
                "{budget} is too small: the system prompt and tools alone take up to 2000 tokens (minimum {MIN_COMPACTION_BUDGET})"
            ),
        ));
    }
    let memory_notes_in_context = match file.memory_notes_in_context {
        None => d.memory_notes_in_context,
        Some(n) if (0..=100).contains(&n) => n as usize,
        Some(n) => {
            return Err(ConfigError::value(
                "agent.memory_notes_in_context",
                format!("{n} must be between 0 and 100"),
            ));
        }
    };
    Ok(AgentConfig {
        max_steps: positive("agent.max_steps", file.max_steps, d.max_steps as i64)?.min(100)
            as usize,
        turn_timeout: Duration::from_secs(positive(
            "agent.turn_timeout_seconds",
            file.turn_timeout_seconds,
            d.turn_timeout.as_secs() as i64,
        )? as u64),
        request_timeout: Duration::from_secs(positive(
            "agent.request_timeout_seconds",
            file.request_timeout_seconds,
            d.request_timeout.as_secs() as i64,
        )? as u64),
        max_retries,
        compaction_budget_tokens: budget as usize,
        max_output_tokens: positive(
            "agent.max_output_tokens",
            file.max_output_tokens,
            d.max_output_tokens as i64,
        )?
        .min(1_000_000) as u32,
        memory_notes_in_context,
    })
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn sandbox_settings(file: SandboxConfig) -> Result<SandboxSettings, ConfigError> {
    let d = SandboxSettings::default();
    let backend = match file.backend.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("namespace") => Some(SandboxBackend::Namespace),
        Some("docker") => Some(SandboxBackend::Docker),
        Some("off") => Some(SandboxBackend::Off),
        Some(other) => {
            return Err(ConfigError::value(
                "sandbox.backend",
                format!("`{other}` is not one of namespace, docker, off"),
            ));
        }
    };
    let rootfs = match file.rootfs.filter(|r| !r.trim().is_empty()) {
        None => None,
        Some(text) => {
            let path = PathBuf::from(&text);
            if !path.is_absolute() {
                return Err(ConfigError::value(
                    "sandbox.rootfs",
                    format!("`{text}` must be an absolute path to a root file system directory"),
                ));
            }
            Some(path)
        }
    };
    let workspaces = match file.workspaces.filter(|w| !w.trim().is_empty()) {
        None => None,
        Some(text) => {
            let path = PathBuf::from(&text);
            if !path.is_absolute() {
                return Err(ConfigError::value(
                    "sandbox.workspaces",
                    format!("`{text}` must be an absolute path"),
                ));
            }
            Some(path)
        }
    };
    let timeout = positive(
        "sandbox.timeout_seconds",
        file.timeout_seconds,
        d.timeout.as_secs() as i64,
    )? as u64;
    let list = |values: Option<Vec<String>>| -> Vec<String> {
        values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    Ok(SandboxSettings {
        backend,
        rootfs,
        workspaces,
        timeout: Duration::from_secs(timeout),
        // Unset, a command may use the CPU for as long as it may run.
        cpu_seconds: positive("sandbox.cpu_seconds", file.cpu_seconds, timeout as i64)? as u64,
        memory_mb: positive("sandbox.memory_mb", file.memory_mb, d.memory_mb as i64)? as u64,
        max_processes: positive(
            "sandbox.max_processes",
            file.max_processes,
            d.max_processes as i64,
        )? as u64,
        max_output_bytes: positive(
            "sandbox.max_output_bytes",
            file.max_output_bytes,
            d.max_output_bytes as i64,
        )? as usize,
        workspace_max_mb: positive(
            "sandbox.workspace_max_mb",
            file.workspace_max_mb,
            d.workspace_max_mb as i64,
        )? as u64,
        max_parallel: positive(
            "sandbox.max_parallel",
            file.max_parallel,
            d.max_parallel as i64,
        )? as usize,
        allow_users: list(file.allow_users),
        allow_channels: list(file.allow_channels),
        require_approval: file.require_approval.unwrap_or(d.require_approval),
    })
}

/// The origin of `ECDYSIS_PUBLIC_URL`: an http(s) URL of a host, without a path.
fn public_origin(text: &str) -> Result<String, ConfigError> {
    let key = "public_url";
    let url = check_url(key, text.trim())?;
    if url.host_str().is_none_or(str::is_empty) || !matches!(url.path(), "" | "/") {
        return Err(ConfigError::value(
            key,
            format!("`{text}` must be the server's address only, like https://chat.example.com"),
        ));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod public_url_tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(None, &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn public_url_and_listener_limits() {
        let c = load(&[]).unwrap();
        assert_eq!(c.public_url, None);
        assert_eq!(c.web_header_timeout, Duration::from_secs(10));
        assert_eq!(c.web_max_connections, 1024);
        let c = load(&[
            ("ECDYSIS_PUBLIC_URL", "https://Chat.Example.com/"),
            ("ECDYSIS_WEB_HEADER_TIMEOUT_SECONDS", "3"),
            ("ECDYSIS_WEB_MAX_CONNECTIONS", "50"),
        ])
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://chat.example.com"));
        assert_eq!(c.web_header_timeout, Duration::from_secs(3));
        assert_eq!(c.web_max_connections, 50);
        for bad in ["chat.example.com", "ftp://x", "https://x/chat"] {
            let e = load(&[("ECDYSIS_PUBLIC_URL", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("public_url"), "{e}");
        }
        let e = load(&[("ECDYSIS_WEB_MAX_CONNECTIONS", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.max_connections"), "{e}");
    }
}

fn check_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text)
        .map_err(|e| ConfigError::value(key, format!("`{text}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::value(
            key,
            format!("`{text}` must be an http:// or https:// URL"),
        ));
    }
    Ok(url)
}

fn check_database_url(text: &str) -> Result<(), ConfigError> {
    let key = "database_url";
    let url = Url::parse(text)
        .map_err(|e| ConfigError::value(key, format!("`{}` is not a URL ({e})", redact(text))))?;
    match url.scheme() {
        "sqlite" | "postgres" | "postgresql" => Ok(()),
        other => Err(ConfigError::value(
            key,
            format!("unsupported scheme `{other}` (use sqlite:// or postgres://)"),
        )),
    }
}

fn parse_blob_url(text: &str) -> Result<BlobLocation, ConfigError> {
    let key = "blob_url";
    let url = Url::parse(text)
        .map_err(|e| ConfigError::value(key, format!("`{text}` is not a URL ({e})")))?;
    match url.scheme() {
        "file" => {
            let path = url.to_file_path().map_err(|_| {
                ConfigError::value(key, format!("`{text}` must be file:///absolute/dir"))
            })?;
            Ok(BlobLocation::Dir(path))
        }
        "s3" => {
            let bucket = url.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(ConfigError::value(key, format!("`{text}` names no bucket")));
            }
            let prefix = url.path().trim_matches('/').to_string();
            Ok(BlobLocation::S3 { bucket, prefix })
        }
        other => Err(ConfigError::value(
            key,
            format!("unsupported scheme `{other}` (use file:///dir or s3://bucket/prefix)"),
        )),
    }
}

fn checked_provider(key: &str, keys: ProviderKeys) -> Result<ProviderKeys, ConfigError> {
    if let Some(url) = &keys.base_url {
        check_url(key, url)?;
    }
    Ok(ProviderKeys {
        api_key: keys.api_key.filter(|k| !k.is_empty()),
        base_url: keys.base_url,
    })
}

/// The first provider with a key, with a sensible current model.
fn default_model(anthropic: &ProviderKeys, openai: &ProviderKeys) -> Option<ModelSpec> {
    if anthropic.api_key.is_some() {
        return Some(ModelSpec {
            provider: Provider::Anthropic,
            name: "claude-sonnet-4-5".into(),
        });
    }
    if openai.api_key.is_some() {
        return Some(ModelSpec {
            provider: Provider::OpenAi,
            name: "gpt-4o-mini".into(),
        });
    }
    None
}

/// A URL with its password replaced (user info and `?password=`-style query parameters), for
/// messages and logs. Text that does not parse as a URL still loses anything between `://` and
/// `@`. See [`crate::redact`].
pub fn redact(text: &str) -> String {
    crate::redact::url(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecdysis.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(file.map(|_| path.as_path()), &|name| env.get(name).cloned())
    }

    #[test]
    fn embedded_defaults() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://./data/ecdysis.db");
        assert_eq!(c.blob, BlobLocation::Dir(PathBuf::from("./data/blobs")));
        assert!(c.model.is_none());
        assert!(c.listens_on_loopback());
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            Some("listen = \"127.0.0.1:9000\"\n[bus]\nworkers = 3\n"),
            &[
                ("ECDYSIS_LISTEN", "127.0.0.1:9100"),
                ("ECDYSIS_BUS_MAX_QUEUED", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.bus.workers, 3);
        assert_eq!(c.bus.max_queued, 7);
    }

    #[test]
    fn port_means_all_interfaces() {
        let c = load(None, &[("PORT", "3000")]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:3000");
        assert!(!c.listens_on_loopback());
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = load(None, &[("ECDYSIS_MODEL", "gemini/pro")]).unwrap_err();
        assert!(
            e.to_string().contains("`model`") && e.to_string().contains("gemini"),
            "{e}"
        );
        let e = load(None, &[("ECDYSIS_BLOB_URL", "ftp://x/y")]).unwrap_err();
        assert!(e.to_string().contains("blob_url"), "{e}");
        let e = load(None, &[("DATABASE_URL", "not a url")]).unwrap_err();
        assert!(e.to_string().contains("database_url"), "{e}");
        let e = load(None, &[("ECDYSIS_BUS_WORKERS", "many")]).unwrap_err();
        assert!(e.to_string().contains("bus.workers"), "{e}");
        let e = load(None, &[("ANTHROPIC_BASE_URL", "localhost:8080")]).unwrap_err();
        assert!(e.to_string().contains("anthropic.base_url"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load(Some("lisen = \"x\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = load(Some("[bus]\nworkerz = 1\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("workerz"), "{e}");
    }

    #[test]
    fn unreadable_file_is_reported() {
        let e =
            Config::load_with(Some(Path::new("/nonexistent/ecdysis.toml")), &|_| None).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn browser_settings_from_env() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.browser, BrowserSettings::default());
        assert_eq!(c.ffmpeg, PathBuf::from("ffmpeg"));
        let c = load(
            Some("[browser]\nmax_pages = 2\n"),
            &[
                (
                    "ECDYSIS_BROWSER_ALLOW",
                    "127.0.0.1, intranet.local,10.0.0.0/8",
                ),
                ("ECDYSIS_BROWSER_IDLE_SECONDS", "5"),
                ("ECDYSIS_FFMPEG", "/opt/ffmpeg"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.browser.allow,
            ["127.0.0.1", "intranet.local", "10.0.0.0/8"]
        );
        assert_eq!(c.browser.idle, Duration::from_secs(5));
        assert_eq!(c.browser.max_pages, 2);
        assert_eq!(c.ffmpeg, PathBuf::from("/opt/ffmpeg"));
        let e = load(None, &[("ECDYSIS_BROWSER_ALLOW", "10.0.0.0/99")]).unwrap_err();
        assert!(e.to_string().contains("browser.allow"), "{e}");
        let e = load(None, &[("ECDYSIS_BROWSER_CDP_URL", "ftp://x")]).unwrap_err();
        assert!(e.to_string().contains("browser.cdp_url"), "{e}");
        let e = load(None, &[("ECDYSIS_BROWSER_MAX_RECORD_SECONDS", "0")]).unwrap_err();
        assert!(e.to_string().contains("browser.max_record_seconds"), "{e}");
    }

    #[test]
    fn agent_settings() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.agent, AgentConfig::default());
        assert_eq!(c.agent.max_steps, 8);
        let c = load(
            Some("[agent]\nmax_steps = 3\nmax_retries = 0\n"),
            &[
                ("ECDYSIS_AGENT_TURN_TIMEOUT_SECONDS", "9"),
                ("ECDYSIS_AGENT_COMPACTION_BUDGET_TOKENS", "5000"),
            ],
        )
        .unwrap();
        assert_eq!(c.agent.max_steps, 3);
        assert_eq!(c.agent.max_retries, 0);
        assert_eq!(c.agent.turn_timeout, Duration::from_secs(9));
        assert_eq!(c.agent.compaction_budget_tokens, 5000);
        for (env, key) in [
            ("ECDYSIS_AGENT_MAX_STEPS", "agent.max_steps"),
            (
                "ECDYSIS_AGENT_COMPACTION_BUDGET_TOKENS",
                "agent.compaction_budget_tokens",
            ),
            ("ECDYSIS_AGENT_MAX_RETRIES", "agent.max_retries"),
            (
                "ECDYSIS_AGENT_REQUEST_TIMEOUT_SECONDS",
                "agent.request_timeout_seconds",
            ),
        ] {
            let e = load(None, &[(env, "-1")]).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = load(None, &[("ECDYSIS_AGENT_COMPACTION_BUDGET_TOKENS", "100")]).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = load(Some("[agent]\nmax_stepz = 1\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("max_stepz"), "{e}");
    }

    #[test]
    fn sandbox_settings_from_file_and_env() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.sandbox, SandboxSettings::default());
        let c = load(
            Some("[sandbox]\nbackend = \"off\"\nmemory_mb = 64\nallow_users = [\"U1\"]\n"),
            &[
                ("ECDYSIS_SANDBOX_TIMEOUT_SECONDS", "5"),
                ("ECDYSIS_SANDBOX_ALLOW_CHANNELS", "C1, slack:C2"),
                ("ECDYSIS_SANDBOX_REQUIRE_APPROVAL", "yes"),
                ("ECDYSIS_SANDBOX_ROOTFS", "/srv/rootfs"),
            ],
        )
        .unwrap();
        assert_eq!(c.sandbox.backend, Some(SandboxBackend::Off));
        assert_eq!(c.sandbox.timeout, Duration::from_secs(5));
        assert_eq!(c.sandbox.cpu_seconds, 5, "CPU time defaults to the timeout");
        assert_eq!(c.sandbox.memory_mb, 64);
        assert_eq!(c.sandbox.allow_users, ["U1"]);
        assert_eq!(c.sandbox.allow_channels, ["C1", "slack:C2"]);
        assert!(c.sandbox.require_approval);
        assert_eq!(c.sandbox.rootfs, Some(PathBuf::from("/srv/rootfs")));
        for (env, value, key) in [
            ("ECDYSIS_SANDBOX", "chroot", "sandbox.backend"),
            ("ECDYSIS_SANDBOX_MEMORY_MB", "0", "sandbox.memory_mb"),
            (
                "ECDYSIS_SANDBOX_REQUIRE_APPROVAL",
                "maybe",
                "sandbox.require_approval",
            ),
            ("ECDYSIS_SANDBOX_ROOTFS", "rootfs", "sandbox.rootfs"),
            ("ECDYSIS_SANDBOX_MAX_PARALLEL", "-2", "sandbox.max_parallel"),
        ] {
            let e = load(None, &[(env, value)]).unwrap_err();
            assert!(e.to_string().contains(key), "{env}: {e}");
        }
    }

    #[test]
    fn discord_settings() {
        let c = load(
            Some("[discord]\nregister_guild = \"123\"\n"),
            &[
                ("DISCORD_TOKEN", "t"),
                ("DISCORD_APPLICATION_ID", "42"),
                ("ECDYSIS_DISCORD_REGISTER_ON_START", "yes"),
            ],
        )
        .unwrap();
        assert_eq!(c.discord.register_on_start, Some(true));
        assert_eq!(c.discord.register_guild.as_deref(), Some("123"));
        let e = load(None, &[("DISCORD_APPLICATION_ID", "my-app")]).unwrap_err();
        assert!(e.to_string().contains("discord.application_id"), "{e}");
        let e = load(None, &[("ECDYSIS_DISCORD_REGISTER_ON_START", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("discord.register_on_start"), "{e}");
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert!(!redact("postgres://u:sec ret@h:bad/db").contains("sec"));
        assert_eq!(
            redact("postgres://u:pw@h/db?password=pw2"),
            "postgres://u:***@h/db?password=***"
        );
    }

    #[test]
    fn mcp_servers_and_profiles() {
        let c = load(
            Some(
                r#"
[[mcp]]
name = "time"
command = "mcp-server-time"
args = ["--local-timezone", "UTC"]
env = { TZ_TOKEN = "very-secret-value" }

[[mcp]]
name = "docs"
url = "http://127.0.0.1:9/mcp"
headers = { Authorization = "Bearer another-secret" }
channels = ["slack:C1"]
approval = ["delete_page"]

[[profile]]
name = "support"
channels = ["slack:C1", "discord:*"]
instructions = "Answer from the docs."
model = "openai/gpt-4o-mini"
tools = ["memory_search", "docs__*"]
mcp = ["docs"]
sandbox = false
memory = "profile"
"#,
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.mcp.len(), 2);
        assert_eq!(c.mcp[1].channels[0].as_str(), "slack:C1");
        assert_eq!(c.profiles.len(), 1);
        let p = &c.profiles[0];
        assert_eq!(p.model.as_ref().unwrap().to_string(), "openai/gpt-4o-mini");
        assert!(!p.sandbox && p.browser);
        let debug = format!("{c:?}");
        assert!(!debug.contains("very-secret-value") && !debug.contains("another-secret"));
    }

    #[test]
    fn mcp_and_profile_mistakes_name_their_key() {
        for (file, key) in [
            ("[[mcp]]\nname = \"x\"\n", "`mcp.x`"),
            (
                "[[mcp]]\nname = \"x\"\ncommand = \"a\"\nurl = \"http://h/\"\n",
                "`mcp.x`",
            ),
            (
                "[[profile]]\nname = \"p\"\nchannels = [\"*\"]\ntools = [\"nope\"]\n",
                "`profile.p.tools`",
            ),
            (
                "[[profile]]\nname = \"p\"\nchannels = [\"*\"]\nmcp = [\"nope\"]\n",
                "`profile.p.mcp`",
            ),
            (
                "[[profile]]\nname = \"a\"\nchannels = [\"web:x\"]\n[[profile]]\nname = \"b\"\nchannels = [\"web:x\"]\n",
                "`profile.b.channels`",
            ),
            (
                "[[profile]]\nname = \"p\"\nchannels = [\"*\"]\nmodel = \"gemini/x\"\n",
                "`profile.p.model`",
            ),
        ] {
            let e = load(Some(file), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{file}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = load(
            Some("[[mcp]]\nname = \"x\"\ncommand = \"a\"\ncwd = \"/\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("cwd"), "{e}");
    }

    #[test]
    fn default_model_follows_keys() {
        let c = load(None, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
        assert_eq!(c.model.unwrap().provider, Provider::OpenAi);
        let c = load(None, &[("ECDYSIS_BLOB_URL", "s3://bucket/some/prefix")]).unwrap();
        assert_eq!(
            c.blob,
            BlobLocation::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
    }
}
