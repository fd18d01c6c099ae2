//! Human approvals: a message with Approve / Deny buttons posted into the conversation, answered
//! by a button press (Slack block action, Discord component, web chat button).
//!
//! Button presses do not queue behind the conversation's running event (which is the one
//! waiting for the answer): the bus hands them to [`Approvals`] directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ecdysis_chat::{AllowList, Button, ButtonStyle, ConversationRef, Event, EventKind};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::bus::{ActionHandler, Outgoing};
use crate::engine::tools::ToolContext;
use crate::sandbox::ApprovalGate;
use crate::storage::store::EventId;

const APPROVE: &str = "approval:approve";
const DENY: &str = "approval:deny";

struct Pending {
    conversation: ConversationRef,
    answer: oneshot::Sender<(bool, String)>,
}

/// Pending approvals of this process.
pub struct Approvals {
    timeout: Duration,
    /// Users who may answer (`platform:id` entries); empty means anyone in the conversation.
    approvers: AllowList,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Approvals {
    pub fn new(timeout: Duration, approvers: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            approvers: AllowList::new(approvers),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn take(&self, id: &str) -> Option<Pending> {
        self.pending.lock().ok()?.remove(id)
    }
}

#[async_trait]
impl ApprovalGate for Approvals {
    async fn approve(&self, context: &ToolContext, command: &str) -> Result<bool, String> {
        let text = format!(
            "The model wants to run this command in the channel's sandbox:\n```\n{command}\n```"
        );
        self.ask(context, text, "sandbox").await
    }
}

impl Approvals {
    /// Post `text` with Approve / Deny buttons and wait for the answer (`Ok(false)` when denied
    /// or unanswered in time). `what` tells apart several questions of one tool step (the
    /// prompt's idempotency key).
    pub async fn ask(
        &self,
        context: &ToolContext,
        text: String,
        what: &str,
    ) -> Result<bool, String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (answer, answered) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                id.clone(),
                Pending {
                    conversation: context.conversation.clone(),
                    answer,
                },
            );
        }
        let prompt = Outgoing {
            text: format!("{text}\nApprove within {} s?", self.timeout.as_secs()),
            buttons: vec![
                Button {
                    action_id: APPROVE.into(),
                    label: "Approve".into(),
                    value: id.clone(),
                    style: ButtonStyle::Primary,
                },
                Button {
                    action_id: DENY.into(),
                    label: "Deny".into(),
                    value: id.clone(),
                    style: ButtonStyle::Danger,
                },
            ],
            ..Outgoing::default()
        };
        // The sandbox's key stays as it was; other questions add what they are about.
        let key = match what {
            "sandbox" => format!("{}:approval:{}", context.event_id, context.step),
            other => format!("{}:approval:{}:{other}", context.event_id, context.step),
        };
        if let Err(e) = context
            .poster
            .post_now(
                EventId(context.event_id),
                &context.conversation,
                &context.route,
                &key,
                prompt,
            )
            .await
        {
            self.take(&id);
            return Err(format!("cannot ask for approval: {e:#}"));
        }
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok((approved, by))) => {
                info!(approved, by = %by, "approval answered");
                Ok(approved)
            }
            Ok(Err(_)) | Err(_) => {
                self.take(&id);
                warn!("approval timed out");
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl ActionHandler for Approvals {
    async fn handle(&self, event: &Event) -> Option<Outgoing> {
        let EventKind::Action { action_id, value } = &event.kind else {
            return None;
        };
        let approved = match action_id.as_str() {
            APPROVE => true,
            DENY => false,
            _ => return None,
        };
        // The platform part of the identity is the receiving adapter's, never the client's.
        if !self
            .approvers
            .allows_user(&event.conversation.platform, &event.user.id)
        {
            return Some(Outgoing::text(format!(
                "<@{}> may not answer approvals here.",
                event.user.id
            )));
        }
        let Some(pending) = self.take(value) else {
            return Some(Outgoing::text(
                "That approval was already answered or has timed out.",
            ));
        };
        if pending.conversation.channel_ref() != event.conversation.channel_ref() {
            // A button of another channel: put it back untouched.
            if let Ok(mut map) = self.pending.lock() {
                map.insert(value.clone(), pending);
            }
            return Some(Outgoing::text("That button belongs to another channel."));
        }
        let by = event
            .user
            .name
            .clone()
            .unwrap_or_else(|| event.user.id.clone());
        let _ = pending.answer.send((approved, by.clone()));
        Some(Outgoing::text(if approved {
            format!("Approved by {by}.")
        } else {
            format!("Denied by {by}.")
        }))
    }
}
