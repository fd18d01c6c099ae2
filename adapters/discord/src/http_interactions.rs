//! `POST /discord/interactions`: slash commands for hosts without a gateway connection.
//! Every request is verified (Ed25519 over `timestamp + body` with `DISCORD_PUBLIC_KEY`, and a
//! fresh timestamp) before anything else: a bad signature or a stale or missing header is a
//! 401 and stores nothing. PING answers `{"type":1}`; commands are stored, then answered with
//! a deferral (type 5) that the reply completes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use tracing::{debug, warn};

use crate::DiscordError;
use crate::adapter::Shared;
use crate::interactions::{FirstResponse, response_body, submit};
use crate::model::{Interaction, interaction_type};

/// Interactions are small; anything bigger is not one.
const MAX_BODY_BYTES: usize = 256 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/discord/interactions", post(interactions))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Read `DISCORD_PUBLIC_KEY` (64 hex digits).
pub(crate) fn parse_public_key(text: &str) -> Result<VerifyingKey, DiscordError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DiscordError::Config("DISCORD_PUBLIC_KEY must be 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| DiscordError::Config("DISCORD_PUBLIC_KEY is not an Ed25519 public key".into()))
}

/// Whether `signature_hex` signs `timestamp + body` with `key`, and the timestamp is within
/// `max_age_secs` of `now_secs`.
pub(crate) fn verify(
    key: &VerifyingKey,
    signature_hex: &str,
    timestamp: &str,
    body: &[u8],
    now_secs: u64,
    max_age_secs: u64,
) -> bool {
    let Ok(sent) = timestamp.trim().parse::<u64>() else {
        return false;
    };
    if sent.abs_diff(now_secs) > max_age_secs {
        return false;
    }
    let Some(signature) = hex::decode(signature_hex.trim())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
    else {
        return false;
    };
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    key.verify(&message, &signature).is_ok()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn interactions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = &shared.public_key else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let verified = match (
        header(&headers, "x-signature-ed25519"),
        header(&headers, "x-signature-timestamp"),
    ) {
        (Some(signature), Some(timestamp)) => verify(
            key,
            signature,
            timestamp,
            &body,
            now,
            shared.settings.max_signature_age_secs,
        ),
        _ => false,
    };
    if !verified {
        debug!("interaction with a bad, stale or missing signature refused");
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(_) => return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response(),
    };
    if value["type"] == interaction_type::PING {
        return axum::Json(serde_json::json!({ "type": 1 })).into_response();
    }
    let interaction: Interaction = match serde_json::from_value(value) {
        Ok(interaction) => interaction,
        Err(e) => {
            warn!(error = %e, "unreadable interaction");
            return (
                StatusCode::BAD_REQUEST,
                "not an interaction this endpoint reads",
            )
                .into_response();
        }
    };
    let place = crate::intake::interaction_place(&shared, &interaction).await;
    let Some(event) = crate::translate::interaction_event(&interaction, place) else {
        // Autocomplete and modals are not used by ecdysis's commands.
        return (StatusCode::BAD_REQUEST, "unsupported interaction type").into_response();
    };
    if interaction.kind == interaction_type::MESSAGE_COMPONENT {
        // The core answers a press at once; the deferral must not wait for it.
        let token = interaction.token.clone();
        crate::interactions::submit_component_in_background(shared.clone(), event, token);
        return axum::Json(response_body(&FirstResponse::Defer)).into_response();
    }
    let first = submit(&shared, event).await;
    if let FirstResponse::Error(text) = &first {
        debug!(%text, "interaction refused");
    }
    axum::Json(response_body(&first)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn signatures_are_checked_with_their_timestamp() {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let key = parse_public_key(&hex::encode(signing.verifying_key().as_bytes())).unwrap();
        let body = br#"{"type":1}"#;
        let signature = hex::encode(
            signing
                .sign(&[b"1000".as_slice(), body].concat())
                .to_bytes(),
        );
        assert!(verify(&key, &signature, "1000", body, 1000, 300));
        assert!(
            !verify(&key, &signature, "1000", b"{\"type\":2}", 1000, 300),
            "other body"
        );
        assert!(
            !verify(&key, &signature, "1001", body, 1000, 300),
            "other timestamp"
        );
        assert!(!verify(&key, &signature, "1000", body, 2000, 300), "stale");
        assert!(!verify(&key, "zz", "1000", body, 1000, 300), "not hex");
        assert!(parse_public_key("abc").is_err());
    }
}
