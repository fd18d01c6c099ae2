//! Socket Mode: events, slash commands and interactions over a websocket opened with the app
//! token (`apps.connections.open`), for servers Slack cannot reach over HTTP.
//!
//! Each envelope is acknowledged once the core has accepted it (refused ones are left for
//! Slack to send again). Envelopes are handed to the core in arrival order by one task per
//! connection, so reading, pinging and acknowledging never wait for the core. A connection
//! that fails is replaced after a jittered, growing delay; one that stays open but goes silent
//! (no envelope, ping or pong for `silence_timeout`, a known failure mode of long-lived Slack
//! sockets) is closed and replaced by the watchdog.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::commands::SlashCommand;
use crate::events::Envelope;
use crate::health::Socket;
use crate::interactivity::Interaction;
use crate::{Slack, SocketSettings};

/// The running Socket Mode client; dropping it keeps it running, [`SocketMode::stop`] ends it.
pub struct SocketMode {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl SocketMode {
    /// Close the connection and end the client.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// One message from Slack over the socket.
#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    retry_attempt: Option<u32>,
}

/// How a connection ended.
enum Ended {
    /// Slack asked us to reconnect, or closed a healthy connection.
    Clean(String),
    /// It never got going, broke, or went silent.
    Failed(String),
    Stopped,
}

impl Slack {
    /// Start Socket Mode when `SLACK_APP_TOKEN` is set.
    pub fn start_socket_mode(&self) -> Option<SocketMode> {
        let app_token = self.inner.settings.app_token.clone()?;
        let (stop, stopped) = watch::channel(false);
        let slack = self.clone();
        let task = tokio::spawn(async move { slack.run_socket_mode(app_token, stopped).await });
        Some(SocketMode { task, stop })
    }

    async fn run_socket_mode(&self, app_token: String, mut stopped: watch::Receiver<bool>) {
        let settings = self.inner.settings.socket.clone();
        let mut failures: u32 = 0;
        loop {
            self.inner.health.set_socket(Socket::Connecting);
            let ended = self
                .connection(&app_token, &settings, stopped.clone())
                .await;
            self.inner.health.set_socket(Socket::Disconnected);
            let delay = match ended {
                Ended::Stopped => break,
                Ended::Clean(why) => {
                    tracing::info!(why, "Slack Socket Mode connection ended; reconnecting");
                    failures = 0;
                    jitter(settings.min_backoff)
                }
                Ended::Failed(why) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(&settings, failures);
                    tracing::warn!(
                        why,
                        failures,
                        delay_ms = delay.as_millis() as u64,
                        "Slack Socket Mode connection failed; reconnecting"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = until_stopped(&mut stopped) => break,
            }
        }
        self.inner.health.set_socket(Socket::Off);
    }

    async fn connection(
        &self,
        app_token: &str,
        settings: &SocketSettings,
        mut stopped: watch::Receiver<bool>,
    ) -> Ended {
        let url = match self.inner.api.connections_open(app_token).await {
            Ok(url) => url,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        let connector = tokio_tungstenite::Connector::Rustls(self.inner.api.tls());
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            false,
            Some(connector),
        );
        let socket = match tokio::time::timeout(Duration::from_secs(15), connect).await {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(e)) => return Ended::Failed(format!("websocket connect: {e}")),
            Err(_) => return Ended::Failed("websocket connect timed out".into()),
        };
        let (mut writer, mut reader) = socket.split();
        // Envelopes go to one task in arrival order; its acknowledgements come back here.
        let (envelopes, mut queued) = mpsc::channel::<Frame>(1024);
        let (acks, mut ack_queue) = mpsc::channel::<String>(1024);
        let worker = {
            let slack = self.clone();
            tokio::spawn(async move {
                while let Some(frame) = queued.recv().await {
                    if let Some(ack) = slack.envelope(frame).await
                        && acks.send(ack).await.is_err()
                    {
                        break;
                    }
                }
            })
        };
        let mut ping = tokio::time::interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        let mut last_heard = Instant::now();
        let mut hello = false;
        let ended = loop {
            let silence_deadline = last_heard + settings.silence_timeout;
            tokio::select! {
                frame = reader.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            let frame: Frame = match serde_json::from_str(text.as_str()) {
                                Ok(frame) => frame,
                                Err(e) => {
                                    tracing::warn!(error = %e, "unreadable Socket Mode message");
                                    continue;
                                }
                            };
                            match frame.kind.as_str() {
                                "hello" => {
                                    hello = true;
                                    self.inner.health.set_socket(Socket::Connected);
                                    tracing::info!("Slack Socket Mode connected");
                                    // What was said while no socket was open.
                                    self.spawn_catch_up();
                                }
                                "disconnect" => {
                                    break Ended::Clean(format!(
                                        "Slack asked to reconnect ({})",
                                        frame.reason.as_deref().unwrap_or("no reason")
                                    ));
                                }
                                _ if frame.envelope_id.is_some() => {
                                    self.inner.health.envelope();
                                    if envelopes.try_send(frame).is_err() {
                                        // Not acknowledged: Slack sends it again.
                                        tracing::warn!("too many Socket Mode envelopes queued; leaving one for Slack to resend");
                                    }
                                }
                                other => tracing::debug!(kind = other, "Socket Mode message ignored"),
                            }
                        }
                        Some(Ok(Message::Ping(_))) => {
                            // tungstenite queued the pong; send it now.
                            if let Err(e) = writer.flush().await {
                                break Ended::Failed(format!("websocket write: {e}"));
                            }
                        }
                        Some(Ok(Message::Close(close))) => {
                            let why = close.map(|c| c.reason.to_string()).unwrap_or_default();
                            break if hello {
                                Ended::Clean(format!("Slack closed the socket ({why})"))
                            } else {
                                Ended::Failed(format!("closed before hello ({why})"))
                            };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Ended::Failed(format!("websocket read: {e}")),
                        None => break Ended::Failed("the socket closed".into()),
                    }
                }
                Some(ack) = ack_queue.recv() => {
                    if let Err(e) = writer.send(Message::Text(ack.into())).await {
                        break Ended::Failed(format!("websocket write: {e}"));
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = writer.send(Message::Ping(b"ecdysis".to_vec().into())).await {
                        break Ended::Failed(format!("websocket ping: {e}"));
                    }
                }
                _ = tokio::time::sleep_until(silence_deadline) => {
                    break Ended::Failed(format!(
                        "nothing heard for {} s although the socket looked open (watchdog)",
                        settings.silence_timeout.as_secs_f32()
                    ));
                }
                _ = until_stopped(&mut stopped) => break Ended::Stopped,
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
        // Envelopes already handed to the worker finish (they are durable once submitted);
        // their acknowledgements are lost with the socket, so Slack resends and the core
        // drops the duplicates.
        drop(envelopes);
        drop(worker);
        ended
    }

    /// Handle one envelope; the acknowledgement to send, or `None` to let Slack resend it.
    async fn envelope(&self, frame: Frame) -> Option<String> {
        let id = frame.envelope_id?;
        if let Some(attempt) = frame.retry_attempt.filter(|a| *a > 0) {
            tracing::debug!(envelope = %id, attempt, "Slack resent an envelope");
        }
        let ack = serde_json::json!({ "envelope_id": id });
        match frame.kind.as_str() {
            "events_api" => match serde_json::from_value::<Envelope>(frame.payload) {
                Ok(Envelope::EventCallback(callback)) => {
                    match self.accept_callback(*callback).await {
                        Ok(()) => Some(ack.to_string()),
                        Err(e) => {
                            tracing::warn!(error = %e, "Socket Mode event not accepted; Slack will resend it");
                            None
                        }
                    }
                }
                Ok(_) => Some(ack.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable Socket Mode event; acknowledged and dropped");
                    Some(ack.to_string())
                }
            },
            "slash_commands" => match SlashCommand::from_json(&frame.payload) {
                Ok(command) => {
                    let payload = self.accept_command(&command).await;
                    Some(serde_json::json!({ "envelope_id": id, "payload": payload }).to_string())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable slash command; acknowledged and dropped");
                    Some(ack.to_string())
                }
            },
            "interactive" => match serde_json::from_value::<Interaction>(frame.payload) {
                Ok(interaction) => match self.accept_interaction(&interaction).await {
                    Ok(()) => Some(ack.to_string()),
                    Err(e) => {
                        tracing::warn!(error = %e, "interaction not accepted; Slack will resend it");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable interaction; acknowledged and dropped");
                    Some(ack.to_string())
                }
            },
            _ => Some(ack.to_string()),
        }
    }
}

/// Resolves once a stop was requested; never when the handle was dropped without one.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    if stopped.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The delay before reconnect attempt `failures` (1, 2, …): growing from `min_backoff` to
/// `max_backoff`, each a random point in its upper half so that many clients spread out.
fn backoff(settings: &SocketSettings, failures: u32) -> Duration {
    ecdysis_chat::backoff::Backoff::new(settings.min_backoff, settings.max_backoff)
        .with_jitter()
        .delay(failures)
}

/// A random duration in `[0, up_to]`.
fn jitter(up_to: Duration) -> Duration {
    let millis = up_to.as_millis() as u64;
    Duration::from_millis(if millis == 0 {
        0
    } else {
        rand::random_range(0..=millis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let s = SocketSettings {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..SocketSettings::default()
        };
        for _ in 0..50 {
            let first = backoff(&s, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&s, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff(&s, 40) <= Duration::from_secs(2));
            assert!(backoff(&s, 40) >= Duration::from_secs(1));
        }
    }
}
