//! Catch-up after downtime: what an adapter needs to fetch the messages said while ecdysis was
//! away (stopped, deploying, or disconnected) and hand them to the core like live ones.
//!
//! The core knows where each conversation was last heard from ([`LastSeen`], from its inbox);
//! the adapter knows how to ask its platform for what came after, and which of those messages
//! are for the bot. Caught-up messages carry the same event ids as live ones, so the inbox
//! drops every message that did arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::ConversationRef;

/// The newest event the core stored for one conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct LastSeen {
    pub conversation: ConversationRef,
    /// The platform's id of that event (a Discord snowflake, a Slack message key, …).
    pub platform_event_id: String,
    /// The event's route, as the adapter wrote it (a Slack message's `ts` is there).
    pub route: serde_json::Value,
    /// When the core received it (ms since the Unix epoch).
    pub received_ms: i64,
}

/// Where the conversations of a platform were last heard from: the core's inbox.
#[async_trait]
pub trait Seen: Send + Sync + 'static {
    /// The conversations of `platform` with an event received at or after `since_ms`, most
    /// recent first, at most `limit`.
    async fn last_seen(
        &self,
        platform: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<LastSeen>, crate::BackendError>;
}

/// How far catch-up reaches back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUpLimits {
    /// Messages older than this are never fetched (default 24 h).
    pub window: Duration,
    /// At most this many messages per channel or thread (the newest).
    pub per_place: usize,
    /// Conversations heard from within this long are looked at (default a week).
    pub lookback: Duration,
    /// At most this many channels and threads are asked per run.
    pub max_places: usize,
}

impl Default for CatchUpLimits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(24 * 3600),
            per_place: 200,
            lookback: Duration::from_secs(7 * 24 * 3600),
            max_places: 100,
        }
    }
}

/// What one catch-up run did, for the log and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Channels and threads asked.
    pub places: usize,
    /// Messages the platform returned that were newer than the last one seen.
    pub fetched: usize,
    /// Messages handed to the core (it drops those that arrived live, and those not for the
    /// bot).
    pub submitted: usize,
    /// Channels or threads whose history could not be read.
    pub failed: usize,
}

/// Catch-up as an adapter holds it once the core turned it on: where conversations were last
/// heard from, the limits, and "one run at a time".
pub struct CatchUp {
    pub seen: Arc<dyn Seen>,
    pub limits: CatchUpLimits,
    running: AtomicBool,
}

impl CatchUp {
    pub fn new(seen: Arc<dyn Seen>, limits: CatchUpLimits) -> Self {
        Self {
            seen,
            limits,
            running: AtomicBool::new(false),
        }
    }

    /// Mark a run as started: false when one is going already (then start none).
    pub fn begin(&self) -> bool {
        !self.running.swap(true, Ordering::AcqRel)
    }

    /// Mark the run started by [`CatchUp::begin`] as over.
    pub fn end(&self) {
        self.running.store(false, Ordering::Release);
    }
}

/// Log how a run went (`platform` names the adapter: `"Slack catch-up done"`).
pub fn log_run<E: std::fmt::Display>(
    platform: &str,
    result: &Result<CatchUpReport, E>,
    elapsed: Duration,
) {
    match result {
        Ok(report) => tracing::info!(
            places = report.places,
            fetched = report.fetched,
            submitted = report.submitted,
            failed = report.failed,
            ms = elapsed.as_millis() as u64,
            "{platform} catch-up done"
        ),
        Err(e) => tracing::warn!(error = %e, "{platform} catch-up failed"),
    }
}
