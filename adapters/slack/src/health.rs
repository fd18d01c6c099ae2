//! The adapter's state for `/readyz`: mode, Socket Mode connection state, when the last
//! envelope or HTTP event arrived, and how often the socket was replaced.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

/// The Socket Mode connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Socket {
    Off = 0,
    Connecting = 1,
    Connected = 2,
    Disconnected = 3,
}

impl Socket {
    fn name(self) -> &'static str {
        match self {
            Socket::Off => "off",
            Socket::Connecting => "connecting",
            Socket::Connected => "connected",
            Socket::Disconnected => "disconnected",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Socket::Connecting,
            2 => Socket::Connected,
            3 => Socket::Disconnected,
            _ => Socket::Off,
        }
    }
}

pub(crate) struct Health {
    mode: &'static str,
    socket: AtomicU8,
    last_envelope_ms: AtomicI64,
    last_event_ms: AtomicI64,
    connections: AtomicU64,
}

impl Health {
    pub(crate) fn new(mode: &'static str) -> Self {
        Self {
            mode,
            socket: AtomicU8::new(Socket::Off as u8),
            last_envelope_ms: AtomicI64::new(0),
            last_event_ms: AtomicI64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_socket(&self, state: Socket) {
        if state == Socket::Connected {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.socket.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn socket(&self) -> Socket {
        Socket::from_u8(self.socket.load(Ordering::Relaxed))
    }

    /// A Socket Mode envelope (any type) arrived.
    pub(crate) fn envelope(&self) {
        self.last_envelope_ms
            .store(crate::now_ms(), Ordering::Relaxed);
    }

    /// An Events API request (HTTP) was accepted.
    pub(crate) fn event(&self) {
        self.last_event_ms.store(crate::now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let time = |ms: i64| (ms > 0).then(|| rfc3339(ms));
        serde_json::json!({
            "mode": self.mode,
            "socket": self.socket().name(),
            "connections": self.connections.load(Ordering::Relaxed),
            "last_envelope_at": time(self.last_envelope_ms.load(Ordering::Relaxed)),
            "last_event_at": time(self.last_event_ms.load(Ordering::Relaxed)),
        })
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_state() {
        let h = Health::new("socket_mode");
        assert_eq!(h.to_json()["socket"], "off");
        assert!(h.to_json()["last_envelope_at"].is_null());
        h.set_socket(Socket::Connected);
        h.envelope();
        let j = h.to_json();
        assert_eq!(j["socket"], "connected");
        assert_eq!(j["connections"], 1);
        assert!(j["last_envelope_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
