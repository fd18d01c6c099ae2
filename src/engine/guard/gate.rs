//! The intake gate: every event meant for the bot passes the access policy, DM pairing and the
//! rate limits before it is stored. Refused users get one short answer at most once an hour
//! (rate-limited ones once a minute), and nothing they send runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecdysis_chat::{AllowList, Event};
use tracing::{info, warn};

use super::access::{Verdict, decide};
use super::pairing;
use super::rate::Buckets;
use super::settings::{AccessSettings, RateSettings};
use crate::bus::{Admission, Gate, Outgoing};
use crate::engine::profile::Profiles;
use crate::server::metrics::{Metrics, ReasonLabels};
use crate::storage::store::{NewPairing, Store};

/// How often a refused user hears about it.
const REFUSAL_QUIET: Duration = Duration::from_secs(3600);
/// How often a rate-limited user or channel hears about it.
const RATE_QUIET: Duration = Duration::from_secs(60);
/// How long a "paired" answer from the database is trusted.
const PAIRED_TTL: Duration = Duration::from_secs(30);
/// Remembered notices and pairings before the table is cleared.
const MAX_REMEMBERED: usize = 50_000;

/// (platform, user or channel id, kind of notice) → when it was given.
type Notices = HashMap<(String, String, &'static str), Instant>;
/// (platform, user id) → when the database said the user is paired.
type Paired = HashMap<(String, String), Instant>;

/// The access policy, pairing and rate limits at intake.
pub struct IntakeGate {
    access: AccessSettings,
    profiles: Profiles,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    users: Option<Buckets>,
    channels: Option<Buckets>,
    /// Notices given lately (platform, id, kind) → when: spares the database a write for
    /// every message of a flood.
    noticed: Mutex<Notices>,
    /// Users found paired lately.
    paired: Mutex<Paired>,
}

impl IntakeGate {
    pub fn new(
        access: AccessSettings,
        rate: RateSettings,
        profiles: Profiles,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            access,
            profiles,
            store,
            metrics,
            users: rate.user_per_minute.map(Buckets::new),
            channels: rate.channel_per_minute.map(Buckets::new),
            noticed: Mutex::new(HashMap::new()),
            paired: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the user was paired (cached for a short while).
    async fn is_paired(&self, platform: &str, user_id: &str) -> bool {
        let key = (platform.to_string(), user_id.to_string());
        if let Some(at) = lock(&self.paired).get(&key)
            && at.elapsed() < PAIRED_TTL
        {
            return true;
        }
        match self.store.is_paired(platform, user_id).await {
            Ok(true) => {
                let mut paired = lock(&self.paired);
                if paired.len() >= MAX_REMEMBERED {
                    paired.clear();
                }
                paired.insert(key, Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(error = %e, "cannot read pairings; treating the user as unpaired");
                false
            }
        }
    }

    /// Whether `(platform, id)` should hear about `kind` now (at most once per `quiet`).
    async fn notice(&self, platform: &str, id: &str, kind: &'static str, quiet: Duration) -> bool {
        let key = (platform.to_string(), id.to_string(), kind);
        if let Some(at) = lock(&self.noticed).get(&key)
            && at.elapsed() < quiet
        {
            return false;
        }
        let first = match self
            .store
            .note_notice(platform, id, kind, quiet.as_millis() as i64)
            .await
        {
            Ok(first) => first,
            Err(e) => {
                warn!(error = %e, "cannot record a guard rail notice; staying quiet");
                false
            }
        };
        let mut noticed = lock(&self.noticed);
        if noticed.len() >= MAX_REMEMBERED {
            noticed.retain(|_, at| at.elapsed() < RATE_QUIET);
        }
        // Told now or lately by another instance: quiet here too for a while.
        noticed.insert(key, Instant::now());
        first
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The refusal for a verdict, once an hour per user.
    async fn refuse(&self, event: &Event, verdict: Verdict) -> Admission {
        self.refused(verdict.reason());
        let platform = &event.conversation.platform;
        let user = &event.user.id;
        info!(%platform, user = %user, conversation = %event.conversation, reason = verdict.reason(), "refused by the access policy");
        if !self.notice(platform, user, "refused", REFUSAL_QUIET).await {
            return Admission::Ignore;
        }
        let text = match verdict {
            Verdict::ChannelRefused => {
                "Sorry, I'm not set up to answer in this channel. Ask an admin of this bot if you need me here."
            }
            Verdict::DmClosed => {
                "Sorry, I don't take direct messages here. Mention me in a channel I'm in instead."
            }
            _ => {
                "Sorry, I'm not set up to answer you. Ask an admin of this bot if you need access."
            }
        };
        Admission::Answer(Outgoing::text(text))
    }

    /// An unknown user's DM under the pairing policy: their code, once an hour.
    async fn pair(&self, event: &Event) -> Admission {
        self.refused("pairing");
        let conversation = &event.conversation;
        let new = NewPairing {
            code: pairing::new_code(),
            platform: conversation.platform.clone(),
            user_id: event.user.id.clone(),
            user_name: event.user.name.clone(),
            workspace: conversation.workspace.clone(),
            channel: conversation.channel.clone(),
            valid_ms: self.access.pairing_code_ttl.as_millis() as i64,
        };
        let code = match self.store.pairing_code(&new).await {
            Ok(code) => code,
            Err(e) => {
                warn!(error = %e, "cannot store a pairing code");
                return Admission::Ignore;
            }
        };
        if !self
            .notice(
                &conversation.platform,
                &event.user.id,
                "pairing",
                REFUSAL_QUIET,
            )
            .await
        {
            return Admission::Ignore;
        }
        info!(platform = %code.platform, user = %code.user_id, code = %code.code, "pairing requested; an admin approves it with /pair or in /admin");
        let minutes = (code.expires_at.0 - crate::storage::store::now_ms()).max(60_000) / 60_000;
        Admission::Answer(Outgoing::text(format!(
            "Hi! I don't know you yet, so I can't answer here. To be let in, ask an admin of this bot to run `/pair {}` (or approve it in the admin pages). The code is valid for {minutes} minute{}.",
            code.code,
            if minutes == 1 { "" } else { "s" }
        )))
    }

    /// The rate limits: `None` when there is room, else the answer.
    async fn limit(&self, event: &Event) -> Option<Admission> {
        let now = Instant::now();
        let conversation = &event.conversation;
        let platform = &conversation.platform;
        if let Some(users) = &self.users
            && users
                .take(&format!("{platform}:{}", event.user.id), now)
                .is_err()
        {
            self.refused("rate_user");
            let text = "You're sending messages faster than I can take them, so I skipped this one. Please wait a little and send it again.";
            return Some(
                if self
                    .notice(platform, &event.user.id, "rate", RATE_QUIET)
                    .await
                {
                    Admission::Answer(Outgoing::text(text))
                } else {
                    Admission::Ignore
                },
            );
        }
        if let Some(channels) = &self.channels {
            let channel = format!("{}:{}", conversation.workspace, conversation.channel);
            if channels
                .take(&format!("{platform}:{channel}"), now)
                .is_err()
            {
                self.refused("rate_channel");
                let text = "This channel is sending me more messages than I can take, so I skipped some. Please slow down and send again in a little while.";
                return Some(
                    if self
                        .notice(platform, &channel, "rate_channel", RATE_QUIET)
                        .await
                    {
                        Admission::Answer(Outgoing::text(text))
                    } else {
                        Admission::Ignore
                    },
                );
            }
        }
        None
    }
}

#[async_trait]
impl Gate for IntakeGate {
    async fn admit(&self, event: &Event) -> Admission {
        let conversation = &event.conversation;
        let profile = self.profiles.for_conversation(conversation);
        let empty = AllowList::default();
        let profile_users = profile.allow_users.as_ref().unwrap_or(&empty);
        // Whether the user is paired matters only for DMs under the pairing policy; `decide`
        // asks then, and the answer is looked up before (it needs the database).
        let platform = conversation.platform.as_str();
        let named = !self.access.named_users.is_empty()
            && self
                .access
                .named_users
                .allows_user(platform, &event.user.id);
        let needs_paired = !named
            && super::access::is_dm(conversation)
            && self.access.dm_policy(platform) == super::DmPolicy::Pairing;
        let paired = needs_paired && self.is_paired(&conversation.platform, &event.user.id).await;
        match decide(
            &self.access,
            profile_users,
            conversation,
            &event.user.id,
            || paired,
        ) {
            Verdict::Admin => Admission::Admit,
            Verdict::Allowed => self.limit(event).await.unwrap_or(Admission::Admit),
            Verdict::NeedsPairing => self.pair(event).await,
            refused => self.refuse(event, refused).await,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
