//! Live replies in the core: the answer so far and the tool lines, shown on the platform while
//! the agent works, throttled to what the adapter allows.
//!
//! A handler writes into [`Live`] (text deltas, step boundaries, progress lines); the bus runs
//! one [`LiveRun`] per event whose adapter shows live replies. The run splits the text into the
//! pieces the final reply will have (so piece `n` becomes the reply with key `{event}:{n}`),
//! starts a platform message per piece, stores its handle before the first update, and updates
//! it no more often than [`LiveSettings::min_interval`]. When the handler is done the run stops
//! and hands the handles to the completion: each final reply finishes its live message in
//! place, and a live message with no reply left is removed. A re-run of the event (a crash, a
//! retry) reads the stored handles first, so it works on the same messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ecdysis_chat::{
    ChatAdapter, DeliveryError, LiveHandle, LiveMessage, LiveSettings, LiveView, Progress,
    split_text,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::redact::Redactor;
use crate::storage::store::{EventId, Store};

/// The longest one platform call of a live reply may take before the live view is given up
/// (the final reply is still delivered through the outbox).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The idempotency key of reply `n` of an event (and of the live message that becomes it).
pub fn reply_key(event_id: EventId, n: usize) -> String {
    format!("{event_id}:{n}")
}

/// What the answer looks like so far.
#[derive(Clone, Debug, Default)]
struct Draft {
    /// Text of finished model calls (a tool-using answer has several).
    steps: Vec<String>,
    /// Text of the model call being received.
    step: String,
    progress: Vec<Progress>,
}

impl Draft {
    #[cfg(test)]
    fn text(&self) -> String {
        self.joined(&self.step)
    }

    /// The text to show: the step being received stops before its last, possibly unfinished
    /// word, so a secret is never shown half-written (the redactor masks whole values only).
    fn visible_text(&self) -> String {
        let step = match self
            .step
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
        {
            _ if self.step.ends_with(char::is_whitespace) => self.step.as_str(),
            Some((at, _)) => &self.step[..at],
            None => "",
        };
        self.joined(step)
    }

    fn joined(&self, step: &str) -> String {
        let mut out = String::new();
        for part in self
            .steps
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(step))
        {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(part);
        }
        out
    }
}

/// Where a handler writes what the user should see while it works. Cheap to clone; does
/// nothing when the event's adapter shows no live replies ([`Live::off`]).
#[derive(Clone, Default)]
pub struct Live {
    draft: Option<Arc<watch::Sender<Draft>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("on", &self.is_on()).finish()
    }
}

impl Live {
    /// A live view that shows nothing (the final reply is the only message).
    pub fn off() -> Self {
        Self::default()
    }

    pub fn is_on(&self) -> bool {
        self.draft.is_some()
    }

    fn change(&self, f: impl FnOnce(&mut Draft) -> bool) {
        if let Some(draft) = &self.draft {
            draft.send_if_modified(f);
        }
    }

    /// More text of the model call being received.
    pub fn text(&self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        self.change(|d| {
            d.step.push_str(delta);
            true
        });
    }

    /// The model call being received failed and is tried again: its text so far goes.
    pub fn restart_step(&self) {
        self.change(|d| {
            let had = !d.step.is_empty();
            d.step.clear();
            had
        });
    }

    /// The model call finished: its text stays, the next call's text follows it.
    pub fn end_step(&self) {
        self.change(|d| {
            let step = std::mem::take(&mut d.step);
            if !step.trim().is_empty() {
                d.steps.push(step);
            }
            false
        });
    }

    /// A tool line ("running `ls` in the sandbox"); returns its id for [`Live::progress_done`].
    pub fn progress(&self, text: impl Into<String>) -> u32 {
        let text = text.into();
        let mut id = 0;
        self.change(|d| {
            id = d.progress.len() as u32 + 1;
            d.progress.push(Progress {
                id,
                text,
                done: false,
            });
            true
        });
        id
    }

    /// Show the tool line `text` while `work` runs.
    pub async fn during<T>(
        &self,
        text: impl Into<String>,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let id = self.progress(text);
        let out = work.await;
        self.progress_done(id);
        out
    }

    /// The tool of a progress line finished.
    pub fn progress_done(&self, id: u32) {
        self.change(|d| match d.progress.iter_mut().find(|p| p.id == id) {
            Some(line) if !line.done => {
                line.done = true;
                true
            }
            _ => false,
        });
    }
}

/// One live message (a piece of the answer) as the run knows it.
#[derive(Default)]
struct Piece {
    handle: Option<LiveHandle>,
    /// What the last successful call showed.
    shown: LiveView,
}

/// The live view of one event, driven in the background while its handler runs.
pub struct LiveRun {
    live: Live,
    stop: watch::Sender<bool>,
    task: JoinHandle<BTreeMap<usize, LiveHandle>>,
}

/// What a live run is for.
pub struct LiveTarget<'a> {
    pub event_id: EventId,
    pub conversation: &'a ecdysis_chat::ConversationRef,
    pub route: &'a serde_json::Value,
    /// 1 on the event's first run.
    pub attempt: i32,
}

impl LiveRun {
    /// Start the live view of an event, when its adapter shows live replies. A re-run of the
    /// event (`attempt` > 1) continues with the messages an earlier run started.
    pub async fn start(
        adapter: Arc<dyn ChatAdapter>,
        store: Arc<dyn Store>,
        redactor: Redactor,
        target: LiveTarget<'_>,
    ) -> Option<Self> {
        let LiveTarget {
            event_id,
            conversation,
            route,
            attempt,
        } = target;
        let settings = adapter.live(route)?;
        let mut pieces = Vec::new();
        if attempt > 1 {
            match store.live_messages(event_id).await {
                Ok(stored) => {
                    for (n, handle) in stored {
                        let Ok(handle) = serde_json::from_str::<LiveHandle>(&handle) else {
                            warn!(piece = n, "a stored live message handle is unreadable");
                            continue;
                        };
                        while pieces.len() <= n {
                            pieces.push(Piece::default());
                        }
                        pieces[n].handle = Some(handle);
                    }
                }
                Err(e) => {
                    // Without the handles a second copy could appear; the answer still comes
                    // as a final message, so show nothing live this time.
                    warn!(error = %e, "cannot read the live messages of an earlier run");
                    return None;
                }
            }
        }
        let (draft, receiver) = watch::channel(Draft::default());
        let (stop, stopped) = watch::channel(false);
        let driver = Driver {
            adapter,
            store,
            redactor,
            settings,
            event_id,
            conversation: conversation.clone(),
            route: route.clone(),
            pieces,
            disabled: false,
        };
        let task = tokio::spawn(driver.run(receiver, stopped));
        Some(Self {
            live: Live {
                draft: Some(Arc::new(draft)),
            },
            stop,
            task,
        })
    }

    /// The handler's side.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    /// Stop updating (after the call in flight) and return the live messages by piece.
    pub async fn finish(self) -> BTreeMap<usize, LiveHandle> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(handles) => handles,
            Err(e) => {
                warn!(error = %e, "the live reply task failed");
                BTreeMap::new()
            }
        }
    }
}

struct Driver {
    adapter: Arc<dyn ChatAdapter>,
    store: Arc<dyn Store>,
    redactor: Redactor,
    settings: LiveSettings,
    event_id: EventId,
    conversation: ecdysis_chat::ConversationRef,
    route: serde_json::Value,
    pieces: Vec<Piece>,
    /// A call failed: nothing more is shown live; the final reply finishes what was started.
    disabled: bool,
}

impl Driver {
    async fn run(
        mut self,
        mut draft: watch::Receiver<Draft>,
        mut stopped: watch::Receiver<bool>,
    ) -> BTreeMap<usize, LiveHandle> {
        let mut last_call: Option<Instant> = None;
        while !self.disabled {
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                changed = draft.changed() => if changed.is_err() { break },
            }
            if let Some(last) = last_call {
                let next = last + self.settings.min_interval;
                if Instant::now() < next {
                    tokio::select! {
                        biased;
                        _ = stopped.wait_for(|stop| *stop) => break,
                        _ = tokio::time::sleep_until(next) => {}
                    }
                }
            }
            let current = draft.borrow_and_update().clone();
            if self.show(&current).await {
                last_call = Some(Instant::now());
            }
        }
        self.pieces
            .into_iter()
            .enumerate()
            .filter_map(|(n, piece)| Some((n, piece.handle?)))
            .collect()
    }

    fn message(&self, piece: usize) -> LiveMessage {
        LiveMessage {
            event_id: self.event_id.to_string(),
            idempotency_key: reply_key(self.event_id, piece),
            piece,
            conversation: self.conversation.clone(),
            route: self.route.clone(),
        }
    }

    /// Bring every piece up to `draft`; true when a platform call was made.
    async fn show(&mut self, draft: &Draft) -> bool {
        let text = self.redactor.redact_string(&draft.visible_text());
        let limit = self.adapter.limits().max_text_chars;
        let parts = if text.is_empty() {
            vec![String::new()]
        } else {
            split_text(&text, limit)
        };
        let last = parts.len() - 1;
        let mut called = false;
        for (n, part) in parts.into_iter().enumerate() {
            if self.disabled {
                break;
            }
            let view = LiveView {
                text: part,
                progress: if n == last {
                    draft.progress.clone()
                } else {
                    Vec::new()
                },
            };
            while self.pieces.len() <= n {
                self.pieces.push(Piece::default());
            }
            if view.is_empty() || view == self.pieces[n].shown {
                continue;
            }
            called = true;
            let message = self.message(n);
            let handle = self.pieces[n].handle.clone();
            let outcome = match &handle {
                None => timed(self.adapter.start_live(&message, &view))
                    .await
                    .map(Some),
                Some(handle) => {
                    timed(
                        self.adapter
                            .update_live(&message, handle, &self.pieces[n].shown, &view),
                    )
                    .await
                }
            };
            match outcome {
                Ok(Some(new)) => {
                    // Stored before the message is updated again.
                    if let Err(e) = self
                        .store
                        .save_live_message(self.event_id, n, &new.to_string())
                        .await
                    {
                        warn!(error = %e, "cannot store a live message; showing no more live text");
                        self.disabled = true;
                    }
                    self.pieces[n].handle = Some(new);
                    self.pieces[n].shown = view;
                }
                Ok(None) => self.pieces[n].shown = view,
                Err(e) => {
                    warn!(piece = n, error = %e, "the platform refused a live update; the answer comes as the final message");
                    self.disabled = true;
                }
            }
        }
        if called {
            debug!(event = %self.event_id, "live reply updated");
        }
        called
    }
}

async fn timed<T>(
    call: impl Future<Output = Result<T, DeliveryError>>,
) -> Result<T, DeliveryError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(DeliveryError::Retryable(format!(
                "no answer within {CALL_TIMEOUT:?}"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_joins_steps_and_forgets_restarted_text() {
        let (tx, rx) = watch::channel(Draft::default());
        let live = Live {
            draft: Some(Arc::new(tx)),
        };
        live.text("Let me ");
        live.text("look.");
        live.end_step();
        live.text("half an ans");
        live.restart_step();
        live.text("The answer.");
        assert_eq!(rx.borrow().text(), "Let me look.\n\nThe answer.");
        live.text(" The key is sk-12");
        assert_eq!(
            rx.borrow().visible_text(),
            "Let me look.\n\nThe answer. The key is"
        );
        live.text("34 ");
        assert!(rx.borrow().visible_text().ends_with("is sk-1234"));
        let id = live.progress("searching memory");
        live.progress_done(id);
        assert!(rx.borrow().progress[0].done);
        Live::off().text("nothing happens");
    }
}
