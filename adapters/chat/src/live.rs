//! Live replies: an answer shown while it is written (text so far, plus a line for each tool
//! that runs), then finished in place by the final [`crate::Reply`].
//!
//! The core drives a live message through [`crate::ChatAdapter::start_live`] and
//! [`crate::ChatAdapter::update_live`], no more often than the adapter's [`LiveSettings`] allow.
//! The [`LiveHandle`] the adapter returns names the platform message; the core stores it before
//! the first update, so after a crash or a retry the same message is finished or replaced (the
//! final reply carries it in [`crate::Reply::live`]) and never posted a second time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConversationRef;

/// How an adapter shows replies while they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSettings {
    /// The shortest time between two updates of one live message (the platform's rate limit;
    /// the first text is shown at once).
    pub min_interval: Duration,
}

/// The platform's handle of a live message (its id and whatever the adapter needs to finish
/// it). Opaque to the core, which stores it as JSON.
pub type LiveHandle = serde_json::Value;

/// One line of tool progress under a live reply ("running `pytest` in the sandbox").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Stable within one answer (1, 2, …), so an adapter can update a line in place.
    pub id: u32,
    pub text: String,
    /// The tool finished.
    pub done: bool,
}

/// One live message: a piece of an answer being written.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveMessage {
    /// The core's id of the event this answers (the web chat's `event_id`).
    pub event_id: String,
    /// The idempotency key of the reply that finishes this message.
    pub idempotency_key: String,
    /// Which piece of a long answer this message holds (0 first): later pieces are messages
    /// of their own, as the final reply is split by [`crate::split_text`].
    pub piece: usize,
    pub conversation: ConversationRef,
    /// Copied from the event this answers.
    pub route: serde_json::Value,
}

/// What a live message shows: this piece's text so far and, on the last piece, the tool lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveView {
    pub text: String,
    pub progress: Vec<Progress>,
}

impl LiveView {
    /// Nothing to show yet.
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty() && self.progress.is_empty()
    }

    /// The text followed by the tool lines (unfinished ones with a trailing `…`), for
    /// platforms that show everything as one message text. `max_chars` bounds the result:
    /// tool lines are dropped (oldest first) before the text is cut.
    pub fn render(&self, max_chars: usize) -> String {
        let mut lines: Vec<String> = self
            .progress
            .iter()
            .map(|p| {
                if p.done {
                    format!("_✓ {}_", p.text)
                } else {
                    format!("_⏳ {}…_", p.text)
                }
            })
            .collect();
        let text = self.text.trim_end();
        loop {
            let mut out = text.to_string();
            if !lines.is_empty() {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(&lines.join("\n"));
            }
            if out.chars().count() <= max_chars {
                return out;
            }
            if lines.is_empty() {
                return out.chars().take(max_chars).collect();
            }
            lines.remove(0);
        }
    }

    /// The text added since `shown`, when this view only appends to it.
    pub fn appended_since<'a>(&'a self, shown: &LiveView) -> Option<&'a str> {
        self.text.strip_prefix(shown.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: u32, text: &str, done: bool) -> Progress {
        Progress {
            id,
            text: text.into(),
            done,
        }
    }

    #[test]
    fn render_puts_tool_lines_under_the_text_and_fits() {
        let view = LiveView {
            text: "Checking.".into(),
            progress: vec![
                line(1, "searching memory", true),
                line(2, "running `ls` in the sandbox", false),
            ],
        };
        assert_eq!(
            view.render(1000),
            "Checking.\n\n_✓ searching memory_\n_⏳ running `ls` in the sandbox…_"
        );
        let short = view.render(45);
        assert!(short.chars().count() <= 45, "{short}");
        assert!(short.starts_with("Checking."));
        assert!(
            short.contains("running `ls`"),
            "the newest line stays: {short}"
        );
        assert_eq!(view.render(5), "Check");
    }

    #[test]
    fn appended_text_is_found() {
        let shown = LiveView {
            text: "Hello".into(),
            progress: vec![],
        };
        let now = LiveView {
            text: "Hello, world".into(),
            progress: vec![],
        };
        assert_eq!(now.appended_since(&shown), Some(", world"));
        assert_eq!(shown.appended_since(&now), None);
        assert!(LiveView::default().is_empty());
    }
}
