//! The store's clock: the system's, which tests may move ahead (an expired lease without
//! waiting for it to expire).

use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch by the system clock, plus an offset that only moves ahead.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Milliseconds since the Unix epoch, by this clock.
    pub fn now(&self) -> i64 {
        super::now_ms() + self.offset()
    }

    /// How far this clock is ahead of the system's (zero unless moved).
    pub fn offset(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Move the clock ahead by `ms` milliseconds.
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms.max(0), Ordering::Relaxed);
    }
}
