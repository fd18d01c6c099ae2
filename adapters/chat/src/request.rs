//! Small helpers every adapter's HTTP routes share: reading a cookie or a bearer token from a
//! request, and comparing secrets in constant time (`subtle`).

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use subtle::ConstantTimeEq;

/// Compare secrets in constant time (for equal lengths; a length difference shows).
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The value of one cookie (the first of that name), unquoted.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_eq(b"tok", b"tok"));
        assert!(!secret_eq(b"tok", b"tok2"));
        assert!(!secret_eq(b"tok", b"toc"));
        assert!(!secret_eq(b"", b"tok"));
    }

    #[test]
    fn headers_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        assert_eq!(cookie(&h, "a"), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer  tok "));
        h.append(COOKIE, HeaderValue::from_static("a=b; session=\"v.1.2\""));
        h.append(COOKIE, HeaderValue::from_static("later=x; a=second"));
        assert_eq!(bearer(&h), Some("tok"));
        assert_eq!(cookie(&h, "session"), Some("v.1.2"));
        assert_eq!(cookie(&h, "a"), Some("b"), "the first one wins");
        assert_eq!(cookie(&h, "later"), Some("x"));
        assert_eq!(cookie(&h, "missing"), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcg=="));
        assert_eq!(bearer(&h), None);
    }
}
