//! A worker that finishes an event goes on with its conversation's next one, claimed with the
//! completion: replies keep their order, each event runs once, and a next event whose lease ran
//! low while the replies before it were delivered is left to the dispatcher instead of running
//! on a lease that may be gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ecdysis::config::Config;
use ecdysis::server::app::App;
use ecdysis::storage::store::InboxStatus;
use ecdysis_chat::{
    ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Reply, UserRef,
};

/// Records the order replies arrive in; the reply to event 0 takes `first_delay` to deliver.
struct SlowAdapter {
    first_delay: Duration,
    delivered: Mutex<Vec<u64>>,
}

#[async_trait]
impl ChatAdapter for SlowAdapter {
    fn platform(&self) -> &str {
        "chain"
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        let n = reply.route["n"].as_u64().unwrap();
        if n == 0 {
            tokio::time::sleep(self.first_delay).await;
        }
        self.delivered.lock().unwrap().push(n);
        Ok(Delivered::default())
    }
}

fn event(n: u64) -> Event {
    let conversation = ConversationRef::new("chain", "w", "c1", None);
    let user = UserRef {
        id: "u".into(),
        name: None,
    };
    let mut event = Event::from_text(
        format!("e{n}"),
        conversation,
        user,
        format!("/remember note {n}"),
    );
    event.route = serde_json::json!({ "n": n });
    event
}

/// Three events of one conversation through a bus with leases of `lease_seconds`; returns the
/// order their replies were delivered in and each event's attempts, oldest first.
async fn run(lease_seconds: u64, first_delay: Duration) -> (Vec<u64>, Vec<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.bus.lease_seconds = lease_seconds;
    let app = App::open(config).await.unwrap();
    let adapter = Arc::new(SlowAdapter {
        first_delay,
        delivered: Mutex::new(Vec::new()),
    });
    app.bus.register_adapter(adapter.clone());
    for n in 0..3 {
        app.bus.submit(event(n)).await.unwrap();
    }
    let workers = app.bus.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while adapter.delivered.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {:?} delivered",
            adapter.delivered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for a second run of any event to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    workers.shutdown(Duration::from_secs(5)).await;
    let mut done = app.store.inbox_events(InboxStatus::Done, 10).await.unwrap();
    done.sort_by_key(|e| e.id);
    let attempts = done.iter().map(|e| e.attempts).collect();
    let delivered = adapter.delivered.lock().unwrap().clone();
    (delivered, attempts)
}

#[tokio::test]
async fn a_conversations_events_run_once_in_order() {
    // A long lease: however busy the machine, no chained event comes near a third of it.
    let (delivered, attempts) = run(60, Duration::ZERO).await;
    assert_eq!(delivered, [0, 1, 2]);
    assert_eq!(attempts, [1, 1, 1]);
}

#[tokio::test]
async fn a_next_event_whose_lease_ran_low_is_left_to_the_dispatcher() {
    // Delivering event 0's reply takes longer than two thirds of event 1's three-second lease,
    // which was taken with event 0's completion: event 1 is not run on it but claimed again.
    // Event 2 follows event 1 at once, with seconds to spare before a third of its lease.
    let (delivered, attempts) = run(3, Duration::from_millis(2500)).await;
    assert_eq!(delivered, [0, 1, 2], "each reply once, in order");
    assert_eq!(attempts, [1, 2, 1]);
}
