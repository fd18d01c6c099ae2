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
    match crate::store::open(&config.database_url).await {
        Ok(store) => match store.ping().await {
            Ok(()) => report.ok("database", format!("{} ({db_url})", store.backend())),
            Err(e) => report.fail("database", e.to_string(), "check DATABASE_URL and that the server runs"),
        },
        Err(e) => report.fail(
            "database",
            e.to_string(),
            "check DATABASE_URL (sqlite://path or postgres://user:pass@host/db) and that the server runs",
        ),
    }
    match crate::blob::open(config).await {
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
    report
}

/// The Slack line: `auth.test` with the bot token.
async fn check_slack(config: &Config, report: &mut Report) {
    match crate::slack::auth_test(config).await {
        Some(Ok(detail)) => report.ok("slack", detail),
        Some(Err(e)) => report.fail(
            "slack",
            e,
            "check SLACK_BOT_TOKEN (xoxb-…, from OAuth & Permissions) and SLACK_API_URL",
        ),
        None if crate::slack::configured(config) => report.ok(
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
    let settings = crate::discord::settings(config);
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
