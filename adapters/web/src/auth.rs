//! Access to the web chat: open when no admin token is set; otherwise the token as a bearer
//! header, or the signed session cookie of a `/login` (on loopback too).

use axum::http::HeaderMap;

use crate::session::{CookieSpec, SessionKey, bearer, cookie, secret_eq};

/// The chat's session cookie.
pub const COOKIE: CookieSpec = CookieSpec {
    name: "ecdysis_session",
    path: "/",
};
/// How long a chat login lasts.
pub const SESSION_SECONDS: i64 = 7 * 24 * 3600;

/// The token and the session key derived from it.
pub struct ChatAuth {
    token: String,
    sessions: SessionKey,
}

impl ChatAuth {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_string(),
            sessions: SessionKey::new("chat", token, SESSION_SECONDS),
        }
    }

    /// True when the request carries the token as a bearer header, or a valid session cookie.
    pub fn authorized(&self, headers: &HeaderMap, now: i64) -> bool {
        bearer(headers).is_some_and(|given| self.token_matches(given))
            || cookie(headers, COOKIE.name)
                .is_some_and(|value| self.sessions.verify(value, now).is_some())
    }

    pub fn token_matches(&self, given: &str) -> bool {
        secret_eq(given.as_bytes(), self.token.as_bytes())
    }

    pub fn sessions(&self) -> &SessionKey {
        &self.sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::{AUTHORIZATION, COOKIE as COOKIE_HEADER};

    const NOW: i64 = 1_800_000_000;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE_HEADER,
            format!("a=b; {}={value}", COOKIE.name).parse().unwrap(),
        );
        h
    }

    #[test]
    fn accepts_bearer_or_a_session() {
        let auth = ChatAuth::new("s3cret");
        assert!(!auth.authorized(&HeaderMap::new(), NOW));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(auth.authorized(&h, NOW));
        h.insert(AUTHORIZATION, "Bearer s3cret2".parse().unwrap());
        assert!(!auth.authorized(&h, NOW));
        let session = auth.sessions().issue(NOW).unwrap();
        assert!(auth.authorized(&with_cookie(&session), NOW));
        assert!(!auth.authorized(&with_cookie(&session), NOW + SESSION_SECONDS));
        // The token itself is not a valid cookie; nor is a session of a rotated token.
        assert!(!auth.authorized(&with_cookie("s3cret"), NOW));
        assert!(!ChatAuth::new("rotated").authorized(&with_cookie(&session), NOW));
        assert!(!auth.authorized(&with_cookie(""), NOW));
    }
}
