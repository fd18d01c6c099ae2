//! Access to the web chat: open on loopback, a bearer token or login cookie elsewhere.

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};

/// The login cookie's name.
pub const COOKIE_NAME: &str = "ecdysis_session";

/// True when the request carries `token` as a bearer header, or the login cookie whose value
/// is `cookie_value` (derived from the token by the core, so the cookie never holds the token).
pub fn authorized(headers: &HeaderMap, token: &str, cookie_value: &str) -> bool {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()));
    bearer
        || (!cookie_value.is_empty()
            && cookie(headers, COOKIE_NAME)
                .is_some_and(|given| constant_time_eq(given.as_bytes(), cookie_value.as_bytes())))
}

/// The value of one cookie.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Compare secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bearer_or_cookie() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3cret", "derived"));
        h.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized(&h, "s3cret", "derived"));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=b; ecdysis_session=derived".parse().unwrap());
        assert!(authorized(&h, "s3cret", "derived"));
        assert!(!authorized(&h, "s3cret", "other"));
        // The token itself is not a valid cookie.
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "ecdysis_session=s3cret".parse().unwrap());
        assert!(!authorized(&h, "s3cret", "derived"));
        // No cookie value configured: no cookie is accepted, not even an empty one.
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "ecdysis_session=".parse().unwrap());
        assert!(!authorized(&h, "s3cret", ""));
    }
}
