//! Failed-login limits per client: after too many wrong tokens from one address in a window,
//! that address is refused until the window ends, while other clients may still log in. The
//! table is bounded: past its capacity the stalest entries are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per client and window.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// The window that failures count in (and the lock-out lasts).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered at most.
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
}

/// Counts failed logins per client address.
#[derive(Debug)]
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    clients: Mutex<HashMap<IpAddr, Entry>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FAILURES, DEFAULT_WINDOW, DEFAULT_CAPACITY)
    }
}

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when `client` may not try now (too many failures in its window).
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let key = bucket(client);
        let Ok(clients) = self.clients.lock() else {
            return Ok(());
        };
        match clients.get(&key) {
            Some(entry) if entry.failures >= self.max_failures => {
                let elapsed = entry.window_start.elapsed();
                if elapsed < self.window {
                    Err(self.window - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Count a failed attempt of `client`.
    pub fn failed(&self, client: IpAddr) {
        let key = bucket(client);
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let now = Instant::now();
        if !clients.contains_key(&key) && clients.len() >= self.capacity {
            let window = self.window;
            clients.retain(|_, e| now.duration_since(e.window_start) < window);
            if clients.len() >= self.capacity
                && let Some(stalest) = clients
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(k, _)| *k)
            {
                clients.remove(&stalest);
            }
        }
        let entry = clients.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
        });
        if now.duration_since(entry.window_start) >= self.window {
            *entry = Entry {
                window_start: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Forget `client`'s failures (it logged in).
    pub fn succeeded(&self, client: IpAddr) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(&bucket(client));
        }
    }

    /// Clients currently remembered.
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one host's usual share).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_client_is_locked_and_others_are_not() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60), 100);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        assert!(limiter.check(a).is_err());
        assert!(limiter.check(b).is_ok());
        limiter.succeeded(b);
        assert!(limiter.check(a).is_err());
    }

    #[test]
    fn the_lock_ends_with_the_window() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(1), 100);
        limiter.failed(ip("10.0.0.1"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.check(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60), 100);
        limiter.failed(ip("2001:db8::1"));
        limiter.failed(ip("2001:db8::2"));
        assert!(limiter.check(ip("2001:db8::ffff")).is_err());
        assert!(limiter.check(ip("2001:db8:0:1::1")).is_ok());
        limiter.failed(ip("::ffff:10.0.0.9"));
        limiter.failed(ip("10.0.0.9"));
        assert!(limiter.check(ip("10.0.0.9")).is_err());
    }

    #[test]
    fn the_table_is_bounded() {
        let limiter = LoginLimiter::new(1, Duration::from_secs(60), 8);
        for i in 0..100u8 {
            limiter.failed(IpAddr::from([10, 1, 0, i]));
        }
        assert!(limiter.len() <= 8);
        // The newest client is remembered.
        assert!(limiter.check(IpAddr::from([10, 1, 0, 99])).is_err());
    }
}
