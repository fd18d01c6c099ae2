//! The terminal chat (`ecdysis chat`): lines from stdin become events of the conversation
//! `local:terminal`; replies are printed as they are delivered.

use std::collections::{HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Limits, Reply,
    SubmitError, UserRef,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::Notify;

/// The terminal's conversation.
pub fn conversation() -> ConversationRef {
    ConversationRef::new("local", "local", "terminal", None)
}

/// Where the terminal's replies are written (stdout, or a buffer in tests).
type Output = Box<dyn Write + Send>;

/// Idempotency keys remembered, so a reply delivered again is not printed twice.
const REMEMBERED_KEYS: usize = 1024;

/// Prints replies to stdout and tracks which typed lines still wait for an answer.
pub struct TerminalAdapter {
    waiting: Mutex<HashSet<u64>>,
    answered: Notify,
    output: Mutex<Option<Output>>,
    /// The most recent idempotency keys printed (oldest first).
    printed: Mutex<VecDeque<String>>,
}

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
            output: Mutex::new(None),
            printed: Mutex::new(VecDeque::new()),
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

    /// Whether `key` was printed already; remembers it otherwise.
    fn seen(&self, key: &str) -> bool {
        let Ok(mut printed) = self.printed.lock() else {
            return false;
        };
        if printed.iter().any(|k| k == key) {
            return true;
        }
        if printed.len() == REMEMBERED_KEYS {
            printed.pop_front();
        }
        printed.push_back(key.to_string());
        false
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
        if self.seen(&reply.idempotency_key) {
            self.mark_answered(reply);
            return Ok(Delivered::default());
        }
        let mut text = reply.text.clone();
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
        let written = match self.output.lock() {
            Ok(mut slot) => match slot.as_mut() {
                Some(out) => writeln!(out, "{text}").and_then(|()| out.flush()),
                None => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{text}").and_then(|()| out.flush())
                }
            },
            Err(_) => Err(std::io::Error::other(
                "the terminal output lock is poisoned",
            )),
        };
        if let Err(e) = written {
            // Not printed: forget the key so a retry prints it.
            if let Ok(mut printed) = self.printed.lock() {
                printed.retain(|k| k != &reply.idempotency_key);
            }
            return Err(DeliveryError::Retryable(e.to_string()));
        }
        self.mark_answered(reply);
        Ok(Delivered::default())
    }
}

impl TerminalAdapter {
    /// The typed line `reply` answers no longer waits.
    fn mark_answered(&self, reply: &Reply) {
        if let Some(seq) = reply.route.get("seq").and_then(|s| s.as_u64())
            && let Ok(mut waiting) = self.waiting.lock()
        {
            waiting.remove(&seq);
        }
        self.answered.notify_waiters();
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
