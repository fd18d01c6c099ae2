//! Interactive browser sessions: one tab per conversation, in its channel's browser context
//! (cookies and logins stay per channel), kept open across tool calls and turns until it has
//! been idle for the browser's idle time.
//!
//! A session watches its tab: requests in flight and page loads (so an action can wait until
//! the page has settled), JavaScript dialogs (accepted and reported), and screencast frames
//! (a bounded rolling film for `browser_record`). The actions themselves are in
//! [`actions`](super::actions).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;
use tracing::{debug, info};
use url::Url;

use super::cdp::protocol::{
    BringToFront, FrameStartedLoading, FrameStoppedLoading, HandleJavaScriptDialog,
    JavascriptDialogOpening, LoadingFailed, LoadingFinished, RequestWillBeSent, ScreencastFrame,
    ScreencastFrameAck, StartScreencast, StopScreencast,
};
use super::frames::{FrameBuffer, MAX_BUFFER_BYTES};
use super::page::Loaded;
use super::snapshot::{self, Snapshot};
use super::{BrowserError, BrowserService, PageLease, Viewport, WaitFor};

/// How long after an action a request or navigation it started is waited for.
const GRACE: Duration = Duration::from_millis(50);
/// Network silence that counts as settled.
const QUIET: Duration = Duration::from_millis(50);
/// Requests older than this (long polls, streams) do not hold an action up.
const LONG_REQUEST: Duration = Duration::from_secs(3);
/// The longest wait for the page's DOM to stop changing (an animated page never does).
const DOM_QUIET_CAP: Duration = Duration::from_millis(800);
/// Screencast frames kept per second (acknowledgements are paced to this).
const FRAMES_PER_SECOND: u64 = 10;

/// Resolves once the DOM has not changed for 50 ms and the document has loaded, or after the
/// cap (milliseconds, the argument).
const DOM_QUIET_JS: &str = r#"((cap) => new Promise((resolve) => {
  const start = performance.now();
  let last = start;
  const observer = new MutationObserver(() => { last = performance.now(); });
  observer.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  const tick = () => {
    const now = performance.now();
    if ((document.readyState === 'complete' && now - last >= 50) || now - start >= cap) {
      observer.disconnect();
      resolve(document.readyState);
    } else {
      // Look again when 50 quiet milliseconds could have passed (at least 5 ms from now).
      setTimeout(tick, Math.max(5, 50 - (now - last)));
    }
  };
  setTimeout(tick, 50);
}))"#;

/// What the network watcher knows.
#[derive(Debug)]
struct NetState {
    /// Requests in flight: when they started and whether they load a document.
    inflight: HashMap<String, (Instant, bool)>,
    /// Whether the main frame is loading.
    loading: bool,
    last_change: Instant,
    /// Documents whose load failed since the last action started: (url, error).
    failed_documents: Vec<(String, String)>,
    /// Dialogs the page opened since the last action started (accepted).
    dialogs: Vec<String>,
    urls: HashMap<String, String>,
}

impl NetState {
    fn new() -> Self {
        Self {
            inflight: HashMap::new(),
            loading: false,
            last_change: Instant::now(),
            failed_documents: Vec::new(),
            dialogs: Vec::new(),
            urls: HashMap::new(),
        }
    }
}

/// What an action leaves to report besides the page.
#[derive(Debug, Default)]
pub struct Aftermath {
    /// Dialogs the page opened (accepted).
    pub dialogs: Vec<String>,
}

/// One open session.
pub struct Session {
    lease: PageLease,
    settings: SessionLimits,
    /// The next reference number for the snapshot.
    next_ref: u64,
    net: Arc<Mutex<NetState>>,
    frames: Arc<Mutex<FrameBuffer>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The limits a session works within (from the browser settings).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub action_timeout: Duration,
    pub snapshot_max_tokens: usize,
    pub allow_password_typing: bool,
    pub max_record_seconds: u64,
}

impl Session {
    /// A new tab for `channel`, watched and filmed.
    pub async fn start(browser: &BrowserService, channel: &str) -> Result<Self, BrowserError> {
        let viewport = Viewport::default();
        let lease = match browser.page(channel, viewport).await {
            Err(e) if e.is_gone() => browser.page(channel, viewport).await?,
            other => other?,
        };
        let settings = browser.settings();
        let limits = SessionLimits {
            action_timeout: settings.action_timeout,
            snapshot_max_tokens: settings.snapshot_max_tokens,
            allow_password_typing: settings.allow_password_typing,
            max_record_seconds: settings.max_record_seconds,
        };
        let max_frames = (settings.max_record_seconds * FRAMES_PER_SECOND * 4) as usize;
        let mut session = Self {
            lease,
            settings: limits,
            next_ref: 1,
            net: Arc::new(Mutex::new(NetState::new())),
            frames: Arc::new(Mutex::new(FrameBuffer::new(MAX_BUFFER_BYTES, max_frames))),
            tasks: Vec::new(),
        };
        session.watch_network().await?;
        session.film(viewport).await?;
        Ok(session)
    }

    pub fn lease(&self) -> &PageLease {
        &self.lease
    }

    pub fn limits(&self) -> SessionLimits {
        self.settings
    }

    /// Frames from `since` on (all when `None`).
    pub fn frames_since(&self, since: Option<Instant>) -> Vec<(Instant, Bytes)> {
        self.frames
            .lock()
            .map(|f| f.since(since))
            .unwrap_or_default()
    }

    async fn watch_network(&mut self) -> Result<(), BrowserError> {
        let page = self.lease.page().clone();
        let mut sent = page.listen::<RequestWillBeSent>();
        let mut finished = page.listen::<LoadingFinished>();
        let mut failed = page.listen::<LoadingFailed>();
        let mut started = page.listen::<FrameStartedLoading>();
        let mut stopped = page.listen::<FrameStoppedLoading>();
        let mut dialogs = page.listen::<JavascriptDialogOpening>();
        let main = page.main_frame().await.map_err(|e| self.lease.cdp(e))?.id;
        let net = self.net.clone();
        self.tasks.push(tokio::spawn(async move {
            let update = |f: &mut dyn FnMut(&mut NetState)| {
                if let Ok(mut state) = net.lock() {
                    f(&mut state);
                    state.last_change = Instant::now();
                }
            };
            loop {
                tokio::select! {
                    Some(event) = sent.next() => update(&mut |s| {
                        if s.inflight.len() > 10_000 {
                            s.inflight.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(60));
                        }
                        let document = event.kind.as_deref() == Some("Document");
                        s.inflight.insert(event.request_id.clone(), (Instant::now(), document));
                        if document {
                            s.urls.insert(event.request_id.clone(), event.request.url.clone());
                        }
                    }),
                    Some(event) = finished.next() => update(&mut |s| {
                        s.inflight.remove(&event.request_id);
                        s.urls.remove(&event.request_id);
                    }),
                    Some(event) = failed.next() => update(&mut |s| {
                        s.inflight.remove(&event.request_id);
                        let url = s.urls.remove(&event.request_id);
                        if event.kind == "Document" && event.canceled != Some(true) {
                            s.failed_documents.push((url.unwrap_or_default(), event.error_text.clone()));
                        }
                    }),
                    Some(event) = started.next() => if event.frame_id == main {
                        update(&mut |s| s.loading = true)
                    },
                    Some(event) = stopped.next() => if event.frame_id == main {
                        update(&mut |s| s.loading = false)
                    },
                    Some(event) = dialogs.next() => {
                        let text = format!("{} “{}”", event.kind, event.message).to_lowercase();
                        update(&mut |s| s.dialogs.push(text.clone()));
                        let _ = page.execute(&HandleJavaScriptDialog { accept: true }).await;
                    }
                    else => return,
                }
            }
        }));
        Ok(())
    }

    async fn film(&mut self, viewport: Viewport) -> Result<(), BrowserError> {
        let page = self.lease.page().clone();
        let mut frames = page.listen::<ScreencastFrame>();
        let _ = page.execute(&BringToFront {}).await;
        let start = StartScreencast::jpeg(70, viewport.width as i64, viewport.height as i64);
        let buffer = self.frames.clone();
        let pace = Duration::from_millis(1000 / FRAMES_PER_SECOND);
        self.tasks.push(tokio::spawn(async move {
            let engine = base64::engine::general_purpose::STANDARD;
            while let Some(frame) = frames.next().await {
                let at = Instant::now();
                if let Ok(jpeg) = engine.decode(&frame.data)
                    && let Ok(mut buffer) = buffer.lock()
                {
                    buffer.push(at, Bytes::from(jpeg));
                }
                // Chromium sends the next frame after the acknowledgement: pacing it bounds
                // the frame rate (and the CPU spent on frames).
                tokio::time::sleep(pace.saturating_sub(at.elapsed())).await;
                if page
                    .execute(&ScreencastFrameAck {
                        session_id: frame.session_id,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
        self.lease
            .page()
            .execute(&start)
            .await
            .map_err(|e| self.lease.cdp(e))?;
        Ok(())
    }

    /// Forget what earlier actions left (refusals, failed loads, dialogs).
    pub(crate) fn begin(&self) {
        self.lease.clear_refusals();
        if let Ok(mut state) = self.net.lock() {
            state.failed_documents.clear();
            state.dialogs.clear();
        }
    }

    /// Load `url` in the tab.
    pub async fn goto(&mut self, url: &Url) -> Result<Loaded, BrowserError> {
        self.begin();
        let deadline = tokio::time::Instant::now() + self.settings.action_timeout;
        let loaded = self.lease.open(url, &WaitFor::Load).await?;
        self.settle(Instant::now(), deadline).await?;
        Ok(loaded)
    }

    /// Wait until what an action (ended at `since`) started has finished: requests, page
    /// loads, DOM changes. A page still loading at `deadline` is an error; a page that keeps
    /// changing (animations, long polls) is taken as it is.
    pub async fn settle(
        &self,
        since: Instant,
        deadline: tokio::time::Instant,
    ) -> Result<Aftermath, BrowserError> {
        for _ in 0..3 {
            self.network_quiet(since, deadline).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let cap = left.min(DOM_QUIET_CAP).as_millis().max(1);
            match tokio::time::timeout(
                left.max(Duration::from_millis(1)),
                self.lease.eval::<String>(&format!("{DOM_QUIET_JS}({cap})")),
            )
            .await
            {
                Ok(Ok(_)) => break,
                // The document was replaced while it was observed: wait for the new one.
                Ok(Err(BrowserError::Cdp(text))) => {
                    debug!(error = %text, "the page changed while settling");
                    tokio::time::sleep(QUIET).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.not_settled()),
            }
        }
        self.failed_navigation()?;
        let dialogs = self
            .net
            .lock()
            .map(|mut s| std::mem::take(&mut s.dialogs))
            .unwrap_or_default();
        Ok(Aftermath { dialogs })
    }

    async fn network_quiet(
        &self,
        since: Instant,
        deadline: tokio::time::Instant,
    ) -> Result<(), BrowserError> {
        loop {
            let now = Instant::now();
            let (loading, documents, others, last_change) = match self.net.lock() {
                Ok(state) => (
                    state.loading,
                    state.inflight.values().filter(|(_, doc)| *doc).count(),
                    state
                        .inflight
                        .values()
                        .filter(|(at, doc)| !*doc && now.duration_since(*at) < LONG_REQUEST)
                        .count(),
                    state.last_change,
                ),
                Err(_) => return Ok(()),
            };
            let busy = loading || documents > 0 || others > 0;
            if !busy
                && now.duration_since(since) >= GRACE
                && now.duration_since(last_change) >= QUIET
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                if loading || documents > 0 {
                    return Err(self.not_settled());
                }
                return Ok(());
            }
            // Quiet so far: look again when the grace and the quiet time could both be over;
            // busy: soon.
            let pause = if busy {
                Duration::from_millis(5)
            } else {
                (since + GRACE)
                    .max(last_change + QUIET)
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(2))
            };
            tokio::time::sleep(
                pause.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
    }

    fn not_settled(&self) -> BrowserError {
        if let Some(refused) = self.lease.refusal() {
            return BrowserError::RefusedRequest(refused);
        }
        BrowserError::Timeout(self.settings.action_timeout.as_secs())
    }

    /// A navigation this action started that the URL guard refused or that failed.
    fn failed_navigation(&self) -> Result<(), BrowserError> {
        let failed = self
            .net
            .lock()
            .map(|s| s.failed_documents.clone())
            .unwrap_or_default();
        let Some((url, error)) = failed.into_iter().next() else {
            return Ok(());
        };
        if let Some(refused) = self.lease.refusal() {
            return Err(BrowserError::RefusedRequest(refused));
        }
        Err(BrowserError::Navigation(format!("{url}: {error}")))
    }

    /// A snapshot of the page, numbering new elements after those of earlier snapshots.
    pub async fn snapshot(&mut self, max_tokens: Option<usize>) -> Result<Snapshot, BrowserError> {
        let budget = max_tokens.unwrap_or(self.settings.snapshot_max_tokens);
        let snapshot = snapshot::take(&self.lease, self.next_ref, budget).await?;
        self.next_ref = self.next_ref.max(snapshot.next);
        Ok(snapshot)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let page = self.lease.page().clone();
            runtime.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), page.execute(&StopScreencast {}))
                        .await;
            });
        }
    }
}

/// A conversation's slot: its session (if open), when it was last used, and the turn (event)
/// that used it last with when that turn first did.
struct Slot {
    session: Arc<tokio::sync::Mutex<Option<Session>>>,
    last_used: Mutex<Instant>,
    turn: Mutex<(i64, Instant)>,
}

impl Slot {
    /// Idle long enough to close: unused for `idle`, and the turn that used it last has surely
    /// ended (a turn runs at most `turn_limit`, and it began before its first use here), so
    /// a pause between two tool calls of one turn never closes the page under the model.
    fn closable(&self, idle: Duration, turn_limit: Duration) -> bool {
        let unused = self
            .last_used
            .lock()
            .map(|l| l.elapsed() >= idle)
            .unwrap_or(false);
        let turn_over = self
            .turn
            .lock()
            .map(|t| t.1.elapsed() >= turn_limit)
            .unwrap_or(false);
        unused && turn_over
    }
}

/// The open sessions, by conversation. Cheap to share.
pub struct Sessions {
    browser: BrowserService,
    /// The longest an agent turn runs (`agent.turn_timeout`).
    turn_limit: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    me: Weak<Sessions>,
}

/// A locked conversation slot: `None` until a page is opened.
pub type SessionGuard = OwnedMutexGuard<Option<Session>>;

impl Sessions {
    pub fn new(browser: BrowserService, turn_limit: Duration) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            browser,
            turn_limit,
            slots: Mutex::new(HashMap::new()),
            reaper: Mutex::new(None),
            me: me.clone(),
        })
    }

    pub fn browser(&self) -> &BrowserService {
        &self.browser
    }

    /// Sessions open now.
    pub fn open_count(&self) -> usize {
        let slots = self.slots();
        slots
            .values()
            .filter(|s| s.session.try_lock().map(|g| g.is_some()).unwrap_or(true))
            .count()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock the slot of conversation `key` for a tool call of turn `event_id` (one action at
    /// a time per conversation).
    pub async fn lock(&self, key: &str, event_id: i64) -> SessionGuard {
        self.ensure_reaper();
        let slot = {
            let mut slots = self.slots();
            slots
                .entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        session: Arc::new(tokio::sync::Mutex::new(None)),
                        last_used: Mutex::new(Instant::now()),
                        turn: Mutex::new((event_id, Instant::now())),
                    })
                })
                .clone()
        };
        if let Ok(mut last) = slot.last_used.lock() {
            *last = Instant::now();
        }
        if let Ok(mut turn) = slot.turn.lock()
            && turn.0 != event_id
        {
            *turn = (event_id, Instant::now());
        }
        slot.session.clone().lock_owned().await
    }

    /// Close the least recently used idle sessions until a new one fits in the tab budget
    /// (one tab stays free for screenshots and recordings).
    pub fn make_room(&self, keep: &str) {
        let max = self.browser.settings().max_pages.saturating_sub(1).max(1);
        let mut slots: Vec<(String, Arc<Slot>)> = self
            .slots()
            .iter()
            .filter(|(k, _)| k.as_str() != keep)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        slots.sort_by_key(|(_, s)| {
            s.last_used
                .lock()
                .map(|l| *l)
                .unwrap_or_else(|_| Instant::now())
        });
        // Busy slots (locked by another action) count as open.
        let mut open = slots
            .iter()
            .filter(|(_, s)| s.session.try_lock().map(|g| g.is_some()).unwrap_or(true))
            .count();
        for (key, slot) in slots {
            if open < max {
                break;
            }
            if let Ok(mut guard) = slot.session.try_lock()
                && guard.take().is_some()
            {
                info!(conversation = %key, "closing the least recently used browser session");
                open -= 1;
            }
        }
    }

    /// Close every session (shutdown).
    pub fn close_all(&self) {
        let slots: Vec<Arc<Slot>> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Ok(mut guard) = slot.session.try_lock() {
                guard.take();
            }
        }
    }

    fn ensure_reaper(&self) {
        let Ok(mut reaper) = self.reaper.lock() else {
            return;
        };
        if reaper.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.me.clone();
        let idle = self.browser.settings().idle;
        let turn_limit = self.turn_limit;
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        *reaper = Some(runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(sessions) = me.upgrade() else { return };
                sessions.reap(idle, turn_limit);
            }
        }));
    }

    /// Close the sessions idle for `idle` or longer whose last turn is over.
    fn reap(&self, idle: Duration, turn_limit: Duration) {
        let mut slots = self.slots();
        let mut closed = Vec::new();
        slots.retain(|key, slot| {
            if !slot.closable(idle, turn_limit) {
                return true;
            }
            match slot.session.try_lock() {
                Ok(mut guard) => {
                    if guard.take().is_some() {
                        closed.push(key.clone());
                    }
                    drop(guard);
                    // Kept while a caller holds the slot on its way to locking it.
                    Arc::strong_count(slot) > 1
                }
                Err(_) => true,
            }
        });
        drop(slots);
        for key in closed {
            info!(conversation = %key, idle_seconds = idle.as_secs(), "closed an idle browser session");
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        if let Ok(mut reaper) = self.reaper.lock()
            && let Some(task) = reaper.take()
        {
            task.abort();
        }
    }
}

/// The key of a conversation's session: its channel and thread.
pub fn session_key(conversation: &ecdysis_chat::ConversationRef) -> String {
    format!(
        "{}:{}",
        super::channel_key(conversation),
        conversation.thread.as_deref().unwrap_or("-")
    )
}
