//! The HTTP routes Slack calls: `/slack/events`, `/slack/commands`, `/slack/interactivity`
//! (all signed), plus the OAuth install routes from `oauth.rs`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::commands::SlashCommand;
use crate::events::Envelope;
use crate::inbound::Refused;
use crate::interactivity::Interaction;
use crate::{Slack, oauth};

/// Largest request body Slack sends us (events are a few KB).
const MAX_BODY_BYTES: usize = 1024 * 1024;

impl Slack {
    /// The routes: `/slack/events`, `/slack/commands`, `/slack/interactivity`,
    /// `/slack/install` and `/slack/oauth/callback`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/slack/events", post(events))
            .route("/slack/commands", post(commands))
            .route("/slack/interactivity", post(interactivity))
            .route("/slack/install", get(oauth::install))
            .route("/slack/oauth/callback", get(oauth::callback))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// The 401 for a request that is not signed by Slack; `None` when it is.
    fn refuse_unsigned(&self, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
        let now = crate::now_ms() / 1000;
        let e = self.inner.verifier.verify(headers, body, now).err()?;
        tracing::warn!(error = %e, "refused a Slack request");
        Some(error(StatusCode::UNAUTHORIZED, e.to_string()))
    }
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

fn refused(e: Refused) -> Response {
    match e {
        Refused::Busy(why) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, why);
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            response
        }
        Refused::Internal(why) => {
            tracing::error!(error = %why, "cannot accept a Slack event; Slack will retry");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the event could not be stored; nothing was accepted",
            )
        }
    }
}

async fn events(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = slack.refuse_unsigned(&headers, &body) {
        return response;
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not an Events API body: {e}"),
            );
        }
    };
    match envelope {
        Envelope::UrlVerification { challenge } => {
            axum::Json(serde_json::json!({ "challenge": challenge })).into_response()
        }
        Envelope::EventCallback(callback) => {
            if let Some(retry) = headers
                .get("x-slack-retry-num")
                .and_then(|v| v.to_str().ok())
            {
                tracing::debug!(event_id = %callback.event_id, retry, "Slack retried an event");
            }
            slack.inner.health.event();
            match slack.accept_callback(*callback).await {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => refused(e),
            }
        }
        Envelope::Other => StatusCode::OK.into_response(),
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn commands(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    if fields.get("ssl_check").is_some_and(|v| v == "1") {
        return StatusCode::OK.into_response();
    }
    if let Some(response) = slack.refuse_unsigned(&headers, &body) {
        return response;
    }
    let command = match SlashCommand::from_fields(&fields) {
        Ok(command) => command,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    axum::Json(slack.accept_command(&command).await).into_response()
}

impl Slack {
    /// Submit a slash command; the JSON Slack shows the user right away.
    pub(crate) async fn accept_command(&self, command: &SlashCommand) -> serde_json::Value {
        let ephemeral =
            |text: &str| serde_json::json!({ "response_type": "ephemeral", "text": text });
        if self.refuse_team(&command.team_id, "slash command") {
            return ephemeral("This workspace is not allowed to use this ecdysis server.");
        }
        match self.submit(command.to_event(crate::now_ms())).await {
            Ok(()) => command.ack_body(),
            Err(Refused::Busy(_)) => {
                ephemeral("ecdysis is busy right now; nothing was started. Try again in a moment.")
            }
            Err(Refused::Internal(why)) => {
                tracing::error!(error = %why, "cannot accept a slash command");
                ephemeral("ecdysis could not store the command; nothing was started.")
            }
        }
    }

    /// Submit a button press. `Ok` means acknowledge.
    pub(crate) async fn accept_interaction(
        &self,
        interaction: &Interaction,
    ) -> Result<(), Refused> {
        match interaction.to_event(crate::now_ms()) {
            Some(event) if self.refuse_team(&event.conversation.workspace, "interaction") => Ok(()),
            Some(event) => self.submit(event).await,
            None => {
                tracing::debug!(kind = %interaction.kind, "interaction not handled");
                Ok(())
            }
        }
    }
}

async fn interactivity(State(slack): State<Slack>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = slack.refuse_unsigned(&headers, &body) {
        return response;
    }
    let fields = form(&body);
    let Some(payload) = fields.get("payload") else {
        return error(StatusCode::BAD_REQUEST, "the interaction has no `payload`");
    };
    let interaction: Interaction = match serde_json::from_str(payload) {
        Ok(interaction) => interaction,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unreadable interaction: {e}"),
            );
        }
    };
    match slack.accept_interaction(&interaction).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => refused(e),
    }
}
