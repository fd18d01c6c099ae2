//! `ecdysis doctor`: check every configured part and say, in one line each, what to fix.

use crate::browser::{self, Source};
use crate::config::{Config, redact};

/// The lines to print and whether any configured part failed.
pub struct Report {
    pub lines: Vec<String>,
    pub failed: bool,
}

impl Report {
    fn ok(&mut self, part: &str, detail: impl AsRef<str>) {
        self.lines
            .push(format!("ok    {part:<10} {}", detail.as_ref()));
    }

    fn fail(&mut self, part: &str, detail: impl AsRef<str>, fix: &str) {
        self.failed = true;
        self.lines
            .push(format!("FAIL  {part:<10} {} — {fix}", detail.as_ref()));
    }

    fn off(&mut self, part: &str, detail: impl AsRef<str>) {
        self.lines
            .push(format!("-     {part:<10} {}", detail.as_ref()));
    }
}

/// Run every check.
pub async fn run(config: &Config) -> Report {
    let mut report = Report {
        lines: Vec::new(),
        failed: false,
    };
    let db_url = redact(&config.database_url);
    let store = match crate::storage::store::open(&config.database_url).await {
        Ok(store) => match store.ping().await {
            Ok(()) => {
                report.ok("database", format!("{} ({db_url})", store.backend()));
                Some(store)
            }
            Err(e) => {
                let problem = e.to_string();
                report.fail("database", &problem, database_fix(&problem));
                None
            }
        },
        Err(e) => {
            let problem = e.to_string();
            report.fail("database", &problem, database_fix(&problem));
            None
        }
    };
    check_instances(config, store.as_deref(), &mut report).await;
    check_embeddings(config, store.as_deref(), &mut report).await;
    match crate::storage::blob::open(config).await {
        Ok(blobs) => match blobs.ping().await {
            Ok(()) => report.ok("blobs", blobs.describe()),
            Err(e) => report.fail(
                "blobs",
                e.to_string(),
                "check ECDYSIS_BLOB_URL, AWS_ENDPOINT_URL and the AWS_* credentials",
            ),
        },
        Err(e) => report.fail("blobs", e.to_string(), "check ECDYSIS_BLOB_URL"),
    }
    match &config.model {
        Some(model) => report.ok(
            "model",
            format!("{model} (configured; not called by doctor)"),
        ),
        None => report.off(
            "model",
            "not configured: set ANTHROPIC_API_KEY or OPENAI_API_KEY to chat",
        ),
    }
    let browser = check_browser(config, &mut report).await;
    check_ffmpeg(config, browser, &mut report).await;
    check_sandbox(config, &mut report).await;
    check_discord(config, &mut report).await;
    check_slack(config, &mut report).await;
    check_admin(config, &mut report);
    check_secret_key(config, &mut report);
    check_mcp(config, &mut report).await;
    check_profiles(config, &mut report);
    // Errors from outside (a driver's message, an API's answer) may quote a secret.
    let redactor = crate::redact::global();
    redactor.add_config(config);
    for line in &mut report.lines {
        if let std::borrow::Cow::Owned(masked) = redactor.redact(line) {
            *line = masked;
        }
    }
    report
}

/// The embedder (one test embedding) and the rows waiting to be embedded.
async fn check_embeddings(
    config: &Config,
    store: Option<&dyn crate::storage::store::Store>,
    report: &mut Report,
) {
    let Some(settings) = &config.embeddings else {
        report.off(
            "embeddings",
            "off: memory is searched by full text (set ECDYSIS_EMBEDDINGS to search by meaning too)",
        );
        return;
    };
    match crate::embeddings::probe(settings).await {
        Ok(probe) => {
            let queue = match store {
                Some(store) => match store.index_status(&probe.model).await {
                    Ok(s) if s.failing > 0 => format!(
                        "; {} rows wait to be embedded, {} failing (last error: {})",
                        s.waiting,
                        s.failing,
                        s.last_error.as_deref().unwrap_or("")
                    ),
                    Ok(s) => format!(
                        "; {} vectors, {} rows wait to be embedded",
                        s.vectors, s.waiting
                    ),
                    Err(e) => format!("; queue unknown ({e})"),
                },
                None => String::new(),
            };
            report.ok(
                "embeddings",
                format!(
                    "{} ({} dimensions, test embedding in {} ms){queue}",
                    probe.model,
                    probe.dimension,
                    probe.took.as_millis()
                ),
            );
        }
        Err(e) => report.fail(
            "embeddings",
            e.to_string(),
            match settings.embedder {
                crate::embeddings::EmbedderSpec::Local { .. } => {
                    "ECDYSIS_EMBEDDINGS=local:<dir> needs a sentence-transformers BERT directory with config.json, tokenizer.json and model.safetensors"
                }
                crate::embeddings::EmbedderSpec::OpenAi { .. } => {
                    "check ECDYSIS_EMBEDDINGS_BASE_URL (else OPENAI_BASE_URL) and ECDYSIS_EMBEDDINGS_API_KEY (else OPENAI_API_KEY); full-text search works meanwhile"
                }
            },
        ),
    }
}

/// What to try for a database that does not open, by what went wrong.
fn database_fix(problem: &str) -> &'static str {
    let p = problem.to_ascii_lowercase();
    if p.contains("password authentication failed") || p.contains("authentication") {
        "the user or password in DATABASE_URL is wrong (fly postgres attach sets it for you)"
    } else if p.contains("does not exist") && p.contains("database") {
        "create the database (createdb NAME) or fix its name in DATABASE_URL"
    } else if p.contains("connection refused") || p.contains("timed out") || p.contains("resolve") {
        "the server is not reachable: is Postgres running, and are the host and port in DATABASE_URL right?"
    } else if p.contains("unable to open")
        || p.contains("permission denied")
        || p.contains("cannot create")
    {
        "ecdysis cannot write the SQLite file: check ECDYSIS_DATA_DIR / DATABASE_URL and the directory's permissions"
    } else if p.contains("migration") {
        "the database has migrations this build does not know (a newer ecdysis ran on it?): run the newer version, or restore a backup"
    } else {
        "check DATABASE_URL (sqlite://path or postgres://user:pass@host/db) and that the server runs"
    }
}

/// The instances line: SQLite is single-instance (is one running?); Postgres shows who holds
/// the gateway/socket leases.
async fn check_instances(
    config: &Config,
    store: Option<&dyn crate::storage::store::Store>,
    report: &mut Report,
) {
    let Some(store) = store else { return };
    if store.backend() == "sqlite" {
        match crate::server::instance_lock::acquire(&config.database_url) {
            Ok(_) => report.ok("instances", "SQLite: one instance at a time; none is running now"),
            Err(crate::server::instance_lock::InstanceLockError::Busy { holder, .. }) => report.ok(
                "instances",
                format!("SQLite: one instance at a time; one is running{holder}"),
            ),
            Err(e) => report.fail(
                "instances",
                e.to_string(),
                "ecdysis must be able to create <database>.lock next to the SQLite file: check the directory's permissions",
            ),
        }
        return;
    }
    match store.leases().await {
        Ok(leases) => {
            let now = crate::storage::store::UnixMs::now();
            let held: Vec<String> = leases
                .iter()
                .filter(|l| l.lease_until > now)
                .map(|l| format!("{} held by {}", l.name, l.owner))
                .collect();
            report.ok(
                "instances",
                if held.is_empty() {
                    "Postgres: any number of instances; no gateway/socket lease is held".to_string()
                } else {
                    format!("Postgres: any number of instances; {}", held.join(", "))
                },
            );
        }
        Err(e) => report.fail(
            "instances",
            e.to_string(),
            "the leases table is missing or unreadable: run `ecdysis migrate`",
        ),
    }
}

/// The admin line: `/admin` on or off, and whether `serve` would refuse to start.
fn check_admin(config: &Config, report: &mut Report) {
    match (&config.admin_token, config.listens_on_loopback()) {
        (Some(token), _) if token.len() < 16 => report.fail(
            "admin",
            "ECDYSIS_ADMIN_TOKEN is shorter than 16 characters",
            "use a long random token: openssl rand -hex 32",
        ),
        (Some(_), _) => report.ok("admin", "/admin is on (ECDYSIS_ADMIN_TOKEN)"),
        (None, true) => report.off(
            "admin",
            "off: set ECDYSIS_ADMIN_TOKEN to get /admin",
        ),
        (None, false) => report.fail(
            "admin",
            format!("serve listens on {} (not loopback) without ECDYSIS_ADMIN_TOKEN and will refuse to start", config.listen),
            "set ECDYSIS_ADMIN_TOKEN (openssl rand -hex 32), or listen on 127.0.0.1",
        ),
    }
}

/// The key line: where the key that encrypts stored tokens comes from.
fn check_secret_key(config: &Config, report: &mut Report) {
    match crate::storage::secret_box::SecretBox::from_config(config) {
        Ok(_) if config.secret_key.is_some() => report.ok(
            "token key",
            "tokens in the database are encrypted with ECDYSIS_SECRET_KEY",
        ),
        Ok(_) => report.ok(
            "token key",
            format!(
                "tokens in the database are encrypted with the key file generated in {} (on hosts whose disk does not survive a redeploy, such as Fly, set ECDYSIS_SECRET_KEY)",
                config.data_dir.display()
            ),
        ),
        Err(e) => report.fail(
            "token key",
            e.to_string(),
            "set ECDYSIS_SECRET_KEY (openssl rand -hex 32), or make ECDYSIS_DATA_DIR writable",
        ),
    }
}

/// The Slack line: `auth.test` with the bot token.
async fn check_slack(config: &Config, report: &mut Report) {
    match crate::platforms::slack::auth_test(config).await {
        Some(Ok(detail)) => report.ok("slack", detail),
        Some(Err(e)) => report.fail(
            "slack",
            e,
            "check SLACK_BOT_TOKEN (xoxb-…, from OAuth & Permissions) and SLACK_API_URL",
        ),
        None if crate::platforms::slack::configured(config) => report.ok(
            "slack",
            "no SLACK_BOT_TOKEN: tokens come from workspaces installed at /slack/install",
        ),
        None => report.off(
            "slack",
            "not configured (SLACK_SIGNING_SECRET or SLACK_APP_TOKEN, and SLACK_BOT_TOKEN)",
        ),
    }
}

/// The Discord line: `GET /users/@me` with the bot token.
async fn check_discord(config: &Config, report: &mut Report) {
    let settings = crate::platforms::discord::settings(config);
    if settings.token.is_none() {
        match settings.public_key {
            Some(_) => report.ok(
                "discord",
                "HTTP interactions only (no DISCORD_TOKEN: no gateway)",
            ),
            None => report.off("discord", "not configured (DISCORD_TOKEN)"),
        }
        return;
    }
    match ecdysis_discord::current_user(&settings).await {
        Ok(user) => report.ok("discord", format!("bot {user} at {}", settings.api_url)),
        Err(e) => report.fail(
            "discord",
            e.to_string(),
            "check DISCORD_TOKEN (Bot token from the Developer Portal) and DISCORD_API_URL",
        ),
    }
}

/// The browser line; true when `/screenshot` and `/record` are on.
async fn check_browser(config: &Config, report: &mut Report) -> bool {
    let settings = &config.browser;
    let source = match (&settings.cdp_url, browser::find_chromium(settings)) {
        (Some(url), _) => Source::Remote(url.clone()),
        (None, Some(path)) => Source::Local(path),
        (None, None) => {
            match &settings.chromium {
                Some(path) => report.fail(
                    "chromium",
                    format!("ECDYSIS_CHROMIUM={} is not an executable", path.display()),
                    "install Chromium (apt-get install chromium) or fix ECDYSIS_CHROMIUM",
                ),
                None => report.off(
                    "chromium",
                    "not found on PATH: /screenshot and /record are off (apt-get install chromium, or set ECDYSIS_CHROMIUM or ECDYSIS_BROWSER_CDP_URL)",
                ),
            }
            return false;
        }
    };
    match browser::probe(&source).await {
        Ok(version) => {
            report.ok("chromium", format!("{version}; starts on first use"));
            true
        }
        Err(e) => {
            report.fail(
                "chromium",
                e,
                "check ECDYSIS_CHROMIUM / ECDYSIS_BROWSER_CDP_URL (Debian: apt-get install chromium)",
            );
            false
        }
    }
}

/// The ffmpeg line: a failure when `/record` is on (or ECDYSIS_FFMPEG is set) and ffmpeg is
/// missing.
async fn check_ffmpeg(config: &Config, browser_on: bool, report: &mut Report) {
    let fix = "install ffmpeg (apt-get install ffmpeg) or set ECDYSIS_FFMPEG to its path; /record needs it";
    match browser::record::ffmpeg_version(&config.ffmpeg).await {
        Ok(version) => report.ok("ffmpeg", version),
        Err(e) if browser_on || config.ffmpeg.as_os_str() != "ffmpeg" => {
            report.fail("ffmpeg", e, fix)
        }
        Err(e) => report.off("ffmpeg", format!("{e} (needed by /record only)")),
    }
}

/// The sandbox line: runs a real command in the configured backend.
async fn check_sandbox(config: &Config, report: &mut Report) {
    match crate::sandbox::detect(config).await {
        crate::sandbox::Availability::Ready(sandbox) => report.ok(
            "sandbox",
            format!("{}: a test command ran", sandbox.describe()),
        ),
        crate::sandbox::Availability::Off {
            reason,
            requested: true,
        } => report.fail(
            "sandbox",
            reason,
            "/run is off; fix the above or set ECDYSIS_SANDBOX=off",
        ),
        crate::sandbox::Availability::Off { reason, .. } => {
            report.off("sandbox", format!("/run is off: {reason}"))
        }
    }
}

/// How long `doctor` waits for the MCP servers to connect and list their tools.
const MCP_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Start every `[[mcp]]` server, wait until each is up or has failed, and say which and why.
async fn check_mcp(config: &Config, report: &mut Report) {
    if config.mcp.is_empty() {
        report.off("mcp", "no [[mcp]] servers configured");
        return;
    }
    // Servers with `sandbox = true` start in the sandbox, as `serve` starts them.
    let sandbox = if config.mcp.iter().any(|s| s.sandbox) {
        match crate::storage::blob::open(config).await {
            Ok(blobs) => crate::sandbox::open(config, blobs).await.ok(),
            Err(_) => None,
        }
    } else {
        None
    };
    let hub = crate::mcp::McpHub::start(&config.mcp, None, sandbox);
    let settled = hub.settled(MCP_WAIT).await;
    for status in hub.status() {
        match &status.health {
            crate::mcp::Health::Up { .. } => report.ok("mcp", status.line()),
            crate::mcp::Health::Starting if !settled => report.fail(
                "mcp",
                format!(
                    "{}: no answer within {} s",
                    status.line(),
                    MCP_WAIT.as_secs()
                ),
                "check that the server speaks MCP on stdout (stdio) or at its URL",
            ),
            _ => report.fail(
                "mcp",
                status.line(),
                "check the server's command, args and env (or url and headers) in [[mcp]]",
            ),
        }
    }
    hub.shutdown().await;
}

/// The profiles and the channels they claim; a profile model without credentials fails.
fn check_profiles(config: &Config, report: &mut Report) {
    if config.profiles.is_empty() {
        report.off("profiles", "none: every channel uses the default profile");
        return;
    }
    for profile in &config.profiles {
        let channels: Vec<&str> = profile.channels.iter().map(|c| c.as_str()).collect();
        let line = format!("{} in {}", profile.describe(), channels.join(", "));
        let missing = profile.model.as_ref().and_then(|model| {
            let keys = match model.provider {
                crate::config::Provider::Anthropic => &config.anthropic,
                crate::config::Provider::OpenAi => &config.openai,
            };
            let usable = keys.api_key.is_some()
                || (model.provider == crate::config::Provider::OpenAi && keys.base_url.is_some());
            (!usable).then(|| crate::agent::provider::key_env(model.provider))
        });
        match missing {
            Some(env) => report.fail(
                "profiles",
                line,
                &format!("set {env} for this profile's model"),
            ),
            None => report.ok("profiles", line),
        }
    }
}
