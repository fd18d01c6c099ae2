//! Browser sessions shared by the web chat (`/login`) and the admin pages (`/admin/login`):
//! signed, expiring session cookies, the bearer token check, and cookie headers.
//!
//! A session cookie is `<issued>.<random id>.<HMAC>`: the HMAC covers the purpose, the issue
//! time and the id, with a key derived from the admin token. So any instance can check a cookie
//! without a session table, a cookie never carries the token, it expires `lifetime` after its
//! issue, and rotating the token ends every session at once.

use axum::http::HeaderMap;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Clock skew tolerated for a cookie issued by another instance "in the future".
const MAX_SKEW_SECONDS: i64 = 60;

/// Signs and checks one kind of session (the purpose keeps chat and admin cookies apart).
pub struct SessionKey {
    purpose: &'static str,
    key: hmac::Key,
    lifetime_seconds: i64,
}

impl SessionKey {
    /// A key for sessions of `purpose` lasting `lifetime_seconds`, derived from `secret` (the
    /// admin token): a new secret makes every earlier cookie invalid.
    pub fn new(purpose: &'static str, secret: &str, lifetime_seconds: i64) -> Self {
        let mut material = format!("ecdysis session key v2\0{purpose}\0").into_bytes();
        material.extend_from_slice(secret.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &material);
        Self {
            purpose,
            key: hmac::Key::new(hmac::HMAC_SHA256, digest.as_ref()),
            lifetime_seconds,
        }
    }

    pub fn lifetime_seconds(&self) -> i64 {
        self.lifetime_seconds
    }

    /// A new session cookie value for a login at `now` (Unix seconds); `None` only when the
    /// system has no randomness to give.
    pub fn issue(&self, now: i64) -> Option<String> {
        let mut id = [0u8; 16];
        SystemRandom::new().fill(&mut id).ok()?;
        let id = hex::encode(id);
        let signature = self.sign(&self.message(now, &id));
        Some(format!("{now}.{id}.{signature}"))
    }

    /// The session id of a cookie value that is signed with this key and not expired at `now`.
    pub fn verify(&self, value: &str, now: i64) -> Option<String> {
        let mut parts = value.split('.');
        let (issued, id, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.is_empty() || id.len() > 64 {
            return None;
        }
        let issued: i64 = issued.parse().ok()?;
        let signature = hex::decode(signature).ok()?;
        hmac::verify(&self.key, self.message(issued, id).as_bytes(), &signature).ok()?;
        let fresh =
            issued <= now + MAX_SKEW_SECONDS && now < issued.saturating_add(self.lifetime_seconds);
        fresh.then(|| id.to_string())
    }

    /// A hex HMAC of `message` under this key (CSRF tokens of a session).
    pub fn sign(&self, message: &str) -> String {
        hex::encode(hmac::sign(&self.key, message.as_bytes()))
    }

    fn message(&self, issued: i64, id: &str) -> String {
        format!("{}|session|{issued}|{id}", self.purpose)
    }
}

pub use ecdysis_chat::request::{bearer, cookie, secret_eq};

/// How a session cookie is set: `HttpOnly; SameSite=Strict` always, `Secure` over https.
#[derive(Clone, Copy, Debug)]
pub struct CookieSpec {
    pub name: &'static str,
    pub path: &'static str,
}

impl CookieSpec {
    /// The `Set-Cookie` value that stores `value` for `max_age` seconds.
    pub fn set(&self, value: &str, max_age: i64, secure: bool) -> String {
        format!(
            "{}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            self.name,
            self.path,
            if secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the cookie (logout).
    pub fn clear(&self, secure: bool) -> String {
        self.set("", 0, secure)
    }
}

/// Whether the client reached us over https: directly configured (`ECDYSIS_PUBLIC_URL` with
/// `https://`), or through a proxy such as Fly's that says so in `X-Forwarded-Proto`.
pub fn is_https(headers: &HeaderMap, public_https: bool) -> bool {
    public_https
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim() == "https"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn sessions_are_signed_and_expire() {
        let key = SessionKey::new("chat", "s3cret-token", 3600);
        let value = key.issue(NOW).unwrap();
        assert!(!value.contains("s3cret-token"));
        let id = key.verify(&value, NOW).expect("a fresh session is valid");
        assert_eq!(key.verify(&value, NOW + 3599), Some(id));
        assert_eq!(key.verify(&value, NOW + 3600), None, "expired");
        // Tampering with the issue time (to live longer) breaks the signature.
        let (_, rest) = value.split_once('.').unwrap();
        assert_eq!(
            key.verify(&format!("{}.{rest}", NOW + 1000), NOW + 3700),
            None
        );
        // Another token (a rotated one) or another purpose does not accept it.
        assert_eq!(
            SessionKey::new("chat", "new-token", 3600).verify(&value, NOW),
            None
        );
        assert_eq!(
            SessionKey::new("admin", "s3cret-token", 3600).verify(&value, NOW),
            None
        );
        // Issued far in the future (a forged clock): refused.
        let later = key.issue(NOW + 3600).unwrap();
        assert_eq!(key.verify(&later, NOW), None);
        for junk in ["", "1.2", "1.2.3.4", "x.y.z", &format!("{NOW}..00")] {
            assert_eq!(key.verify(junk, NOW), None, "{junk}");
        }
    }

    #[test]
    fn https_is_seen() {
        let mut h = HeaderMap::new();
        assert!(!is_https(&h, false));
        assert!(is_https(&h, true));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(is_https(&h, false));
    }

    #[test]
    fn cookies_are_locked_down() {
        let spec = CookieSpec {
            name: "s",
            path: "/",
        };
        let set = spec.set("v", 60, true);
        for part in [
            "s=v",
            "Path=/",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=60",
            "Secure",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!spec.set("v", 60, false).contains("Secure"));
        assert!(spec.clear(false).contains("Max-Age=0"));
    }
}
