//! Events in: checks, mention gating, button presses answered out of band, the files stored,
//! and the event with its user message put into the inbox; the caller acknowledges the platform
//! only once that commit is durable.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use ecdysis_chat::{Accepted, Addressed, Event, EventKind, EventSink, Reply, SubmitError};
use tracing::warn;

use super::Bus;
use super::payload::{EventPayload, StoredFile, store_file};
use crate::storage::store::{NewEvent, StoreError};

/// Largest file accepted from an adapter.
const MAX_ATTACHMENT_BYTES: usize = 50 * 1024 * 1024;

#[async_trait]
impl EventSink for Bus {
    async fn submit(&self, event: Event) -> Result<Accepted, SubmitError> {
        check(&event)?;
        if let Some(accepted) = self.handle_action(&event).await {
            return Ok(accepted);
        }
        if !self.is_for_the_bot(&event).await? || !self.admitted(&event).await {
            return Ok(Accepted {
                event_id: String::new(),
                duplicate: false,
                ignored: true,
            });
        }
        let open = self.inner.open_events.load(Ordering::Relaxed);
        if open >= i64::try_from(self.inner.config.max_queued).unwrap_or(i64::MAX) {
            return Err(SubmitError::Busy(format!(
                "{open} events are waiting; try again shortly"
            )));
        }
        let mut files = Vec::with_capacity(event.attachments.len());
        for attachment in &event.attachments {
            let stored = store_file(self.inner.blobs.as_ref(), &event.conversation, attachment)
                .await
                .map_err(|e| SubmitError::Internal(format!("cannot store a file: {e}")))?;
            files.push(stored);
        }
        let new = match new_event(&event, &files) {
            Ok(new) => new,
            Err(e) => {
                self.forget_files(&files).await;
                return Err(e);
            }
        };
        // Until the counter has followed the insert (see `Inner::counting`); files are
        // forgotten after, so a slow blob store never holds up a refresh of the count.
        let counting = self.inner.counting.read().await;
        let inserted = self.inner.store.insert_event(&new).await;
        if let Ok(inserted) = &inserted
            && !inserted.duplicate
        {
            let open = self.inner.open_events.fetch_add(1, Ordering::Relaxed) + 1;
            self.inner.metrics.queue_depth.set(open);
        }
        drop(counting);
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(StoreError::Busy) => {
                // Refused before it was queued: nothing points at the files.
                self.forget_files(&files).await;
                return Err(SubmitError::Busy(StoreError::Busy.to_string()));
            }
            // The files stay: a commit whose answer was lost may still have written the rows.
            Err(e) => return Err(SubmitError::Internal(e.to_string())),
        };
        if inserted.duplicate {
            self.inner.metrics.events_duplicate.inc();
            self.forget_files(&files).await;
        } else {
            self.inner.metrics.events_received.inc();
            self.inner.wake.notify_one();
        }
        Ok(Accepted {
            event_id: inserted.event_id.to_string(),
            duplicate: inserted.duplicate,
            ignored: false,
        })
    }
}

/// An event that can never be processed is refused before anything is stored.
fn check(event: &Event) -> Result<(), SubmitError> {
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
    Ok(())
}

/// The inbox row of an event whose files are stored: its payload, and the user's message as
/// the transcript shows it.
fn new_event(event: &Event, files: &[StoredFile]) -> Result<NewEvent, SubmitError> {
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
        attachments: files.to_vec(),
        remote_files: event.remote_files.clone(),
        route: event.route.clone(),
        scheduled: None,
    };
    let payload = serde_json::to_string(&payload)
        .map_err(|e| SubmitError::Internal(format!("cannot encode the event: {e}")))?;
    Ok(NewEvent {
        platform_event_id: event.platform_event_id.clone(),
        conversation: event.conversation.clone(),
        user_id: event.user.id.clone(),
        payload,
        text: transcript_text,
        attachments: files.iter().map(StoredFile::to_new_artifact).collect(),
    })
}

impl Bus {
    /// Delete files no row points at (a duplicate event, or one that was not written).
    async fn forget_files(&self, files: &[StoredFile]) {
        for file in files {
            if let Err(e) = self.inner.blobs.delete(&file.blob_key).await {
                warn!(blob = %file.blob_key, error = %e, "cannot delete an unused file");
            }
        }
    }

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
                live: None,
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
}
