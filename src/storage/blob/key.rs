//! Blob keys, the one place that says what a key may be: relative paths of non-empty
//! `[A-Za-z0-9._-]` segments, never `.` or `..`; and how any text (a channel id, a file name)
//! becomes such a segment.

use super::BlobError;

/// The longest key accepted.
const MAX_KEY_BYTES: usize = 512;

fn safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Check a key: non-empty relative path segments of `[A-Za-z0-9._-]`, no `.` or `..` segments.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(safe_byte)
        });
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_string()))
    }
}

/// A key segment made from any text: characters outside `[A-Za-z0-9._-]` become `_`, at most
/// `max` characters, leading and trailing dots dropped, and `_` when nothing is left, so the
/// result is always a valid segment.
pub fn segment(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && safe_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .take(max.max(1))
        .collect();
    let cleaned = cleaned.trim_matches('.');
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in [
            "a",
            "a/b.txt",
            "transcripts/web/local/x/_/1-2.jsonl",
            "a/.hidden",
        ] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "./a",
            "a b",
            "ü",
            &"x".repeat(513),
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_text_makes_a_valid_segment() {
        assert_eq!(segment("plot 1.png", 100), "plot_1.png");
        assert_eq!(segment("C0123/../x", 100), "C0123_.._x");
        assert_eq!(segment("ünïcode", 100), "_n_code");
        assert_eq!(segment("abcdef", 3), "abc");
        for weird in ["", ".", "..", "...", "/", "../..", " "] {
            let s = segment(weird, 100);
            assert!(
                validate_key(&format!("a/{s}")).is_ok(),
                "{weird:?} -> {s:?}"
            );
        }
    }
}
