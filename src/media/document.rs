//! Documents users send, as text for the model: a PDF's text (pdf-extract, on lopdf), a text
//! file's content; both cut to the inline limit, with a line saying what was left out.

use std::panic::AssertUnwindSafe;

/// A PDF's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdfText {
    pub text: String,
    pub pages: usize,
}

/// Why a document has no text for the model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("it is not a readable PDF ({0})")]
    Pdf(String),
    #[error("it is not UTF-8 text")]
    NotText,
}

/// The text of a PDF, page by page. CPU-bound: call it through [`super::background`]. A parser panic
/// (malformed input) is an error like any other.
pub fn pdf_text(bytes: &[u8]) -> Result<PdfText, DocumentError> {
    let pages = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pdf_extract::extract_text_from_mem_by_pages(bytes)
    }))
    .map_err(|_| DocumentError::Pdf("the PDF parser gave up on it".into()))?
    .map_err(|e| DocumentError::Pdf(e.to_string()))?;
    let count = pages.len();
    let mut text = String::new();
    for (n, page) in pages.iter().enumerate() {
        let page = page.trim();
        if page.is_empty() {
            continue;
        }
        if count > 1 {
            text.push_str(&format!("[page {}]\n", n + 1));
        }
        text.push_str(&tidy(page));
        text.push_str("\n\n");
    }
    Ok(PdfText {
        text: text.trim_end().to_string(),
        pages: count,
    })
}

/// Runs of blank lines (PDF layout) squeezed to one.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_string()
}

/// A text file's content (a UTF-8 byte-order mark dropped).
pub fn text_file(bytes: &[u8]) -> Result<String, DocumentError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.contains(&0) {
        return Err(DocumentError::NotText);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.replace("\r\n", "\n")),
        Err(_) => Err(DocumentError::NotText),
    }
}

/// Text cut to at most `max_bytes` (at a character boundary, preferably a line end), and
/// whether anything was cut.
pub fn cut(text: &str, max_bytes: usize) -> (&str, bool) {
    if text.len() <= max_bytes {
        return (text, false);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    let head = match head.rfind('\n') {
        Some(line_end) if line_end > end / 2 => &head[..line_end],
        _ => head,
    };
    (head, true)
}

/// `1.5 MB`, `12 KB`, `300 bytes`.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MB", bytes as f64 / 1_048_576.0)
    } else if bytes >= 1024 {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_lines_and_characters() {
        assert_eq!(cut("short", 10), ("short", false));
        let text = "line one\nline two\nline three";
        let (head, cut_) = cut(text, 20);
        assert!(cut_);
        assert_eq!(head, "line one\nline two");
        let (head, _) = cut("ééééé", 3);
        assert_eq!(head, "é");
    }

    #[test]
    fn text_files() {
        assert_eq!(text_file(b"\xEF\xBB\xBFa\r\nb").unwrap(), "a\nb");
        assert_eq!(text_file(&[0xff, 0xfe]), Err(DocumentError::NotText));
        assert_eq!(text_file(b"a\0b"), Err(DocumentError::NotText));
    }

    #[test]
    fn broken_pdfs_are_errors_not_panics() {
        assert!(pdf_text(b"%PDF-1.4\nnot really").is_err());
        assert!(pdf_text(b"").is_err());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(300), "300 bytes");
        assert_eq!(human_size(2048), "2 KB");
        assert_eq!(human_size(3 * 1024 * 1024 / 2), "1.5 MB");
    }
}
