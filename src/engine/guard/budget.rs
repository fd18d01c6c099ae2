//! Spend limits, checked before every model call: tokens and USD per channel per day, per user
//! per day and per workspace per month, counted from the providers' reported usage (the
//! `llm_usage` table; cache reads and writes priced apart, see [`super::prices`]).
//!
//! Sums come from the database and are cached for a few seconds per budget; a finished turn
//! adds its own usage to the cached sums at once, so the hot path rarely reads the database
//! and this instance never misses its own spending. Other instances' spending shows after the
//! cache's few seconds; the check runs before each call, so one call may overshoot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecdysis_chat::ConversationRef;
use jiff::{Timestamp, ToSpan, tz::TimeZone};
use tracing::warn;

use super::prices::{PriceTable, total_tokens};
use super::settings::{BudgetSettings, Limit};
use crate::server::metrics::UsageMetrics;
use crate::storage::store::{Store, StoreError, UnixMs, Usage, UsageScope};

/// How long cached sums are trusted before the database is read again.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Cached budgets before the oldest are dropped.
const MAX_CACHED: usize = 20_000;
/// The share of a budget at which users are warned (once per budget and period).
const WARN_AT: f64 = 0.8;

/// Which budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    ChannelDaily,
    UserDaily,
    WorkspaceMonthly,
}

impl BudgetKind {
    /// How users read its name: "this channel's daily budget".
    fn owner(self) -> &'static str {
        match self {
            Self::ChannelDaily => "This channel",
            Self::UserDaily => "You",
            Self::WorkspaceMonthly => "This workspace",
        }
    }

    fn period(self) -> &'static str {
        match self {
            Self::ChannelDaily | Self::UserDaily => "daily",
            Self::WorkspaceMonthly => "monthly",
        }
    }

    /// The setting's environment name (for the admin who reads the reply or `/status`).
    fn env(self, tokens: bool) -> &'static str {
        match (self, tokens) {
            (Self::ChannelDaily, true) => "ECDYSIS_BUDGET_CHANNEL_DAILY_TOKENS",
            (Self::ChannelDaily, false) => "ECDYSIS_BUDGET_CHANNEL_DAILY_USD",
            (Self::UserDaily, true) => "ECDYSIS_BUDGET_USER_DAILY_TOKENS",
            (Self::UserDaily, false) => "ECDYSIS_BUDGET_USER_DAILY_USD",
            (Self::WorkspaceMonthly, true) => "ECDYSIS_BUDGET_WORKSPACE_MONTHLY_TOKENS",
            (Self::WorkspaceMonthly, false) => "ECDYSIS_BUDGET_WORKSPACE_MONTHLY_USD",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::ChannelDaily => "channel today",
            Self::UserDaily => "user today",
            Self::WorkspaceMonthly => "workspace this month",
        }
    }
}

/// Spending against one budget in its current period.
#[derive(Clone, Debug, PartialEq)]
pub struct Spend {
    pub kind: BudgetKind,
    pub limit: Limit,
    pub tokens: i64,
    pub nanos: i64,
    /// When the period started and when the next one starts (Unix ms).
    pub period_start: i64,
    pub resets_at: i64,
    /// The time zone days and months are counted in.
    pub timezone: TimeZone,
}

impl Spend {
    /// The larger share of the token or USD limit used (0 when neither is set).
    pub fn share(&self) -> f64 {
        let tokens = self.limit.tokens.map(|l| self.tokens as f64 / l as f64);
        let usd = self.limit.nanos.map(|l| self.nanos as f64 / l as f64);
        tokens.unwrap_or(0.0).max(usd.unwrap_or(0.0))
    }

    /// Which limit is used up, if any: (is it the token limit, the limit).
    fn exceeded(&self) -> Option<(bool, i64)> {
        if let Some(limit) = self.limit.tokens
            && self.tokens >= limit
        {
            return Some((true, limit));
        }
        if let Some(limit) = self.limit.nanos
            && self.nanos >= limit
        {
            return Some((false, limit));
        }
        None
    }

    /// "1,234 / 100,000 tokens · $0.01 / $5.00".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(limit) = self.limit.tokens {
            parts.push(format!(
                "{} / {} tokens",
                thousands(self.tokens),
                thousands(limit)
            ));
        }
        if let Some(limit) = self.limit.nanos {
            parts.push(format!("{} / {}", usd(self.nanos), usd(limit)));
        }
        parts.join(" · ")
    }

    /// "00:00 UTC (in 5 h 12 min)".
    pub fn reset_text(&self, now_ms: i64) -> String {
        let at = Timestamp::from_millisecond(self.resets_at)
            .map(|t| {
                let zoned = t.to_zoned(self.timezone.clone());
                let name = self.timezone.iana_name().unwrap_or("UTC");
                if self.kind == BudgetKind::WorkspaceMonthly {
                    format!("{} {name}", zoned.strftime("%Y-%m-%d %H:%M"))
                } else {
                    format!("{} {name}", zoned.strftime("%H:%M"))
                }
            })
            .unwrap_or_else(|_| "the next period".into());
        format!("{at} (in {})", duration_text(self.resets_at - now_ms))
    }
}

/// A budget is used up: the reply to give instead of calling the model.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{text}")]
pub struct Exceeded {
    pub kind: BudgetKind,
    pub text: String,
}

/// Why a budget check could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(transparent)]
    Exceeded(#[from] Exceeded),
    #[error("cannot read the usage for the budget check: {0}")]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug)]
struct Cached {
    tokens: i64,
    nanos: i64,
    /// When the database read started.
    fetched: Instant,
}

/// Cached sums by (scope, period start).
type Cache = HashMap<(UsageScope, i64), Cached>;

/// The budgets, their cache and the usage metrics.
pub struct Budgets {
    settings: BudgetSettings,
    store: Arc<dyn Store>,
    cache: Mutex<Cache>,
    metrics: Option<UsageMetrics>,
}

impl Budgets {
    pub fn new(
        settings: BudgetSettings,
        store: Arc<dyn Store>,
        metrics: Option<UsageMetrics>,
    ) -> Self {
        Self {
            settings,
            store,
            cache: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Whether any budget is set.
    pub fn any(&self) -> bool {
        self.settings.any()
    }

    pub fn prices(&self) -> &PriceTable {
        &self.settings.prices
    }

    /// The budgets that apply to a conversation and user, with their scopes.
    fn applicable(
        &self,
        conversation: &ConversationRef,
        user_id: &str,
    ) -> Vec<(BudgetKind, Limit, UsageScope)> {
        let s = &self.settings;
        let mut out = Vec::with_capacity(3);
        if s.channel_daily.is_set() {
            out.push((
                BudgetKind::ChannelDaily,
                s.channel_daily,
                UsageScope::Channel(conversation.channel_ref()),
            ));
        }
        if s.user_daily.is_set() && !user_id.is_empty() {
            out.push((
                BudgetKind::UserDaily,
                s.user_daily,
                UsageScope::User {
                    platform: conversation.platform.clone(),
                    user_id: user_id.to_string(),
                },
            ));
        }
        if s.workspace_monthly.is_set() {
            out.push((
                BudgetKind::WorkspaceMonthly,
                s.workspace_monthly,
                UsageScope::Workspace {
                    platform: conversation.platform.clone(),
                    workspace: conversation.workspace.clone(),
                },
            ));
        }
        out
    }

    /// (start, next start) of the period of `kind` that contains `now_ms`, in Unix ms.
    pub fn period(&self, kind: BudgetKind, now_ms: i64) -> (i64, i64) {
        period(&self.settings.timezone, kind, now_ms)
    }

    /// Spending against every budget that applies, `pending` (this turn's calls so far, not
    /// yet stored) included.
    pub async fn spend(
        &self,
        conversation: &ConversationRef,
        user_id: &str,
        pending: &[(String, Usage)],
        now_ms: i64,
    ) -> Result<Vec<Spend>, StoreError> {
        let (pending_tokens, pending_nanos) = self.sum(pending);
        let mut out = Vec::new();
        for (kind, limit, scope) in self.applicable(conversation, user_id) {
            let (start, resets_at) = self.period(kind, now_ms);
            let (tokens, nanos) = self.used(&scope, start).await?;
            out.push(Spend {
                kind,
                limit,
                tokens: tokens + pending_tokens,
                nanos: nanos + pending_nanos,
                period_start: start,
                resets_at,
                timezone: self.settings.timezone.clone(),
            });
        }
        Ok(out)
    }

    /// Before a model call: `Err(Exceeded)` with the reply to give when a budget is used up.
    pub async fn check(
        &self,
        conversation: &ConversationRef,
        user_id: &str,
        pending: &[(String, Usage)],
    ) -> Result<(), BudgetError> {
        if !self.settings.any() {
            return Ok(());
        }
        let now = crate::storage::store::now_ms();
        for spend in self.spend(conversation, user_id, pending, now).await? {
            if let Some((is_tokens, limit)) = spend.exceeded() {
                let (limit_text, used_text) = if is_tokens {
                    (
                        format!("{} tokens", thousands(limit)),
                        format!("{} tokens", thousands(spend.tokens)),
                    )
                } else {
                    (usd(limit), usd(spend.nanos))
                };
                let (owner, verb) = match spend.kind {
                    BudgetKind::UserDaily => (spend.kind.owner(), "have"),
                    _ => (spend.kind.owner(), "has"),
                };
                let text = format!(
                    "{owner} {verb} used up the {period} model budget of {limit_text} ({used_text} used; set by {env}). It resets at {reset}; until then I won't call the model {place}. Commands that need no model (`/remember`, `/recall`, `/status`, …) still work.",
                    period = spend.kind.period(),
                    env = spend.kind.env(is_tokens),
                    reset = spend.reset_text(now),
                    place = match spend.kind {
                        BudgetKind::ChannelDaily => "in this channel",
                        BudgetKind::UserDaily => "for you",
                        BudgetKind::WorkspaceMonthly => "in this workspace",
                    },
                );
                return Err(Exceeded {
                    kind: spend.kind,
                    text,
                }
                .into());
            }
        }
        Ok(())
    }

    /// After a turn's usage is stored (`stored_at`: when that write finished): count it in the
    /// cached sums and the metrics, and return the 80 % warning when a budget crossed it for
    /// the first time this period.
    pub async fn after_turn(
        &self,
        conversation: &ConversationRef,
        user_id: &str,
        calls: &[(String, Usage)],
        stored_at: Instant,
    ) -> Option<String> {
        if calls.is_empty() {
            return None;
        }
        self.counted(conversation, user_id, calls, stored_at);
        self.warning(conversation, user_id).await
    }

    /// Count stored usage (`stored_at`: when its write finished) in the cached sums and the
    /// metrics.
    pub fn counted(
        &self,
        conversation: &ConversationRef,
        user_id: &str,
        calls: &[(String, Usage)],
        stored_at: Instant,
    ) {
        if calls.is_empty() {
            return;
        }
        self.count_metrics(conversation, calls);
        if !self.settings.any() {
            return;
        }
        let (tokens, nanos) = self.sum(calls);
        let now = crate::storage::store::now_ms();
        let mut cache = self.lock();
        for (kind, _, scope) in self.applicable(conversation, user_id) {
            let (start, _) = self.period(kind, now);
            // Sums read before the write finished may not include it; later ones do.
            if let Some(cached) = cache.get_mut(&(scope, start))
                && cached.fetched < stored_at
            {
                cached.tokens += tokens;
                cached.nanos += nanos;
            }
        }
    }

    /// The 80 % warning of every budget that crossed it and was not warned about yet this
    /// period.
    pub async fn warning(&self, conversation: &ConversationRef, user_id: &str) -> Option<String> {
        if !self.settings.any() {
            return None;
        }
        let now = crate::storage::store::now_ms();
        let spends = match self.spend(conversation, user_id, &[], now).await {
            Ok(spends) => spends,
            Err(e) => {
                warn!(error = %e, "cannot read the usage for the budget warning");
                return None;
            }
        };
        let mut warnings = Vec::new();
        for spend in spends {
            let share = spend.share();
            if share < WARN_AT {
                continue;
            }
            let scope = scope_key(spend.kind, conversation, user_id);
            match self
                .store
                .first_budget_warning(&scope, UnixMs(spend.period_start))
                .await
            {
                Ok(true) => warnings.push(format!(
                    "Heads-up: {} used {:.0} % of the {} model budget ({}); it resets at {}.",
                    match spend.kind {
                        BudgetKind::ChannelDaily => "this channel has",
                        BudgetKind::UserDaily => "you have",
                        BudgetKind::WorkspaceMonthly => "this workspace has",
                    },
                    (share * 100.0).floor(),
                    spend.kind.period(),
                    spend.describe(),
                    spend.reset_text(now),
                )),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot record the budget warning"),
            }
        }
        (!warnings.is_empty()).then(|| warnings.join("\n"))
    }

    /// Tokens and cost of some calls.
    fn sum(&self, calls: &[(String, Usage)]) -> (i64, i64) {
        calls
            .iter()
            .fold((0, 0), |(tokens, nanos), (model, usage)| {
                (
                    tokens + total_tokens(usage),
                    nanos + self.settings.prices.nanos(model, usage),
                )
            })
    }

    /// Tokens and cost of a scope since `start`: cached, or read from the database.
    async fn used(&self, scope: &UsageScope, start: i64) -> Result<(i64, i64), StoreError> {
        let key = (scope.clone(), start);
        if let Some(cached) = self.lock().get(&key)
            && cached.fetched.elapsed() < CACHE_TTL
        {
            return Ok((cached.tokens, cached.nanos));
        }
        let fetched = Instant::now();
        let rows = self.store.usage_since(scope, UnixMs(start)).await?;
        let (tokens, nanos) = rows.iter().fold((0, 0), |(tokens, nanos), row| {
            (
                tokens + total_tokens(&row.usage),
                nanos + self.settings.prices.nanos(&row.model, &row.usage),
            )
        });
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.fetched.elapsed() < CACHE_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                tokens,
                nanos,
                fetched,
            },
        );
        Ok((tokens, nanos))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_metrics(&self, conversation: &ConversationRef, calls: &[(String, Usage)]) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let channel = conversation.channel_ref();
        let channel = format!(
            "{}:{}:{}",
            channel.platform, channel.workspace, channel.channel
        );
        for (model, usage) in calls {
            metrics.add(
                model,
                &channel,
                usage,
                self.settings.prices.nanos(model, usage) as f64 / 1e9,
            );
        }
    }
}

/// The key a budget warning is remembered under.
fn scope_key(kind: BudgetKind, conversation: &ConversationRef, user_id: &str) -> String {
    match kind {
        BudgetKind::ChannelDaily => format!(
            "channel:{}:{}:{}",
            conversation.platform, conversation.workspace, conversation.channel
        ),
        BudgetKind::UserDaily => format!("user:{}:{user_id}", conversation.platform),
        BudgetKind::WorkspaceMonthly => {
            format!(
                "workspace:{}:{}",
                conversation.platform, conversation.workspace
            )
        }
    }
}

/// (start, next start) of the calendar day or month containing `now_ms` in `tz`.
fn period(tz: &TimeZone, kind: BudgetKind, now_ms: i64) -> (i64, i64) {
    let compute = || -> Result<(i64, i64), jiff::Error> {
        let now = Timestamp::from_millisecond(now_ms)?.to_zoned(tz.clone());
        let (start, next) = match kind {
            BudgetKind::ChannelDaily | BudgetKind::UserDaily => {
                let start = now.start_of_day()?;
                let next = now.tomorrow()?.start_of_day()?;
                (start, next)
            }
            BudgetKind::WorkspaceMonthly => {
                let first = now.first_of_month()?;
                let start = first.start_of_day()?;
                let next = first.checked_add(1.month())?.start_of_day()?;
                (start, next)
            }
        };
        Ok((
            start.timestamp().as_millisecond(),
            next.timestamp().as_millisecond(),
        ))
    };
    // Out of jiff's range (never for real clocks): a period of one day in UTC.
    compute().unwrap_or_else(|_| {
        let day = 86_400_000;
        let start = now_ms - now_ms.rem_euclid(day);
        (start, start + day)
    })
}

/// 1234567 → "1,234,567".
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Nano-USD as "$1.23" (or "$0.0012" for amounts under a cent).
pub fn usd(nanos: i64) -> String {
    let dollars = nanos as f64 / 1e9;
    if dollars != 0.0 && dollars.abs() < 0.01 {
        format!("${dollars:.4}")
    } else {
        format!("${dollars:.2}")
    }
}

/// "5 h 12 min", "3 min", "2 d 4 h".
fn duration_text(ms: i64) -> String {
    let minutes = (ms.max(0) + 59_999) / 60_000;
    let (days, hours, mins) = (minutes / 1440, (minutes % 1440) / 60, minutes % 60);
    match (days, hours, mins) {
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_time_zone() {
        // 2026-03-10 23:30 UTC is already 2026-03-11 in Berlin.
        let now = Timestamp::from_second(1_773_185_400)
            .unwrap()
            .as_millisecond();
        let (start, next) = period(&TimeZone::UTC, BudgetKind::ChannelDaily, now);
        assert_eq!(next - start, 86_400_000);
        assert_eq!(start, 1_773_100_800_000);
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let (start, _) = period(&berlin, BudgetKind::UserDaily, now);
        assert_eq!(start, 1_773_183_600_000); // 2026-03-11 00:00 +01:00
        let (start, next) = period(&TimeZone::UTC, BudgetKind::WorkspaceMonthly, now);
        assert_eq!(start, 1_772_323_200_000); // 2026-03-01
        assert_eq!(next, 1_775_001_600_000); // 2026-04-01
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(usd(2_500_000_000), "$2.50");
        assert_eq!(usd(1_200_000), "$0.0012");
        assert_eq!(duration_text(5 * 3_600_000 + 12 * 60_000), "5 h 12 min");
        assert_eq!(duration_text(30_000), "1 min");
        assert_eq!(duration_text(49 * 3_600_000), "2 d 1 h");
    }
}
