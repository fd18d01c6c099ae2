//! The websocket to the browser: commands go out numbered, each answer is routed back to the
//! call that waits for it, and each event to the listeners of its session and method.
//!
//! One task reads the socket and one writes it. When the socket ends, every waiting call
//! fails with [`CdpError::Closed`], every event stream ends, and [`Connection::is_alive`] turns
//! false.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

use super::CdpError;
use super::protocol::Command;

/// The largest message read from the browser (a full-page screenshot is one message).
const MAX_MESSAGE: usize = 256 << 20;

/// A command's answer: its result, or the protocol's error code and message.
type Answer = Result<Value, (i64, String)>;

/// A handle on the connection; clones share it.
#[derive(Clone)]
pub(super) struct Connection {
    shared: Arc<Shared>,
}

struct Shared {
    next_id: AtomicU64,
    outgoing: mpsc::UnboundedSender<String>,
    routes: Mutex<Routes>,
    alive: Arc<AtomicBool>,
    /// How long a command may wait for its answer.
    timeout: Duration,
    tasks: Mutex<Vec<AbortHandle>>,
}

#[derive(Default)]
struct Routes {
    pending: HashMap<u64, oneshot::Sender<Answer>>,
    /// Keyed by (session id, `""` for the browser's own; method).
    listeners: HashMap<(String, String), Vec<mpsc::UnboundedSender<Value>>>,
    closed: bool,
}

/// A message to the browser.
#[derive(Serialize)]
struct Outgoing<'a> {
    id: u64,
    method: &'a str,
    params: Value,
    #[serde(rename = "sessionId", skip_serializing_if = "str::is_empty")]
    session_id: &'a str,
}

/// A message from the browser: an answer (`id`) or an event (`method`).
#[derive(Deserialize)]
struct Incoming {
    id: Option<u64>,
    result: Option<Value>,
    error: Option<Failure>,
    method: Option<String>,
    #[serde(default)]
    params: Value,
    #[serde(rename = "sessionId", default)]
    session_id: String,
}

#[derive(Deserialize)]
struct Failure {
    code: i64,
    message: String,
}

/// Forgets a call's route when the call ends early (timed out or dropped).
struct PendingCall<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        self.shared.routes().pending.remove(&self.id);
    }
}

impl Connection {
    /// Open the websocket at `ws_url`; commands then wait at most `timeout` for an answer.
    pub(super) async fn open(ws_url: &str, timeout: Duration) -> Result<Self, CdpError> {
        let failed = |reason: String| CdpError::Connect {
            url: ws_url.to_string(),
            reason,
        };
        let tls = ecdysis_chat::tls::client_config().map_err(|e| failed(e.to_string()))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            ws_url,
            Some(config),
            false,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        let (mut writer, mut reader) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<String>();
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            outgoing,
            routes: Mutex::new(Routes::default()),
            alive: Arc::new(AtomicBool::new(true)),
            timeout,
            tasks: Mutex::new(Vec::new()),
        });
        let write = tokio::spawn(async move {
            while let Some(text) = queue.recv().await {
                if let Err(e) = writer.send(Message::text(text)).await {
                    debug!(error = %e, "cannot write to the browser");
                    break;
                }
            }
        });
        let read = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some(message) = reader.next().await {
                    match message {
                        Ok(Message::Text(text)) => shared.dispatch(text.as_str()),
                        Ok(Message::Binary(bytes)) => match std::str::from_utf8(&bytes) {
                            Ok(text) => shared.dispatch(text),
                            Err(_) => debug!("a binary message from the browser, ignored"),
                        },
                        Ok(Message::Close(_)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            debug!(error = %e, "the browser connection failed");
                            break;
                        }
                    }
                }
                debug!("the browser connection ended");
                shared.close();
            })
        };
        if let Ok(mut tasks) = shared.tasks.lock() {
            tasks.push(write.abort_handle());
            tasks.push(read.abort_handle());
        }
        Ok(Self { shared })
    }

    /// Whether the socket is still open.
    pub(super) fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// The flag [`is_alive`](Self::is_alive) reads, for holders that outlive this handle.
    pub(super) fn alive_flag(&self) -> Arc<AtomicBool> {
        self.shared.alive.clone()
    }

    /// Close the socket from this side.
    pub(super) fn disconnect(&self) {
        if let Ok(tasks) = self.shared.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
        self.shared.close();
    }

    /// Send a command in `session` (`""`: the browser's own) and wait for its answer.
    pub(super) async fn execute<C: Command>(
        &self,
        session: &str,
        command: &C,
    ) -> Result<C::Response, CdpError> {
        let params = serde_json::to_value(command).map_err(|source| CdpError::Decode {
            method: C::METHOD,
            source,
        })?;
        let result = self.call(session, C::METHOD, params).await?;
        serde_json::from_value(result).map_err(|source| CdpError::Decode {
            method: C::METHOD,
            source,
        })
    }

    async fn call(
        &self,
        session: &str,
        method: &'static str,
        params: Value,
    ) -> Result<Value, CdpError> {
        let shared = &*self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let text = serde_json::to_string(&Outgoing {
            id,
            method,
            params,
            session_id: session,
        })
        .map_err(|source| CdpError::Decode { method, source })?;
        let (answer, answered) = oneshot::channel();
        {
            let mut routes = shared.routes();
            if routes.closed {
                return Err(CdpError::Closed);
            }
            routes.pending.insert(id, answer);
        }
        let _pending = PendingCall { shared, id };
        shared.outgoing.send(text).map_err(|_| CdpError::Closed)?;
        match tokio::time::timeout(shared.timeout, answered).await {
            Err(_) => Err(CdpError::Timeout { method }),
            Ok(Err(_)) => Err(CdpError::Closed),
            Ok(Ok(Err((code, message)))) => Err(CdpError::Protocol {
                method,
                code,
                message,
            }),
            Ok(Ok(Ok(result))) => Ok(result),
        }
    }

    /// The parameters of every `method` event of `session` from now on, in order; the stream
    /// ends with the connection.
    pub(super) fn listen(&self, session: &str, method: &str) -> mpsc::UnboundedReceiver<Value> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut routes = self.shared.routes();
        // Streams dropped since (and those of closed tabs) are forgotten here.
        routes.listeners.retain(|_, listeners| {
            listeners.retain(|listener| !listener.is_closed());
            !listeners.is_empty()
        });
        if !routes.closed {
            routes
                .listeners
                .entry((session.to_string(), method.to_string()))
                .or_default()
                .push(sender);
        }
        receiver
    }
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        // The routes stay consistent even if a holder panicked: every change is one insert
        // or remove.
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn dispatch(&self, text: &str) {
        let message: Incoming = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => {
                debug!(error = %e, "an unreadable message from the browser, ignored");
                return;
            }
        };
        let mut routes = self.routes();
        if let Some(id) = message.id {
            if let Some(waiting) = routes.pending.remove(&id) {
                let answer = match message.error {
                    Some(failure) => Err((failure.code, failure.message)),
                    None => Ok(message.result.unwrap_or(Value::Null)),
                };
                let _ = waiting.send(answer);
            }
            return;
        }
        let Some(method) = message.method else {
            return;
        };
        let key = (message.session_id, method);
        if let Some(listeners) = routes.listeners.get_mut(&key) {
            listeners.retain(|listener| listener.send(message.params.clone()).is_ok());
            if listeners.is_empty() {
                routes.listeners.remove(&key);
            }
        }
    }

    /// The socket is gone: fail the waiting calls, end the event streams.
    fn close(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let mut routes = self.routes();
        routes.closed = true;
        routes.pending.clear();
        routes.listeners.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::cdp::protocol::{GetVersion, LifecycleEvent, Navigate};
    use serde_json::json;
    use tokio::net::TcpListener;

    /// A browser stand-in on loopback: hands its websocket to `script`.
    async fn fake_browser<F, Fut>(script: F) -> String
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let socket = tokio_tungstenite::accept_async(stream).await.unwrap();
            script(socket).await;
        });
        format!("ws://{address}/devtools/browser/fake")
    }

    async fn read_command(
        socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) -> Value {
        loop {
            if let Message::Text(text) = socket.next().await.unwrap().unwrap() {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn answers_reach_their_callers_and_events_their_session() {
        let url = fake_browser(|mut socket| async move {
            let first = read_command(&mut socket).await;
            let second = read_command(&mut socket).await;
            assert_eq!(first["method"], "Browser.getVersion");
            assert!(first.get("sessionId").is_none(), "{first}");
            assert_eq!(second["method"], "Page.navigate");
            assert_eq!(second["sessionId"], "S1");
            assert_eq!(second["params"]["url"], "http://x/");
            // Events of another session and method first, then this session's; the answers
            // in the other order than asked, one of them an error.
            for event in [
                json!({ "method": "Page.lifecycleEvent", "sessionId": "S2",
                        "params": { "frameId": "F2", "loaderId": "L", "name": "load" } }),
                json!({ "method": "Page.frameNavigated", "sessionId": "S1", "params": {} }),
                json!({ "method": "Page.lifecycleEvent", "sessionId": "S1",
                        "params": { "frameId": "F1", "loaderId": "L", "name": "load" } }),
                json!({ "id": second["id"], "sessionId": "S1",
                        "error": { "code": -32000, "message": "Cannot navigate to invalid URL" } }),
                json!({ "id": first["id"], "result": { "product": "HeadlessChrome/1.0" } }),
            ] {
                socket.send(Message::text(event.to_string())).await.unwrap();
            }
            // Then the browser goes away with a command unanswered.
            let _ = read_command(&mut socket).await;
            socket.close(None).await.unwrap();
        })
        .await;
        let connection = Connection::open(&url, Duration::from_secs(10))
            .await
            .unwrap();
        let mut events = connection.listen("S1", "Page.lifecycleEvent");
        let navigate = Navigate {
            url: "http://x/".into(),
        };
        let (version, navigated) = tokio::join!(
            connection.execute("", &GetVersion {}),
            connection.execute("S1", &navigate)
        );
        assert_eq!(version.unwrap().product, "HeadlessChrome/1.0");
        match navigated {
            Err(CdpError::Protocol {
                method,
                code,
                message,
            }) => {
                assert_eq!((method, code), ("Page.navigate", -32000));
                assert!(message.contains("invalid URL"), "{message}");
            }
            other => panic!("expected the protocol error, got {other:?}"),
        }
        let event: LifecycleEvent = serde_json::from_value(events.recv().await.unwrap()).unwrap();
        assert_eq!(event.frame_id, "F1", "only this session's events");
        assert!(connection.is_alive());
        let unanswered = connection.execute("", &GetVersion {}).await;
        assert!(
            matches!(unanswered, Err(CdpError::Closed)),
            "{unanswered:?}"
        );
        assert!(
            events.recv().await.is_none(),
            "the stream ends with the socket"
        );
        assert!(!connection.is_alive());
        let after = connection.execute("", &GetVersion {}).await;
        assert!(matches!(after, Err(CdpError::Closed)), "{after:?}");
    }

    #[tokio::test]
    async fn an_unanswered_command_times_out_and_is_forgotten() {
        let url = fake_browser(|mut socket| async move {
            let _ = read_command(&mut socket).await;
            // Keep the socket open, answer nothing.
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let connection = Connection::open(&url, Duration::from_millis(200))
            .await
            .unwrap();
        let answer = connection.execute("", &GetVersion {}).await;
        assert!(
            matches!(
                answer,
                Err(CdpError::Timeout {
                    method: "Browser.getVersion"
                })
            ),
            "{answer:?}"
        );
        assert!(connection.shared.routes().pending.is_empty());
        connection.disconnect();
        assert!(!connection.is_alive());
    }

    #[tokio::test]
    async fn a_refused_address_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = Connection::open(&format!("ws://{address}/"), Duration::from_secs(1))
            .await
            .err()
            .expect("nothing listens");
        assert!(matches!(error, CdpError::Connect { .. }), "{error:?}");
    }
}
