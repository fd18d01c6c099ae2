//! A small Chrome DevTools Protocol client, for what the browser service does and no more:
//! one websocket to the browser, a flattened session per tab, typed commands and events.
//!
//! [`Browser`] is the connection (browser contexts, new tabs, version, closing); [`Page`] is
//! one tab (commands, event streams, navigation that waits for the page's `load`). The
//! messages are in [`protocol`]; the socket and the routing of answers and events in
//! `connection`.

mod connection;
pub mod protocol;

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::debug;

use connection::Connection;
use protocol::{Command, Event};

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    #[error("cannot connect to the browser at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection to the browser ended")]
    Closed,
    #[error("the browser did not answer {method} in time")]
    Timeout { method: &'static str },
    #[error("{method} failed: {message} ({code})")]
    Protocol {
        method: &'static str,
        code: i64,
        message: String,
    },
    #[error("unexpected message for {method}: {source}")]
    Decode {
        method: &'static str,
        source: serde_json::Error,
    },
    #[error("script error: {0}")]
    Script(String),
}

/// A connection to a browser.
#[derive(Clone)]
pub struct Browser {
    connection: Connection,
}

impl Browser {
    /// Connect to `url`: the browser's `ws://…/devtools/browser/…` address, or its
    /// `http://host:port` (the websocket address is then read from `/json/version`).
    /// Commands wait at most `timeout` for their answers.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, CdpError> {
        let ws_url = if url.starts_with("http://") || url.starts_with("https://") {
            websocket_address(url).await?
        } else {
            url.to_string()
        };
        Ok(Self {
            connection: Connection::open(&ws_url, timeout).await?,
        })
    }

    /// Whether the connection is still open.
    pub fn is_connected(&self) -> bool {
        self.connection.is_alive()
    }

    /// A flag that turns false when the connection ends.
    pub fn alive_flag(&self) -> Arc<AtomicBool> {
        self.connection.alive_flag()
    }

    /// The browser's product and version, for example `HeadlessChrome/131.0.6778.85`.
    pub async fn version(&self) -> Result<String, CdpError> {
        Ok(self.execute(&protocol::GetVersion {}).await?.product)
    }

    /// A new browser context (its own cookies and storage), by id.
    pub async fn create_context(&self) -> Result<String, CdpError> {
        let created = self.execute(&protocol::CreateBrowserContext {}).await?;
        Ok(created.browser_context_id)
    }

    /// Close a browser context and its tabs.
    pub async fn dispose_context(&self, id: &str) -> Result<(), CdpError> {
        self.execute(&protocol::DisposeBrowserContext {
            browser_context_id: id.to_string(),
        })
        .await?;
        Ok(())
    }

    /// A new `about:blank` tab (in `context`, or the default one), attached and ready: page
    /// and network events on, lifecycle events on.
    pub async fn new_page(&self, context: Option<&str>) -> Result<Page, CdpError> {
        let target = self
            .execute(&protocol::CreateTarget {
                url: "about:blank".into(),
                browser_context_id: context.map(str::to_string),
            })
            .await?
            .target_id;
        let attached = self
            .execute(&protocol::AttachToTarget {
                target_id: target.clone(),
                flatten: true,
            })
            .await;
        let session = match attached {
            Ok(attached) => attached.session_id,
            Err(e) => {
                let _ = self.close_target(&target).await;
                return Err(e);
            }
        };
        let page = Page {
            browser: self.clone(),
            session: session.into(),
            target: target.into(),
        };
        let ready = async {
            page.execute(&protocol::EnablePage {}).await?;
            page.execute(&protocol::SetLifecycleEventsEnabled { enabled: true })
                .await?;
            page.execute(&protocol::EnableNetwork {}).await?;
            Ok::<_, CdpError>(())
        };
        if let Err(e) = ready.await {
            let _ = page.close().await;
            return Err(e);
        }
        Ok(page)
    }

    /// Ask the browser to exit.
    pub async fn close(&self) -> Result<(), CdpError> {
        self.execute(&protocol::CloseBrowser {}).await?;
        Ok(())
    }

    /// Close the connection from this side (the browser goes on).
    pub fn disconnect(&self) {
        self.connection.disconnect();
    }

    async fn close_target(&self, target: &str) -> Result<(), CdpError> {
        self.execute(&protocol::CloseTarget {
            target_id: target.to_string(),
        })
        .await?;
        Ok(())
    }

    async fn execute<C: Command>(&self, command: &C) -> Result<C::Response, CdpError> {
        self.connection.execute("", command).await
    }
}

/// The websocket address of the browser at `http(s)://host:port`, from its `/json/version`.
async fn websocket_address(url: &str) -> Result<String, CdpError> {
    #[derive(serde::Deserialize)]
    struct Endpoint {
        #[serde(rename = "webSocketDebuggerUrl")]
        ws: String,
    }
    let failed = |reason: String| CdpError::Connect {
        url: url.to_string(),
        reason,
    };
    let version = format!("{}/json/version", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(&version)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(e.to_string()))?;
    let endpoint: Endpoint = response
        .json()
        .await
        .map_err(|e| failed(format!("{version} has no webSocketDebuggerUrl: {e}")))?;
    Ok(endpoint.ws)
}

/// One tab: a flattened session on the browser's connection.
#[derive(Clone)]
pub struct Page {
    browser: Browser,
    session: Arc<str>,
    target: Arc<str>,
}

impl Page {
    /// Send a command to this tab and wait for its answer.
    pub async fn execute<C: Command>(&self, command: &C) -> Result<C::Response, CdpError> {
        self.browser
            .connection
            .execute(&self.session, command)
            .await
    }

    /// Every `E` event of this tab from now on, in order.
    pub fn listen<E: Event>(&self) -> Events<E> {
        Events {
            receiver: self.browser.connection.listen(&self.session, E::METHOD),
            kind: PhantomData,
        }
    }

    /// Load `url` and wait for the new document's `load` event (also when the page moves on
    /// to another document before it loads: then that document's). A failed navigation
    /// answers at once with its `error_text`; so does a download or a move within the page.
    pub async fn navigate(&self, url: &str) -> Result<protocol::Navigated, CdpError> {
        let mut lifecycle = self.listen::<protocol::LifecycleEvent>();
        let mut committed = self.listen::<protocol::FrameNavigated>();
        let navigated = self
            .execute(&protocol::Navigate {
                url: url.to_string(),
            })
            .await?;
        let Some(mut loader) = navigated.loader_id.clone() else {
            return Ok(navigated);
        };
        if navigated.error_text.is_some() || navigated.is_download == Some(true) {
            return Ok(navigated);
        }
        loop {
            tokio::select! {
                biased;
                Some(event) = committed.next() => {
                    if event.frame.id == navigated.frame_id {
                        loader = event.frame.loader_id;
                    }
                }
                event = lifecycle.next() => {
                    let Some(event) = event else {
                        return Err(CdpError::Closed);
                    };
                    if event.name == "load"
                        && event.frame_id == navigated.frame_id
                        && event.loader_id == loader
                    {
                        return Ok(navigated);
                    }
                }
            }
        }
    }

    /// Evaluate a script expression in the page (promises are awaited) and read its JSON
    /// value (`null` for `undefined`).
    pub async fn evaluate<T: DeserializeOwned>(&self, expression: &str) -> Result<T, CdpError> {
        let evaluated = self
            .execute(&protocol::Evaluate {
                expression: expression.to_string(),
                return_by_value: true,
                await_promise: true,
            })
            .await?;
        if let Some(exception) = evaluated.exception_details {
            // The exception's first line (`TypeError: …`) says more than the text (`Uncaught`).
            let detail = exception
                .exception
                .and_then(|e| e.description)
                .and_then(|d| d.lines().next().map(str::to_string))
                .unwrap_or(exception.text);
            return Err(CdpError::Script(detail));
        }
        serde_json::from_value(evaluated.result.value.unwrap_or(Value::Null)).map_err(|source| {
            CdpError::Decode {
                method: "Runtime.evaluate",
                source,
            }
        })
    }

    /// The tab's main frame: its id, loader and address.
    pub async fn main_frame(&self) -> Result<protocol::Frame, CdpError> {
        let tree = self.execute(&protocol::GetFrameTree {}).await?;
        Ok(tree.frame_tree.frame)
    }

    /// The address of the document shown now.
    pub async fn url(&self) -> Result<String, CdpError> {
        Ok(self.main_frame().await?.url)
    }

    /// Close the tab.
    pub async fn close(&self) -> Result<(), CdpError> {
        self.browser.close_target(&self.target).await
    }
}

/// A stream of one kind of event of one tab; it ends with the connection.
pub struct Events<E> {
    receiver: mpsc::UnboundedReceiver<Value>,
    kind: PhantomData<fn() -> E>,
}

impl<E: Event> Events<E> {
    /// The next event, waiting for it; `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<E> {
        loop {
            let params = self.receiver.recv().await?;
            if let Some(event) = Self::read(params) {
                return Some(event);
            }
        }
    }

    /// The next event already received, without waiting.
    pub fn try_next(&mut self) -> Option<E> {
        while let Ok(params) = self.receiver.try_recv() {
            if let Some(event) = Self::read(params) {
                return Some(event);
            }
        }
        None
    }

    fn read(params: Value) -> Option<E> {
        match serde_json::from_value(params) {
            Ok(event) => Some(event),
            Err(e) => {
                debug!(method = E::METHOD, error = %e, "an unreadable event, ignored");
                None
            }
        }
    }
}
