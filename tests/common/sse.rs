//! A reader of server-sent events for tests: the web chat's live updates.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One event: its name and data parsed as JSON.
#[derive(Clone, Debug)]
pub struct Received {
    pub event: String,
    pub data: Value,
    pub at: Instant,
}

/// An open `text/event-stream` response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
    pending: Vec<Received>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200, "events stream refused");
        Self {
            response,
            buffer: String::new(),
            pending: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ends or `timeout` passes.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.pending.is_empty() {
                return Some(self.pending.remove(0));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if data.is_empty() {
                    continue;
                }
                self.pending.push(Received {
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                    at: Instant::now(),
                });
            }
        }
    }

    /// Events until one matches `until` (included), within `timeout`; panics otherwise.
    pub async fn until(
        &mut self,
        timeout: Duration,
        until: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.next(left).await else {
                panic!("the awaited event did not come; got:\n{seen:#?}");
            };
            let done = until(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}
