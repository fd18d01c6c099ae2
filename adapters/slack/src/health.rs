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
        let time = |ms: i64| (ms > 0).then(|| ecdysis_chat::time::rfc3339_utc(ms));
        serde_json::json!({
            "mode": self.mode,
            "socket": self.socket().name(),
            "connections": self.connections.load(Ordering::Relaxed),
            "last_envelope_at": time(self.last_envelope_ms.load(Ordering::Relaxed)),
            "last_event_at": time(self.last_event_ms.load(Ordering::Relaxed)),
        })
    }
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
    }
}
