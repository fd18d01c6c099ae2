//! Catch-up after downtime: the channels and threads the bot took part in are read back from
//! the last message the core saw there (`conversations.history` for a channel's top-level
//! messages, `conversations.replies` for a thread), and what was said meanwhile goes to the
//! core exactly as live events would. A caught-up message has the same event id as the live
//! one ([`crate::events::message_key`]), so whatever did arrive is dropped by the inbox, and
//! the core's mention gating decides what is for the bot.
//!
//! Runs on start (HTTP Events API) and on every Socket Mode `hello` (a new connection may
//! follow a gap), one run at a time, bounded by [`CatchUpLimits`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ecdysis_chat::{CatchUp, CatchUpLimits, CatchUpReport, LastSeen, Seen, log_run};

use crate::api::CallError;
use crate::deliver::ts_order;
use crate::events::{Inbound, Inner, message};
use crate::inbound::Refused;
use crate::route::Route;
use crate::{Slack, SlackError, now_ms};

/// The longest wait a rate limit may impose on one call before the place is given up.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Calls per place (the first and the retries after a rate limit or a transient error).
const ATTEMPTS: u32 = 3;
/// How long a busy core is waited for, per message.
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// One channel (its top-level messages) or one thread to read, and the `ts` after which its
/// messages are new.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    team: String,
    channel: String,
    thread: Option<String>,
    after: String,
}

impl Slack {
    /// Turn catch-up on: `seen` tells where each conversation was last heard from. Set once;
    /// later calls are ignored.
    pub fn enable_catch_up(&self, seen: Arc<dyn Seen>, limits: CatchUpLimits) {
        if self.inner.catch_up.set(CatchUp::new(seen, limits)).is_err() {
            tracing::warn!("Slack catch-up was already enabled");
        }
    }

    /// Start a catch-up run in the background, unless catch-up is off or a run is going.
    pub fn spawn_catch_up(&self) {
        let Some(catch_up) = self.inner.catch_up.get() else {
            return;
        };
        if !catch_up.begin() {
            return;
        }
        let slack = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = slack.catch_up_run().await;
            log_run("Slack", &result, started.elapsed());
            if let Some(catch_up) = slack.inner.catch_up.get() {
                catch_up.end();
            }
        });
    }

    /// One catch-up run, now (tests and the bench call it directly). `Ok` with an empty report
    /// when catch-up is off.
    pub async fn catch_up_run(&self) -> Result<CatchUpReport, SlackError> {
        let Some(catch_up) = self.inner.catch_up.get() else {
            return Ok(CatchUpReport::default());
        };
        let limits = catch_up.limits;
        let now = now_ms();
        let since = now.saturating_sub(millis(limits.lookback));
        let seen = catch_up
            .seen
            .last_seen(crate::PLATFORM, since, limits.max_places)
            .await
            .map_err(SlackError::CatchUp)?;
        let floor = ms_to_ts(now.saturating_sub(millis(limits.window)));
        let places = places(&seen, &floor, limits.max_places);
        let mut report = CatchUpReport {
            places: places.len(),
            ..CatchUpReport::default()
        };
        let mut bots: HashMap<String, String> = HashMap::new();
        for place in &places {
            match self.catch_up_place(place, limits, &mut bots).await {
                Ok((fetched, submitted)) => {
                    report.fetched += fetched;
                    report.submitted += submitted;
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(
                        team = %place.team,
                        channel = %place.channel,
                        thread = ?place.thread,
                        error = %e,
                        "cannot catch up on a Slack conversation"
                    );
                }
            }
        }
        Ok(report)
    }

    /// Read one place and submit what is new: (messages fetched, messages submitted).
    async fn catch_up_place(
        &self,
        place: &Place,
        limits: CatchUpLimits,
        bots: &mut HashMap<String, String>,
    ) -> Result<(usize, usize), SlackError> {
        let token = self.token(&place.team).await?;
        let bot = match bots.get(&place.team) {
            Some(bot) => bot.clone(),
            None => {
                let bot = self.inner.api.auth_test(&token).await?.user_id;
                bots.insert(place.team.clone(), bot.clone());
                bot
            }
        };
        let raw = self.fetch_after(&token, place, limits.per_place).await?;
        let messages = new_messages(raw, place, limits.per_place);
        let fetched = messages.len();
        let mut submitted = 0;
        let mention = format!("<@{bot}>");
        let direct = place.channel.starts_with('D');
        for mut inner in messages {
            // History has no `app_mention`s: outside a DM, a message naming the bot is one.
            if !direct && inner.text.as_deref().is_some_and(|t| t.contains(&mention)) {
                inner.kind = "app_mention".into();
            }
            let event = match message(place.team.clone(), inner, Some(&bot), now_ms()) {
                Inbound::Message { event, files } => (event, files),
                Inbound::Drop(_) | Inbound::Uninstalled { .. } => continue,
            };
            if self.submit_patiently(event.0, event.1).await {
                submitted += 1;
            }
        }
        Ok((fetched, submitted))
    }

    /// `conversations.history`/`replies` after `place.after`, waiting out rate limits.
    async fn fetch_after(
        &self,
        token: &str,
        place: &Place,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, SlackError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .inner
                .api
                .messages_after(
                    token,
                    &place.channel,
                    place.thread.as_deref(),
                    &place.after,
                    limit,
                )
                .await;
            let wait = match result {
                Ok(messages) => return Ok(messages),
                Err(CallError::RateLimited(_, after)) if attempt < ATTEMPTS => after
                    .unwrap_or(Duration::from_secs(1))
                    .min(MAX_RATE_LIMIT_WAIT),
                Err(CallError::Retryable(_)) if attempt < ATTEMPTS => Duration::from_secs(1),
                Err(e) => return Err(e.into()),
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Submit a caught-up message, waiting while the core is busy; true when it was taken
    /// (stored, a duplicate, or not for the bot).
    async fn submit_patiently(
        &self,
        mut event: Box<ecdysis_chat::Event>,
        files: Vec<crate::events::FileRef>,
    ) -> bool {
        self.attach_file_refs(&mut event, &files);
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.submit((*event).clone()).await {
                Ok(()) => return true,
                Err(Refused::Busy(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::warn!(event = %event.platform_event_id, error = %e, "a caught-up Slack message was not taken");
                    return false;
                }
            }
        }
    }
}

/// The places to read, most recently heard from first: every channel seen (for new mentions
/// and DMs) and every thread seen (for replies), each from the newest `ts` seen there but
/// never before `floor`.
fn places(seen: &[LastSeen], floor: &str, max: usize) -> Vec<Place> {
    let mut out: Vec<Place> = Vec::new();
    let mut add = |team: &str, channel: &str, thread: Option<&str>, ts: String| {
        let after = if ts_order(&ts) > ts_order(floor) {
            ts
        } else {
            floor.to_string()
        };
        match out
            .iter_mut()
            .find(|p| p.team == team && p.channel == channel && p.thread.as_deref() == thread)
        {
            Some(place) if ts_order(&after) > ts_order(&place.after) => place.after = after,
            Some(_) => {}
            None => out.push(Place {
                team: team.to_string(),
                channel: channel.to_string(),
                thread: thread.map(str::to_string),
                after,
            }),
        }
    };
    for last in seen {
        let c = &last.conversation;
        let ts = Route::from_value(&last.route)
            .and_then(|r| r.message_ts)
            .unwrap_or_else(|| ms_to_ts(last.received_ms));
        add(&c.workspace, &c.channel, None, ts.clone());
        if let Some(thread) = &c.thread {
            add(&c.workspace, &c.channel, Some(thread), ts);
        }
    }
    out.truncate(max);
    out
}

/// The messages of a history page that came after `place.after`, as event input, oldest
/// first, at most `limit` (the newest).
fn new_messages(raw: Vec<serde_json::Value>, place: &Place, limit: usize) -> Vec<Inner> {
    let after = ts_order(&place.after);
    let mut messages: Vec<Inner> = raw
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Inner>(value).ok())
        .filter(|m| m.ts.as_deref().is_some_and(|ts| ts_order(ts) > after))
        .map(|mut m| {
            m.channel = Some(place.channel.clone());
            m
        })
        .collect();
    messages.sort_by_key(|m| m.ts.as_deref().map(ts_order));
    let extra = messages.len().saturating_sub(limit);
    messages.drain(..extra);
    messages
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch as a Slack `ts`.
fn ms_to_ts(ms: i64) -> String {
    let ms = ms.max(0);
    format!("{}.{:06}", ms / 1000, (ms % 1000) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecdysis_chat::ConversationRef;
    use serde_json::json;

    fn seen(channel: &str, thread: Option<&str>, ts: Option<&str>, received_ms: i64) -> LastSeen {
        let route = Route {
            team: "T1".into(),
            channel: channel.into(),
            thread_ts: thread.map(str::to_string),
            message_ts: ts.map(str::to_string),
            ..Route::default()
        };
        LastSeen {
            conversation: ConversationRef::new(
                crate::PLATFORM,
                "T1",
                channel,
                thread.map(str::to_string),
            ),
            platform_event_id: "C:1".into(),
            route: route.to_value(),
            received_ms,
        }
    }

    fn place(channel: &str, thread: Option<&str>, after: &str) -> Place {
        Place {
            team: "T1".into(),
            channel: channel.into(),
            thread: thread.map(str::to_string),
            after: after.into(),
        }
    }

    #[test]
    fn a_thread_is_read_with_its_channel_from_the_newest_ts_seen() {
        let got = places(
            &[
                seen("C1", Some("100.000001"), Some("300.000002"), 0),
                seen("C1", None, Some("200.000000"), 0),
                seen("D1", None, Some("50.000000"), 0),
                // A slash command has no message: its arrival time stands in.
                seen("C2", None, None, 400_500),
            ],
            "100.000000",
            10,
        );
        assert_eq!(
            got,
            vec![
                place("C1", None, "300.000002"),
                place("C1", Some("100.000001"), "300.000002"),
                place("D1", None, "100.000000"),
                place("C2", None, "400.500000"),
            ]
        );
        assert_eq!(
            places(&[seen("C1", Some("1.0"), None, 0)], "0.0", 1).len(),
            1
        );
    }

    #[test]
    fn only_newer_messages_are_kept_oldest_first_and_at_most_the_limit() {
        let raw = vec![
            json!({"type": "message", "ts": "103.000000", "user": "U1", "text": "c"}),
            json!({"type": "message", "ts": "101.000000", "user": "U1", "text": "a"}),
            json!({"type": "message", "ts": "100.000000", "user": "U1", "text": "seen"}),
            json!({"type": "message", "ts": "102.000000", "user": "U1", "text": "b"}),
            json!("not a message"),
        ];
        let kept = new_messages(raw.clone(), &place("C1", None, "100.000000"), 10);
        let texts: Vec<_> = kept.iter().map(|m| m.text.clone().unwrap()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert!(kept.iter().all(|m| m.channel.as_deref() == Some("C1")));
        let newest = new_messages(raw, &place("C1", None, "100.000000"), 2);
        let texts: Vec<_> = newest.iter().map(|m| m.text.clone().unwrap()).collect();
        assert_eq!(texts, ["b", "c"]);
    }

    #[test]
    fn times_become_slack_timestamps() {
        assert_eq!(ms_to_ts(1_700_000_000_123), "1700000000.123000");
        assert_eq!(ms_to_ts(-5), "0.000000");
    }
}
