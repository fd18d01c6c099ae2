//! The durable event bus: adapters hand events in, workers process them, replies go out.
//!
//! An event is written to the inbox before [`Bus::submit`] returns, so an adapter acknowledges
//! the platform only once nothing can be lost. Workers claim events with a lease, one
//! conversation at a time in arrival order and many conversations in parallel (bounded by the
//! worker count). A handler's replies are stored with the "done" mark in one transaction and
//! delivered through the outbox, whose idempotency keys make a re-run post nothing twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::{
    Accepted, Addressed, Attachment, Button, ChatAdapter, ConversationRef, DeliveryError, Event,
    EventKind, EventSink, RemoteFile, Reply, SubmitError, UserRef,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::BusConfig;
use crate::redact::Redactor;
use crate::server::metrics::Metrics;
use crate::storage::blob::BlobStore;
use crate::storage::store::{
    ClaimedEvent, Completion, EventId, NewArtifact, NewEvent, NewMessage, NewReply, OutboxItem,
    Role, Store, UnixMs,
};

/// A file stored in the blob store, as events and replies refer to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub artifact_id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

impl StoredFile {
    fn to_new_artifact(&self) -> NewArtifact {
        NewArtifact {
            id: self.artifact_id.clone(),
            blob_key: self.blob_key.clone(),
            name: self.name.clone(),
            mime: self.mime.clone(),
            size: self.size,
        }
    }
}

/// An event as the inbox stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventPayload {
    pub platform_event_id: String,
    pub user: UserRef,
    pub kind: EventKind,
    pub text: String,
    #[serde(default)]
    pub attachments: Vec<StoredFile>,
    /// Files still on the platform, fetched by the worker before the handler runs (their
    /// stored copies are then in `attachments`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_files: Vec<RemoteFile>,
    #[serde(default)]
    pub route: serde_json::Value,
}

/// A reply as the outbox stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReplyPayload {
    text: String,
    #[serde(default)]
    attachments: Vec<StoredFile>,
    #[serde(default)]
    buttons: Vec<Button>,
    #[serde(default)]
    route: serde_json::Value,
}

/// The event a handler works on.
#[derive(Clone, Debug)]
pub struct EventContext {
    pub event_id: EventId,
    pub conversation: ConversationRef,
    pub payload: EventPayload,
    /// 1 on the first attempt.
    pub attempt: i32,
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
    adapters: RwLock<HashMap<String, Arc<dyn ChatAdapter>>>,
    actions: RwLock<Option<Arc<dyn ActionHandler>>>,
    files: RwLock<Option<Arc<dyn FileIntake>>>,
    config: BusConfig,
    owner: String,
    wake: Notify,
    open_events: AtomicI64,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    /// Masks secrets in every reply and stored error text.
    redactor: Redactor,
}

/// The running workers; [`Workers::shutdown`] stops them gracefully.
pub struct Workers {
    bus: Bus,
    tasks: Vec<JoinHandle<()>>,
}

/// Largest file accepted from an adapter.
const MAX_ATTACHMENT_BYTES: usize = 50 * 1024 * 1024;
/// How long a claimed reply is held before the sweep may retry it.
const REPLY_LEASE_MS: i64 = 60_000;
/// How often idle workers look for work nobody woke them for (expired leases, retries).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

impl Bus {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        handler: Arc<dyn Handler>,
        config: BusConfig,
        metrics: Arc<Metrics>,
        redactor: Redactor,
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
                adapters: RwLock::new(HashMap::new()),
                actions: RwLock::new(None),
                files: RwLock::new(None),
                config,
                owner,
                wake: Notify::new(),
                open_events: AtomicI64::new(0),
                metrics,
                shutdown: watch::channel(false).0,
                redactor,
            }),
        }
    }

    /// Route replies for `adapter.platform()` to this adapter.
    pub fn register_adapter(&self, adapter: Arc<dyn ChatAdapter>) {
        let platform = adapter.platform().to_string();
        if let Ok(mut adapters) = self.inner.adapters.write() {
            adapters.insert(platform, adapter);
        }
    }

    /// Hand button presses to `handler` before they are queued.
    pub fn set_action_handler(&self, handler: Arc<dyn ActionHandler>) {
        if let Ok(mut actions) = self.inner.actions.write() {
            *actions = Some(handler);
        }
    }

    /// Make events' files ready with `intake` before their handler runs.
    pub fn set_file_intake(&self, intake: Arc<dyn FileIntake>) {
        if let Ok(mut files) = self.inner.files.write() {
            *files = Some(intake);
        }
    }

    /// Post a message into a conversation while its event is still running (an approval
    /// prompt): stored in the transcript, then delivered at once under `key`.
    pub async fn post_now(
        &self,
        event_id: EventId,
        conversation: &ConversationRef,
        route: &serde_json::Value,
        key: &str,
        outgoing: Outgoing,
    ) -> anyhow::Result<()> {
        let outgoing = self.redacted(outgoing);
        let meta = (!outgoing.buttons.is_empty())
            .then(|| serde_json::json!({ "buttons": outgoing.buttons }).to_string());
        self.inner
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
        let adapter = self.adapter(&conversation.platform).ok_or_else(|| {
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
            })
            .await?;
        Ok(())
    }

    /// The reply with every secret value masked: no text leaves through the outbox unredacted.
    fn redacted(&self, mut outgoing: Outgoing) -> Outgoing {
        if let std::borrow::Cow::Owned(text) = self.inner.redactor.redact(&outgoing.text) {
            outgoing.text = text;
        }
        outgoing
    }

    fn adapter(&self, platform: &str) -> Option<Arc<dyn ChatAdapter>> {
        self.inner
            .adapters
            .read()
            .ok()
            .and_then(|a| a.get(platform).cloned())
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
        let mut tasks = Vec::new();
        for n in 0..self.inner.config.workers {
            let bus = self.clone();
            tasks.push(tokio::spawn(
                async move { bus.work().await }.instrument(info_span!("worker", n)),
            ));
        }
        let bus = self.clone();
        tasks.push(tokio::spawn(async move { bus.sweep().await }));
        Ok(Workers {
            bus: self.clone(),
            tasks,
        })
    }

    async fn refresh_queue_depth(&self) {
        if let Ok(open) = self.inner.store.open_event_count().await {
            self.inner.open_events.store(open, Ordering::Relaxed);
            self.inner.metrics.queue_depth.set(open);
        }
    }

    fn stopping(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Wait for a wake-up, the poll interval, or shutdown.
    async fn idle(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::select! {
            _ = self.inner.wake.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    async fn work(&self) {
        while !self.stopping() {
            let lease_until = UnixMs::now().plus(self.lease_ms());
            match self
                .inner
                .store
                .claim_event(&self.inner.owner, lease_until)
                .await
            {
                Ok(Some(event)) => {
                    let span =
                        info_span!("event", id = %event.id, conversation = %event.conversation);
                    self.process(event).instrument(span).await;
                }
                Ok(None) => self.idle().await,
                Err(e) => {
                    error!(error = %e, "cannot claim events");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn lease_ms(&self) -> i64 {
        self.inner.config.lease_seconds as i64 * 1000
    }

    async fn process(&self, claimed: ClaimedEvent) {
        let payload: EventPayload = match serde_json::from_str(&claimed.payload) {
            Ok(payload) => payload,
            Err(e) => {
                error!(error = %e, "stored event is unreadable; marking it failed");
                let _ = self
                    .inner
                    .store
                    .fail_event(
                        claimed.id,
                        &self.inner.owner,
                        &format!("unreadable payload: {e}"),
                        None,
                    )
                    .await;
                self.finished(claimed.received_at, false);
                return;
            }
        };
        let context = EventContext {
            event_id: claimed.id,
            conversation: claimed.conversation.clone(),
            payload,
            attempt: claimed.attempts,
        };
        let adapter = self.adapter(&context.conversation.platform);
        if let Some(adapter) = &adapter
            && context.attempt == 1
        {
            adapter
                .working(&context.conversation, &context.payload.route)
                .await;
        }

        let renewer = self.renew_lease_while_running(claimed.id);
        let handler = self.inner.handler.clone();
        let mut task_context = context.clone();
        let intake = self.inner.files.read().ok().and_then(|f| f.clone());
        let outcome = tokio::spawn(async move {
            if let Some(intake) = intake {
                intake.prepare(adapter, &mut task_context).await?;
            }
            handler.handle(&task_context).await
        })
        .await;
        renewer.abort();

        let result = match outcome {
            Ok(result) => result,
            Err(join) => Err(anyhow::anyhow!("the handler panicked: {join}")),
        };
        let completion = match result {
            Ok(outgoing) => self.completion(&context, outgoing, None).await,
            Err(e) if (context.attempt as u32) < self.inner.config.max_attempts => {
                let delay = backoff_ms(context.attempt);
                warn!(error = %e, attempt = context.attempt, delay_ms = delay, "event failed; will retry");
                self.inner.metrics.events_retried.inc();
                if let Err(e) = self
                    .inner
                    .store
                    .fail_event(
                        claimed.id,
                        &self.inner.owner,
                        &self.inner.redactor.redact_string(&format!("{e:#}")),
                        Some(UnixMs::now().plus(delay)),
                    )
                    .await
                {
                    error!(error = %e, "cannot schedule the retry");
                }
                return;
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "event failed for the last time");
                let apology = Outgoing::text(format!(
                    "Sorry, I could not handle that: {e}. The error is logged."
                ));
                self.completion(&context, vec![apology], Some(format!("{e:#}")))
                    .await
            }
        };
        let completion = match completion {
            Ok(completion) => completion,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot store the reply's files; will retry");
                let _ = self
                    .inner
                    .store
                    .fail_event(
                        claimed.id,
                        &self.inner.owner,
                        &self.inner.redactor.redact_string(&format!("{e:#}")),
                        Some(UnixMs::now().plus(backoff_ms(context.attempt))),
                    )
                    .await;
                return;
            }
        };
        let failed = completion.error.is_some();
        let completion = Completion {
            reply_lease_until: Some(UnixMs::now().plus(REPLY_LEASE_MS)),
            ..completion
        };
        match self
            .inner
            .store
            .complete_event(claimed.id, &self.inner.owner, &completion)
            .await
        {
            Ok(Some(replies)) => {
                self.finished(claimed.received_at, failed);
                for reply in replies {
                    self.deliver(reply).await;
                }
            }
            Ok(None) => warn!("lease lost before completion; another worker owns the event"),
            Err(e) => error!(error = %e, "cannot store the completion; the event will run again"),
        }
    }

    fn finished(&self, received_at: UnixMs, failed: bool) {
        let open = self.inner.open_events.fetch_sub(1, Ordering::Relaxed) - 1;
        self.inner.metrics.queue_depth.set(open.max(0));
        if failed {
            self.inner.metrics.events_failed.inc();
        } else {
            self.inner.metrics.events_processed.inc();
        }
        let seconds = UnixMs::now().since(received_at).max(0) as f64 / 1000.0;
        self.inner.metrics.processing_seconds.observe(seconds);
    }

    fn renew_lease_while_running(&self, event_id: EventId) -> JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis((bus.lease_ms() / 3).max(100) as u64);
            loop {
                tokio::time::sleep(every).await;
                let until = UnixMs::now().plus(bus.lease_ms());
                match bus
                    .inner
                    .store
                    .renew_lease(event_id, &bus.inner.owner, until)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(event_id = %event_id, "lease lost while processing");
                        return;
                    }
                    Err(e) => warn!(event_id = %event_id, error = %e, "cannot renew lease"),
                }
            }
        })
    }

    /// Store reply files in the blob store (before the rows that point to them) and build the
    /// completion: one assistant message and one outbox reply per piece of text.
    async fn completion(
        &self,
        context: &EventContext,
        outgoing: Vec<Outgoing>,
        error: Option<String>,
    ) -> anyhow::Result<Completion> {
        let limit = self
            .adapter(&context.conversation.platform)
            .map(|a| a.limits().max_text_chars)
            .unwrap_or(usize::MAX);
        let mut completion = Completion {
            error: error.map(|e| self.inner.redactor.redact_string(&e)),
            ..Completion::default()
        };
        for out in outgoing {
            let out = self.redacted(out);
            let mut files = Vec::with_capacity(out.attachments.len());
            for attachment in &out.attachments {
                files.push(self.store_file(&context.conversation, attachment).await?);
            }
            completion.messages.push(NewMessage {
                role: Role::Assistant,
                text: out.text.clone(),
                meta: None,
                attachments: files.iter().map(StoredFile::to_new_artifact).collect(),
            });
            let pieces = ecdysis_chat::split_text(&out.text, limit);
            let last = pieces.len().saturating_sub(1);
            for (i, text) in pieces.into_iter().enumerate() {
                let payload = ReplyPayload {
                    text,
                    // Files and buttons travel with the last piece of text.
                    attachments: if i == last { files.clone() } else { Vec::new() },
                    buttons: if i == last {
                        out.buttons.clone()
                    } else {
                        Vec::new()
                    },
                    route: context.payload.route.clone(),
                };
                let n = completion.replies.len();
                completion.replies.push(NewReply {
                    idempotency_key: format!("{}:{n}", context.event_id),
                    payload: serde_json::to_string(&payload)?,
                });
            }
        }
        Ok(completion)
    }

    async fn store_file(
        &self,
        conversation: &ConversationRef,
        attachment: &Attachment,
    ) -> anyhow::Result<StoredFile> {
        let artifact_id = uuid::Uuid::new_v4().to_string();
        let blob_key = artifact_key(&conversation.platform, &artifact_id, &attachment.name);
        self.inner
            .blobs
            .put(&blob_key, attachment.bytes.clone(), &attachment.mime)
            .await?;
        Ok(StoredFile {
            artifact_id,
            blob_key,
            name: attachment.name.clone(),
            mime: attachment.mime.clone(),
            size: attachment.bytes.len() as i64,
        })
    }

    /// Deliver replies that failed before or were left by a crash (the sweep).
    async fn deliver_replies(&self) -> usize {
        let items = match self
            .inner
            .store
            .claim_replies(None, UnixMs::now().plus(REPLY_LEASE_MS), 50)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                error!(error = %e, "cannot claim replies");
                return 0;
            }
        };
        let count = items.len();
        for item in items {
            self.deliver(item).await;
        }
        count
    }

    async fn deliver(&self, item: OutboxItem) {
        let store = &self.inner.store;
        let outcome = self.try_deliver(&item).await;
        let recorded = match outcome {
            Ok(message_id) => {
                self.inner.metrics.replies_sent.inc();
                store.mark_reply_sent(item.id, message_id.as_deref()).await
            }
            Err(DeliveryError::Retryable(e)) if item.attempts < 8 => {
                self.inner.metrics.reply_failures.inc();
                let delay = backoff_ms(item.attempts);
                warn!(reply = %item.id, error = %e, delay_ms = delay, "delivery failed; will retry");
                store
                    .mark_reply_failed(item.id, &e, Some(UnixMs::now().plus(delay)))
                    .await
            }
            Err(e) => {
                self.inner.metrics.reply_failures.inc();
                error!(reply = %item.id, error = %e, "delivery failed for good");
                store.mark_reply_failed(item.id, &e.to_string(), None).await
            }
        };
        if let Err(e) = recorded {
            error!(reply = %item.id, error = %e, "cannot record the delivery outcome");
        }
    }

    async fn try_deliver(&self, item: &OutboxItem) -> Result<Option<String>, DeliveryError> {
        let platform = &item.conversation.platform;
        let adapter = self.adapter(platform).ok_or_else(|| {
            DeliveryError::Retryable(format!("no adapter for platform `{platform}` is running"))
        })?;
        let payload: ReplyPayload = serde_json::from_str(&item.payload)
            .map_err(|e| DeliveryError::Permanent(format!("unreadable reply: {e}")))?;
        let mut attachments = Vec::with_capacity(payload.attachments.len());
        for file in &payload.attachments {
            let bytes = self
                .inner
                .blobs
                .get(&file.blob_key)
                .await
                .map_err(|e| DeliveryError::Retryable(e.to_string()))?
                .ok_or_else(|| {
                    DeliveryError::Permanent(format!("blob `{}` is missing", file.blob_key))
                })?;
            attachments.push(Attachment::new(&file.name, &file.mime, bytes));
        }
        let reply = Reply {
            idempotency_key: item.idempotency_key.clone(),
            conversation: item.conversation.clone(),
            text: payload.text,
            attachments,
            buttons: payload.buttons,
            route: payload.route,
        };
        let delivered = adapter.deliver(&reply).await?;
        debug!(reply = %item.id, "delivered");
        Ok(delivered.platform_message_id)
    }

    /// Retry replies that failed or were left by a crash, and keep the queue depth honest.
    async fn sweep(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        while !self.stopping() {
            while self.deliver_replies().await > 0 && !self.stopping() {}
            self.refresh_queue_depth().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
    }
}

impl Workers {
    /// Stop claiming, let running events finish for up to `grace`, then release what is left.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.bus.inner.shutdown.send(true);
        let all = futures_util::future::join_all(self.tasks);
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

#[async_trait]
impl EventSink for Bus {
    async fn submit(&self, event: Event) -> Result<Accepted, SubmitError> {
        if matches!(event.kind, EventKind::Message)
            && event.text.trim().is_empty()
            && event.attachments.is_empty()
            && event.remote_files.is_empty()
        {
            return Err(SubmitError::Invalid("the message is empty".into()));
        }
        if event.platform_event_id.is_empty() {
            return Err(SubmitError::Invalid("the event has no id".into()));
        }
        if let Some(big) = event
            .attachments
            .iter()
            .find(|a| a.bytes.len() > MAX_ATTACHMENT_BYTES)
        {
            return Err(SubmitError::Invalid(format!(
                "`{}` is larger than {} MB",
                big.name,
                MAX_ATTACHMENT_BYTES / 1024 / 1024
            )));
        }
        if let Some(accepted) = self.handle_action(&event).await {
            return Ok(accepted);
        }
        if !self.is_for_the_bot(&event).await? {
            return Ok(Accepted {
                event_id: String::new(),
                duplicate: false,
                ignored: true,
            });
        }
        let open = self.inner.open_events.load(Ordering::Relaxed);
        if open >= self.inner.config.max_queued as i64 {
            return Err(SubmitError::Busy(format!(
                "{open} events are waiting; try again shortly"
            )));
        }
        let mut files = Vec::with_capacity(event.attachments.len());
        for attachment in &event.attachments {
            files.push(
                self.store_file(&event.conversation, attachment)
                    .await
                    .map_err(|e| SubmitError::Internal(format!("{e:#}")))?,
            );
        }
        let transcript_text = match &event.kind {
            EventKind::Command(command) if event.text.is_empty() => {
                format!("/{}", command.name.as_str())
            }
            EventKind::Command(command) => format!("/{} {}", command.name.as_str(), event.text),
            EventKind::Message => event.text.clone(),
            EventKind::Action { action_id, value } => format!("[button {action_id}: {value}]"),
        };
        let payload = EventPayload {
            platform_event_id: event.platform_event_id.clone(),
            user: event.user.clone(),
            kind: event.kind.clone(),
            text: event.text.clone(),
            attachments: files.clone(),
            remote_files: event.remote_files.clone(),
            route: event.route.clone(),
        };
        let new = NewEvent {
            platform_event_id: event.platform_event_id,
            conversation: event.conversation,
            user_id: event.user.id,
            payload: serde_json::to_string(&payload)
                .map_err(|e| SubmitError::Internal(e.to_string()))?,
            text: transcript_text,
            attachments: files.iter().map(StoredFile::to_new_artifact).collect(),
        };
        let inserted = self
            .inner
            .store
            .insert_event(&new)
            .await
            .map_err(|e| SubmitError::Internal(e.to_string()))?;
        if inserted.duplicate {
            self.inner.metrics.events_duplicate.inc();
            for file in &files {
                let _ = self.inner.blobs.delete(&file.blob_key).await;
            }
        } else {
            self.inner.metrics.events_received.inc();
            let open = self.inner.open_events.fetch_add(1, Ordering::Relaxed) + 1;
            self.inner.metrics.queue_depth.set(open);
            self.inner.wake.notify_one();
        }
        Ok(Accepted {
            event_id: inserted.event_id.to_string(),
            duplicate: inserted.duplicate,
            ignored: false,
        })
    }
}

impl Bus {
    /// A button press the action handler takes: answered at once, never queued.
    async fn handle_action(&self, event: &Event) -> Option<Accepted> {
        if !matches!(event.kind, EventKind::Action { .. }) {
            return None;
        }
        let handler = self.inner.actions.read().ok()?.clone()?;
        let outgoing = self.redacted(handler.handle(event).await?);
        if let Some(adapter) = self.adapter(&event.conversation.platform) {
            let reply = Reply {
                idempotency_key: format!("action:{}", event.platform_event_id),
                conversation: event.conversation.clone(),
                text: outgoing.text,
                attachments: Vec::new(),
                buttons: Vec::new(),
                route: event.route.clone(),
            };
            if let Err(e) = adapter.deliver(&reply).await {
                warn!(error = %e, "cannot confirm a button press");
            }
        }
        Some(Accepted {
            event_id: String::new(),
            duplicate: false,
            ignored: false,
        })
    }

    /// Mention gating: direct messages and mentions are answered, thread replies only where the
    /// bot already takes part, ambient channel chatter never.
    async fn is_for_the_bot(&self, event: &Event) -> Result<bool, SubmitError> {
        Ok(match event.addressed {
            Addressed::Direct | Addressed::Mention => true,
            Addressed::Ambient => false,
            Addressed::ThreadReply => {
                self.inner
                    .store
                    .message_count(&event.conversation)
                    .await
                    .map_err(|e| SubmitError::Internal(e.to_string()))?
                    > 0
            }
        })
    }

    /// The state of every registered adapter that reports one, by platform.
    pub fn adapter_health(&self) -> serde_json::Map<String, serde_json::Value> {
        let adapters = match self.inner.adapters.read() {
            Ok(adapters) => adapters.clone(),
            Err(_) => return serde_json::Map::new(),
        };
        adapters
            .iter()
            .filter_map(|(platform, adapter)| Some((platform.clone(), adapter.health()?)))
            .collect()
    }
}

/// Exponential backoff with jitter: ~1 s, 2 s, 4 s … capped at 5 minutes.
fn backoff_ms(attempt: i32) -> i64 {
    let base = 1000i64 << attempt.clamp(0, 9);
    let jitter = rand::random_range(0..=base / 4);
    (base + jitter).min(300_000)
}

/// The blob key of an artifact (a file received or sent in a conversation of `platform`).
pub(crate) fn artifact_key(platform: &str, artifact_id: &str, name: &str) -> String {
    format!(
        "artifacts/{}/{}/{}",
        safe_segment(platform),
        artifact_id,
        safe_segment(name)
    )
}

/// A path segment safe for blob keys.
fn safe_segment(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let cleaned = cleaned.trim_matches('.').to_string();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

/// Bytes of a file, for handlers that read an event's attachments.
pub async fn read_file(blobs: &dyn BlobStore, file: &StoredFile) -> anyhow::Result<Bytes> {
    blobs
        .get(&file.blob_key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the file `{}` is missing from the blob store", file.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_safe() {
        assert_eq!(safe_segment("plot 1.png"), "plot_1.png");
        assert_eq!(safe_segment("../.."), "_");
        assert_eq!(safe_segment(""), "file");
        assert!(crate::storage::blob::validate_key(&format!("a/{}", safe_segment("..."))).is_ok());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_ms(1) >= 2000 && backoff_ms(1) <= 2500);
        assert!(backoff_ms(30) <= 300_000);
    }
}
