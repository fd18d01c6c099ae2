//! One gateway connection, from the websocket handshake to its end: HELLO, IDENTIFY or RESUME,
//! heartbeats (a connection that misses an acknowledgement is a zombie and is dropped), and
//! every dispatch in order.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, info, warn};

use super::events;
use super::protocol::{self, AfterClose, Frame, Hello, Identify, Properties, Ready, Resume, op};
use crate::adapter::Shared;
use crate::intake::Intake;

/// Longest wait for the websocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for HELLO once the socket is open.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// The shortest heartbeat interval taken from HELLO (Discord's is ~41 s).
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest wait to send a close frame before dropping the socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The close code the bot uses when it drops a connection it wants to resume (any code but
/// 1000 and 1001, which end the session).
const CLOSE_TO_RESUME: u16 = 4000;

/// A session to resume: its id, where to resume it and the last sequence number seen.
#[derive(Debug)]
pub(crate) struct Session {
    id: String,
    resume_url: String,
    seq: u64,
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Shutdown was asked for.
    Stopped,
    /// The connection dropped; connect again (resuming the session when there is one).
    /// `was_live`: it got as far as READY or RESUMED.
    Lost { why: String, was_live: bool },
    /// Discord ended the session: identify on a new one.
    SessionOver { why: String },
    /// Connecting again would fail the same way.
    Refused(&'static str),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What every connection of one gateway shares.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    intake: Arc<Intake>,
    tls: Arc<rustls::ClientConfig>,
}

impl Connection {
    pub fn new(shared: Arc<Shared>, intake: Arc<Intake>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            shared,
            intake,
            tls,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Connect to `gateway` (or the session's resume URL), and run until the connection ends.
    pub async fn run(
        &self,
        gateway: &str,
        session: &mut Option<Session>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Ended {
        let health = &self.shared.health;
        health.set_stage("connecting");
        let base = session.as_ref().map_or(gateway, |s| s.resume_url.as_str());
        let socket = tokio::select! {
            socket = self.connect(base) => socket,
            _ = stopped.wait_for(|stopped| *stopped) => return Ended::Stopped,
        };
        let socket = match socket {
            Ok(socket) => socket,
            Err(why) => {
                return Ended::Lost {
                    why,
                    was_live: false,
                };
            }
        };
        health.set_stage("handshake");
        let mut live = Live {
            shared: &self.shared,
            intake: &self.intake,
            gateway,
            session,
            was_live: false,
            waiting_for_ack: false,
        };
        live.run(socket, stopped).await
    }

    async fn connect(&self, base: &str) -> Result<Socket, String> {
        let url = with_query(base)?;
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector));
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(e)) => Err(format!("websocket connect: {e}")),
            Err(_) => Err("websocket connect timed out".into()),
        }
    }
}

/// `base` with the version and encoding the bot speaks.
fn with_query(base: &str) -> Result<String, String> {
    let mut url = url::Url::parse(base).map_err(|e| format!("gateway URL `{base}`: {e}"))?;
    url.query_pairs_mut()
        .clear()
        .append_pair("v", &protocol::VERSION.to_string())
        .append_pair("encoding", "json");
    Ok(url.into())
}

/// One open connection.
struct Live<'a> {
    shared: &'a Arc<Shared>,
    intake: &'a Intake,
    /// Where a session is resumed when READY names no websocket URL.
    gateway: &'a str,
    session: &'a mut Option<Session>,
    was_live: bool,
    /// A heartbeat was sent and its ACK has not come yet.
    waiting_for_ack: bool,
}

/// What a frame asks of the read loop.
enum Next {
    Continue,
    /// Send what tungstenite queued (the answer to a ping).
    Flush,
    /// Send a heartbeat now (HELLO arrived, or the gateway asked for one).
    Heartbeat,
    /// HELLO: beat at this interval from now on.
    Start(Duration),
    End(Ended),
}

impl Live<'_> {
    async fn run(&mut self, socket: Socket, stopped: &mut watch::Receiver<bool>) -> Ended {
        let (mut writer, mut reader) = socket.split();
        // Beats start once HELLO names the interval.
        let mut beat = tokio::time::interval_at(Instant::now() + HELLO_TIMEOUT, HELLO_TIMEOUT);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut hello = false;
        let ended = loop {
            let next = tokio::select! {
                _ = stopped.wait_for(|stopped| *stopped) => Next::End(Ended::Stopped),
                _ = beat.tick() => {
                    if !hello {
                        break self.lost("no HELLO from the gateway");
                    }
                    if self.waiting_for_ack {
                        break self.lost("no heartbeat acknowledgement within an interval (zombie connection)");
                    }
                    Next::Heartbeat
                }
                message = reader.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<Frame>(text.as_str()) {
                            Ok(frame) => self.frame(&frame),
                            Err(e) => {
                                warn!(error = %e, "unreadable Discord gateway frame");
                                Next::Continue
                            }
                        }
                    }
                    Some(Ok(Message::Ping(_))) => Next::Flush,
                    Some(Ok(Message::Close(close))) => Next::End(self.closed(close)),
                    Some(Ok(_)) => Next::Continue,
                    Some(Err(e)) => break self.lost(&format!("websocket: {e}")),
                    None => break self.lost("the gateway closed the connection"),
                },
            };
            let send = match next {
                Next::Continue => None,
                Next::Flush => {
                    if let Err(e) = writer.flush().await {
                        break self.lost(&format!("websocket write: {e}"));
                    }
                    None
                }
                Next::End(ended) => break ended,
                Next::Start(interval) => {
                    hello = true;
                    // The first beat at a random point of the first interval (Discord's advice).
                    let first = interval.mul_f64(rand::random_range(0.0..1.0));
                    beat = tokio::time::interval_at(Instant::now() + first, interval);
                    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    Some(self.greeting())
                }
                Next::Heartbeat => {
                    self.waiting_for_ack = true;
                    let seq = self.session.as_ref().map(|s| s.seq);
                    Some(protocol::encode(op::HEARTBEAT, &seq))
                }
            };
            if let Some(text) = send
                && let Err(e) = writer.send(Message::text(text)).await
            {
                break self.lost(&format!("websocket write: {e}"));
            }
        };
        // On shutdown a normal close; otherwise a code other than 1000/1001, which keeps the
        // session resumable. Bounded: a zombie connection may not take it.
        let code = match ended {
            Ended::Stopped => CloseCode::Normal,
            _ => CloseCode::from(CLOSE_TO_RESUME),
        };
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: "".into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.send(close)).await;
        ended
    }

    /// IDENTIFY for a new session, RESUME for the one there is.
    fn greeting(&self) -> String {
        let token = self.shared.rest.token();
        match self.session.as_ref() {
            Some(session) => {
                self.shared.health.set_stage("resuming");
                protocol::encode(
                    op::RESUME,
                    &Resume {
                        token,
                        session_id: &session.id,
                        seq: session.seq,
                    },
                )
            }
            None => {
                self.shared.health.set_stage("identifying");
                protocol::encode(
                    op::IDENTIFY,
                    &Identify {
                        token,
                        intents: super::INTENTS,
                        properties: Properties::ecdysis(),
                    },
                )
            }
        }
    }

    fn frame(&mut self, frame: &Frame<'_>) -> Next {
        match frame.op {
            op::DISPATCH => {
                self.shared.health.event_seen();
                if let (Some(seq), Some(session)) = (frame.s, self.session.as_mut()) {
                    session.seq = seq;
                }
                match frame.t.as_deref() {
                    Some("READY") => self.ready(frame),
                    Some("RESUMED") => {
                        info!("Discord gateway session resumed");
                        self.was_live = true;
                        self.shared.health.resumed();
                        Next::Continue
                    }
                    Some(name) => {
                        events::dispatch(self.shared, self.intake, name, frame);
                        Next::Continue
                    }
                    None => Next::Continue,
                }
            }
            op::HELLO => match frame.data::<Hello>() {
                Ok(hello) => {
                    Next::Start(Duration::from_millis(hello.heartbeat_interval).max(MIN_HEARTBEAT))
                }
                Err(e) => Next::End(self.lost(&format!("unreadable HELLO: {e}"))),
            },
            op::HEARTBEAT => Next::Heartbeat,
            op::HEARTBEAT_ACK => {
                self.waiting_for_ack = false;
                Next::Continue
            }
            op::RECONNECT => Next::End(self.lost("Discord asked the bot to reconnect")),
            op::INVALID_SESSION => {
                if frame.data::<bool>().unwrap_or(false) {
                    Next::End(self.lost("Discord refused the session for now (resumable)"))
                } else {
                    Next::End(Ended::SessionOver {
                        why: "Discord invalidated the session".into(),
                    })
                }
            }
            other => {
                debug!(op = other, "Discord gateway opcode ignored");
                Next::Continue
            }
        }
    }

    fn ready(&mut self, frame: &Frame<'_>) -> Next {
        let ready: Ready = match frame.data() {
            Ok(ready) => ready,
            Err(e) => {
                return Next::End(Ended::SessionOver {
                    why: format!("unreadable READY: {e}"),
                });
            }
        };
        let user = ready.user.id.get();
        info!(bot = user, name = %ready.user.username, "Discord gateway ready");
        *self.session = Some(Session {
            id: ready.session_id,
            resume_url: if super::locate::is_websocket(&ready.resume_gateway_url) {
                ready.resume_gateway_url
            } else {
                self.gateway.to_string()
            },
            seq: frame.s.unwrap_or_default(),
        });
        self.was_live = true;
        if self.shared.rest.application_id().is_none() {
            self.shared
                .rest
                .set_application_id(ready.application.id.get());
        }
        self.shared.health.ready(user);
        // A new session (not a resume): what was said while none was open.
        crate::catch_up::spawn(self.shared);
        Next::Continue
    }

    fn closed(&self, close: Option<CloseFrame>) -> Ended {
        let Some(close) = close else {
            return self.lost("the gateway closed the connection");
        };
        let code = u16::from(close.code);
        match protocol::after_close(code) {
            AfterClose::Resume => self.lost(&format!(
                "the gateway closed the connection ({code} {})",
                close.reason
            )),
            AfterClose::Identify => Ended::SessionOver {
                why: format!("the gateway ended the session ({code} {})", close.reason),
            },
            AfterClose::Refused(why) => Ended::Refused(why),
        }
    }

    fn lost(&self, why: &str) -> Ended {
        Ended::Lost {
            why: why.to_string(),
            was_live: self.was_live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_version_and_encoding() {
        assert_eq!(
            with_query("wss://gateway.discord.gg").unwrap(),
            "wss://gateway.discord.gg/?v=10&encoding=json"
        );
        assert_eq!(
            with_query("ws://127.0.0.1:9/gateway?v=9").unwrap(),
            "ws://127.0.0.1:9/gateway?v=10&encoding=json"
        );
        assert!(with_query("not a url").is_err());
    }
}
