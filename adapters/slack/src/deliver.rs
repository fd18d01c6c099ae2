//! Replies into Slack: text as mrkdwn (`chat.postMessage` into the event's thread, or a slash
//! command's `response_url`), buttons as Block Kit, files through the files v2 upload, and the
//! 👀 reaction while the agent works.
//!
//! Posting twice after a crash: every message carries the reply's idempotency key in its
//! `metadata`. When a reply might have been posted before (its event arrived before this process
//! started, or an earlier attempt in this process failed after sending), the thread is read
//! first (`conversations.replies` / `conversations.history` with metadata) and a message with
//! the same key counts as delivered; a stream the bot started there but never finished (it
//! carries no key until stopped) is finished with the reply. Fresh replies skip that lookup, so
//! the common path costs one call. Files and `response_url` posts have no such marker and may
//! repeat after a crash between upload and the outbox's "sent" mark.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::{
    Button, ButtonStyle, ChatAdapter, ConversationRef, Delivered, DeliveryError, FetchError,
    Limits, LiveHandle, LiveMessage, LiveSettings, LiveView, RemoteFile, Reply,
};

use serde_json::json;

use crate::api::{CallError, PostMessage};
use crate::route::{Route, Via};
use crate::{Slack, SlackError, mrkdwn};

/// Characters of text in one reply: Slack shows up to 4,000 before folding a message and a
/// section block holds 3,000, so the core splits longer answers at this size.
pub const MAX_TEXT_CHARS: usize = 3_900;
/// Slack's limit for one uploaded file.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// The text of one section block.
const SECTION_CHARS: usize = 3_000;

/// Which replies may have been attempted already, and since when this process runs.
pub(crate) struct Bookkeeping {
    pub(crate) started_ms: i64,
    attempted: Mutex<HashSet<String>>,
}

impl Default for Bookkeeping {
    fn default() -> Self {
        Self {
            started_ms: crate::now_ms(),
            attempted: Mutex::new(HashSet::new()),
        }
    }
}

impl Bookkeeping {
    const MAX_KEYS: usize = 10_000;

    /// Record an attempt; true when the key was attempted before in this process.
    fn begin(&self, key: &str) -> bool {
        let Ok(mut keys) = self.attempted.lock() else {
            return true;
        };
        if keys.len() >= Self::MAX_KEYS {
            keys.clear();
        }
        !keys.insert(key.to_string())
    }
}

pub(crate) fn retryable(e: SlackError) -> DeliveryError {
    match e {
        SlackError::NoToken(_) | SlackError::Config { .. } => {
            DeliveryError::Permanent(e.to_string())
        }
        other => DeliveryError::Retryable(other.to_string()),
    }
}

impl From<CallError> for DeliveryError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Retryable(m) => DeliveryError::Retryable(m),
            CallError::Permanent(m) => DeliveryError::Permanent(m),
            // Slack's rate tiers allow about one message a second per channel: without a
            // `Retry-After`, wait that long.
            CallError::RateLimited(detail, after) => DeliveryError::RateLimited {
                retry_after: after.unwrap_or(std::time::Duration::from_secs(1)),
                detail,
            },
        }
    }
}

#[async_trait]
impl ChatAdapter for Slack {
    fn platform(&self) -> &str {
        "slack"
    }

    fn limits(&self) -> Limits {
        Limits {
            max_text_chars: MAX_TEXT_CHARS,
            max_file_bytes: MAX_FILE_BYTES,
        }
    }

    fn health(&self) -> Option<serde_json::Value> {
        Some(self.inner.health.to_json())
    }

    async fn working(&self, _conversation: &ConversationRef, route: &serde_json::Value) {
        let Some(route) = Route::from_value(route) else {
            return;
        };
        let Some(ts) = &route.message_ts else {
            return;
        };
        let token = match self.token(&route.team).await {
            Ok(token) => token,
            Err(e) => {
                tracing::debug!(error = %e, "no token for the 👀 reaction");
                return;
            }
        };
        if let Err(e) = self
            .inner
            .api
            .add_reaction(&token, &route.channel, ts, "eyes")
            .await
            && !e.is_code("already_reacted")
        {
            tracing::debug!(error = %e, "cannot add the 👀 reaction");
        }
    }

    async fn fetch_file(
        &self,
        conversation: &ConversationRef,
        file: &RemoteFile,
    ) -> Result<Bytes, FetchError> {
        let token = self
            .token(&conversation.workspace)
            .await
            .map_err(|e| FetchError::Permanent(e.to_string()))?;
        let api_host = self.inner.api.host();
        let limits = crate::files::Limits {
            max_bytes: self.inner.settings.max_download_bytes,
            api_host: api_host.as_deref(),
        };
        crate::files::fetch(&self.inner.http, &token, file, &limits).await
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        let route = Route::from_value(&reply.route).ok_or_else(|| {
            DeliveryError::Permanent("the reply has no Slack route (channel, thread)".into())
        })?;
        // A key seen before in this process (failed, or delivered and asked for again) is
        // looked up in the thread before anything is posted.
        let again = self.inner.delivery.begin(&reply.idempotency_key);
        self.deliver_once(reply, &route, again).await
    }

    fn live(&self, route: &serde_json::Value) -> Option<LiveSettings> {
        self.live_settings(route)
    }

    async fn start_live(
        &self,
        message: &LiveMessage,
        view: &LiveView,
    ) -> Result<LiveHandle, DeliveryError> {
        self.start_live_message(message, view).await
    }

    async fn update_live(
        &self,
        message: &LiveMessage,
        handle: &LiveHandle,
        shown: &LiveView,
        view: &LiveView,
    ) -> Result<Option<LiveHandle>, DeliveryError> {
        self.update_live_message(message, handle, shown, view).await
    }

    /// A message posted later into the channel or thread of `route`: by `chat.postMessage`
    /// (a slash command's `response_url` expires), without the 👀 reaction.
    fn later_route(&self, route: &serde_json::Value, now_ms: i64) -> serde_json::Value {
        let Some(mut route) = Route::from_value(route) else {
            return route.clone();
        };
        route.via = Via::Message;
        route.response_url = None;
        route.message_ts = None;
        route.received_ms = now_ms;
        route.to_value()
    }

    async fn user_timezone(&self, user_id: &str, route: &serde_json::Value) -> Option<String> {
        let team = Route::from_value(route)?.team;
        if let Some(cached) = self.inner.timezones.get(&team, user_id) {
            return cached;
        }
        let token = self.token(&team).await.ok()?;
        match self.inner.api.user_timezone(&token, user_id).await {
            Ok(tz) => {
                self.inner.timezones.put(&team, user_id, tz.clone());
                tz
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the user's time zone");
                None
            }
        }
    }
}

impl Slack {
    async fn deliver_once(
        &self,
        reply: &Reply,
        route: &Route,
        attempted_before: bool,
    ) -> Result<Delivered, DeliveryError> {
        let text = mrkdwn::from_markdown(&reply.text);
        let mut has_text = !text.trim().is_empty() || !reply.buttons.is_empty();
        let mut message_id = None;
        // The answer was shown while written: that message becomes the reply.
        if let Some(live) = &reply.live
            && let Some(ts) = self.finish_live(reply, route, live).await?
        {
            message_id = Some(ts);
            has_text = false;
        }
        if has_text {
            let via_response_url = route.via == Via::ResponseUrl && route.response_url.is_some();
            let posted = if via_response_url {
                self.post_response(route, &text, &reply.buttons).await?
            } else {
                false
            };
            if !posted {
                let token = self.token(&route.team).await.map_err(retryable)?;
                let maybe_posted =
                    attempted_before || route.received_ms < self.inner.delivery.started_ms;
                let earlier = if maybe_posted {
                    self.earlier_reply(&token, route, &reply.idempotency_key)
                        .await
                } else {
                    None
                };
                let reused = match earlier {
                    Some(Earlier::Posted(ts)) => {
                        tracing::info!(key = %reply.idempotency_key, "reply was posted before; not posting again");
                        Some(ts)
                    }
                    Some(Earlier::UnfinishedStream(ts)) => {
                        tracing::info!(key = %reply.idempotency_key, "finishing the stream an earlier run started");
                        self.finish_earlier_stream(reply, route, &ts).await?
                    }
                    None => None,
                };
                message_id = Some(match reused {
                    Some(ts) => ts,
                    None => {
                        self.inner
                            .api
                            .post_message(
                                &token,
                                PostMessage {
                                    channel: &route.channel,
                                    thread_ts: route.thread_ts.as_deref(),
                                    text: &text,
                                    blocks: blocks(&text, &reply.buttons),
                                    idempotency_key: &reply.idempotency_key,
                                },
                            )
                            .await?
                    }
                });
            }
        }
        if !reply.attachments.is_empty() {
            let token = self.token(&route.team).await.map_err(retryable)?;
            for file in &reply.attachments {
                let id = self
                    .inner
                    .api
                    .upload_file(&token, &route.channel, route.thread_ts.as_deref(), file)
                    .await?;
                message_id.get_or_insert(id);
            }
        }
        Ok(Delivered {
            platform_message_id: message_id,
        })
    }

    /// Post through a slash command's `response_url`; false when it is gone (expired or
    /// used up), so the caller posts into the channel instead.
    async fn post_response(
        &self,
        route: &Route,
        text: &str,
        buttons: &[Button],
    ) -> Result<bool, DeliveryError> {
        let Some(url) = &route.response_url else {
            return Ok(false);
        };
        let mut body = serde_json::json!({
            "response_type": "in_channel",
            "text": text,
        });
        if let Some(blocks) = blocks(text, buttons) {
            body["blocks"] = serde_json::to_value(blocks).unwrap_or_default();
        }
        let response = self
            .inner
            .http
            .post(url.as_str())
            .timeout(std::time::Duration::from_secs(10))
            .json(&body)
            .send()
            .await
            .map_err(|e| DeliveryError::Retryable(format!("response_url: {}", e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(DeliveryError::Retryable(format!(
                "response_url: HTTP {status}"
            )));
        }
        tracing::info!(%status, "the command's response_url is gone; posting into the channel");
        Ok(false)
    }

    /// What an earlier run of this reply left in the conversation, if anything: a message
    /// with the reply's key, or a stream the bot started and never finished (the process died
    /// between `chat.startStream` and storing the stream's `ts`, so the message carries no key
    /// yet). Errors count as "nothing": better a rare duplicate than a lost answer.
    pub(crate) async fn earlier_reply(
        &self,
        token: &str,
        route: &Route,
        key: &str,
    ) -> Option<Earlier> {
        let api = &self.inner.api;
        let messages = match api
            .recent_messages(
                token,
                &route.channel,
                route.thread_ts.as_deref(),
                // Without a thread, only messages since the triggering one can be ours.
                route.message_ts.as_deref(),
            )
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for an earlier post; posting");
                return None;
            }
        };
        if let Some(posted) = messages.iter().find(|m| m.reply_key() == Some(key)) {
            return Some(Earlier::Posted(posted.ts.clone()));
        }
        // Streams live in threads only, after the message that asked.
        let (Some(_), Some(asked)) = (&route.thread_ts, &route.message_ts) else {
            return None;
        };
        let mut unmarked: Vec<_> = messages
            .iter()
            .filter(|m| m.reply_key().is_none() && m.files.is_empty())
            .filter(|m| ts_order(&m.ts) > ts_order(asked))
            .collect();
        if unmarked.is_empty() {
            return None;
        }
        let bot = match api.auth_test(token).await {
            Ok(info) => info.user_id,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the bot's own messages; posting");
                return None;
            }
        };
        unmarked.retain(|m| m.user.as_deref() == Some(bot.as_str()));
        unmarked.sort_by_key(|m| ts_order(&m.ts));
        unmarked
            .first()
            .map(|m| Earlier::UnfinishedStream(m.ts.clone()))
    }
}

/// A message an earlier run of a reply left in Slack ([`Slack::earlier_reply`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Earlier {
    /// Posted (or streamed and finished) with the reply's key: the reply is there.
    Posted(String),
    /// A stream the bot started but never finished: the reply belongs in it.
    UnfinishedStream(String),
}

/// A message `ts` ("seconds.micros") as numbers, for ordering.
pub(crate) fn ts_order(ts: &str) -> (u64, u64) {
    let (seconds, micros) = ts.split_once('.').unwrap_or((ts, "0"));
    (seconds.parse().unwrap_or(0), micros.parse().unwrap_or(0))
}

/// Block Kit for a reply with buttons: the text in sections, then one actions block. `None`
/// for plain text (Slack renders `text` as mrkdwn by itself).
pub(crate) fn blocks(text: &str, buttons: &[Button]) -> Option<serde_json::Value> {
    if buttons.is_empty() {
        return None;
    }
    let mut blocks: Vec<serde_json::Value> = Vec::new();
    if !text.trim().is_empty() {
        for piece in ecdysis_chat::split_text(text, SECTION_CHARS) {
            blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": piece } }));
        }
    }
    let elements: Vec<serde_json::Value> = buttons
        .iter()
        .take(25)
        .map(|b| {
            let label: String = b.label.chars().take(75).collect();
            let mut button = json!({
                "type": "button",
                "text": { "type": "plain_text", "text": label },
                "action_id": b.action_id,
                "value": b.value,
            });
            match b.style {
                ButtonStyle::Default => {}
                ButtonStyle::Primary => button["style"] = json!("primary"),
                ButtonStyle::Danger => button["style"] = json!("danger"),
            }
            button
        })
        .collect();
    blocks.push(json!({ "type": "actions", "elements": elements }));
    Some(serde_json::Value::Array(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_timestamps_order_by_seconds_then_micros() {
        assert!(ts_order("1700000000.000600") > ts_order("1700000000.000100"));
        assert!(ts_order("1700000001.000001") > ts_order("1700000000.999999"));
        assert_eq!(ts_order("1700000000"), (1_700_000_000, 0));
    }

    #[test]
    fn buttons_become_blocks() {
        let buttons = vec![
            Button {
                action_id: "approve".into(),
                label: "Approve".into(),
                value: "run:1".into(),
                style: ButtonStyle::Primary,
            },
            Button {
                action_id: "deny".into(),
                label: "Deny".into(),
                value: "run:1".into(),
                style: ButtonStyle::Danger,
            },
        ];
        let json = serde_json::to_value(blocks("Run `ls`?", &buttons).unwrap()).unwrap();
        assert_eq!(json[0]["type"], "section");
        assert_eq!(json[0]["text"]["type"], "mrkdwn");
        assert_eq!(json[1]["type"], "actions");
        assert_eq!(json[1]["elements"][0]["action_id"], "approve");
        assert_eq!(json[1]["elements"][0]["style"], "primary");
        assert_eq!(json[1]["elements"][1]["value"], "run:1");
        assert!(blocks("plain", &[]).is_none());
    }

    #[test]
    fn bookkeeping_notices_second_attempts() {
        let b = Bookkeeping::default();
        assert!(!b.begin("1:0"));
        assert!(b.begin("1:0"));
        assert!(
            b.begin("1:0"),
            "a key stays attempted: a retry looks for the first post"
        );
        assert!(!b.begin("1:1"));
    }
}
