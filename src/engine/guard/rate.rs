//! Token buckets per user and per channel: each holds up to a minute's worth of messages and
//! refills steadily, so a burst is fine and a flood from one user or channel is cut off
//! without touching anyone else's bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are dropped.
const MAX_BUCKETS: usize = 50_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One family of buckets (all users, or all channels) with the same rate.
#[derive(Debug)]
pub struct Buckets {
    per_minute: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    /// Buckets of `per_minute` messages (also the largest burst).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one message from `key`'s bucket at `now`: `Ok` when there was room, else how long
    /// until there is.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let rate = self.per_minute;
            buckets.retain(|_, b| refilled(b, rate, now) < rate);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.per_minute,
            updated: now,
        });
        bucket.tokens = refilled(bucket, self.per_minute, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(Duration::from_secs_f64(missing * 60.0 / self.per_minute))
        }
    }

    /// Buckets held now (for tests).
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bucket's tokens at `now`, refilled at `per_minute` and capped at it.
fn refilled(bucket: &Bucket, per_minute: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * per_minute / 60.0).min(per_minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_steady_rate() {
        let buckets = Buckets::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take("alice", t0).is_ok());
        }
        let wait = buckets.take("alice", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Bob's bucket is his own.
        assert!(buckets.take("bob", t0).is_ok());
        // One message per 20 s comes back.
        assert!(buckets.take("alice", t0 + Duration::from_secs(20)).is_ok());
        assert!(buckets.take("alice", t0 + Duration::from_secs(21)).is_err());
    }

    #[test]
    fn idle_buckets_are_dropped_when_full() {
        let buckets = Buckets::new(60);
        let t0 = Instant::now();
        for n in 0..MAX_BUCKETS {
            assert!(buckets.take(&format!("u{n}"), t0).is_ok());
        }
        assert_eq!(buckets.len(), MAX_BUCKETS);
        // A minute later every bucket is full again: they go when a new key needs room.
        assert!(buckets.take("new", t0 + Duration::from_secs(61)).is_ok());
        assert_eq!(buckets.len(), 1);
    }
}
