//! Admin access: `ECDYSIS_ADMIN_TOKEN` as a bearer header, or a session cookie from the login
//! form. The cookie never holds the token: it is `<expiry>.<random id>.<HMAC>` signed with a key
//! derived from the token, so any instance can check it (no session table), changing the token
//! ends every session, and a stolen cookie expires. POST forms carry a CSRF token (an HMAC of
//! the session id); bearer requests need none (browsers never add that header by themselves).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "ecdysis_admin";
/// How long a login lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;
/// Failed logins allowed per minute (across all clients) before the form answers 429.
const FAILED_LOGINS_PER_MINUTE: u32 = 10;

/// Who a request is, as far as the admin pages care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `Authorization: Bearer <token>`: no CSRF token needed.
    Bearer,
    /// A logged-in browser; POSTs must carry [`Sessions::csrf`] of this id.
    Session {
        id: String,
    },
    Anonymous,
}

/// Signs and checks sessions and CSRF tokens.
pub struct Sessions {
    token: String,
    key: hmac::Key,
    failures: Mutex<(Instant, u32)>,
}

impl Sessions {
    pub fn new(token: &str) -> Self {
        // Domain-separated from any other use of the token.
        let mut material = b"ecdysis admin session key v1\0".to_vec();
        material.extend_from_slice(token.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &material);
        Self {
            token: token.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, digest.as_ref()),
            failures: Mutex::new((Instant::now(), 0)),
        }
    }

    /// The caller of a request, from its headers, at `now` (Unix seconds).
    pub fn caller(&self, headers: &HeaderMap, now: i64) -> Caller {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(given) = bearer
            && self.token_matches(given.trim())
        {
            return Caller::Bearer;
        }
        match cookie(headers, COOKIE_NAME).and_then(|c| self.check_session(c, now)) {
            Some(id) => Caller::Session { id },
            None => Caller::Anonymous,
        }
    }

    /// Whether `given` is the admin token (constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    /// A new session cookie value for a login at `now`.
    pub fn new_session(&self, now: i64) -> Option<String> {
        let mut id = [0u8; 16];
        SystemRandom::new().fill(&mut id).ok()?;
        let id = hex(&id);
        let expires = now + SESSION_SECONDS;
        let signature = self.sign(&format!("session|{expires}|{id}"));
        Some(format!("{expires}.{id}.{signature}"))
    }

    /// The session id of a valid, unexpired cookie value.
    fn check_session(&self, value: &str, now: i64) -> Option<String> {
        let mut parts = value.split('.');
        let (expires, id, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expires: i64 = expires.parse().ok()?;
        let signature = unhex(signature)?;
        hmac::verify(
            &self.key,
            format!("session|{expires}|{id}").as_bytes(),
            &signature,
        )
        .ok()?;
        (now < expires).then(|| id.to_string())
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session_id: &str) -> String {
        self.sign(&format!("csrf|{session_id}"))
    }

    /// Whether a POST from `caller` carrying `given` may change anything.
    pub fn csrf_ok(&self, caller: &Caller, given: &str) -> bool {
        match caller {
            Caller::Bearer => true,
            Caller::Session { id } => constant_time_eq(given.as_bytes(), self.csrf(id).as_bytes()),
            Caller::Anonymous => false,
        }
    }

    fn sign(&self, message: &str) -> String {
        hex(hmac::sign(&self.key, message.as_bytes()).as_ref())
    }

    /// Count a failed login; false when too many failed in the last minute.
    pub fn login_failed(&self) -> bool {
        let Ok(mut failures) = self.failures.lock() else {
            return false;
        };
        if failures.0.elapsed() > Duration::from_secs(60) {
            *failures = (Instant::now(), 0);
        }
        failures.1 += 1;
        failures.1 <= FAILED_LOGINS_PER_MINUTE
    }

    /// Whether logins are blocked for now (too many failures this minute).
    pub fn logins_blocked(&self) -> bool {
        self.failures.lock().is_ok_and(|f| {
            f.0.elapsed() <= Duration::from_secs(60) && f.1 >= FAILED_LOGINS_PER_MINUTE
        })
    }
}

/// The web chat's login cookie value for an admin token: an HMAC of a fixed label keyed by
/// the token, so the cookie (which lasts 30 days) never carries the token itself and cannot
/// be used as a bearer token for `/admin`.
pub fn chat_cookie_value(token: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hex(hmac::sign(&key, b"ecdysis web chat login v1").as_ref())
}

/// The `Set-Cookie` value for a session (or, with `None`, one that ends it).
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(value) => format!(
            "{COOKIE_NAME}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{secure}"
        ),
        None => {
            format!("{COOKIE_NAME}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
        }
    }
}

/// Whether the client reached us over https (directly, or through a proxy such as Fly's that
/// says so in `X-Forwarded-Proto`).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim() == "https"))
}

/// The value of one cookie.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE_NAME}={value}")).unwrap(),
        );
        headers
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let sessions = Sessions::new("s3cret-token");
        let now = 1_800_000_000;
        let value = sessions.new_session(now).unwrap();
        assert!(!value.contains("s3cret-token"));
        let Caller::Session { id } = sessions.caller(&with_cookie(&value), now) else {
            panic!("a fresh session is valid");
        };
        assert_eq!(
            sessions.caller(&with_cookie(&value), now + SESSION_SECONDS),
            Caller::Anonymous,
            "expired"
        );
        // Tampering with the expiry or the id breaks the signature.
        let (expires, rest) = value.split_once('.').unwrap();
        let later = format!("{}.{rest}", expires.parse::<i64>().unwrap() + 1000);
        assert_eq!(
            sessions.caller(&with_cookie(&later), now),
            Caller::Anonymous
        );
        // Another token's sessions are not valid.
        assert_eq!(
            Sessions::new("other").caller(&with_cookie(&value), now),
            Caller::Anonymous
        );
        // CSRF tokens are per session.
        let caller = Caller::Session { id: id.clone() };
        assert!(sessions.csrf_ok(&caller, &sessions.csrf(&id)));
        assert!(!sessions.csrf_ok(&caller, &sessions.csrf("another")));
        assert!(!sessions.csrf_ok(&Caller::Anonymous, &sessions.csrf(&id)));
    }

    #[test]
    fn bearer_needs_the_exact_token() {
        let sessions = Sessions::new("tok");
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok"));
        assert_eq!(sessions.caller(&headers, 0), Caller::Bearer);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok2"));
        assert_eq!(sessions.caller(&headers, 0), Caller::Anonymous);
    }

    #[test]
    fn cookies_are_locked_down() {
        let cookie = set_cookie(Some("v"), true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/admin"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(!set_cookie(Some("v"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }

    #[test]
    fn failed_logins_are_limited() {
        let sessions = Sessions::new("tok");
        for _ in 0..FAILED_LOGINS_PER_MINUTE {
            assert!(sessions.login_failed());
        }
        assert!(sessions.logins_blocked());
        assert!(!sessions.login_failed());
    }
}
