//! Wall-clock helpers shared by the core and every adapter: now in Unix milliseconds, and a
//! timestamp as RFC 3339 (through `jiff`, one implementation for the whole workspace).

use jiff::Timestamp;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-26T23:15:53.123Z`). Out-of-range values (beyond year ±9999) clamp to the range.
pub fn rfc3339_utc(ms: i64) -> String {
    format!("{:.3}", timestamp(ms))
}

/// Milliseconds since the Unix epoch as `2026-11-26 23:15:53 UTC`, for people.
pub fn display_utc(ms: i64) -> String {
    timestamp(ms).strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn timestamp(ms: i64) -> Timestamp {
    // Out of range saturates (the range's own ends may not survive a round trip through
    // milliseconds).
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_795_734_953_123), "2026-11-26T23:15:53.123Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59.999Z");
        assert!(
            rfc3339_utc(i64::MAX).starts_with("9999-12-"),
            "{}",
            rfc3339_utc(i64::MAX)
        );
        assert!(rfc3339_utc(i64::MIN).starts_with("-009999-"));
        assert_eq!(display_utc(1_795_734_953_123), "2026-11-26 23:15:53 UTC");
    }

    #[test]
    fn now_is_now() {
        let std_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now_ms() - std_now).abs() < 5_000);
    }
}
