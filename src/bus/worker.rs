//! Events processed: a dispatcher claims as many conversation heads as there are free worker
//! slots in one statement, each event runs its handler in a slot of its own (its lease renewed
//! while it runs), and its transcript rows, replies and done mark are written in one
//! transaction, after which its replies are delivered. That transaction also claims the
//! conversation's next event when one is waiting, and the slot goes on with it (a few in a
//! row, then the slot goes back to the dispatcher so other conversations get their turn).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info_span, warn};

use super::outbox::REPLY_LEASE_MS;
use super::payload::{EventPayload, ReplyPayload, StoredFile, store_file};
use super::{Bus, EventContext, Outgoing, backoff_ms};
use crate::engine::live::{Live, LiveRun, LiveTarget, reply_key};
use crate::storage::store::{
    ClaimedEvent, Completion, EventId, NewMessage, NewReply, Role, StoreError, UnixMs,
};

/// How often an idle dispatcher looks for work nobody woke it for (expired leases, retries).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long the dispatcher waits after the store failed to claim.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How many events of one conversation a slot runs in a row before it goes back to the
/// dispatcher, which hands slots out oldest event first.
const EVENTS_IN_A_ROW: u32 = 8;

impl Bus {
    /// Claim events while there are free slots, and run each in one.
    pub(super) async fn dispatch(&self, slots: Arc<Semaphore>) {
        while !self.stopping() {
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let wanted = permits.len();
            let lease_until = self.lease_until();
            let claimed = match self
                .inner
                .store
                .claim_events(&self.inner.owner, lease_until, wanted)
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    error!(error = %e, "cannot claim events");
                    drop(permits);
                    self.pause(CLAIM_ERROR_PAUSE).await;
                    continue;
                }
            };
            let got = claimed.len();
            for (event, permit) in claimed.into_iter().zip(permits.drain(..)) {
                self.run_in_slot(event, permit);
            }
            drop(permits);
            if got < wanted {
                // Everything claimable is running: wait for a new event, a finished one (its
                // conversation's next event may be claimable now), the poll or shutdown.
                self.idle().await;
            }
        }
    }

    fn run_in_slot(&self, event: ClaimedEvent, permit: OwnedSemaphorePermit) {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut next = Some(event);
            let mut in_a_row = 0;
            let mut records = Vec::new();
            while let Some(event) = next.take() {
                in_a_row += 1;
                let go_on = in_a_row < EVENTS_IN_A_ROW;
                let span = info_span!("event", id = %event.id, conversation = %event.conversation);
                next = match bus
                    .process(event, go_on, &mut records)
                    .instrument(span)
                    .await
                {
                    Some((event, claimed)) if bus.lease_still_held(&event, claimed).await => {
                        Some(event)
                    }
                    _ => None,
                };
            }
            // The slot is free once its deliveries are recorded (shutdown waits for slots).
            for record in records {
                if let Err(e) = record.await {
                    error!(error = %e, "recording a delivery panicked");
                }
            }
            drop(permit);
            // The conversation's next event may be claimable now.
            bus.inner.wake.notify_one();
        });
    }

    /// Wait for a wake-up, the poll interval, or shutdown.
    async fn idle(&self) {
        self.pause(POLL_INTERVAL).await;
    }

    async fn pause(&self, longest: Duration) {
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::select! {
            _ = self.inner.wake.notified() => {}
            _ = tokio::time::sleep(longest) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.inner.config.lease_seconds)
            .unwrap_or(i64::MAX / 2000)
            .saturating_mul(1000)
    }

    /// When a lease taken (or renewed) now ends.
    fn lease_until(&self) -> UnixMs {
        UnixMs::now().plus(self.lease_ms())
    }

    /// Extend this instance's lease on an event; false when the lease was lost.
    async fn renew(&self, event: EventId) -> Result<bool, StoreError> {
        self.inner
            .store
            .renew_lease(event, &self.inner.owner, self.lease_until())
            .await
    }

    /// Whether a slot may run `event`, claimed with the completion before it at `claimed`.
    /// Delivering that completion's replies took part of the lease: past a third of it the
    /// lease is renewed first, and past two thirds the event is left alone (its lease runs out
    /// and the dispatcher hands it out again), so it never runs on a lease that may be gone.
    async fn lease_still_held(&self, event: &ClaimedEvent, claimed: Instant) -> bool {
        let lease = Duration::from_millis(u64::try_from(self.lease_ms()).unwrap_or(u64::MAX));
        let taken = claimed.elapsed();
        if taken < lease / 3 {
            return true;
        }
        if taken >= lease * 2 / 3 {
            warn!(event = %event.id, "the next event's lease ran low while replies were delivered; leaving it to the dispatcher");
            return false;
        }
        match self.renew(event.id).await {
            Ok(renewed) => renewed,
            Err(e) => {
                warn!(event = %event.id, error = %e, "cannot renew the next event's lease; leaving it to the dispatcher");
                false
            }
        }
    }

    /// Run one event to its end. Returns the conversation's next event, and when it was
    /// claimed, when `go_on` asked for it and one was waiting (claimed with the completion).
    /// The records of its replies' deliveries are written meanwhile: their tasks go in
    /// `records`.
    async fn process(
        &self,
        claimed: ClaimedEvent,
        go_on: bool,
        records: &mut Vec<JoinHandle<()>>,
    ) -> Option<(ClaimedEvent, Instant)> {
        let payload: EventPayload = match serde_json::from_str(&claimed.payload) {
            Ok(payload) => payload,
            Err(e) => {
                error!(error = %e, "stored event is unreadable; marking it failed");
                let error = format!("unreadable payload: {e}");
                let _counting = self.inner.counting.read().await;
                if self.give_back(&claimed, &error, None).await {
                    self.finished(claimed.received_at, true);
                }
                return None;
            }
        };
        let mut context = EventContext {
            event_id: claimed.id,
            conversation: claimed.conversation.clone(),
            payload,
            attempt: claimed.attempts,
            live: Live::off(),
            poster: self.poster(),
        };
        let adapter = self.adapter(&context.conversation.platform);
        if let Some(adapter) = &adapter
            && context.attempt == 1
        {
            adapter
                .working(&context.conversation, &context.payload.route)
                .await;
        }

        let live_run = match &adapter {
            Some(adapter) => {
                LiveRun::start(
                    adapter.clone(),
                    self.inner.store.clone(),
                    self.inner.redactor.clone(),
                    LiveTarget {
                        event_id: context.event_id,
                        conversation: &context.conversation,
                        route: &context.payload.route,
                        attempt: context.attempt,
                    },
                )
                .await
            }
            None => None,
        };
        if let Some(run) = &live_run {
            context.live = run.live();
        }

        let handler = self.inner.handler.clone();
        let mut task_context = context.clone();
        let intake = self.inner.files.read().ok().and_then(|f| f.clone());
        // In the event's span, so its model and tool calls are the event's children.
        let running = tokio::spawn(
            async move {
                if let Some(intake) = intake {
                    intake.prepare(adapter, &mut task_context).await?;
                }
                handler.handle(&task_context).await
            }
            .in_current_span(),
        );
        let result = match self.renewing_lease(&claimed, running).await {
            Ok(result) => result,
            Err(join) => Err(anyhow::anyhow!("the handler panicked: {join}")),
        };
        // The live messages this run (or an earlier one) started; the replies finish them.
        let live = match live_run {
            Some(run) => run.finish().await,
            None => Default::default(),
        };
        let max_attempts = i32::try_from(self.inner.config.max_attempts).unwrap_or(i32::MAX);
        let completion = match result {
            Ok(outgoing) => self.completion(&context, outgoing, None, live).await,
            Err(e) if context.attempt < max_attempts => {
                let delay = backoff_ms(context.attempt);
                warn!(error = %e, attempt = context.attempt, delay_ms = delay, "event failed; will retry");
                self.inner.metrics.events_retried.inc();
                let error = self.inner.redactor.redact_string(&format!("{e:#}"));
                self.give_back(&claimed, &error, Some(UnixMs::now().plus(delay)))
                    .await;
                return None;
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "event failed for the last time");
                let apology = Outgoing::text(format!(
                    "Sorry, I could not handle that: {e}. The error is logged."
                ));
                self.completion(&context, vec![apology], Some(format!("{e:#}")), live)
                    .await
            }
        };
        let completion = match completion {
            Ok(completion) => completion,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot store the reply's files; will retry");
                let error = self.inner.redactor.redact_string(&format!("{e:#}"));
                let retry_at = UnixMs::now().plus(backoff_ms(context.attempt));
                self.give_back(&claimed, &error, Some(retry_at)).await;
                return None;
            }
        };
        let failed = completion.error.is_some();
        let completion = Completion {
            reply_lease_until: Some(UnixMs::now().plus(REPLY_LEASE_MS)),
            claim_next_until: (go_on && !self.stopping()).then(|| self.lease_until()),
            ..completion
        };
        let completing = Instant::now();
        // Until the counter has followed the completion (see `Inner::counting`).
        let counting = self.inner.counting.read().await;
        match self
            .inner
            .store
            .complete_event(&claimed, &self.inner.owner, &completion)
            .await
        {
            Ok(Some(completed)) => {
                self.finished(claimed.received_at, failed);
                drop(counting);
                // Delivered before the next event runs: a conversation's replies keep their order.
                for reply in completed.replies {
                    let record = self.deliver_record_later(reply).await;
                    records.push(tokio::spawn(record.in_current_span()));
                }
                completed.next.map(|next| (next, completing))
            }
            Ok(None) => {
                warn!("lease lost before completion; another worker owns the event");
                None
            }
            Err(e) => {
                error!(error = %e, "cannot store the completion; the event will run again");
                None
            }
        }
    }

    /// Give a claimed event back (retry at `retry_at`, or failed for good without one). True
    /// when it was written; otherwise the lease runs out and the event runs again.
    async fn give_back(
        &self,
        claimed: &ClaimedEvent,
        error: &str,
        retry_at: Option<UnixMs>,
    ) -> bool {
        match self
            .inner
            .store
            .fail_event(claimed, &self.inner.owner, error, retry_at)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                warn!("lease lost before the failure was recorded; another worker owns the event");
                false
            }
            Err(e) => {
                error!(error = %e, "cannot record the failure; the event runs again when its lease expires");
                false
            }
        }
    }

    /// Wait for the handler, renewing the event's lease every third of its length meanwhile.
    async fn renewing_lease<T>(
        &self,
        claimed: &ClaimedEvent,
        mut running: JoinHandle<T>,
    ) -> Result<T, tokio::task::JoinError> {
        let every =
            Duration::from_millis(u64::try_from((self.lease_ms() / 3).max(100)).unwrap_or(100));
        let mut renew = true;
        loop {
            tokio::select! {
                outcome = &mut running => return outcome,
                _ = tokio::time::sleep(every), if renew => {
                    match self.renew(claimed.id).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!("lease lost while processing");
                            renew = false;
                        }
                        Err(e) => warn!(error = %e, "cannot renew lease"),
                    }
                }
            }
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

    /// Store reply files in the blob store (before the rows that point to them) and build the
    /// completion: one assistant message and one outbox reply per piece of text. Reply `n`
    /// finishes live message `n` when the answer was shown while written; a live message with
    /// no reply left gets an empty reply that removes it.
    async fn completion(
        &self,
        context: &EventContext,
        outgoing: Vec<Outgoing>,
        error: Option<String>,
        mut live: std::collections::BTreeMap<usize, ecdysis_chat::LiveHandle>,
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
                files.push(
                    store_file(self.inner.blobs.as_ref(), &context.conversation, attachment)
                        .await?,
                );
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
                    live: live.remove(&completion.replies.len()),
                };
                let n = completion.replies.len();
                completion.replies.push(NewReply {
                    idempotency_key: reply_key(context.event_id, n),
                    payload: serde_json::to_string(&payload)?,
                });
            }
        }
        for (n, handle) in live {
            let payload = ReplyPayload {
                text: String::new(),
                attachments: Vec::new(),
                buttons: Vec::new(),
                route: context.payload.route.clone(),
                live: Some(handle),
            };
            completion.replies.push(NewReply {
                idempotency_key: reply_key(context.event_id, n),
                payload: serde_json::to_string(&payload)?,
            });
        }
        Ok(completion)
    }
}
