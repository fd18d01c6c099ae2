//! Replies out: delivering outbox rows through the adapter of their platform, recording the
//! outcome, and the sweep that retries what failed or was left behind by a crash.

use std::time::Duration;

use ecdysis_chat::{Attachment, DeliveryError, Reply};
use tracing::{Instrument, debug, error, warn};

use super::payload::ReplyPayload;
use super::{Bus, backoff_ms};
use crate::storage::store::{OutboxItem, UnixMs};

/// How long a claimed reply is held before the sweep may retry it.
pub(super) const REPLY_LEASE_MS: i64 = 60_000;
/// Replies the sweep claims at once.
const SWEEP_BATCH: i64 = 50;
/// How often the sweep looks for replies to retry.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

impl Bus {
    /// Deliver one claimed reply and record the outcome.
    pub(super) async fn deliver(&self, item: OutboxItem) {
        self.deliver_record_later(item).await.await;
    }

    /// Deliver one claimed reply; the returned future records the outcome. A worker goes on
    /// with its conversation's next event while the record is written (the reply was posted,
    /// and the next event's writes queue behind the record in any case).
    pub(super) async fn deliver_record_later(
        &self,
        item: OutboxItem,
    ) -> impl Future<Output = ()> + Send + 'static {
        let span = tracing::info_span!(
            "deliver",
            reply = %item.id,
            platform = %item.conversation.platform,
            attempt = item.attempts,
        );
        let outcome = self.try_deliver(&item).instrument(span).await;
        let bus = self.clone();
        async move { bus.record(item, outcome).await }
    }

    /// Record how a delivery ended: sent, or failed (retried later, or given up).
    async fn record(&self, item: OutboxItem, outcome: Result<Option<String>, DeliveryError>) {
        let store = &self.inner.store;
        let max_attempts =
            i32::try_from(self.inner.config.max_delivery_attempts).unwrap_or(i32::MAX);
        let recorded = match outcome {
            Ok(message_id) => {
                self.inner.metrics.replies_sent.inc();
                store.mark_reply_sent(item.id, message_id.as_deref()).await
            }
            Err(DeliveryError::RateLimited {
                retry_after,
                detail,
            }) => {
                // The platform named the time: wait exactly that (plus a little), however
                // often; the reply is neither dropped nor posted twice.
                self.inner.metrics.reply_failures.inc();
                let delay = i64::try_from(retry_after.as_millis())
                    .unwrap_or(i64::MAX / 2)
                    .saturating_add(50);
                warn!(reply = %item.id, error = %detail, delay_ms = delay, "rate limited by the platform; will retry then");
                store
                    .mark_reply_failed(item.id, &detail, Some(UnixMs::now().plus(delay)))
                    .await
            }
            Err(DeliveryError::Retryable(e)) if item.attempts < max_attempts => {
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
            live: payload.live,
        };
        let delivered = adapter.deliver(&reply).await?;
        debug!(reply = %item.id, "delivered");
        Ok(delivered.platform_message_id)
    }

    /// Deliver replies that failed before or were left by a crash; how many were claimed.
    async fn deliver_replies(&self) -> usize {
        let items = match self
            .inner
            .store
            .claim_replies(None, UnixMs::now().plus(REPLY_LEASE_MS), SWEEP_BATCH)
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

    /// Retry replies that failed or were left by a crash, and keep the queue depth honest.
    pub(super) async fn sweep(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        while !self.stopping() {
            while self.deliver_replies().await > 0 && !self.stopping() {}
            self.refresh_queue_depth().await;
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
    }
}
