//! The guard rails' cost on the hot path: the intake gate (access policy, rate limits) and the
//! budget check before a model call, per event, on SQLite. Prints percentiles.
//!
//! `cargo bench --bench guards`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecdysis::bus::{Admission, Gate};
use ecdysis::engine::guard::settings::{BudgetSettings, Limit, RateSettings};
use ecdysis::engine::guard::{Budgets, GuardSettings, IntakeGate};
use ecdysis::engine::profile::Profiles;
use ecdysis::server::metrics::Metrics;
use ecdysis::storage::store::{self, Usage};
use ecdysis_chat::{AllowList, ConversationRef, Event, UserRef};

const EVENTS: usize = 20_000;
const CHANNELS: usize = 200;
const USERS: usize = 1_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<44} n={:>6}  p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples
            .last()
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or_default(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = store::open(&url).await.expect("open SQLite");
    let metrics = Arc::new(Metrics::new());
    let mut settings = GuardSettings::default();
    let users: Vec<String> = (0..USERS).map(|n| format!("slack:U{n}")).collect();
    settings.access.allow_users = AllowList::new(users.iter().cloned());
    settings.access.named_users = settings.access.allow_users.clone();
    let channels: Vec<String> = (0..CHANNELS).map(|n| format!("slack:C{n}")).collect();
    settings.access.allow_channels = AllowList::new(channels.iter().cloned());
    let gate = IntakeGate::new(
        settings.access.clone(),
        RateSettings {
            user_per_minute: Some(100_000),
            channel_per_minute: Some(100_000),
        },
        Profiles::default(),
        store.clone(),
        metrics.clone(),
    );
    let budgets = Budgets::new(
        BudgetSettings {
            channel_daily: Limit {
                tokens: Some(10_000_000),
                nanos: Some(100_000_000_000),
            },
            user_daily: Limit {
                tokens: Some(1_000_000),
                nanos: None,
            },
            workspace_monthly: Limit {
                tokens: None,
                nanos: Some(1_000_000_000_000),
            },
            ..BudgetSettings::default()
        },
        store.clone(),
        Some(metrics.usage.clone()),
    );
    // Some usage in every channel, so the sums are real.
    let model = "anthropic/claude-sonnet-4-5".to_string();
    for c in 0..CHANNELS {
        let conversation = ConversationRef::new("slack", "T1", format!("C{c}"), None);
        let calls = [(
            model.clone(),
            Usage {
                input_tokens: 1_000,
                output_tokens: 200,
                cache_read_tokens: 5_000,
                cache_write_tokens: 300,
            },
        )];
        store
            .record_turn(&conversation, None, &format!("U{}", c % USERS), &[], &calls)
            .await
            .expect("record usage");
    }

    let event = |n: usize| {
        let conversation = ConversationRef::new("slack", "T1", format!("C{}", n % CHANNELS), None);
        let mut e = Event::from_text(
            format!("Ev{n}"),
            conversation,
            UserRef {
                id: format!("U{}", n % USERS),
                name: None,
            },
            "hello",
        );
        e.addressed = ecdysis_chat::Addressed::Mention;
        e
    };

    let mut gate_samples = Vec::with_capacity(EVENTS);
    let mut budget_samples = Vec::with_capacity(EVENTS);
    let mut cold = Vec::new();
    for n in 0..EVENTS {
        let e = event(n);
        let started = Instant::now();
        let admitted = gate.admit(&e).await;
        gate_samples.push(started.elapsed());
        assert_eq!(admitted, Admission::Admit);
        let started = Instant::now();
        budgets
            .check(&e.conversation, &e.user.id, &[])
            .await
            .expect("within budget");
        let took = started.elapsed();
        if n < USERS {
            // The first event of each user reads the database (cold cache).
            cold.push(took);
        } else {
            budget_samples.push(took);
        }
    }
    let total: Vec<Duration> = gate_samples
        .iter()
        .skip(USERS)
        .zip(&budget_samples)
        .map(|(a, b)| *a + *b)
        .collect();
    println!(
        "guard rails on the hot path ({CHANNELS} channels, {USERS} users, 3 budgets, both rate limits; load {})",
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    report("intake gate (allow lists + 2 buckets)", gate_samples);
    report("budget check, cached sums", budget_samples);
    report("budget check, first of a user (database)", cold);
    report("gate + budget check per event (warm)", total);
}
