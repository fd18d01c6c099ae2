//! One leased tab: request interception through the [`UrlGuard`](super::UrlGuard), viewport
//! emulation, navigation with clear errors, waiting, and small script evaluations.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tracing::debug;
use url::Url;

use super::cdp::protocol::{
    AddScriptToEvaluateOnNewDocument, ContinueRequest, EnableFetch, FailRequest, LifecycleEvent,
    Navigate, RequestPattern, RequestPaused, ResponseReceived, SetDeviceMetricsOverride,
};
use super::cdp::{CdpError, Page};
use super::{BrowserError, Inner, UrlRefused, cdp_error};

/// Runs before any page script: removes the APIs whose connections the request interception
/// cannot see (WebSocket, WebTransport, WebRTC, workers).
const NO_UNCHECKED_NETWORK: &str = "(() => { for (const name of ['WebSocket', 'WebSocketStream', \
'WebTransport', 'RTCPeerConnection', 'webkitRTCPeerConnection', 'Worker', 'SharedWorker']) { \
try { Object.defineProperty(window, name, { value: undefined, writable: false, configurable: false }); } catch (e) {} } \
try { Object.defineProperty(Navigator.prototype, 'serviceWorker', { get: () => undefined, configurable: false }); } catch (e) {} })();";

/// The emulated screen: CSS pixels and device scale factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
}

impl Default for Viewport {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 800,
            scale: 1.0,
        }
    }
}

/// What to wait for after the page's `load` event.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum WaitFor {
    /// Nothing more.
    #[default]
    Load,
    /// No network activity for 500 ms (Chromium's `networkIdle`).
    NetworkIdle,
    /// An element matching the CSS selector exists.
    Selector(String),
    /// A fixed delay.
    Delay(Duration),
}

impl WaitFor {
    /// `networkidle`, `load`, `selector:#x`, `500ms`, `2s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("networkidle") || text.eq_ignore_ascii_case("idle") {
            return Ok(Self::NetworkIdle);
        }
        if text.eq_ignore_ascii_case("load") {
            return Ok(Self::Load);
        }
        if let Some(selector) = text.strip_prefix("selector:") {
            if selector.trim().is_empty() {
                return Err("`wait=selector:` needs a CSS selector".into());
            }
            return Ok(Self::Selector(selector.trim().to_string()));
        }
        let delay = if let Some(ms) = text.strip_suffix("ms") {
            ms.trim().parse::<u64>().ok().map(Duration::from_millis)
        } else if let Some(s) = text.strip_suffix('s') {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
        } else {
            None
        };
        match delay {
            Some(d) if d <= Duration::from_secs(30) => Ok(Self::Delay(d)),
            Some(_) => Err("a wait longer than 30 s is not allowed".into()),
            None => Err(format!(
                "`wait={text}` is not one of networkidle, load, selector:<css>, <n>ms, <n>s"
            )),
        }
    }
}

/// The main document's response.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Where the page ended up (after redirects).
    pub url: String,
    pub status: i64,
    pub mime: String,
    pub title: Option<String>,
}

/// A tab leased from the pool; back to the pool (or closed) when dropped.
pub struct PageLease {
    page: Page,
    inner: Arc<Inner>,
    alive: Arc<AtomicBool>,
    in_use: Arc<AtomicUsize>,
    refusals: Arc<Mutex<Vec<UrlRefused>>>,
    intercept: Option<JoinHandle<()>>,
    channel: String,
    generation: u64,
    /// Set while a navigation is unfinished or after a CDP error: such a tab is not reused.
    dirty: AtomicBool,
    _permit: OwnedSemaphorePermit,
}

/// Everything a lease holds besides its tab.
pub(crate) struct LeaseParts {
    pub(crate) inner: Arc<Inner>,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) in_use: Arc<AtomicUsize>,
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) channel: String,
    pub(crate) generation: u64,
}

/// An idle tab in the pool, with its interception still running; it is being reset to
/// `about:blank` (`reset`) so that nothing of the last page keeps running.
pub(crate) struct Pooled {
    page: Page,
    intercept: JoinHandle<()>,
    refusals: Arc<Mutex<Vec<UrlRefused>>>,
    reset: JoinHandle<()>,
    pub(crate) generation: u64,
}

impl Pooled {
    /// Close the tab and stop its tasks.
    pub(crate) fn discard(self) {
        self.intercept.abort();
        self.reset.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let page = self.page;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), page.close()).await;
            });
        }
    }
}

impl PageLease {
    pub(crate) async fn prepare(
        parts: LeaseParts,
        page: Page,
        viewport: Viewport,
    ) -> Result<Self, BrowserError> {
        let mut lease = Self {
            page,
            inner: parts.inner,
            alive: parts.alive,
            in_use: parts.in_use,
            refusals: Arc::new(Mutex::new(Vec::new())),
            intercept: None,
            channel: parts.channel,
            generation: parts.generation,
            dirty: AtomicBool::new(false),
            _permit: parts.permit,
        };
        lease.intercept().await?;
        lease.set_viewport(viewport).await?;
        Ok(lease)
    }

    pub(crate) async fn reuse(
        parts: LeaseParts,
        pooled: Pooled,
        viewport: Viewport,
    ) -> Result<Self, BrowserError> {
        let _ = tokio::time::timeout(Duration::from_secs(3), pooled.reset).await;
        if let Ok(mut refusals) = pooled.refusals.lock() {
            refusals.clear();
        }
        let lease = Self {
            page: pooled.page,
            inner: parts.inner,
            alive: parts.alive,
            in_use: parts.in_use,
            refusals: pooled.refusals,
            intercept: Some(pooled.intercept),
            channel: parts.channel,
            generation: parts.generation,
            dirty: AtomicBool::new(false),
            _permit: parts.permit,
        };
        lease.set_viewport(viewport).await?;
        Ok(lease)
    }

    /// The tab, for raw CDP commands.
    pub fn page(&self) -> &Page {
        &self.page
    }

    pub(crate) fn cdp(&self, error: CdpError) -> BrowserError {
        self.dirty.store(true, Ordering::SeqCst);
        cdp_error(error, &self.alive)
    }

    /// Pause every request of this tab and let through only what the guard allows.
    async fn intercept(&mut self) -> Result<(), BrowserError> {
        let mut paused = self.page.listen::<RequestPaused>();
        let page = self.page.clone();
        let inner = self.inner.clone();
        let refusals = self.refusals.clone();
        self.intercept = Some(tokio::spawn(async move {
            while let Some(event) = paused.next().await {
                let page = page.clone();
                let inner = inner.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let url = &event.request.url;
                    let request_id = event.request_id.clone();
                    match inner.guard().check_request(url).await {
                        Ok(()) => {
                            inner.count_request(true);
                            let _ = page.execute(&ContinueRequest { request_id }).await;
                        }
                        Err(refused) => {
                            inner.count_request(false);
                            debug!(url = %url, reason = %refused, "request refused");
                            if let Ok(mut list) = refusals.lock() {
                                list.push(refused);
                            }
                            let blocked = FailRequest {
                                request_id,
                                error_reason: "BlockedByClient",
                            };
                            let _ = page.execute(&blocked).await;
                        }
                    }
                });
            }
        }));
        let enable = EnableFetch {
            patterns: vec![RequestPattern {
                url_pattern: "*".into(),
                request_stage: "Request",
            }],
        };
        self.page.execute(&enable).await.map_err(|e| self.cdp(e))?;
        // WebSocket handshakes, WebRTC and workers' own requests do not pass through the
        // Fetch domain, so they cannot be checked: pages get none of them.
        let block = AddScriptToEvaluateOnNewDocument {
            source: NO_UNCHECKED_NETWORK.into(),
            run_immediately: true,
        };
        self.page.execute(&block).await.map_err(|e| self.cdp(e))?;
        Ok(())
    }

    /// Emulate a screen of `viewport`.
    pub async fn set_viewport(&self, viewport: Viewport) -> Result<(), BrowserError> {
        let metrics = SetDeviceMetricsOverride {
            width: viewport.width as i64,
            height: viewport.height as i64,
            device_scale_factor: viewport.scale,
            mobile: false,
            screen_width: viewport.width as i64,
            screen_height: viewport.height as i64,
        };
        self.page.execute(&metrics).await.map_err(|e| self.cdp(e))?;
        Ok(())
    }

    /// The first request the guard refused, if any.
    pub fn refusal(&self) -> Option<UrlRefused> {
        self.refusals.lock().ok().and_then(|l| l.first().cloned())
    }

    /// Forget the refusals so far (an interactive session asks what one action caused).
    pub fn clear_refusals(&self) {
        if let Ok(mut refusals) = self.refusals.lock() {
            refusals.clear();
        }
    }

    /// Load `url` and wait as asked; errors say what went wrong (DNS, timeout, HTTP status,
    /// not HTML, a refused redirect).
    pub async fn open(&self, url: &Url, wait: &WaitFor) -> Result<Loaded, BrowserError> {
        let timeout = self.inner.navigation_timeout();
        let deadline = Instant::now() + timeout;
        self.inner.count_navigation();
        self.dirty.store(true, Ordering::SeqCst);
        let mut responses = self.page.listen::<ResponseReceived>();
        let mut lifecycle = self.page.listen::<LifecycleEvent>();
        let navigated = tokio::time::timeout(timeout, self.page.navigate(url.as_str())).await;
        let navigated = match navigated {
            Err(_) | Ok(Err(CdpError::Timeout { .. })) => {
                return Err(self.refused_or(BrowserError::Timeout(timeout.as_secs())));
            }
            Ok(Err(e)) => return Err(self.refused_or(self.cdp(e))),
            Ok(Ok(navigated)) => navigated,
        };
        if let Some(error) = navigated.error_text {
            return Err(self.refused_or(navigation_error(url, &error)));
        }
        if navigated.is_download == Some(true) {
            return Err(BrowserError::NotHtml {
                url: url.to_string(),
                mime: "a download".into(),
            });
        }
        let loader = navigated.loader_id.clone();
        let mut main = None;
        while let Some(event) = responses.try_next() {
            if event.kind == "Document"
                && event.frame_id.as_ref() == Some(&navigated.frame_id)
                && loader.as_ref().is_none_or(|l| *l == event.loader_id)
            {
                main = Some(event.response);
            }
        }
        drop(responses);
        let Some(response) = main else {
            return Err(
                self.refused_or(BrowserError::Navigation("the page sent no document".into()))
            );
        };
        if response.status >= 400 {
            return Err(BrowserError::HttpStatus {
                url: response.url.clone(),
                status: response.status,
                text: response.status_text.clone(),
            });
        }
        let mime = response.mime_type.to_ascii_lowercase();
        if !matches!(mime.as_str(), "text/html" | "application/xhtml+xml") {
            return Err(BrowserError::NotHtml {
                url: response.url.clone(),
                mime: response.mime_type.clone(),
            });
        }
        match wait {
            WaitFor::Load => {}
            WaitFor::Delay(delay) => tokio::time::sleep(*delay).await,
            WaitFor::NetworkIdle => {
                let idle = async {
                    while let Some(event) = lifecycle.next().await {
                        if event.name == "networkIdle"
                            && event.frame_id == navigated.frame_id
                            && loader.as_ref().is_none_or(|l| *l == event.loader_id)
                        {
                            return;
                        }
                    }
                };
                if tokio::time::timeout_at(deadline.into(), idle)
                    .await
                    .is_err()
                {
                    return Err(BrowserError::Timeout(timeout.as_secs()));
                }
            }
            WaitFor::Selector(selector) => {
                let script = format!(
                    "!!document.querySelector({})",
                    serde_json::to_string(selector).unwrap_or_default()
                );
                loop {
                    if self.eval::<bool>(&script).await? {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(BrowserError::SelectorNotFound(selector.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(lifecycle);
        self.dirty.store(false, Ordering::SeqCst);
        // The title, and where the page is now: a script may have sent it on since the response.
        let (title, url) = self
            .eval::<(String, String)>("[document.title, location.href.split('#')[0]]")
            .await
            .map_or((None, None), |(title, url)| (Some(title), Some(url)));
        Ok(Loaded {
            url: url
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| response.url.clone()),
            status: response.status,
            mime: response.mime_type.clone(),
            title: title.filter(|t| !t.trim().is_empty()),
        })
    }

    fn refused_or(&self, error: BrowserError) -> BrowserError {
        match self.refusal() {
            Some(UrlRefused::Dns { host, .. }) => BrowserError::Dns(host),
            Some(refused) => BrowserError::RefusedRequest(refused),
            None => error,
        }
    }

    /// Evaluate a script expression (promises are awaited) and read its JSON value.
    pub async fn eval<T: DeserializeOwned>(&self, expression: &str) -> Result<T, BrowserError> {
        match self.page.evaluate(expression).await {
            Ok(value) => Ok(value),
            Err(CdpError::Decode { source, .. }) => Err(BrowserError::Cdp(format!(
                "unexpected script result: {source}"
            ))),
            Err(CdpError::Script(error)) => {
                Err(BrowserError::Cdp(format!("script error: {error}")))
            }
            Err(e) => Err(self.cdp(e)),
        }
    }
}

/// A failed `Page.navigate`'s error text as a clear error.
fn navigation_error(url: &Url, error: &str) -> BrowserError {
    let host = url.host_str().unwrap_or_default().to_string();
    if error.contains("ERR_NAME_NOT_RESOLVED") || error.contains("ERR_NAME_RESOLUTION_FAILED") {
        BrowserError::Dns(host)
    } else if error.contains("ERR_TIMED_OUT") || error.contains("ERR_CONNECTION_TIMED_OUT") {
        BrowserError::Timeout(0)
    } else if error.contains("ERR_CONNECTION_REFUSED")
        || error.contains("ERR_CONNECTION_RESET")
        || error.contains("ERR_ADDRESS_UNREACHABLE")
        || error.contains("ERR_CONNECTION_CLOSED")
    {
        BrowserError::Connect(format!("{host} ({error})"))
    } else {
        BrowserError::Navigation(error.to_string())
    }
}

impl Drop for PageLease {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        self.inner.release();
        let Some(intercept) = self.intercept.take() else {
            return;
        };
        let reusable = self.alive.load(Ordering::SeqCst) && !self.dirty.load(Ordering::SeqCst);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            intercept.abort();
            return;
        };
        if !reusable {
            intercept.abort();
            if self.alive.load(Ordering::SeqCst) {
                let page = self.page.clone();
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), page.close()).await;
                });
            }
            return;
        }
        let page = self.page.clone();
        let reset = runtime.spawn(async move {
            let blank = Navigate {
                url: "about:blank".into(),
            };
            let blank = page.execute(&blank);
            let _ = tokio::time::timeout(Duration::from_secs(3), blank).await;
        });
        let pooled = Pooled {
            page: self.page.clone(),
            intercept,
            refusals: self.refusals.clone(),
            reset,
            generation: self.generation,
        };
        if let Err(pooled) = self.inner.pool_put(self.channel.clone(), pooled) {
            pooled.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse() {
        assert_eq!(WaitFor::parse("networkidle"), Ok(WaitFor::NetworkIdle));
        assert_eq!(
            WaitFor::parse("selector:#main .x"),
            Ok(WaitFor::Selector("#main .x".into()))
        );
        assert_eq!(
            WaitFor::parse("500ms"),
            Ok(WaitFor::Delay(Duration::from_millis(500)))
        );
        assert_eq!(
            WaitFor::parse("1.5s"),
            Ok(WaitFor::Delay(Duration::from_millis(1500)))
        );
        assert!(WaitFor::parse("forever").is_err());
        assert!(WaitFor::parse("100s").is_err());
        assert!(WaitFor::parse("selector:").is_err());
    }

    #[test]
    fn navigation_errors_read_well() {
        let url = Url::parse("https://nowhere.invalid/").unwrap();
        let e = navigation_error(&url, "net::ERR_NAME_NOT_RESOLVED");
        assert!(e.to_string().contains("DNS failure"), "{e}");
        assert!(e.to_string().contains("nowhere.invalid"), "{e}");
        let e = navigation_error(&url, "net::ERR_CONNECTION_REFUSED");
        assert!(e.to_string().contains("could not connect"), "{e}");
    }
}
