//! The terminal chat (`ecdysis chat`): lines from stdin become events of the conversation
//! `local:terminal`; answers print as they are written (tool lines on lines of their own), and
//! the final reply adds what is still missing.

use std::collections::{HashMap, HashSet};
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
}

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
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|_| stdout.flush())
            .map_err(|e| DeliveryError::Retryable(e.to_string()))
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
        let printed = self
            .printed
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&reply.idempotency_key));
        let mut out = std::io::stdout().lock();
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
        writeln!(out, "{text}").map_err(|e| DeliveryError::Retryable(e.to_string()))?;
        let _ = out.flush();
        if let Some(seq) = reply.route.get("seq").and_then(|s| s.as_u64())
            && let Ok(mut waiting) = self.waiting.lock()
        {
            waiting.remove(&seq);
        }
        self.answered.notify_waiters();
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
