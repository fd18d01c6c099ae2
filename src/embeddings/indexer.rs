//! The indexer: embeds queued notes and chunks in batches, off the hot path. It chunks new
//! compactions, claims due queue rows (leased, so instances sharing a database split the work),
//! embeds them and stores the vectors; a failed batch goes back to the queue with a growing
//! delay and a warning. On start it queues whatever has no vector of the current model, so a
//! changed model re-embeds everything in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Embedder, chunks};
use crate::storage::store::{Result, Store};

/// How often an idle indexer looks for new rows.
const POLL: Duration = Duration::from_millis(500);
/// Compactions chunked per pass.
const COMPACTIONS_PER_PASS: i64 = 8;

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Rows embedded and stored.
    pub embedded: usize,
    /// Rows whose batch failed (they wait for a retry).
    pub failed: usize,
    /// Compactions cut into chunks.
    pub chunked: usize,
}

impl Pass {
    fn idle(&self) -> bool {
        self.embedded == 0 && self.failed == 0 && self.chunked == 0
    }
}

/// The embedding worker of one process.
pub struct Indexer {
    store: Arc<dyn Store>,
    embedder: Arc<dyn Embedder>,
    batch: usize,
    /// The first retry's delay; it doubles per attempt up to [`Indexer::MAX_BACKOFF`].
    backoff: Duration,
    lease: Duration,
    owner: String,
    embedded: AtomicU64,
    wake: Notify,
}

impl Indexer {
    /// The longest a failed row waits before its next try.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

    pub fn new(store: Arc<dyn Store>, embedder: Arc<dyn Embedder>, batch: usize) -> Self {
        Self {
            store,
            embedder,
            batch: batch.max(1),
            backoff: Duration::from_secs(5),
            lease: Duration::from_secs(300),
            owner: format!("indexer-{}", std::process::id()),
            embedded: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    /// The first retry's delay (tests shorten it).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The model whose vectors this indexer makes.
    pub fn model(&self) -> &str {
        self.embedder.model()
    }

    /// Rows embedded by this process since it started.
    pub fn embedded(&self) -> u64 {
        self.embedded.load(Ordering::Relaxed)
    }

    /// Look for work now instead of at the next poll (after a note is saved).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Queue what has no vector of the current model (run once when starting).
    pub async fn queue_missing(&self) -> Result<i64> {
        let queued = self.store.queue_missing(self.model()).await?;
        if queued > 0 {
            info!(
                model = self.model(),
                queued, "memory rows queued for embedding"
            );
        }
        Ok(queued)
    }

    fn retry_delay(&self, attempts: i64) -> Duration {
        let doublings = attempts.clamp(1, 20) as u32 - 1;
        self.backoff
            .saturating_mul(1u32 << doublings.min(16))
            .min(Self::MAX_BACKOFF)
    }

    /// Chunk new compactions, then embed one batch of due rows.
    pub async fn run_once(&self) -> Result<Pass> {
        let mut pass = Pass::default();
        for source in self
            .store
            .unchunked_compactions(COMPACTIONS_PER_PASS)
            .await?
        {
            let pieces = chunks::chunk(&source);
            self.store.add_chunks(&source, &pieces).await?;
            pass.chunked += 1;
        }
        let jobs = self
            .store
            .claim_embed_jobs(
                &self.owner,
                self.batch as i64,
                self.lease.as_millis() as i64,
            )
            .await?;
        if jobs.is_empty() {
            return Ok(pass);
        }
        let texts: Vec<String> = jobs.iter().map(|j| j.text.clone()).collect();
        match self.embedder.embed(&texts).await {
            Ok(vectors) => {
                let done: Vec<_> = jobs.into_iter().zip(vectors).collect();
                pass.embedded = self.store.store_vectors(self.model(), &done).await?;
                self.embedded
                    .fetch_add(pass.embedded as u64, Ordering::Relaxed);
                debug!(
                    model = self.model(),
                    embedded = pass.embedded,
                    "memory rows embedded"
                );
            }
            Err(error) => {
                let attempts = jobs.iter().map(|j| j.attempts).max().unwrap_or(1);
                let delay = self.retry_delay(attempts);
                warn!(
                    model = self.model(),
                    rows = jobs.len(),
                    attempts,
                    retry_in = ?delay,
                    %error,
                    "embedding failed; the rows stay queued (full-text search still finds them)"
                );
                self.store
                    .fail_embed_jobs(&jobs, &error.to_string(), delay.as_millis() as i64)
                    .await?;
                pass.failed = jobs.len();
            }
        }
        Ok(pass)
    }

    /// Run passes until nothing is due (a failed batch ends it: its rows wait for their retry).
    /// Returns the rows embedded; `progress` hears the running total.
    pub async fn drain(&self, mut progress: impl FnMut(usize)) -> Result<usize> {
        let mut total = 0;
        loop {
            let pass = self.run_once().await?;
            total += pass.embedded;
            if pass.embedded > 0 {
                progress(total);
            }
            if pass.failed > 0 || pass.idle() {
                return Ok(total);
            }
        }
    }

    /// Run in the background until the handle is stopped.
    pub fn start(self: Arc<Self>) -> IndexerHandle {
        let task = tokio::spawn(async move {
            if let Err(error) = self.queue_missing().await {
                warn!(%error, "could not queue memory rows for embedding");
            }
            loop {
                let pass = match self.run_once().await {
                    Ok(pass) => pass,
                    Err(error) => {
                        warn!(%error, "the memory indexer could not reach the store");
                        Pass::default()
                    }
                };
                if pass.idle() || pass.failed > 0 {
                    // Nothing due (or the embedder is failing): wait for the next poll or a
                    // nudge.
                    let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
                }
            }
        });
        IndexerHandle { task }
    }
}

/// The running indexer; dropping it leaves it running, [`IndexerHandle::stop`] ends it.
pub struct IndexerHandle {
    task: JoinHandle<()>,
}

impl IndexerHandle {
    /// Stop (a batch being embedded is dropped; its lease expires and it is embedded again).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
