//! The browser service behind `/screenshot`, `/record` and the browser tools.
//!
//! A local headless Chromium is launched on first use and closed after an idle timeout (it is
//! most of a bot's memory), or a remote CDP endpoint is used instead. Tabs come from a bounded
//! pool; each channel gets its own browser context so cookies never cross channels. Every
//! request a page makes is intercepted and checked by the [`url_guard`]. A browser that crashed
//! or was killed is noticed and relaunched on the next request. A local Chromium never runs as
//! root: see [`identity`].

pub mod actions;
pub mod cdp;
pub mod feature;
pub mod frames;
pub mod identity;
pub mod image_fit;
pub mod interactive;
mod launch;
pub mod page;
pub mod record;
pub mod screenshot;
pub mod session;
pub mod snapshot;
pub mod tools;
pub mod url_guard;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ecdysis_chat::ConversationRef;
use tokio::process::Child;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::config::{BrowserSettings, Config};

use cdp::{Browser, CdpError};

pub use identity::{Isolation, RunAs};
use launch::close_running;
pub use launch::{
    CHROMIUM_FLAGS, NO_SANDBOX, PROFILE_PREFIX, find_chromium, find_executable, probe,
};
pub use page::{PageLease, Viewport, WaitFor};
pub use url_guard::{Resolver, StaticResolver, SystemResolver, UrlGuard, UrlRefused};

/// Browser contexts (channels) kept open at once; the least recently used is closed first.
const MAX_CONTEXTS: usize = 32;
/// Channels whose rate-limit state is remembered.
const MAX_RATE_ENTRIES: usize = 10_000;

/// What went wrong, in words a chat user can act on.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("refused: {0}")]
    Refused(UrlRefused),
    #[error("refused: the page tried to load {0}")]
    RefusedRequest(UrlRefused),
    #[error("the page did not finish loading within {0} s")]
    Timeout(u64),
    #[error("the server answered HTTP {status} {text} for {url}")]
    HttpStatus {
        url: String,
        status: i64,
        text: String,
    },
    #[error("{url} is `{mime}`, not a web page")]
    NotHtml { url: String, mime: String },
    #[error("the name `{0}` could not be resolved (DNS failure)")]
    Dns(String),
    #[error("could not connect to {0}")]
    Connect(String),
    #[error("could not load the page: {0}")]
    Navigation(String),
    #[error("no element on the page matches the selector `{0}`")]
    SelectorNotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// An interactive action that could not be done (the message says why).
    #[error("{0}")]
    Action(String),
    #[error("too many browser requests in this channel; try again in {0} s")]
    RateLimited(u64),
    #[error("all {0} browser tabs are busy; try again shortly")]
    Busy(usize),
    #[error("Chromium could not be started: {0}")]
    Launch(String),
    #[error("the browser stopped while working ({0}); it is restarted on the next request")]
    Gone(String),
    #[error("the browser failed: {0}")]
    Cdp(String),
    #[error(
        "ffmpeg is not available ({0}); install it (`apt-get install ffmpeg`) or set ECDYSIS_FFMPEG to its path"
    )]
    FfmpegMissing(String),
    #[error("ffmpeg failed: {0}")]
    Ffmpeg(String),
    #[error("{0}")]
    Image(#[from] image_fit::FitError),
    #[error("{0}")]
    TooLarge(String),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<UrlRefused> for BrowserError {
    fn from(refused: UrlRefused) -> Self {
        match refused {
            UrlRefused::Dns { host, .. } => Self::Dns(host),
            other => Self::Refused(other),
        }
    }
}

impl BrowserError {
    /// Whether the browser itself is gone (the next attempt relaunches it).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Gone(_))
    }
}

/// Turn a CDP error into a [`BrowserError`], marking the browser dead when the connection is.
pub(crate) fn cdp_error(error: CdpError, alive: &AtomicBool) -> BrowserError {
    match error {
        CdpError::Closed | CdpError::Connect { .. } => {
            alive.store(false, Ordering::SeqCst);
            BrowserError::Gone(error.to_string())
        }
        CdpError::Timeout { .. } => BrowserError::Cdp("the browser did not answer in time".into()),
        other => BrowserError::Cdp(other.to_string()),
    }
}

/// Everything the service needs; [`BrowserOptions::from_config`] for the real thing, the
/// fields for tests (another resolver, extra Chromium flags).
#[derive(Clone)]
pub struct BrowserOptions {
    pub settings: BrowserSettings,
    pub ffmpeg: PathBuf,
    /// Where fresh Chromium profiles and recording scratch files live.
    pub work_dir: PathBuf,
    pub resolver: Arc<dyn Resolver>,
    /// Extra flags for a local Chromium.
    pub extra_args: Vec<String>,
}

impl BrowserOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            settings: config.browser.clone(),
            ffmpeg: config.ffmpeg.clone(),
            work_dir: config.data_dir.join("browser"),
            resolver: Arc::new(SystemResolver),
            extra_args: Vec::new(),
        }
    }
}

/// Where the browser comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Local(PathBuf),
    Remote(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Remote(url) => write!(f, "remote CDP {}", crate::config::redact(url)),
        }
    }
}

/// Counters for tests, `/status` and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrowserStats {
    /// Browsers launched or connected.
    pub launches: u64,
    /// Navigations started.
    pub navigations: u64,
    /// Requests the interception let through.
    pub requests_allowed: u64,
    /// Requests the interception refused.
    pub requests_refused: u64,
}

#[derive(Default)]
struct Counters {
    launches: AtomicU64,
    navigations: AtomicU64,
    requests_allowed: AtomicU64,
    requests_refused: AtomicU64,
}

/// The browser service. Cheap to clone.
#[derive(Clone)]
pub struct BrowserService {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    options: BrowserOptions,
    source: Source,
    guard: UrlGuard,
    /// The user a local Chromium runs as (`None`: ecdysis's own).
    run_as: Option<RunAs>,
    /// How the last local Chromium was started; its `sandbox` is reused by later launches.
    isolation: Mutex<Option<Isolation>>,
    state: tokio::sync::Mutex<State>,
    tabs: Arc<Semaphore>,
    /// Leases out plus acquisitions in progress: the idle timer waits for zero.
    active: AtomicUsize,
    last_used: Mutex<Instant>,
    rate: Mutex<HashMap<String, Bucket>>,
    counters: Counters,
    ffmpeg_checked: tokio::sync::OnceCell<Result<String, String>>,
    /// Idle tabs kept for reuse, by channel (each stays in its channel's browser context).
    pool: Mutex<HashMap<String, Vec<page::Pooled>>>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    generation: u64,
}

struct Running {
    browser: Browser,
    child: Option<Child>,
    pid: Option<u32>,
    profile: Option<PathBuf>,
    isolation: Option<Isolation>,
    contexts: HashMap<String, Context>,
    generation: u64,
}

struct Context {
    id: String,
    last_used: Instant,
    in_use: Arc<AtomicUsize>,
}

impl Running {
    fn is_alive(&mut self) -> bool {
        if !self.browser.is_connected() {
            return false;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                warn!(%status, "Chromium exited");
                self.browser.alive_flag().store(false, Ordering::SeqCst);
                false
            }
            _ => true,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A tab for a lease: a new one, or one from the pool.
enum Tab {
    New(cdp::Page),
    Pooled(page::Pooled),
}

/// Decrements the active count when an acquisition ends without a lease.
struct ActiveGuard<'a>(&'a Inner, bool);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.release();
        }
    }
}

impl BrowserService {
    /// The service the configuration asks for, or `None` when there is no Chromium (not on
    /// PATH, no `ECDYSIS_CHROMIUM`) and no CDP endpoint.
    pub fn from_config(config: &Config) -> Result<Option<Self>, BrowserError> {
        Self::with_options(BrowserOptions::from_config(config))
    }

    /// Like [`BrowserService::from_config`] with explicit options.
    pub fn with_options(options: BrowserOptions) -> Result<Option<Self>, BrowserError> {
        let source = match &options.settings.cdp_url {
            Some(url) => Source::Remote(url.clone()),
            None => match find_chromium(&options.settings) {
                Some(path) => Source::Local(path),
                None => return Ok(None),
            },
        };
        Self::new(options, source).map(Some)
    }

    /// A service using `source`. Nothing starts until the first request.
    pub fn new(options: BrowserOptions, source: Source) -> Result<Self, BrowserError> {
        let guard = UrlGuard::new(&options.settings.allow, options.resolver.clone())
            .map_err(BrowserError::BadRequest)?;
        let run_as = match source {
            Source::Local(_) => RunAs::for_chromium(),
            Source::Remote(_) => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                tabs: Arc::new(Semaphore::new(options.settings.max_pages.max(1))),
                options,
                source,
                guard,
                run_as,
                isolation: Mutex::new(None),
                state: tokio::sync::Mutex::new(State::default()),
                active: AtomicUsize::new(0),
                last_used: Mutex::new(Instant::now()),
                rate: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                ffmpeg_checked: tokio::sync::OnceCell::new(),
                pool: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn source(&self) -> &Source {
        &self.inner.source
    }

    pub fn settings(&self) -> &BrowserSettings {
        &self.inner.options.settings
    }

    pub fn guard(&self) -> &UrlGuard {
        &self.inner.guard
    }

    /// The ffmpeg executable recordings use.
    pub fn ffmpeg_path(&self) -> &std::path::Path {
        &self.inner.options.ffmpeg
    }

    /// Where scratch files (recordings) are written.
    pub fn work_dir(&self) -> &std::path::Path {
        &self.inner.options.work_dir
    }

    pub fn stats(&self) -> BrowserStats {
        let c = &self.inner.counters;
        BrowserStats {
            launches: c.launches.load(Ordering::Relaxed),
            navigations: c.navigations.load(Ordering::Relaxed),
            requests_allowed: c.requests_allowed.load(Ordering::Relaxed),
            requests_refused: c.requests_refused.load(Ordering::Relaxed),
        }
    }

    /// Whether a browser is running or connected now.
    pub async fn is_running(&self) -> bool {
        self.inner.state.lock().await.running.is_some()
    }

    /// The process id of the local Chromium, while one runs.
    pub async fn chromium_pid(&self) -> Option<u32> {
        self.inner
            .state
            .lock()
            .await
            .running
            .as_ref()
            .and_then(|r| r.pid)
    }

    /// How the local Chromium runs (as whom, with or without its own sandbox), once one has
    /// been launched; `None` for a remote endpoint.
    pub fn isolation(&self) -> Option<Isolation> {
        self.inner.isolation.lock().ok().and_then(|i| *i)
    }

    /// The profile directory of the running local Chromium.
    pub async fn profile_dir(&self) -> Option<PathBuf> {
        self.inner
            .state
            .lock()
            .await
            .running
            .as_ref()
            .and_then(|r| r.profile.clone())
    }

    /// Check a URL typed by a person or the model (before anything is launched).
    pub async fn check_url(&self, text: &str) -> Result<url::Url, BrowserError> {
        Ok(self.inner.guard.check_input(text).await?)
    }

    /// Take one unit of the channel's rate budget, or say how long to wait.
    pub fn check_rate(&self, channel: &str) -> Result<(), BrowserError> {
        let per_minute = self.inner.options.settings.rate_per_minute.max(1) as f64;
        let now = Instant::now();
        let Ok(mut rate) = self.inner.rate.lock() else {
            return Ok(());
        };
        if rate.len() >= MAX_RATE_ENTRIES {
            rate.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * per_minute / 60.0 < per_minute
            });
        }
        let bucket = rate.entry(channel.to_string()).or_insert(Bucket {
            tokens: per_minute,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_minute / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(per_minute);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) * 60.0 / per_minute).ceil() as u64;
            Err(BrowserError::RateLimited(wait.max(1)))
        }
    }

    /// The ffmpeg version line, or why ffmpeg cannot be used (checked once).
    pub async fn ffmpeg(&self) -> Result<String, BrowserError> {
        let path = self.inner.options.ffmpeg.clone();
        self.inner
            .ffmpeg_checked
            .get_or_init(|| async move { record::ffmpeg_version(&path).await })
            .await
            .clone()
            .map_err(BrowserError::FfmpegMissing)
    }

    /// A fresh tab in `channel`'s browser context with the given viewport, launching or
    /// relaunching the browser when needed.
    pub async fn page(&self, channel: &str, viewport: Viewport) -> Result<PageLease, BrowserError> {
        match self.try_page(channel, viewport).await {
            Err(e) if e.is_gone() => {
                warn!(error = %e, "the browser was gone; relaunching once");
                self.try_page(channel, viewport).await
            }
            other => other,
        }
    }

    async fn try_page(&self, channel: &str, viewport: Viewport) -> Result<PageLease, BrowserError> {
        let inner = &self.inner;
        inner.active.fetch_add(1, Ordering::SeqCst);
        let mut active = ActiveGuard(inner, true);
        let permit = self.tab_permit().await?;
        let (tab, alive, in_use, generation) = {
            let mut state = inner.state.lock().await;
            let running = self.ensure_running(&mut state).await?;
            let alive = running.browser.alive_flag();
            let generation = running.generation;
            let (context, in_use) = self.context(running, channel).await?;
            let tab = match inner.pool_take(channel, generation) {
                Some(pooled) => Tab::Pooled(pooled),
                None => {
                    let page = running
                        .browser
                        .new_page(Some(&context))
                        .await
                        .map_err(|e| cdp_error(e, &alive))?;
                    Tab::New(page)
                }
            };
            in_use.fetch_add(1, Ordering::SeqCst);
            (tab, alive, in_use, generation)
        };
        active.1 = false;
        let lease = page::LeaseParts {
            inner: self.inner.clone(),
            alive,
            in_use,
            permit,
            channel: channel.to_string(),
            generation,
        };
        match tab {
            Tab::New(page) => PageLease::prepare(lease, page, viewport).await,
            Tab::Pooled(pooled) => PageLease::reuse(lease, pooled, viewport).await,
        }
    }

    async fn tab_permit(&self) -> Result<OwnedSemaphorePermit, BrowserError> {
        let wait = self.inner.options.settings.navigation_timeout;
        match tokio::time::timeout(wait, self.inner.tabs.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(BrowserError::Busy(self.inner.options.settings.max_pages)),
        }
    }

    /// The browser context of `channel`, created on first use.
    async fn context(
        &self,
        running: &mut Running,
        channel: &str,
    ) -> Result<(String, Arc<AtomicUsize>), BrowserError> {
        if let Some(context) = running.contexts.get_mut(channel) {
            context.last_used = Instant::now();
            return Ok((context.id.clone(), context.in_use.clone()));
        }
        if running.contexts.len() >= MAX_CONTEXTS {
            let oldest = running
                .contexts
                .iter()
                .filter(|(_, c)| c.in_use.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            if let Some(key) = oldest
                && let Some(context) = running.contexts.remove(&key)
            {
                self.inner.pool_clear(Some(&key));
                let _ = running.browser.dispose_context(&context.id).await;
            }
        }
        let id = running
            .browser
            .create_context()
            .await
            .map_err(|e| cdp_error(e, &running.browser.alive_flag()))?;
        let in_use = Arc::new(AtomicUsize::new(0));
        running.contexts.insert(
            channel.to_string(),
            Context {
                id: id.clone(),
                last_used: Instant::now(),
                in_use: in_use.clone(),
            },
        );
        Ok((id, in_use))
    }

    async fn ensure_running<'a>(
        &self,
        state: &'a mut State,
    ) -> Result<&'a mut Running, BrowserError> {
        let dead = match state.running.as_mut() {
            Some(running) => !running.is_alive(),
            None => false,
        };
        if dead && let Some(running) = state.running.take() {
            warn!("the browser crashed or was killed; launching a new one");
            self.inner.pool_clear(None);
            close_running(running, &self.inner.source).await;
        }
        if state.running.is_none() {
            state.generation += 1;
            let started = Instant::now();
            let running = self.launch(state.generation).await?;
            match running.isolation {
                Some(isolation) => info!(
                    source = %self.inner.source,
                    pid = running.pid,
                    ms = started.elapsed().as_millis() as u64,
                    %isolation,
                    "browser ready"
                ),
                None => info!(
                    source = %self.inner.source,
                    ms = started.elapsed().as_millis() as u64,
                    "browser ready"
                ),
            }
            self.inner.counters.launches.fetch_add(1, Ordering::Relaxed);
            spawn_idle_watch(Arc::downgrade(&self.inner), state.generation);
            state.running = Some(running);
        }
        state
            .running
            .as_mut()
            .ok_or_else(|| BrowserError::Launch("no browser".into()))
    }

    /// Close the browser now (shutdown; the next request launches a new one).
    pub async fn shutdown(&self) {
        let mut state = self.inner.state.lock().await;
        self.inner.pool_clear(None);
        if let Some(running) = state.running.take() {
            close_running(running, &self.inner.source).await;
        }
    }
}

impl Inner {
    /// Whether Chromium's own sandbox is known to start here (`None`: not tried yet).
    fn known_sandbox(&self) -> Option<bool> {
        self.isolation
            .lock()
            .ok()
            .and_then(|i| i.map(|i| i.sandbox))
    }

    fn set_isolation(&self, isolation: Isolation) {
        if let Ok(mut current) = self.isolation.lock() {
            *current = Some(isolation);
        }
    }

    /// An idle tab of `channel` from the running browser, if one is pooled.
    fn pool_take(&self, channel: &str, generation: u64) -> Option<page::Pooled> {
        let mut pool = self.pool.lock().ok()?;
        let tabs = pool.get_mut(channel)?;
        while let Some(pooled) = tabs.pop() {
            if pooled.generation == generation {
                return Some(pooled);
            }
            pooled.discard();
        }
        None
    }

    /// Keep an idle tab for reuse; gives it back when the pool is full.
    pub(crate) fn pool_put(
        &self,
        channel: String,
        pooled: page::Pooled,
    ) -> Result<(), page::Pooled> {
        let Ok(mut pool) = self.pool.lock() else {
            return Err(pooled);
        };
        let idle: usize = pool.values().map(Vec::len).sum();
        if idle >= self.options.settings.max_pages {
            return Err(pooled);
        }
        pool.entry(channel).or_default().push(pooled);
        Ok(())
    }

    /// Forget pooled tabs (of one channel, or all when the browser closes).
    fn pool_clear(&self, channel: Option<&str>) {
        let Ok(mut pool) = self.pool.lock() else {
            return;
        };
        let removed: Vec<page::Pooled> = match channel {
            Some(channel) => pool.remove(channel).unwrap_or_default(),
            None => pool.drain().flat_map(|(_, tabs)| tabs).collect(),
        };
        drop(pool);
        for pooled in removed {
            pooled.discard();
        }
    }

    fn release(&self) {
        self.touch();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last_used.lock() {
            *last = Instant::now();
        }
    }

    pub(crate) fn guard(&self) -> &UrlGuard {
        &self.guard
    }

    pub(crate) fn navigation_timeout(&self) -> Duration {
        self.options.settings.navigation_timeout
    }

    pub(crate) fn count_navigation(&self) {
        self.counters.navigations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_request(&self, allowed: bool) {
        let counter = if allowed {
            &self.counters.requests_allowed
        } else {
            &self.counters.requests_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Close the browser once nothing has used it for the idle timeout.
fn spawn_idle_watch(inner: Weak<Inner>, generation: u64) {
    tokio::spawn(async move {
        loop {
            let wait = {
                let Some(inner) = inner.upgrade() else { return };
                let idle = inner.options.settings.idle;
                let since = inner
                    .last_used
                    .lock()
                    .map(|l| l.elapsed())
                    .unwrap_or_default();
                idle.saturating_sub(since).max(Duration::from_millis(100))
            };
            tokio::time::sleep(wait).await;
            let Some(inner) = inner.upgrade() else { return };
            let idle = inner.options.settings.idle;
            let quiet = |inner: &Inner| {
                inner.active.load(Ordering::SeqCst) == 0
                    && inner
                        .last_used
                        .lock()
                        .map(|l| l.elapsed() >= idle)
                        .unwrap_or(false)
            };
            if !quiet(&inner) {
                continue;
            }
            let mut state = inner.state.lock().await;
            match &state.running {
                Some(running) if running.generation == generation => {}
                _ => return,
            }
            if !quiet(&inner) {
                continue;
            }
            inner.pool_clear(None);
            if let Some(running) = state.running.take() {
                info!(idle_seconds = idle.as_secs(), "closing the idle browser");
                close_running(running, &inner.source).await;
            }
            return;
        }
    });
}

/// The key a channel's browser context and rate limit live under.
pub fn channel_key(conversation: &ConversationRef) -> String {
    format!(
        "{}:{}:{}",
        conversation.platform, conversation.workspace, conversation.channel
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn service(rate: u32) -> BrowserService {
        let options = BrowserOptions {
            settings: BrowserSettings {
                rate_per_minute: rate,
                ..BrowserSettings::default()
            },
            ffmpeg: PathBuf::from("ffmpeg"),
            work_dir: std::env::temp_dir(),
            resolver: Arc::new(SystemResolver),
            extra_args: Vec::new(),
        };
        BrowserService::new(
            options,
            Source::Local(PathBuf::from("/nonexistent/chromium")),
        )
        .unwrap()
    }

    #[test]
    fn rate_limit_is_per_channel() {
        let s = service(3);
        for _ in 0..3 {
            s.check_rate("a").unwrap();
        }
        let e = s.check_rate("a").unwrap_err();
        assert!(
            matches!(e, BrowserError::RateLimited(n) if (1..=20).contains(&n)),
            "{e}"
        );
        s.check_rate("b").unwrap();
    }

    #[tokio::test]
    async fn a_missing_chromium_is_a_clear_error() {
        let s = service(10);
        let e = s
            .page("c", Viewport::default())
            .await
            .err()
            .expect("no browser");
        assert!(e.to_string().contains("ECDYSIS_CHROMIUM"), "{e}");
        assert!(!s.is_running().await);
    }

    #[test]
    fn executables_are_found() {
        assert!(find_executable(Path::new("sh")).is_some());
        assert!(find_executable(Path::new("/nonexistent/x")).is_none());
        let settings = BrowserSettings {
            chromium: Some(PathBuf::from("/nonexistent/chromium")),
            ..BrowserSettings::default()
        };
        assert!(find_chromium(&settings).is_none());
    }
}
