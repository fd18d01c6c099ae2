//! Slash commands and button presses from the gateway: stored first, then deferred ("thinking…",
//! type 5) within Discord's 3 seconds; the reply edits that response later. When the core
//! cannot take the event, the user gets an ephemeral error instead of a hanging "thinking…".

use ecdysis_chat::{Accepted, Event, SubmitError};
use serde_json::{Value, json};
use serenity::all::{CreateInteractionResponse, CreateInteractionResponseMessage, InteractionId};
use serenity::builder::Builder;
use tracing::{debug, error, warn};

use crate::adapter::Shared;

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
            "data": { "content": text, "flags": 64, "allowed_mentions": { "parse": [] } }
        }),
    }
}

/// Submit a gateway interaction and send its first response over REST.
pub(crate) async fn handle(shared: &Shared, event: Event, interaction_id: u64, token: &str) {
    let pending = shared.acks.begin(&event.platform_event_id);
    let first = submit(shared, event).await;
    let response = match &first {
        FirstResponse::Defer => {
            CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new())
        }
        FirstResponse::Nothing => return,
        FirstResponse::Error(text) => CreateInteractionResponse::Message(
            CreateInteractionResponseMessage::new()
                .content(text.clone())
                .ephemeral(true),
        ),
    };
    if let Err(e) = response
        .execute(&shared.http, (InteractionId::new(interaction_id), token))
        .await
    {
        warn!(interaction = interaction_id, error = %e, "cannot answer the interaction");
    }
    drop(pending);
}
