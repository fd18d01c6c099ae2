//! The terminal chat (`ecdysis chat`): lines from stdin become events of the conversation
//! `local:terminal`; answers print as they are written (tool lines on lines of their own), and
//! the final reply adds what is still missing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Limits, LiveHandle,
    LiveMessage, LiveSettings, LiveView, Reply, SubmitError, UserRef,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::Notify;

/// The terminal's conversation.
pub fn conversation() -> ConversationRef {
    ConversationRef::new("local", "local", "terminal", None)
}

/// Prints replies to stdout and tracks which typed lines still wait for an answer.
pub struct TerminalAdapter {
    waiting: Mutex<HashSet<u64>>,
    answered: Notify,
    /// The text of each live answer printed so far, by reply key.
    printed: Mutex<HashMap<String, String>>,
    /// Where replies go: stdout, or (tests) a buffer.
    output: Mutex<Option<Output>>,
    /// The most recent idempotency keys delivered (oldest first): a reply delivered again
    /// prints nothing.
    delivered: Mutex<VecDeque<String>>,
}

/// Where the terminal's replies are written instead of stdout.
type Output = Box<dyn Write + Send>;

/// Idempotency keys remembered.
const REMEMBERED_KEYS: usize = 1024;

/// How often a live answer prints (as it arrives, in small batches).
const LIVE_INTERVAL: Duration = Duration::from_millis(20);

impl Default for TerminalAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalAdapter {
    pub fn new() -> Self {
        Self {
            waiting: Mutex::new(HashSet::new()),
            answered: Notify::new(),
            printed: Mutex::new(HashMap::new()),
            output: Mutex::new(None),
            delivered: Mutex::new(VecDeque::new()),
        }
    }

    /// Write replies to `output` instead of stdout.
    pub fn with_output(output: impl Write + Send + 'static) -> Self {
        let adapter = Self::new();
        if let Ok(mut slot) = adapter.output.lock() {
            *slot = Some(Box::new(output));
        }
        adapter
    }

    /// Write `text` to the output and flush it.
    fn write_out(&self, text: &str) -> Result<(), DeliveryError> {
        let written = match self.output.lock() {
            Ok(mut slot) => match slot.as_mut() {
                Some(out) => out.write_all(text.as_bytes()).and_then(|()| out.flush()),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes()).and_then(|()| out.flush())
                }
            },
            Err(_) => Err(std::io::Error::other(
                "the terminal output lock is poisoned",
            )),
        };
        written.map_err(|e| DeliveryError::Retryable(e.to_string()))
    }

    /// Whether `key` was delivered already.
    fn was_delivered(&self, key: &str) -> bool {
        self.delivered
            .lock()
            .is_ok_and(|keys| keys.iter().any(|k| k == key))
    }

    fn remember_delivered(&self, key: &str) {
        if let Ok(mut keys) = self.delivered.lock() {
            if keys.len() == REMEMBERED_KEYS {
                keys.pop_front();
            }
            keys.push_back(key.to_string());
        }
    }

    /// Print what `view` adds to `shown`; a text that does not continue what was printed starts
    /// on a new line.
    fn print_live(
        &self,
        key: &str,
        shown: &LiveView,
        view: &LiveView,
    ) -> Result<(), DeliveryError> {
        let Ok(mut printed) = self.printed.lock() else {
            return Ok(());
        };
        let so_far = printed.entry(key.to_string()).or_default();
        let mut out = String::new();
        for line in view
            .progress
            .iter()
            .filter(|p| !shown.progress.iter().any(|s| s.id == p.id))
        {
            out.push_str(&format!("\n  … {}\n", line.text));
        }
        match view.text.strip_prefix(so_far.as_str()) {
            Some(added) => out.push_str(added),
            None => {
                out.push('\n');
                out.push_str(&view.text);
            }
        }
        *so_far = view.text.clone();
        drop(printed);
        self.write_out(&out)
    }

    /// The typed line `reply` answers no longer waits.
    fn mark_answered(&self, reply: &Reply) {
        if let Some(seq) = reply.route.get("seq").and_then(|s| s.as_u64())
            && let Ok(mut waiting) = self.waiting.lock()
        {
            waiting.remove(&seq);
        }
        self.answered.notify_waiters();
    }

    fn waiting_count(&self) -> usize {
        self.waiting.lock().map(|w| w.len()).unwrap_or(0)
    }
}

#[async_trait]
impl ChatAdapter for TerminalAdapter {
    fn platform(&self) -> &str {
        "local"
    }

    fn limits(&self) -> Limits {
        Limits {
            max_text_chars: 1_000_000,
            max_file_bytes: u64::MAX,
        }
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        if self.was_delivered(&reply.idempotency_key) {
            self.mark_answered(reply);
            return Ok(Delivered::default());
        }
        let printed = self
            .printed
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&reply.idempotency_key));
        // A live answer printed so far is completed, not printed again.
        let mut text = match (&reply.live, printed) {
            (Some(_), Some(printed)) => match reply.text.strip_prefix(printed.as_str()) {
                Some(rest) => rest.to_string(),
                None => format!("\n{}", reply.text),
            },
            _ => reply.text.clone(),
        };
        for file in &reply.attachments {
            text.push_str(&format!(
                "\n[file: {} ({}, {} bytes)]",
                file.name,
                file.mime,
                file.bytes.len()
            ));
        }
        if !reply.buttons.is_empty() {
            let labels: Vec<&str> = reply.buttons.iter().map(|b| b.label.as_str()).collect();
            text.push_str(&format!("\n[buttons: {}]", labels.join(" | ")));
        }
        text.push('\n');
        self.write_out(&text)?;
        self.remember_delivered(&reply.idempotency_key);
        self.mark_answered(reply);
        Ok(Delivered::default())
    }

    fn live(&self, _route: &serde_json::Value) -> Option<LiveSettings> {
        Some(LiveSettings {
            min_interval: LIVE_INTERVAL,
        })
    }

    async fn start_live(
        &self,
        message: &LiveMessage,
        view: &LiveView,
    ) -> Result<LiveHandle, DeliveryError> {
        self.print_live(&message.idempotency_key, &LiveView::default(), view)?;
        Ok(serde_json::json!({ "key": message.idempotency_key }))
    }

    async fn update_live(
        &self,
        message: &LiveMessage,
        _handle: &LiveHandle,
        shown: &LiveView,
        view: &LiveView,
    ) -> Result<Option<LiveHandle>, DeliveryError> {
        self.print_live(&message.idempotency_key, shown, view)?;
        Ok(None)
    }
}

/// Read lines until end of input, submit each, and wait (up to `wait`) for the last answers.
pub async fn run(
    sink: Arc<dyn EventSink>,
    adapter: Arc<TerminalAdapter>,
    input: impl AsyncBufRead + Unpin,
    wait: Duration,
) -> std::io::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        println!("ecdysis chat — type /help for commands, Ctrl-D to quit.");
    }
    let user = UserRef {
        id: std::env::var("USER").unwrap_or_else(|_| "local".into()),
        name: None,
    };
    let session = std::process::id();
    let mut lines = input.lines();
    let mut seq = 0u64;
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        seq += 1;
        let mut event = Event::from_text(
            format!("terminal-{session}-{}-{seq}", now_ns()),
            conversation(),
            user.clone(),
            line,
        );
        event.route = serde_json::json!({ "seq": seq });
        if let Ok(mut waiting) = adapter.waiting.lock() {
            waiting.insert(seq);
        }
        match sink.submit(event).await {
            Ok(_) => {}
            Err(SubmitError::Invalid(why)) | Err(SubmitError::Busy(why)) => {
                eprintln!("not sent: {why}");
                forget(&adapter, seq);
            }
            Err(SubmitError::Internal(why)) => {
                eprintln!("not sent, storage failed: {why}");
                forget(&adapter, seq);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    while adapter.waiting_count() > 0 {
        let answered = adapter.answered.notified();
        if adapter.waiting_count() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, answered).await.is_err() {
            eprintln!(
                "{} message(s) still wait for an answer; they will be answered on the next start.",
                adapter.waiting_count()
            );
            break;
        }
    }
    Ok(())
}

fn forget(adapter: &TerminalAdapter, seq: u64) {
    if let Ok(mut waiting) = adapter.waiting.lock() {
        waiting.remove(&seq);
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
