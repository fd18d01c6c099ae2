//! `ecdysis doctor`: check every configured part and say, in one line each, what to fix.

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
    report
}
