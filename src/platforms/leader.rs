//! Leader leases: with several instances on one database, exactly one runs each singleton task
//! (the Discord gateway, Slack Socket Mode), and another takes over when it dies.
//!
//! [`Leadership::spawn`] keeps trying to take the named lease ([`Store::try_lead`]); while it
//! holds it, it runs the task and renews the lease every third of its time to live. The task is
//! told to stop ([`Term::lost`]) when the lease cannot be renewed in time — before it can expire
//! in the database, so two instances never run it at once — or when the instance shuts down
//! (which also releases the lease, so a follower takes over at its next try). An instance that
//! dies without releasing holds the lease until it expires: followers take over within one
//! time to live plus one retry interval.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::storage::store::Store;

/// How long a stopped task may take to finish before it is aborted.
const TASK_GRACE: Duration = Duration::from_secs(5);

/// A named lease and who wants it.
pub struct Leadership {
    store: Arc<dyn Store>,
    name: String,
    owner: String,
    ttl: Duration,
}

/// Given to the task: resolves when the task must stop.
pub struct Term {
    lost: watch::Receiver<bool>,
}

impl Term {
    /// Wait until leadership ends (lease lost, or the instance is shutting down).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

/// The running leadership loop.
pub struct LeaderHandle {
    name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    leading: Arc<AtomicBool>,
}

impl LeaderHandle {
    /// Whether this instance holds the lease (and runs the task) right now.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop the task, release the lease and end the loop.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(TASK_GRACE * 2, self.task)
            .await
            .is_err()
        {
            warn!(lease = %self.name, "leadership loop did not stop in time");
        }
    }
}

/// Why a term as leader ended.
enum Ended {
    /// The lease could not be renewed in time, or another owner has it.
    Lost,
    /// The task returned by itself.
    TaskReturned,
    /// The instance is shutting down.
    Stopping,
}

/// A name for this process among instances: machine, process and a random part.
pub fn instance_id() -> String {
    let machine = std::env::var("FLY_MACHINE_ID")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|m| !m.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "host".into());
    format!(
        "{machine}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl Leadership {
    /// Contend for lease `name` as `owner`; a held lease lives `ttl` past each renewal.
    pub fn new(
        store: Arc<dyn Store>,
        name: impl Into<String>,
        owner: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            name: name.into(),
            owner: owner.into(),
            ttl: ttl.max(Duration::from_millis(300)),
        }
    }

    /// How often the leader renews and followers try to take over.
    fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// Run `task` whenever this instance holds the lease. Each term calls `task` once with a
    /// [`Term`] that resolves when the term ends; the task should then stop what it started
    /// and return (it is aborted after a grace period). A task that returns by itself gives the
    /// lease up, and this instance contends again after a pause.
    pub fn spawn<F, Fut>(self, mut task: F) -> LeaderHandle
    where
        F: FnMut(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let leading = Arc::new(AtomicBool::new(false));
        let name = self.name.clone();
        let flag = leading.clone();
        let handle = tokio::spawn(async move {
            let mut stopped = stopped;
            loop {
                if *stopped.borrow() {
                    break;
                }
                let sent = Instant::now();
                if self.try_lead().await {
                    flag.store(true, Ordering::Relaxed);
                    let ended = self.term(&mut task, sent, &mut stopped).await;
                    flag.store(false, Ordering::Relaxed);
                    match ended {
                        Ended::Stopping => {
                            self.release().await;
                            break;
                        }
                        Ended::TaskReturned => {
                            self.release().await;
                            // Let another instance have a go before trying again.
                            sleep_or_stop(self.ttl, &mut stopped).await;
                            continue;
                        }
                        Ended::Lost => {}
                    }
                }
                sleep_or_stop(self.interval(), &mut stopped).await;
            }
        });
        LeaderHandle {
            name,
            stop,
            task: handle,
            leading,
        }
    }

    /// One attempt to take or renew the lease; errors and slow answers count as "no".
    async fn try_lead(&self) -> bool {
        let ttl_ms = self.ttl.as_millis() as i64;
        match tokio::time::timeout(
            self.interval(),
            self.store.try_lead(&self.name, &self.owner, ttl_ms),
        )
        .await
        {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                warn!(lease = %self.name, error = %e, "cannot reach the lease");
                false
            }
            Err(_) => {
                warn!(lease = %self.name, "the lease did not answer in time");
                false
            }
        }
    }

    async fn release(&self) {
        if let Err(e) = self.store.release_lead(&self.name, &self.owner).await {
            warn!(lease = %self.name, error = %e, "cannot release the lease; it expires on its own");
        }
    }

    /// Lead: run the task and renew until the term ends.
    async fn term<F, Fut>(
        &self,
        task: &mut F,
        acquired: Instant,
        stopped: &mut watch::Receiver<bool>,
    ) -> Ended
    where
        F: FnMut(Term) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        info!(lease = %self.name, owner = %self.owner, "this instance is the leader");
        let (lost, lost_rx) = watch::channel(false);
        let mut running = tokio::spawn(task(Term { lost: lost_rx }));
        // The lease is good until `last_ok + ttl` (the renewal was sent at `last_ok`); step
        // down one interval before that, so the task has stopped before anyone can take over.
        let mut last_ok = acquired;
        let ended = loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval()) => {
                    let sent = Instant::now();
                    if self.try_lead().await {
                        last_ok = sent;
                    } else if Instant::now() + self.interval() >= last_ok + self.ttl {
                        warn!(lease = %self.name, "lost the lease; stopping");
                        break Ended::Lost;
                    }
                }
                _ = &mut running => {
                    warn!(lease = %self.name, "the leader's task ended by itself");
                    break Ended::TaskReturned;
                }
                () = wait_stop(stopped) => break Ended::Stopping,
            }
        };
        let _ = lost.send(true);
        if !running.is_finished()
            && tokio::time::timeout(TASK_GRACE, &mut running)
                .await
                .is_err()
        {
            warn!(lease = %self.name, "the leader's task did not stop in time; aborting it");
            running.abort();
        }
        info!(lease = %self.name, "this instance is no longer the leader");
        ended
    }
}

async fn sleep_or_stop(duration: Duration, stopped: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        () = wait_stop(stopped) => {}
    }
}

/// Resolves once `stopped` says stop (or its sender is gone).
async fn wait_stop(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_differ() {
        assert_ne!(instance_id(), instance_id());
        assert!(instance_id().contains(&std::process::id().to_string()));
    }
}
