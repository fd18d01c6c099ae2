//! Answers shown while they are written. `native`: Slack's streaming messages in the thread
//! (`chat.startStream` → `chat.appendStream` with Markdown text and a task line per tool →
//! `chat.stopStream`); `edit`: a message posted at the first text and updated with
//! `chat.update`. The final reply finishes the same message: the stream stops with the rest of
//! the text, or the message is updated to the answer (after a restart, or when the text shown
//! is not a beginning of the answer). A message Slack no longer lets us change is replaced by a
//! new post.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ecdysis_chat::{
    DeliveryError, LiveHandle, LiveMessage, LiveSettings, LiveView, Progress, Reply,
};
use serde::{Deserialize, Serialize};

use crate::api::{PostMessage, StartStream};
use crate::deliver::{Earlier, MAX_TEXT_CHARS, blocks};
use crate::route::{Route, Via};
use crate::{Slack, Streaming, mrkdwn};

/// The shortest time between two appends to a native stream.
const NATIVE_INTERVAL: Duration = Duration::from_millis(400);
/// The shortest time between two `chat.update`s of one message ("about once a second").
const EDIT_INTERVAL: Duration = Duration::from_millis(1_000);
/// Errors after which a message cannot be changed any more: the answer is posted anew.
const GONE: &[&str] = &[
    "message_not_found",
    "cant_update_message",
    "edit_window_closed",
    "channel_not_found",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Native,
    Edit,
}

/// What the core stores for a live message.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Handle {
    mode: Mode,
    channel: String,
    ts: String,
}

impl Handle {
    fn to_value(&self) -> LiveHandle {
        serde_json::to_value(self).unwrap_or(LiveHandle::Null)
    }
}

/// The native streams this process has open (by `ts`), with the Markdown text appended so far.
/// A stream of an earlier process is not in here: it is stopped and edited instead.
#[derive(Default)]
pub(crate) struct Streams {
    open: Mutex<HashMap<String, String>>,
}

impl Streams {
    const MAX: usize = 10_000;

    fn sent(&self, ts: &str) -> Option<String> {
        self.open.lock().ok()?.get(ts).cloned()
    }

    fn set(&self, ts: &str, text: &str) {
        if let Ok(mut open) = self.open.lock() {
            if open.len() >= Self::MAX && !open.contains_key(ts) {
                open.clear();
            }
            open.insert(ts.to_string(), text.to_string());
        }
    }

    fn close(&self, ts: &str) -> Option<String> {
        self.open.lock().ok()?.remove(ts)
    }
}

/// Task lines that are new or changed since `shown`.
fn task_chunks(shown: &[Progress], view: &[Progress]) -> Vec<serde_json::Value> {
    view.iter()
        .filter(|p| !shown.contains(p))
        .map(|p| {
            let title: String = p.text.chars().take(250).collect();
            let status = if p.done { "complete" } else { "in_progress" };
            serde_json::json!({
                "type": "task_update",
                "id": format!("tool_{}", p.id),
                "title": title,
                "status": status,
            })
        })
        .collect()
}

/// A chunk of Markdown text of a streamed answer.
fn markdown(text: &str) -> serde_json::Value {
    serde_json::json!({ "type": "markdown_text", "text": text })
}

impl Slack {
    /// How replies to this route show while written, per `ECDYSIS_SLACK_STREAMING`.
    pub(crate) fn live_settings(&self, route: &serde_json::Value) -> Option<LiveSettings> {
        Route::from_value(route)?;
        let min_interval = match self.inner.settings.streaming {
            Streaming::Off => return None,
            Streaming::Native if self.native(route) => NATIVE_INTERVAL,
            Streaming::Native | Streaming::Edit => EDIT_INTERVAL,
        };
        Some(LiveSettings { min_interval })
    }

    /// Native streams live in threads of messages (not a DM's root, not a slash command).
    fn native(&self, route: &serde_json::Value) -> bool {
        self.inner.settings.streaming == Streaming::Native
            && Route::from_value(route)
                .is_some_and(|r| r.via == Via::Message && r.thread_ts.is_some())
    }

    pub(crate) async fn start_live_message(
        &self,
        message: &LiveMessage,
        view: &LiveView,
    ) -> Result<LiveHandle, DeliveryError> {
        let route = Route::from_value(&message.route)
            .ok_or_else(|| DeliveryError::Permanent("the reply has no Slack route".into()))?;
        let token = self
            .token(&route.team)
            .await
            .map_err(crate::deliver::retryable)?;
        let api = &self.inner.api;
        // An event from before this process started may have left its message already (a
        // crash before the handle was stored): that message is used again. A stream of the
        // earlier run is not in `streams`, so the update stops it and edits it from then on.
        if route.received_ms < self.inner.delivery.started_ms
            && let Some(earlier) = self
                .earlier_reply(&token, &route, &message.idempotency_key)
                .await
        {
            let (mode, ts) = match earlier {
                Earlier::Posted(ts) => (Mode::Edit, ts),
                Earlier::UnfinishedStream(ts) => (Mode::Native, ts),
            };
            let handle = Handle {
                mode,
                channel: route.channel.clone(),
                ts,
            }
            .to_value();
            let updated = self
                .update_live_message(message, &handle, &LiveView::default(), view)
                .await?;
            return Ok(updated.unwrap_or(handle));
        }
        if self.native(&message.route)
            && let Some(thread_ts) = route.thread_ts.as_deref()
        {
            let mut chunks = Vec::new();
            if !view.text.is_empty() {
                chunks.push(markdown(&view.text));
            }
            chunks.extend(task_chunks(&[], &view.progress));
            let ts = api
                .start_stream(
                    &token,
                    StartStream {
                        channel: &route.channel,
                        thread_ts,
                        team: &route.team,
                        user: route.user.as_deref(),
                        chunks,
                    },
                )
                .await?;
            self.inner.streams.set(&ts, &view.text);
            return Ok(Handle {
                mode: Mode::Native,
                channel: route.channel,
                ts,
            }
            .to_value());
        }
        let text = mrkdwn::from_markdown(&view.render(MAX_TEXT_CHARS));
        let ts = api
            .post_message(
                &token,
                PostMessage {
                    channel: &route.channel,
                    thread_ts: route.thread_ts.as_deref(),
                    text: &text,
                    blocks: None,
                    idempotency_key: &message.idempotency_key,
                },
            )
            .await?;
        Ok(Handle {
            mode: Mode::Edit,
            channel: route.channel,
            ts,
        }
        .to_value())
    }

    pub(crate) async fn update_live_message(
        &self,
        message: &LiveMessage,
        handle: &LiveHandle,
        shown: &LiveView,
        view: &LiveView,
    ) -> Result<Option<LiveHandle>, DeliveryError> {
        let handle: Handle = serde_json::from_value(handle.clone())
            .map_err(|e| DeliveryError::Permanent(format!("unreadable live handle: {e}")))?;
        let route = Route::from_value(&message.route)
            .ok_or_else(|| DeliveryError::Permanent("the reply has no Slack route".into()))?;
        let token = self
            .token(&route.team)
            .await
            .map_err(crate::deliver::retryable)?;
        let api = &self.inner.api;
        if handle.mode == Mode::Native {
            if let Some(sent) = self.inner.streams.sent(&handle.ts)
                && let Some(added) = view.text.strip_prefix(sent.as_str())
            {
                let mut chunks = Vec::new();
                if !added.is_empty() {
                    chunks.push(markdown(added));
                }
                chunks.extend(task_chunks(&shown.progress, &view.progress));
                if chunks.is_empty() {
                    return Ok(None);
                }
                api.append_stream(&token, &handle.channel, &handle.ts, chunks)
                    .await?;
                self.inner.streams.set(&handle.ts, &view.text);
                return Ok(None);
            }
            // A stream of an earlier run, or text that no longer continues what was streamed:
            // stop the stream (if it still runs) and edit the message from now on.
            self.inner.streams.close(&handle.ts);
            if let Err(e) = api
                .stop_stream(
                    &token,
                    &handle.channel,
                    &handle.ts,
                    None,
                    &message.idempotency_key,
                )
                .await
            {
                tracing::debug!(error = %e, "stopping a stream before editing it");
            }
        }
        let text = mrkdwn::from_markdown(&view.render(MAX_TEXT_CHARS));
        api.update_message(
            &token,
            &handle.ts,
            PostMessage {
                channel: &handle.channel,
                thread_ts: None,
                text: &text,
                blocks: None,
                idempotency_key: &message.idempotency_key,
            },
        )
        .await?;
        Ok((handle.mode == Mode::Native).then(|| {
            Handle {
                mode: Mode::Edit,
                ..handle
            }
            .to_value()
        }))
    }

    /// Finish a stream an earlier run started but never recorded, with the reply: its `ts`,
    /// or `None` when it cannot be changed any more and the reply must be posted anew.
    pub(crate) async fn finish_earlier_stream(
        &self,
        reply: &Reply,
        route: &Route,
        ts: &str,
    ) -> Result<Option<String>, DeliveryError> {
        let handle = Handle {
            mode: Mode::Native,
            channel: route.channel.clone(),
            ts: ts.to_string(),
        };
        self.finish_live(reply, route, &handle.to_value()).await
    }

    /// Finish the live message of a reply: its `ts` when the message now shows the reply (or
    /// was removed, for a reply without text), `None` when it cannot be changed any more and
    /// the reply must be posted anew.
    pub(crate) async fn finish_live(
        &self,
        reply: &Reply,
        route: &Route,
        handle: &LiveHandle,
    ) -> Result<Option<String>, DeliveryError> {
        let Ok(handle) = serde_json::from_value::<Handle>(handle.clone()) else {
            tracing::warn!("unreadable live handle; posting the reply anew");
            return Ok(None);
        };
        let token = self
            .token(&route.team)
            .await
            .map_err(crate::deliver::retryable)?;
        let api = &self.inner.api;
        let key = &reply.idempotency_key;
        let sent = self.inner.streams.close(&handle.ts);
        if reply.text.trim().is_empty() && reply.buttons.is_empty() {
            // Nothing of the answer belongs in this message: remove it.
            if handle.mode == Mode::Native {
                let _ = api
                    .stop_stream(&token, &handle.channel, &handle.ts, None, key)
                    .await;
            }
            return match api
                .delete_message(&token, &handle.channel, &handle.ts)
                .await
            {
                Ok(()) => Ok(Some(handle.ts)),
                Err(e) if e.is_code("message_not_found") => Ok(Some(handle.ts)),
                Err(e) => Err(e.into()),
            };
        }
        if handle.mode == Mode::Native {
            let rest = sent
                .as_deref()
                .filter(|_| reply.buttons.is_empty())
                .and_then(|sent| reply.text.strip_prefix(sent));
            match rest {
                // The stream showed the beginning of the answer: stop it with the rest.
                Some(rest) => {
                    let last = (!rest.is_empty()).then_some(rest);
                    match api
                        .stop_stream(&token, &handle.channel, &handle.ts, last, key)
                        .await
                    {
                        Ok(()) => return Ok(Some(handle.ts)),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot stop the stream; editing it instead")
                        }
                    }
                }
                None => {
                    if let Err(e) = api
                        .stop_stream(&token, &handle.channel, &handle.ts, None, key)
                        .await
                    {
                        tracing::debug!(error = %e, "stopping a stream before editing it");
                    }
                }
            }
        }
        let text = mrkdwn::from_markdown(&reply.text);
        match api
            .update_message(
                &token,
                &handle.ts,
                PostMessage {
                    channel: &handle.channel,
                    thread_ts: None,
                    text: &text,
                    blocks: blocks(&text, &reply.buttons),
                    idempotency_key: key,
                },
            )
            .await
        {
            Ok(()) => Ok(Some(handle.ts)),
            Err(e) if GONE.iter().any(|code| e.is_code(code)) => {
                tracing::warn!(error = %e, "the live message cannot be changed; posting the answer anew");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_or_changed_task_lines_are_sent() {
        let running = Progress {
            id: 1,
            text: "searching memory".into(),
            done: false,
        };
        let done = Progress {
            done: true,
            ..running.clone()
        };
        assert_eq!(task_chunks(&[], std::slice::from_ref(&running)).len(), 1);
        assert!(
            task_chunks(
                std::slice::from_ref(&running),
                std::slice::from_ref(&running)
            )
            .is_empty()
        );
        let chunks = task_chunks(&[running], std::slice::from_ref(&done));
        let json = serde_json::to_value(&chunks).unwrap();
        assert_eq!(json[0]["type"], "task_update");
        assert_eq!(json[0]["id"], "tool_1");
        assert_eq!(json[0]["status"], "complete");
    }
}
