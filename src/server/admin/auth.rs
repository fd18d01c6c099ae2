//! Admin access: `ECDYSIS_ADMIN_TOKEN` as a bearer header, or a session cookie from the login
//! form. The cookie never holds the token: it is a session signed with a key derived from the
//! token ([`ecdysis_web::session`], shared with the web chat's `/login`), so any instance can
//! check it (no session table), changing the token ends every session, and a stolen cookie
//! expires. Failed logins are limited per client ([`LoginLimiter`], shared with the web chat).
//! POST forms carry a CSRF token (an HMAC of the session id); bearer requests need none
//! (browsers never add that header by themselves).

use std::sync::Arc;

use axum::http::HeaderMap;
use ecdysis_web::limiter::LoginLimiter;
use ecdysis_web::session::{self, CookieSpec, SessionKey, bearer, cookie, secret_eq};

/// The session cookie.
pub const COOKIE: CookieSpec = CookieSpec {
    name: "ecdysis_admin",
    path: "/admin",
};
/// How long a login lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// Who a request is, as far as the admin pages care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `Authorization: Bearer <token>`: no CSRF token needed.
    Bearer,
    /// A logged-in browser; POSTs must carry [`Sessions::csrf`] of this id.
    Session {
        id: String,
    },
    /// Logged in through Cloudflare Access (a checked JWT on the request); POSTs must carry
    /// the CSRF token of this subject.
    Access {
        subject: String,
    },
    /// Showed a credential that does not check out (a forged or expired Access JWT): 401.
    Refused,
    Anonymous,
}

/// Signs and checks sessions and CSRF tokens.
pub struct Sessions {
    token: String,
    key: SessionKey,
    logins: Arc<LoginLimiter>,
    /// The public URL is https: cookies are always `Secure`.
    https: bool,
}

impl Sessions {
    pub fn new(token: &str, logins: Arc<LoginLimiter>, https: bool) -> Self {
        Self {
            token: token.to_string(),
            key: SessionKey::new("admin", token, SESSION_SECONDS),
            logins,
            https,
        }
    }

    /// The caller of a request, from its headers, at `now` (Unix seconds).
    pub fn caller(&self, headers: &HeaderMap, now: i64) -> Caller {
        if bearer(headers).is_some_and(|given| self.token_matches(given)) {
            return Caller::Bearer;
        }
        match cookie(headers, COOKIE.name).and_then(|c| self.key.verify(c, now)) {
            Some(id) => Caller::Session { id },
            None => Caller::Anonymous,
        }
    }

    /// Whether `given` is the admin token (constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        secret_eq(given.as_bytes(), self.token.as_bytes())
    }

    /// A new session cookie value for a login at `now`.
    pub fn new_session(&self, now: i64) -> Option<String> {
        self.key.issue(now)
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session_id: &str) -> String {
        self.key.sign(&format!("csrf|{session_id}"))
    }

    /// The CSRF token to put into `caller`'s forms (none for bearer callers, who need none).
    pub fn csrf_of(&self, caller: &Caller) -> String {
        match caller {
            Caller::Session { id } => self.csrf(id),
            Caller::Access { subject } => self.csrf(&access_session(subject)),
            _ => String::new(),
        }
    }

    /// Whether a POST from `caller` carrying `given` may change anything.
    pub fn csrf_ok(&self, caller: &Caller, given: &str) -> bool {
        match caller {
            Caller::Bearer => true,
            Caller::Session { id } => secret_eq(given.as_bytes(), self.csrf(id).as_bytes()),
            Caller::Access { subject } => secret_eq(
                given.as_bytes(),
                self.csrf(&access_session(subject)).as_bytes(),
            ),
            Caller::Refused | Caller::Anonymous => false,
        }
    }

    /// Failed logins per client (shared with the web chat's `/login` and bearer checks).
    pub fn logins(&self) -> &LoginLimiter {
        &self.logins
    }

    /// The `Set-Cookie` value for a session (or, with `None`, one that ends it).
    pub fn set_cookie(&self, value: Option<&str>, headers: &HeaderMap) -> String {
        let secure = session::is_https(headers, self.https);
        match value {
            Some(value) => COOKIE.set(value, SESSION_SECONDS, secure),
            None => COOKIE.clear(secure),
        }
    }
}

/// The session id an Access login's CSRF tokens are bound to.
fn access_session(subject: &str) -> String {
    format!("cf-access|{subject}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use axum::http::header::{AUTHORIZATION, COOKIE as COOKIE_HEADER};

    fn sessions(token: &str) -> Sessions {
        Sessions::new(token, Arc::new(LoginLimiter::default()), false)
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE_HEADER,
            HeaderValue::from_str(&format!("other=1; {}={value}", COOKIE.name)).unwrap(),
        );
        headers
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let sessions = sessions("s3cret-token");
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
        // Another token's sessions are not valid (rotating the token ends them).
        assert_eq!(
            self::sessions("other").caller(&with_cookie(&value), now),
            Caller::Anonymous
        );
        // A web chat session of the same token is not an admin session.
        let chat = SessionKey::new("chat", "s3cret-token", 3600)
            .issue(now)
            .unwrap();
        assert_eq!(sessions.caller(&with_cookie(&chat), now), Caller::Anonymous);
        // CSRF tokens are per session.
        let caller = Caller::Session { id: id.clone() };
        assert!(sessions.csrf_ok(&caller, &sessions.csrf(&id)));
        assert!(!sessions.csrf_ok(&caller, &sessions.csrf("another")));
        assert!(!sessions.csrf_ok(&Caller::Anonymous, &sessions.csrf(&id)));
    }

    #[test]
    fn bearer_needs_the_exact_token() {
        let sessions = sessions("tok");
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok"));
        assert_eq!(sessions.caller(&headers, 0), Caller::Bearer);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok2"));
        assert_eq!(sessions.caller(&headers, 0), Caller::Anonymous);
    }

    #[test]
    fn cookies_are_locked_down() {
        let mut headers = HeaderMap::new();
        let cookie = sessions("t").set_cookie(Some("v"), &headers);
        for part in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(!cookie.contains("Secure"));
        assert!(
            sessions("t")
                .set_cookie(None, &headers)
                .contains("Max-Age=0")
        );
        let https = Sessions::new("t", Arc::new(LoginLimiter::default()), true);
        assert!(https.set_cookie(Some("v"), &headers).contains("; Secure"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(
            sessions("t")
                .set_cookie(Some("v"), &headers)
                .contains("; Secure")
        );
    }
}
