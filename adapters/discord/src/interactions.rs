//! Slash commands and button presses: acknowledged within Discord's 3 seconds with a deferral
//! ("thinking…", type 5) that the reply later edits. When the core cannot take the event, the
//! user gets an error message instead of a hanging "thinking…".
//!
//! A slash command is stored first and deferred after: nothing is acknowledged that was not
//! stored. A button press is deferred while it is submitted: the core answers presses at once
//! (approvals do not queue behind the event waiting for them), so the deferral must be on its
//! way before that answer is delivered.

use std::sync::Arc;

use ecdysis_chat::{Accepted, Event, SubmitError};
use serde_json::{Value, json};
use tracing::{debug, error, warn};

use crate::adapter::Shared;
use crate::rest::MessageBody;

/// What the first response to an interaction is.
#[derive(Debug, PartialEq)]
pub(crate) enum FirstResponse {
    /// Stored: "thinking…" until the reply edits it.
    Defer,
    /// Re-delivered: the first delivery answered already.
    Nothing,
    /// Not taken: say why, to the user only.
    Error(String),
}

/// Hand an interaction's event to the core and decide the first response.
pub(crate) async fn submit(shared: &Shared, event: Event) -> FirstResponse {
    let id = event.platform_event_id.clone();
    match shared.sink.submit(event).await {
        Ok(Accepted {
            duplicate: true, ..
        }) => {
            debug!(interaction = %id, "interaction delivered twice; answered once");
            FirstResponse::Nothing
        }
        Ok(Accepted { ignored: true, .. }) => {
            FirstResponse::Error("There is nothing for me to do with that here.".into())
        }
        Ok(_) => FirstResponse::Defer,
        Err(SubmitError::Invalid(why)) => {
            FirstResponse::Error(format!("I cannot take that: {why}"))
        }
        Err(SubmitError::Busy(why)) => FirstResponse::Error(format!(
            "I am busy right now ({why}). Please try again shortly."
        )),
        Err(e @ SubmitError::Internal(_)) => {
            error!(interaction = %id, error = %e, "interaction not stored");
            FirstResponse::Error(
                "Sorry, something went wrong on my side and nothing was saved. Please try again."
                    .into(),
            )
        }
    }
}

/// The response body for the HTTP interactions endpoint.
pub(crate) fn response_body(first: &FirstResponse) -> Value {
    match first {
        FirstResponse::Defer | FirstResponse::Nothing => json!({ "type": 5 }),
        FirstResponse::Error(text) => json!({
            "type": 4,
            "data": MessageBody::text(text).ephemeral(),
        }),
    }
}

/// The parts of an interaction its responses need.
pub(crate) struct Target {
    pub id: u64,
    pub token: String,
}

/// A slash command from the gateway: submit, then defer (or answer with an ephemeral error).
pub(crate) async fn handle_command(shared: &Shared, event: Event, target: Target) {
    let pending = shared.acks.begin(&event.platform_event_id);
    let first = submit(shared, event).await;
    if first == FirstResponse::Nothing {
        return;
    }
    send_first_response(shared, &target, &response_body(&first)).await;
    drop(pending);
}

/// A button press from the gateway: defer and submit side by side.
pub(crate) async fn handle_component(shared: Arc<Shared>, event: Event, target: Target) {
    let pending = shared.acks.begin(&event.platform_event_id);
    let defer = {
        let shared = shared.clone();
        let token = target.token.clone();
        tokio::spawn(async move {
            let target = Target {
                id: target.id,
                token,
            };
            send_first_response(&shared, &target, &response_body(&FirstResponse::Defer)).await;
            drop(pending);
        })
    };
    let first = submit(&shared, event).await;
    let _ = defer.await;
    if let FirstResponse::Error(text) = first {
        show_error(&shared, &target.token, &text).await;
    }
}

/// A button press through the HTTP endpoint: the response (a deferral) goes out at once, the
/// press is submitted in the background.
pub(crate) fn submit_component_in_background(shared: Arc<Shared>, event: Event, token: String) {
    tokio::spawn(async move {
        if let FirstResponse::Error(text) = submit(&shared, event).await {
            show_error(&shared, &token, &text).await;
        }
    });
}

async fn send_first_response(shared: &Shared, target: &Target, response: &Value) {
    if let Err(e) = shared
        .rest
        .respond(target.id, &target.token, response)
        .await
    {
        warn!(interaction = target.id, error = %e, "cannot answer the interaction");
    }
}

/// Replace a deferred "thinking…" with an error message.
async fn show_error(shared: &Shared, token: &str, text: &str) {
    if let Err(e) = shared
        .rest
        .edit_original(token, &MessageBody::text(text))
        .await
    {
        warn!(error = %e, "cannot show the user why their button press failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_responses() {
        assert_eq!(response_body(&FirstResponse::Defer), json!({"type": 5}));
        let error = response_body(&FirstResponse::Error("busy".into()));
        assert_eq!(error["type"], 4);
        assert_eq!(error["data"]["flags"], 64, "errors are ephemeral");
    }
}
