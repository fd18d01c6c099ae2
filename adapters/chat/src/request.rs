//! Small helpers every adapter's HTTP routes and clients share: reading a cookie or a bearer
//! token from a request, how long a 429 asks to wait, and comparing secrets in constant time
//! (`subtle`).

use std::time::Duration;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use subtle::ConstantTimeEq;

/// Compare secrets in constant time (for equal lengths; a length difference shows).
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

/// A `Retry-After` value in seconds (fractions too, as some APIs send them); `None` for an
/// HTTP date, a negative number or anything else.
pub fn retry_after_seconds(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| *seconds >= 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
}

/// How long an answer asks to wait: `retry-after-ms` (OpenAI), else `retry-after` in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(retry_after_seconds) {
        return Some(ms / 1000);
    }
    header("retry-after").and_then(retry_after_seconds)
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
    fn retry_after_reads_seconds_and_ms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static(" 0.5 "));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
        assert_eq!(retry_after_seconds("inf"), None);
        assert_eq!(retry_after_seconds("soon"), None);
    }

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
