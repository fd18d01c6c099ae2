//! The intake gate: a policy module (the guard rails, `crate::engine::guard`) decides about
//! every event meant for the bot before it is stored — let it run, drop it, or answer it at
//! once without running anything (a refusal, a pairing code).

use std::sync::Arc;

use async_trait::async_trait;
use ecdysis_chat::{Event, Reply};
use tracing::warn;

use super::{Bus, Outgoing};
use crate::storage::store::{NewMessage, Role};

/// What the gate decides about an event before it is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Store it and let it run.
    Admit,
    /// Acknowledge it and do nothing.
    Ignore,
    /// Acknowledge it, run nothing, and answer with this (a refusal, a pairing code).
    Answer(Outgoing),
}

/// Decides at intake whether an event may run (access policy, pairing, rate limits).
#[async_trait]
pub trait Gate: Send + Sync + 'static {
    async fn admit(&self, event: &Event) -> Admission;
}

impl Bus {
    /// Let `gate` decide about every event that is for the bot before it is stored.
    pub fn set_gate(&self, gate: Arc<dyn Gate>) {
        if let Ok(mut slot) = self.inner.gate.write() {
            *slot = Some(gate);
        }
    }

    /// Ask the gate (if any) about an event; answer it at once when the gate says so (stored in
    /// the transcript, delivered in the background so the platform's ack is not held up).
    pub(super) async fn admitted(&self, event: &Event) -> bool {
        let gate = self.inner.gate.read().ok().and_then(|g| g.clone());
        let Some(gate) = gate else {
            return true;
        };
        let answer = match gate.admit(event).await {
            Admission::Admit => return true,
            Admission::Ignore => return false,
            Admission::Answer(answer) => self.redacted(answer),
        };
        let bus = self.clone();
        let conversation = event.conversation.clone();
        let route = event.route.clone();
        let key = format!("gate:{}", event.platform_event_id);
        tokio::spawn(async move {
            let stored = bus
                .inner
                .store
                .append_messages(
                    &conversation,
                    None,
                    &[NewMessage {
                        role: Role::Assistant,
                        text: answer.text.clone(),
                        meta: None,
                        attachments: Vec::new(),
                    }],
                )
                .await;
            if let Err(e) = stored {
                warn!(error = %e, "cannot store a guard rail's answer");
            }
            let Some(adapter) = bus.adapter(&conversation.platform) else {
                return;
            };
            let reply = Reply {
                idempotency_key: key,
                conversation,
                text: answer.text,
                attachments: Vec::new(),
                buttons: Vec::new(),
                route,
                live: None,
            };
            if let Err(e) = adapter.deliver(&reply).await {
                warn!(error = %e, "cannot deliver a guard rail's answer");
            }
        });
        false
    }
}
