//! The store alone: what one `/remember` event writes, driven straight through the `Store` API
//! (no HTTP, no bus, no engine), the way the bus drives it: 64 producers put events into the
//! inbox across 100 conversations; 64 workers claim them, store the note, finish the event with
//! its assistant message and a reply claimed for delivery (claiming the conversation's next
//! event in the same transaction), and mark the reply sent.
//!
//! Prints events/s and the CPU time per event of the SQLite writer thread and of the whole
//! process: the ceiling the store puts on the bus, apart from everything around it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ecdysis::storage::store::{
    ClaimedEvent, Completion, NewEvent, NewMessage, NewNote, NewReply, Role, Store, StoreError,
    UnixMs,
};
use ecdysis_chat::{ChannelRef, ConversationRef};

const CONVERSATIONS: u64 = 100;
const PRODUCERS: u64 = 64;
const WORKERS: usize = 64;
const LEASE_MS: i64 = 60_000;

/// Run `n` events through the store of a fresh embedded (SQLite) app and print the figures.
pub async fn bench(n: u64) {
    let (app, _recorder, _dir) = super::open(None).await;
    let store = app.store.clone();
    let taken = Arc::new(AtomicU64::new(0));
    let cpu_before = thread_cpu_us();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                put(store.as_ref(), i).await;
                i += PRODUCERS;
            }
        }));
    }
    for w in 0..WORKERS {
        let store = store.clone();
        let taken = taken.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("bench-worker-{w}");
            while taken.load(Ordering::Relaxed) < n {
                let claimed = store
                    .claim_events(&owner, UnixMs::now().plus(LEASE_MS), 1)
                    .await
                    .unwrap();
                let Some(mut next) = claimed.into_iter().next() else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                loop {
                    taken.fetch_add(1, Ordering::Relaxed);
                    match finish(store.as_ref(), &owner, &next).await {
                        Some(claimed) => next = claimed,
                        None => break,
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = thread_cpu_us();
    let per_event = |name: Option<&str>| {
        let used = |cpu: &[(String, u64)]| -> u64 {
            cpu.iter()
                .filter(|(thread, _)| name.is_none_or(|name| thread == name))
                .map(|(_, us)| us)
                .sum()
        };
        used(&cpu_after).saturating_sub(used(&cpu_before)) as f64 / n as f64
    };
    println!(
        "sqlite store alone: {n} events / {CONVERSATIONS} conversations: {:.0} events/s; CPU per \
         event: writer thread {:.0} µs, whole process {:.0} µs (load average {})",
        n as f64 / elapsed,
        per_event(Some("sqlite-writer")),
        per_event(None),
        super::load_average(),
    );
}

/// Put event `i` into the inbox, as the web API does; waits and tries again while the store
/// says it is busy.
async fn put(store: &dyn Store, i: u64) {
    let conversation =
        ConversationRef::new("web", "local", format!("c{}", i % CONVERSATIONS), None);
    let text = format!("note {i} for the benchmark");
    let event = NewEvent {
        platform_event_id: format!("e{i}"),
        payload: serde_json::json!({
            "platform_event_id": format!("e{i}"),
            "user": { "id": "web", "name": null },
            "kind": { "type": "command", "name": "remember", "args": text },
            "text": format!("/remember {text}"),
            "attachments": [],
            "route": null,
        })
        .to_string(),
        conversation,
        user_id: "web".into(),
        text: format!("/remember {text}"),
        attachments: Vec::new(),
    };
    loop {
        match store.insert_event(&event).await {
            Ok(_) => return,
            Err(StoreError::Busy) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => panic!("cannot put event {i}: {e}"),
        }
    }
}

/// What the worker writes for a claimed `/remember` event; returns the conversation's next
/// event when the completion claimed it.
async fn finish(store: &dyn Store, owner: &str, event: &ClaimedEvent) -> Option<ClaimedEvent> {
    let channel = ChannelRef {
        platform: event.conversation.platform.clone(),
        workspace: event.conversation.workspace.clone(),
        channel: event.conversation.channel.clone(),
    };
    let note = store
        .remember(&NewNote {
            channel,
            text: format!("note of event {}", event.id),
            created_by: "web".into(),
            source: Some(format!("event:{}", event.id)),
        })
        .await
        .unwrap();
    let answer = format!("Remembered as #{note}.");
    let lease_until = UnixMs::now().plus(LEASE_MS);
    let done = Completion {
        messages: vec![NewMessage {
            role: Role::Assistant,
            text: answer.clone(),
            meta: None,
            attachments: Vec::new(),
        }],
        replies: vec![NewReply {
            idempotency_key: format!("{}:0", event.id),
            payload: serde_json::json!({ "text": answer, "attachments": [], "buttons": [], "route": null })
                .to_string(),
        }],
        error: None,
        reply_lease_until: Some(lease_until),
        claim_next_until: Some(lease_until),
    };
    let completed = store
        .complete_event(event, owner, &done)
        .await
        .unwrap()
        .expect("the lease is held");
    for reply in &completed.replies {
        store.mark_reply_sent(reply.id, None).await.unwrap();
    }
    completed.next
}

/// CPU time (user + system) of each of this process's threads, by thread name, in µs.
fn thread_cpu_us() -> Vec<(String, u64)> {
    let tick_us = 1_000_000 / 100; // USER_HZ
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // The fields after the name in parentheses: utime and stime are the 12th and 13th.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((name.trim().to_string(), ticks * tick_us))
        })
        .collect()
}
