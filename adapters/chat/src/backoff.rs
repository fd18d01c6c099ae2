//! The one retry pause policy of the workspace: exponential from a first pause, capped, with
//! optional jitter. Model calls, the Discord gateway lookup and MCP restarts all use it.

use std::time::Duration;

/// Pauses between attempts: `first * 2^n`, capped at `max`; with jitter, a random point between
/// half and all of that, so many clients that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Backoff {
    /// Exponential from `first` up to `max`, without jitter.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            jitter: false,
        }
    }

    /// The same with jitter.
    pub const fn with_jitter(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The pause after `failures` failed attempts in a row (1 or more; 0 counts as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        let full = self.first.saturating_mul(1u32 << doublings).min(self.max);
        if self.jitter {
            let half = full / 2;
            half + full.mul_f64(rand::random_range(0.0..=0.5))
        } else {
            full
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(b.delay(0), Duration::from_millis(500));
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(2));
        assert_eq!(b.delay(8), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8)).with_jitter();
        for failures in 1..12 {
            let full = Duration::from_secs(1)
                .saturating_mul(1 << (failures - 1).min(16))
                .min(Duration::from_secs(8));
            for _ in 0..50 {
                let d = b.delay(failures);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
            }
        }
    }
}
