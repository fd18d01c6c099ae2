//! Where the gateway websocket lives, asked of the configured API (`GET /api/v10/gateway/bot`
//! at `api_url`) and retried with backoff until it answers.
//!
//! The gateway connects only to the URL this module got from the configured API, and stays
//! down (visible in `/readyz`) while it cannot get one: falling back to Discord's own
//! `wss://gateway.discord.gg` when `DISCORD_API_URL` points at a proxy (or a test fake) would
//! send the bot token to a host nobody configured.

use std::time::Duration;

use ecdysis_chat::backoff::Backoff;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::health::Health;
use crate::rest::{Rest, RestError};

/// The first pause after a failed call; it doubles up to [`MAX_BACKOFF`].
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pause after `failures` failed calls in a row (1 or more).
pub(crate) fn backoff(failures: u32) -> Duration {
    Backoff::new(MIN_BACKOFF, MAX_BACKOFF).delay(failures)
}

/// Whether `url` names a websocket (`ws://` or `wss://`).
pub(crate) fn is_websocket(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

/// A websocket URL, or why the answer is not one.
fn check(url: &str) -> Result<String, String> {
    let url = url.trim();
    if is_websocket(url) {
        Ok(url.to_string())
    } else {
        Err(format!(
            "the API named `{url}`, which is not a ws:// or wss:// URL"
        ))
    }
}

/// A failed call in a line: the status and Discord's message, when it answered at all.
fn describe(error: &RestError) -> String {
    match error {
        RestError::Api {
            status, message, ..
        } => format!("HTTP {status}: {message}"),
        other => other.to_string(),
    }
}

/// Ask `GET /gateway/bot` until it names a websocket URL. `None` when `stop` turned true
/// first. Every failure is logged and shown as the gateway's stage.
pub(crate) async fn fetch(
    rest: &Rest,
    api_url: &str,
    health: &Health,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return None;
        }
        let problem = match rest.gateway_url().await {
            Ok(url) => match check(&url) {
                Ok(url) => {
                    if failures > 0 {
                        info!(api = api_url, url = %url, failures, "got the Discord gateway URL after failures");
                    }
                    return Some(url);
                }
                Err(problem) => problem,
            },
            Err(e) => describe(&e),
        };
        failures += 1;
        let delay = backoff(failures);
        warn!(
            api = api_url,
            error = %problem,
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "cannot get the Discord gateway URL from the configured API; the gateway stays down until it answers (never falling back to another gateway)"
        );
        health.set_stage(&format!("down: no gateway URL from {api_url} ({problem})"));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), MIN_BACKOFF);
        assert_eq!(backoff(2), MIN_BACKOFF * 2);
        assert_eq!(backoff(3), MIN_BACKOFF * 4);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn only_websocket_urls_are_taken() {
        assert_eq!(
            check(" ws://127.0.0.1:9/gateway ").as_deref(),
            Ok("ws://127.0.0.1:9/gateway")
        );
        assert!(check("wss://gateway.example").is_ok());
        assert!(check("https://gateway.example").is_err());
        assert!(check("").is_err());
    }
}
