//! The gateway: one websocket to Discord (API v10, JSON), read in order, with heartbeats,
//! resume after a lost connection and a fresh session when Discord ends the old one.
//!
//! The websocket URL is whatever `GET /api/v10/gateway/bot` at `api_url` returns ([`locate`]);
//! until it answers, the gateway stays down rather than connect anywhere else. Events are
//! handed over in the order the gateway sent them ([`events`]): messages and interactions to
//! the intake's per-channel lanes, channel and thread facts to the routing cache. Only the
//! events the bot uses are parsed; the rest are skipped unread.

mod connection;
mod events;
pub(crate) mod locate;
pub(crate) mod protocol;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::DiscordError;
use crate::adapter::Shared;
use crate::intake::Intake;
use connection::{Connection, Ended, Session};

/// Failed connections in a row after which a session is given up (its resume URL may be
/// gone) and a new one identified at the gateway URL.
const RESUME_ATTEMPTS: u32 = 3;
/// A live connection that ends sooner than this counts towards a pause before the next one.
const STABLE: Duration = Duration::from_secs(10);
/// How long a shutdown waits for the connection to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The running gateway connection.
pub struct GatewayHandle {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl GatewayHandle {
    /// Close the connection and wait (briefly) for it to end.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.task).await;
    }
}

/// What the bot subscribes to: guilds (their channels and threads), guild messages, DMs, and
/// the content of messages (Discord's intent bits 0, 9, 12 and 15).
pub(crate) const INTENTS: u64 = (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15);

pub(crate) async fn start(shared: Arc<Shared>) -> Result<GatewayHandle, DiscordError> {
    if shared.settings.token.is_none() {
        return Err(DiscordError::Config("DISCORD_TOKEN is not set".into()));
    }
    let tls = Arc::new(
        ecdysis_chat::tls::client_config()
            .map_err(|e| DiscordError::Gateway(format!("TLS setup failed: {e}")))?,
    );
    let intake = Intake::new(shared.clone());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(Connection::new(shared, intake, tls), stopped));
    info!("Discord gateway starting");
    Ok(GatewayHandle { task, stop })
}

/// Get the URL, then connect again and again until stopped or refused for good.
async fn run(connection: Connection, mut stopped: watch::Receiver<bool>) {
    let shared = connection.shared().clone();
    let api_url = shared.settings.api_url.clone();
    let Some(gateway) = locate::fetch(&shared.rest, &api_url, &shared.health, &mut stopped).await
    else {
        return;
    };
    shared.health.set_gateway_url(&gateway);
    info!(url = %gateway, "Discord gateway connecting");
    let mut session: Option<Session> = None;
    // Connections in a row that never became live, and live ones in a row that ended early.
    let (mut failures, mut short_lived) = (0u32, 0u32);
    loop {
        let began = tokio::time::Instant::now();
        let ended = connection.run(&gateway, &mut session, &mut stopped).await;
        shared.health.set_stage("disconnected");
        let delay = match ended {
            Ended::Stopped => break,
            Ended::Refused(why) => {
                error!(
                    why,
                    "the Discord gateway refused the bot; not connecting again"
                );
                shared.health.set_stage(&format!("failed: {why}"));
                return;
            }
            Ended::Lost { why, was_live } => {
                if was_live {
                    failures = 0;
                    short_lived = if began.elapsed() < STABLE {
                        short_lived.saturating_add(1)
                    } else {
                        0
                    };
                } else {
                    failures = failures.saturating_add(1);
                }
                if failures >= RESUME_ATTEMPTS && session.take().is_some() {
                    warn!(
                        failures,
                        "cannot resume the Discord gateway session; identifying anew at the gateway URL"
                    );
                }
                let delay = pause(failures, short_lived);
                warn!(
                    why,
                    resume = session.is_some(),
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "Discord gateway connection lost; reconnecting"
                );
                delay
            }
            Ended::SessionOver { why } => {
                session = None;
                // Discord asks for a random pause of 1–5 s before identifying again.
                let delay = Duration::from_millis(rand::random_range(1_000..=5_000));
                warn!(
                    why,
                    retry_in_ms = delay.as_millis() as u64,
                    "Discord gateway session ended; identifying again"
                );
                delay
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|stopped| *stopped) => break,
        }
    }
    shared.health.set_stage("off");
}

/// The pause before connecting again: none after a live connection (its session is resumed
/// at once) unless live connections keep ending early; failed attempts back off.
fn pause(failures: u32, short_lived: u32) -> Duration {
    match (failures, short_lived) {
        (0, 0 | 1) => Duration::ZERO,
        (0, short) => locate::backoff(short - 1),
        (failed, _) => locate::backoff(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_are_immediate_after_a_live_session_and_paced_otherwise() {
        assert_eq!(pause(0, 0), Duration::ZERO);
        assert_eq!(pause(0, 1), Duration::ZERO);
        assert_eq!(pause(0, 2), locate::MIN_BACKOFF);
        assert_eq!(pause(0, 3), locate::MIN_BACKOFF * 2);
        assert_eq!(pause(1, 5), locate::MIN_BACKOFF);
        assert_eq!(pause(40, 0), locate::MAX_BACKOFF);
    }
}
