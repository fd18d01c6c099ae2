//! The adapter's state for `/readyz`: the gateway connection stage and the last event's time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

/// Shared between the gateway handlers (writers) and `ChatAdapter::health` (reader).
#[derive(Debug)]
pub(crate) struct Health {
    /// `off`, `connecting`, `handshake`, `identifying`, `connected`, `resuming`, `disconnected`.
    stage: Mutex<String>,
    /// The websocket URL the gateway connects to, once the configured API named it.
    gateway_url: Mutex<Option<String>>,
    last_event_ms: AtomicI64,
    /// READY and RESUMED seen since start.
    ready_count: AtomicU64,
    resumed_count: AtomicU64,
    /// The bot's own user id, once READY told it.
    bot_user_id: watch::Sender<Option<u64>>,
    interactions_endpoint: bool,
}

pub(crate) use ecdysis_chat::time::now_ms;

impl Health {
    pub fn new(gateway: bool, interactions_endpoint: bool) -> Self {
        Self {
            stage: Mutex::new(if gateway { "connecting" } else { "off" }.into()),
            gateway_url: Mutex::new(None),
            last_event_ms: AtomicI64::new(0),
            ready_count: AtomicU64::new(0),
            resumed_count: AtomicU64::new(0),
            bot_user_id: watch::channel(None).0,
            interactions_endpoint,
        }
    }

    pub fn set_stage(&self, stage: &str) {
        if let Ok(mut current) = self.stage.lock() {
            *current = stage.to_string();
        }
    }

    pub fn stage(&self) -> String {
        self.stage.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn set_gateway_url(&self, url: &str) {
        if let Ok(mut current) = self.gateway_url.lock() {
            *current = Some(url.to_string());
        }
    }

    pub fn gateway_url(&self) -> Option<String> {
        self.gateway_url.lock().ok().and_then(|u| u.clone())
    }

    pub fn event_seen(&self) {
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn ready(&self, bot_user_id: u64) {
        self.bot_user_id.send_replace(Some(bot_user_id));
        self.ready_count.fetch_add(1, Ordering::Relaxed);
        self.set_stage("connected");
    }

    pub fn resumed(&self) {
        self.resumed_count.fetch_add(1, Ordering::Relaxed);
        self.set_stage("connected");
    }

    pub fn bot_user_id(&self) -> Option<u64> {
        *self.bot_user_id.borrow()
    }

    /// The bot's user id, waiting up to `limit` for READY to tell it (an event dispatched
    /// right after READY may be handled before READY is).
    pub async fn wait_bot_user_id(&self, limit: Duration) -> Option<u64> {
        let mut receiver = self.bot_user_id.subscribe();
        let found = tokio::time::timeout(limit, receiver.wait_for(Option::is_some)).await;
        found.ok().and_then(|r| r.ok().and_then(|id| *id))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let last = self.last_event_ms.load(Ordering::Relaxed);
        json!({
            "gateway": self.stage(),
            "gateway_url": self.gateway_url(),
            "last_event_at_ms": (last > 0).then_some(last),
            "last_event_age_seconds": (last > 0).then(|| (now_ms() - last).max(0) / 1000),
            "sessions": self.ready_count.load(Ordering::Relaxed),
            "resumes": self.resumed_count.load(Ordering::Relaxed),
            "interactions_endpoint": self.interactions_endpoint,
        })
    }
}
