//! The durable event bus: adapters hand events in, workers process them, replies go out.
//!
//! An event is written to the inbox before [`Bus::submit`](ecdysis_chat::EventSink::submit)
//! returns, and that write's commit is durable (see the store's group commit), so an adapter
//! acknowledges the platform only once nothing can be lost. Workers claim events with a lease,
//! one conversation at a time in arrival order and many conversations in parallel (bounded by
//! the worker count). A handler's replies are stored with the "done" mark in one transaction
//! and delivered through the outbox, whose idempotency keys make a re-run post nothing twice.
//!
//! - [`payload`]: what the inbox and the outbox store, and the files they point at;
//! - [`intake`]: events in, up to the durable insert;
//! - [`worker`]: claiming and processing events;
//! - [`outbox`]: delivering replies and retrying them.

mod adapters;
mod gate;
mod intake;
mod outbox;
mod payload;
mod worker;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ecdysis_chat::backoff::Backoff;
use ecdysis_chat::{Attachment, Button, ChatAdapter, ConversationRef, Event, Reply};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

pub use adapters::Adapters;
pub use gate::{Admission, Gate};
pub(crate) use payload::artifact_key;
pub use payload::{EventPayload, StoredFile, read_file};

use crate::config::BusConfig;
use crate::redact::Redactor;
use crate::server::metrics::Metrics;
use crate::storage::blob::BlobStore;
use crate::storage::store::{EventId, NewMessage, Role, Store};

/// The event a handler works on.
#[derive(Clone, Debug)]
pub struct EventContext {
    pub event_id: EventId,
    pub conversation: ConversationRef,
    pub payload: EventPayload,
    /// 1 on the first attempt.
    pub attempt: i32,
    /// Where the answer is shown while it is written (off when the adapter cannot).
    pub live: crate::engine::live::Live,
    /// Posts into the conversation while the event runs (approval prompts).
    pub poster: Poster,
}

/// What a running event's handler and tools may post into its conversation at once, before
/// its answer (an approval prompt with buttons). Detached (an event built outside the bus, in
/// tests and benches), it refuses with an error.
#[derive(Clone, Default)]
pub struct Poster {
    bus: Option<Bus>,
}

impl Poster {
    /// A poster that refuses (no bus to post through).
    pub fn detached() -> Self {
        Self::default()
    }

    /// Store `outgoing` (secrets masked) in the transcript of `conversation`, then deliver it
    /// at once under `key`.
    pub async fn post_now(
        &self,
        event_id: EventId,
        conversation: &ConversationRef,
        route: &serde_json::Value,
        key: &str,
        outgoing: Outgoing,
    ) -> anyhow::Result<()> {
        let bus = self
            .bus
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this event was not started by the bus"))?;
        let outgoing = bus.redacted(outgoing);
        let meta = (!outgoing.buttons.is_empty())
            .then(|| serde_json::json!({ "buttons": outgoing.buttons }).to_string());
        bus.inner
            .store
            .append_messages(
                conversation,
                Some(event_id),
                &[NewMessage {
                    role: Role::Assistant,
                    text: outgoing.text.clone(),
                    meta,
                    attachments: Vec::new(),
                }],
            )
            .await?;
        let adapter = bus.adapter(&conversation.platform).ok_or_else(|| {
            anyhow::anyhow!("no adapter for platform `{}`", conversation.platform)
        })?;
        adapter
            .deliver(&Reply {
                idempotency_key: key.to_string(),
                conversation: conversation.clone(),
                text: outgoing.text,
                attachments: outgoing.attachments,
                buttons: outgoing.buttons,
                route: route.clone(),
                live: None,
            })
            .await?;
        Ok(())
    }
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.bus {
            Some(_) => "Poster(bus)",
            None => "Poster(detached)",
        })
    }
}

/// What a handler answers: text and files for the conversation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outgoing {
    pub text: String,
    pub attachments: Vec<Attachment>,
    /// Buttons under the (last piece of the) text.
    pub buttons: Vec<Button>,
}

impl Outgoing {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}

/// Turns one event into replies. Errors are retried with backoff, then answered with an apology.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, event: &EventContext) -> anyhow::Result<Vec<Outgoing>>;
}

/// Handles button presses out of band, before they would queue behind the conversation's
/// running event (which may be the one waiting for the press). `None`: not mine, queue it.
#[async_trait]
pub trait ActionHandler: Send + Sync + 'static {
    async fn handle(&self, event: &Event) -> Option<Outgoing>;
}

/// Makes an event's files ready before its handler runs: fetches what the event only referred
/// to (through the adapter it came from), keeps the files as artifacts. Errors are retried like
/// the handler's.
#[async_trait]
pub trait FileIntake: Send + Sync + 'static {
    async fn prepare(
        &self,
        adapter: Option<Arc<dyn ChatAdapter>>,
        event: &mut EventContext,
    ) -> anyhow::Result<()>;
}

/// The bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    handler: Arc<dyn Handler>,
    adapters: Adapters,
    actions: RwLock<Option<Arc<dyn ActionHandler>>>,
    gate: RwLock<Option<Arc<dyn Gate>>>,
    files: RwLock<Option<Arc<dyn FileIntake>>>,
    config: BusConfig,
    owner: String,
    wake: Notify,
    open_events: AtomicI64,
    /// Keeps `open_events` exact when it is set from the database: a write that opens or
    /// finishes an event holds it shared until the counter has followed the write, and the
    /// refresh holds it alone for its count and store. Without it, an event committed before
    /// the count but added to the counter after the store was counted twice (a false 503).
    counting: tokio::sync::RwLock<()>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    /// Masks secrets in every reply and stored error text.
    redactor: Redactor,
}

/// The running workers; [`Workers::shutdown`] stops them gracefully.
pub struct Workers {
    bus: Bus,
    tasks: Vec<JoinHandle<()>>,
    /// One permit per worker slot; all of them free means no event is running.
    slots: Arc<Semaphore>,
}

impl Bus {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        handler: Arc<dyn Handler>,
        config: BusConfig,
        metrics: Arc<Metrics>,
        redactor: Redactor,
        adapters: Adapters,
    ) -> Self {
        let owner = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            inner: Arc::new(Inner {
                store,
                blobs,
                handler,
                adapters,
                actions: RwLock::new(None),
                gate: RwLock::new(None),
                files: RwLock::new(None),
                config,
                owner,
                wake: Notify::new(),
                open_events: AtomicI64::new(0),
                counting: tokio::sync::RwLock::new(()),
                metrics,
                shutdown: watch::channel(false).0,
                redactor,
            }),
        }
    }

    /// Route replies for `adapter.platform()` to this adapter.
    pub fn register_adapter(&self, adapter: Arc<dyn ChatAdapter>) {
        self.inner.adapters.register(adapter);
    }

    /// The adapters replies go through.
    pub fn adapters(&self) -> &Adapters {
        &self.inner.adapters
    }

    /// Make events' files ready with `intake` before their handler runs.
    pub fn set_file_intake(&self, intake: Arc<dyn FileIntake>) {
        if let Ok(mut files) = self.inner.files.write() {
            *files = Some(intake);
        }
    }

    /// Hand button presses to `handler` before they are queued.
    pub fn set_action_handler(&self, handler: Arc<dyn ActionHandler>) {
        if let Ok(mut actions) = self.inner.actions.write() {
            *actions = Some(handler);
        }
    }

    /// A [`Poster`] through this bus.
    pub fn poster(&self) -> Poster {
        Poster {
            bus: Some(self.clone()),
        }
    }

    /// The reply with every secret value masked: no text leaves through the outbox unredacted.
    fn redacted(&self, mut outgoing: Outgoing) -> Outgoing {
        if let std::borrow::Cow::Owned(text) = self.inner.redactor.redact(&outgoing.text) {
            outgoing.text = text;
        }
        outgoing
    }

    fn adapter(&self, platform: &str) -> Option<Arc<dyn ChatAdapter>> {
        self.inner.adapters.get(platform)
    }

    /// Wake an idle worker (an event was queued outside [`EventSink::submit`], e.g. a retry).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Events accepted and not yet finished (as counted by this process).
    pub fn queue_depth(&self) -> i64 {
        self.inner.open_events.load(Ordering::Relaxed)
    }

    /// Start the workers and the outbox sweep. Leases left by a crashed single instance
    /// (SQLite) are released first, so unfinished events run again.
    pub async fn start(&self) -> anyhow::Result<Workers> {
        if self.inner.store.backend() == "sqlite" {
            let released = self.inner.store.release_all_leases().await?;
            if released > 0 {
                info!(released, "resuming events left unfinished by the last run");
            }
        }
        self.refresh_queue_depth().await;
        let slots = Arc::new(Semaphore::new(self.inner.config.workers.max(1)));
        let mut tasks = Vec::new();
        let bus = self.clone();
        let dispatcher_slots = slots.clone();
        tasks.push(tokio::spawn(
            async move { bus.dispatch(dispatcher_slots).await }
                .instrument(info_span!("dispatcher")),
        ));
        let bus = self.clone();
        tasks.push(tokio::spawn(async move { bus.sweep().await }));
        Ok(Workers {
            bus: self.clone(),
            tasks,
            slots,
        })
    }

    async fn refresh_queue_depth(&self) {
        let _alone = self.inner.counting.write().await;
        if let Ok(open) = self.inner.store.open_event_count().await {
            self.inner.open_events.store(open, Ordering::Relaxed);
            self.inner.metrics.queue_depth.set(open);
        }
    }

    fn stopping(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// The state of every registered adapter that reports one, by platform.
    pub fn adapter_health(&self) -> serde_json::Map<String, serde_json::Value> {
        self.inner.adapters.health()
    }
}

impl Workers {
    /// Stop claiming, let running events finish for up to `grace`, then release what is left.
    pub async fn shutdown(self, grace: Duration) {
        self.bus.inner.shutdown.send_replace(true);
        let workers = u32::try_from(self.bus.inner.config.workers.max(1)).unwrap_or(u32::MAX);
        let slots = self.slots.clone();
        let all = async move {
            futures_util::future::join_all(self.tasks).await;
            // Every slot back: no event is running any more.
            let _all_free = slots.acquire_many(workers).await;
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!("workers did not finish in time; releasing their leases");
        }
        match self
            .bus
            .inner
            .store
            .release_leases(&self.bus.inner.owner)
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(released = n, "released leases for the next start"),
            Err(e) => error!(error = %e, "cannot release leases; they expire on their own"),
        }
    }
}

/// The pause before retrying an event or a delivery after `attempt` failed attempts: 1 s,
/// 2 s, 4 s … capped at 5 minutes, each a random point in the upper half of that.
fn backoff_ms(attempt: i32) -> i64 {
    const RETRY: Backoff =
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).with_jitter();
    let failures = u32::try_from(attempt).unwrap_or(0).saturating_add(1);
    i64::try_from(RETRY.delay(failures).as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The open-event counter set from the database while events come in (the outbox sweep
    /// does so every 2 s) neither doubles an event whose commit the count saw nor drops one
    /// it did not: with no event finishing, it ends at exactly the number accepted. The
    /// refreshes stop while the last events are still coming in, so none corrects the count
    /// after them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_depth_stays_exact_while_it_is_refreshed() {
        use std::sync::atomic::AtomicUsize;

        use ecdysis_chat::{EventSink, UserRef};
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::embedded(dir.path());
        let app = crate::server::app::App::open(config).await.unwrap();
        let bus = app.bus.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let refreshing = tokio::spawn({
            let (bus, accepted) = (bus.clone(), accepted.clone());
            async move {
                let mut refreshes = 0;
                while accepted.load(Ordering::Relaxed) < 150 {
                    bus.refresh_queue_depth().await;
                    refreshes += 1;
                    tokio::task::yield_now().await;
                }
                refreshes
            }
        });
        let submits: Vec<_> = (0..200)
            .map(|n| {
                let (bus, accepted) = (bus.clone(), accepted.clone());
                tokio::spawn(async move {
                    let conversation =
                        ConversationRef::new("count", "w", format!("c{}", n % 10), None);
                    let user = UserRef {
                        id: "u".into(),
                        name: None,
                    };
                    let text = format!("/remember note {n}");
                    let event = Event::from_text(format!("e{n}"), conversation, user, text);
                    let submitted = bus.submit(event).await.unwrap();
                    accepted.fetch_add(1, Ordering::Relaxed);
                    submitted
                })
            })
            .collect();
        for submit in submits {
            assert!(!submit.await.unwrap().duplicate);
        }
        assert!(
            refreshing.await.unwrap() > 1,
            "the count was refreshed meanwhile"
        );
        assert_eq!(bus.inner.store.open_event_count().await.unwrap(), 200);
        assert_eq!(bus.queue_depth(), 200);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!((1000..=2000).contains(&backoff_ms(1)), "{}", backoff_ms(1));
        assert!((150_000..=300_000).contains(&backoff_ms(30)));
    }
}
