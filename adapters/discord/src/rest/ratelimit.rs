//! Discord's rate limits, kept in process when the REST base is Discord's own: requests of one
//! route (its method and major parameter: the channel, guild or webhook) go one at a time,
//! wait while the route's bucket is used up (`X-RateLimit-Remaining` 0 until
//! `X-RateLimit-Reset-After`), and every request waits out a global 429.
//! With a proxy in front (`DISCORD_API_URL`), the proxy owns rate limiting and this is off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::time::Instant;

/// Routes remembered before idle ones are forgotten.
const MAX_ROUTES: usize = 10_000;

/// One route's bucket: whether it is used up, and until when.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// Requests left in the current window (`None`: not told yet).
    remaining: Option<u64>,
    /// When the window starts again.
    reset_at: Option<Instant>,
}

impl Bucket {
    /// How long to wait before the next request of this route.
    fn wait(&self, now: Instant) -> Option<Duration> {
        match (self.remaining, self.reset_at) {
            (Some(0), Some(reset)) if reset > now => Some(reset - now),
            _ => None,
        }
    }

    /// Read the bucket's state from an answer's headers.
    fn update(&mut self, headers: &HeaderMap, now: Instant) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        if let Some(remaining) = number("x-ratelimit-remaining") {
            self.remaining = Some(remaining.max(0.0) as u64);
        }
        if let Some(after) = number("x-ratelimit-reset-after") {
            self.reset_at = Some(now + seconds(after));
        }
    }

    /// A 429 for this route: nothing more until `retry_after` has passed.
    fn exhaust(&mut self, retry_after: Duration, now: Instant) {
        self.remaining = Some(0);
        self.reset_at = Some(now + retry_after);
    }
}

/// Seconds as Discord writes them (a float, e.g. `0.35`), never negative or absurd.
pub(crate) fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.clamp(0.0, 3_600.0)).unwrap_or_default()
}

/// Every route's bucket and the global pause.
#[derive(Default)]
pub(crate) struct RateLimits {
    routes: Mutex<HashMap<String, Arc<AsyncMutex<Bucket>>>>,
    global_until: Mutex<Option<Instant>>,
}

/// A route's turn: held while its request runs, so the route's requests go one at a time.
pub(crate) struct Turn {
    bucket: OwnedMutexGuard<Bucket>,
}

impl RateLimits {
    /// Wait for `route`'s turn: for the requests before it, a used-up bucket and a global
    /// pause.
    pub async fn turn(&self, route: &str) -> Turn {
        let bucket = self.bucket(route).lock_owned().await;
        if let Some(wait) = bucket.wait(Instant::now()) {
            tracing::debug!(route, ?wait, "waiting for Discord's rate limit");
            tokio::time::sleep(wait).await;
        }
        let global = self.global_until.lock().ok().and_then(|until| *until);
        if let Some(until) = global {
            tokio::time::sleep_until(until).await;
        }
        Turn { bucket }
    }

    /// A global 429: every route waits `retry_after`.
    pub fn pause_all(&self, retry_after: Duration) {
        if let Ok(mut until) = self.global_until.lock() {
            let end = Instant::now() + retry_after;
            *until = Some(until.map_or(end, |u| u.max(end)));
        }
    }

    fn bucket(&self, route: &str) -> Arc<AsyncMutex<Bucket>> {
        let Ok(mut routes) = self.routes.lock() else {
            return Arc::default();
        };
        if routes.len() >= MAX_ROUTES {
            // Forget the buckets nobody is using (their windows are long over, or soon).
            routes.retain(|_, bucket| Arc::strong_count(bucket) > 1);
        }
        routes.entry(route.to_string()).or_default().clone()
    }
}

impl Turn {
    pub fn update(&mut self, headers: &HeaderMap) {
        self.bucket.update(headers, Instant::now());
    }

    pub fn exhaust(&mut self, retry_after: Duration) {
        self.bucket.exhaust(retry_after, Instant::now());
    }
}

/// The rate-limit key of a request: its method and path with the major parameter (the id
/// after `channels`, `guilds` or `webhooks`, and a webhook's token) kept and other ids
/// generalised, as Discord scopes its buckets.
pub(crate) fn route_key(method: &reqwest::Method, path: &str) -> String {
    let mut key = format!("{method} ");
    let mut previous = "";
    let mut after_webhook_id = false;
    for segment in path.trim_matches('/').split('/') {
        let major = matches!(previous, "channels" | "guilds" | "webhooks");
        let generic = !major && !after_webhook_id && segment.bytes().all(|b| b.is_ascii_digit());
        key.push('/');
        key.push_str(if generic && !segment.is_empty() {
            "{id}"
        } else {
            segment
        });
        after_webhook_id = previous == "webhooks";
        previous = segment;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Method;
    use reqwest::header::HeaderValue;

    #[test]
    fn routes_keep_their_major_parameter() {
        assert_eq!(
            route_key(&Method::POST, "/channels/12/messages"),
            "POST /channels/12/messages"
        );
        assert_eq!(
            route_key(&Method::PATCH, "/channels/12/messages/99"),
            "PATCH /channels/12/messages/{id}"
        );
        assert_eq!(
            route_key(&Method::PATCH, "/webhooks/1/tok/messages/@original"),
            "PATCH /webhooks/1/tok/messages/@original"
        );
        assert_eq!(
            route_key(&Method::POST, "/interactions/5/tok/callback"),
            "POST /interactions/{id}/tok/callback"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_up_bucket_waits_for_its_reset_and_a_429_pauses_it() {
        let limits = RateLimits::default();
        let started = Instant::now();
        let mut turn = limits.turn("POST /channels/1/messages").await;
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset-after", HeaderValue::from_static("1.5"));
        turn.update(&headers);
        drop(turn);
        // Another route is not held up.
        drop(limits.turn("POST /channels/2/messages").await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        let mut turn = limits.turn("POST /channels/1/messages").await;
        assert_eq!(started.elapsed(), Duration::from_millis(1_500));
        turn.exhaust(Duration::from_secs(2));
        drop(turn);
        drop(limits.turn("POST /channels/1/messages").await);
        assert_eq!(started.elapsed(), Duration::from_millis(3_500));
        limits.pause_all(Duration::from_secs(1));
        drop(limits.turn("POST /channels/2/messages").await);
        assert_eq!(started.elapsed(), Duration::from_millis(4_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_routes_requests_go_one_at_a_time() {
        let limits = Arc::new(RateLimits::default());
        let first = limits.turn("GET /channels/1").await;
        let waiting = {
            let limits = limits.clone();
            tokio::spawn(async move { drop(limits.turn("GET /channels/1").await) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap();
    }
}
