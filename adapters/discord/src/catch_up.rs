//! Catch-up after downtime: on every new gateway session (READY; a resumed session gets its
//! missed events from Discord itself), the channels, threads and DMs the bot took part in are
//! read from the last message the core saw there (`GET /channels/{id}/messages?after=`), and
//! what was said meanwhile goes to the core exactly as live messages would. A message's event
//! id is its snowflake either way, so whatever did arrive is dropped by the inbox, and the
//! core's mention gating decides what is for the bot.

use std::sync::Arc;
use std::time::Duration;

use ecdysis_chat::{CatchUp, CatchUpLimits, CatchUpReport, LastSeen, Seen, SubmitError, log_run};

use crate::adapter::{Discord, Shared};
use crate::model::Message;
use crate::translate::DM_WORKSPACE;
use crate::{DiscordError, PLATFORM};

/// Discord's epoch (2015-01-01) in ms since the Unix epoch: snowflakes count from it.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;
/// The most messages one `GET /channels/{id}/messages` returns.
const PAGE: usize = 100;
/// How long a busy core is waited for, per message.
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// One channel, thread or DM to read, and the snowflake after which its messages are new.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    /// The guild, `None` for a DM.
    guild: Option<u64>,
    /// The channel (or thread) whose messages are read.
    channel: u64,
    after: u64,
}

impl Discord {
    /// Turn catch-up on: `seen` tells where each conversation was last heard from. Set once;
    /// later calls are ignored.
    pub fn enable_catch_up(&self, seen: Arc<dyn Seen>, limits: CatchUpLimits) {
        if self
            .shared
            .catch_up
            .set(CatchUp::new(seen, limits))
            .is_err()
        {
            tracing::warn!("Discord catch-up was already enabled");
        }
    }

    /// One catch-up run, now (tests and the bench call it directly). `Ok` with an empty report
    /// when catch-up is off.
    pub async fn catch_up_run(&self) -> Result<CatchUpReport, DiscordError> {
        run(&self.shared).await
    }
}

/// Start a catch-up run in the background, unless catch-up is off or a run is going.
pub(crate) fn spawn(shared: &Arc<Shared>) {
    let Some(catch_up) = shared.catch_up.get() else {
        return;
    };
    if !catch_up.begin() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = run(&shared).await;
        log_run("Discord", &result, started.elapsed());
        if let Some(catch_up) = shared.catch_up.get() {
            catch_up.end();
        }
    });
}

async fn run(shared: &Shared) -> Result<CatchUpReport, DiscordError> {
    let Some(catch_up) = shared.catch_up.get() else {
        return Ok(CatchUpReport::default());
    };
    let limits = catch_up.limits;
    let now = ecdysis_chat::time::now_ms();
    let seen = catch_up
        .seen
        .last_seen(
            PLATFORM,
            now.saturating_sub(millis(limits.lookback)),
            limits.max_places,
        )
        .await
        .map_err(DiscordError::CatchUp)?;
    let floor = snowflake_at(now.saturating_sub(millis(limits.window)));
    let places = places(&seen, floor, limits.max_places);
    let mut report = CatchUpReport {
        places: places.len(),
        ..CatchUpReport::default()
    };
    for place in &places {
        match read_place(shared, place, limits.per_place).await {
            Ok(messages) => {
                report.fetched += messages.len();
                for message in messages {
                    if submit_patiently(shared, &message).await {
                        report.submitted += 1;
                    }
                }
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(channel = place.channel, error = %e, "cannot catch up on a Discord channel");
            }
        }
    }
    Ok(report)
}

/// The places to read, most recently heard from first: each conversation's channel (new
/// mentions, DMs) and thread (replies), each from the newest snowflake seen there but never
/// before `floor`.
fn places(seen: &[LastSeen], floor: u64, max: usize) -> Vec<Place> {
    let mut out: Vec<Place> = Vec::new();
    let mut add = |guild: Option<u64>, channel: u64, seen_id: u64| {
        let after = seen_id.max(floor);
        match out.iter_mut().find(|p| p.channel == channel) {
            Some(place) => place.after = place.after.max(after),
            None => out.push(Place {
                guild,
                channel,
                after,
            }),
        }
    };
    for last in seen {
        let c = &last.conversation;
        let guild = if c.workspace == DM_WORKSPACE {
            None
        } else {
            match c.workspace.parse::<u64>() {
                Ok(guild) => Some(guild),
                Err(_) => continue,
            }
        };
        let seen_id = last
            .platform_event_id
            .parse::<u64>()
            .unwrap_or_else(|_| snowflake_at(last.received_ms));
        if let Ok(channel) = c.channel.parse::<u64>() {
            add(guild, channel, seen_id);
        }
        if let Some(thread) = c.thread.as_deref().and_then(|t| t.parse::<u64>().ok()) {
            add(guild, thread, seen_id);
        }
    }
    out.truncate(max);
    out
}

/// The messages of a place after its snowflake, oldest first, at most `limit`. Discord's rate
/// limits are waited out by the REST client.
async fn read_place(
    shared: &Shared,
    place: &Place,
    limit: usize,
) -> Result<Vec<Message>, DiscordError> {
    let mut out: Vec<Message> = Vec::new();
    let mut after = place.after;
    while out.len() < limit {
        let want = (limit - out.len()).min(PAGE);
        let page = shared
            .rest
            .messages_after(
                place.channel,
                after.max(1),
                u8::try_from(want).unwrap_or(u8::MAX),
            )
            .await?;
        let full = page.len() >= want;
        let mut page: Vec<Message> = page.into_iter().filter(|m| m.id.get() > after).collect();
        page.sort_by_key(|m| m.id.get());
        let Some(last) = page.last() else { break };
        after = last.id.get();
        out.extend(page);
        if !full {
            break;
        }
    }
    for message in &mut out {
        // REST messages do not name their guild; the gateway's do.
        message.guild_id = place.guild.map(crate::model::Id);
    }
    Ok(out)
}

/// Submit a caught-up message, waiting while the core is busy; true when it was taken
/// (stored, a duplicate, or not for the bot).
async fn submit_patiently(shared: &Shared, message: &Message) -> bool {
    let Some(event) = crate::intake::message_event(shared, message).await else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    loop {
        match shared.sink.submit(event.clone()).await {
            Ok(_) => return true,
            Err(SubmitError::Busy(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::warn!(message = message.id.get(), error = %e, "a caught-up Discord message was not taken");
                return false;
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The smallest snowflake of a message sent at `ms` (ms since the Unix epoch).
pub(crate) fn snowflake_at(ms: i64) -> u64 {
    u64::try_from(ms.saturating_sub(DISCORD_EPOCH_MS)).unwrap_or(0) << 22
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecdysis_chat::ConversationRef;

    fn seen(workspace: &str, channel: &str, thread: Option<&str>, id: &str) -> LastSeen {
        LastSeen {
            conversation: ConversationRef::new(
                PLATFORM,
                workspace,
                channel,
                thread.map(str::to_string),
            ),
            platform_event_id: id.to_string(),
            route: serde_json::Value::Null,
            received_ms: 0,
        }
    }

    #[test]
    fn threads_and_their_channels_are_read_from_the_newest_id_seen() {
        let got = places(
            &[
                seen("7", "10", Some("20"), "500"),
                seen("7", "10", None, "400"),
                seen(DM_WORKSPACE, "30", None, "50"),
                seen("not a guild", "40", None, "900"),
            ],
            100,
            10,
        );
        assert_eq!(
            got,
            vec![
                Place {
                    guild: Some(7),
                    channel: 10,
                    after: 500
                },
                Place {
                    guild: Some(7),
                    channel: 20,
                    after: 500
                },
                Place {
                    guild: None,
                    channel: 30,
                    after: 100
                },
            ]
        );
        assert_eq!(places(&[seen("7", "10", Some("20"), "500")], 0, 1).len(), 1);
    }

    #[test]
    fn snowflakes_count_from_discords_epoch() {
        // Discord's documented example: 175928847299117063 was made at 1462015105796 ms.
        assert_eq!(
            snowflake_at(1_462_015_105_796) >> 22,
            175_928_847_299_117_063 >> 22
        );
        assert_eq!(snowflake_at(0), 0);
    }
}
