//! What kind of file arrived, from its first bytes, its MIME type and its name (in that order
//! of trust): an image the model can see, a PDF, text, audio, or something else.

/// The kinds of file the model is given differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// PNG, JPEG, GIF or WebP (by its bytes), or a file that claims to be an image.
    Image,
    Pdf,
    /// Readable text: plain text, Markdown, CSV, JSON, source code, …
    Text,
    /// Voice messages and audio files (transcribed when transcription is on).
    Audio,
    Other,
}

/// Extensions of text-like files (source code and data) platforms often label
/// `application/octet-stream`.
const TEXT_EXTENSIONS: &[&str] = &[
    "txt",
    "md",
    "markdown",
    "rst",
    "csv",
    "tsv",
    "json",
    "jsonl",
    "ndjson",
    "yaml",
    "yml",
    "toml",
    "ini",
    "cfg",
    "conf",
    "env",
    "xml",
    "html",
    "htm",
    "css",
    "scss",
    "js",
    "mjs",
    "cjs",
    "ts",
    "tsx",
    "jsx",
    "rs",
    "py",
    "rb",
    "go",
    "java",
    "kt",
    "kts",
    "scala",
    "c",
    "h",
    "cc",
    "cpp",
    "hpp",
    "cs",
    "swift",
    "m",
    "php",
    "pl",
    "lua",
    "r",
    "sql",
    "sh",
    "bash",
    "zsh",
    "fish",
    "ps1",
    "bat",
    "dockerfile",
    "makefile",
    "gradle",
    "properties",
    "log",
    "diff",
    "patch",
    "tex",
    "svg",
    "graphql",
    "proto",
    "vue",
    "svelte",
    "ex",
    "exs",
    "erl",
    "hs",
    "ml",
    "clj",
    "dart",
    "zig",
    "nim",
    "tf",
    "hcl",
    "nix",
    "lock",
    "gitignore",
    "editorconfig",
];

const AUDIO_EXTENSIONS: &[&str] = &[
    "ogg", "oga", "opus", "mp3", "m4a", "wav", "flac", "webm", "aac", "mpga", "mpeg",
];

/// MIME types of text that do not start with `text/`.
const TEXT_MIMES: &[&str] = &[
    "application/json",
    "application/ld+json",
    "application/xml",
    "application/javascript",
    "application/x-javascript",
    "application/typescript",
    "application/x-yaml",
    "application/yaml",
    "application/toml",
    "application/x-toml",
    "application/sql",
    "application/x-sh",
    "application/x-shellscript",
    "application/x-python",
    "application/x-ndjson",
    "application/csv",
    "image/svg+xml",
];

fn extension(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.rsplit_once('.') {
        Some((_, ext)) => ext.to_string(),
        None => lower,
    }
}

/// The image formats the model takes, by magic bytes.
pub fn image_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Classify a file.
pub fn classify(name: &str, mime: &str, bytes: &[u8]) -> Kind {
    let mime = mime
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let ext = extension(name);
    if image_mime(bytes).is_some() {
        return Kind::Image;
    }
    if bytes.starts_with(b"%PDF-") || mime == "application/pdf" || ext == "pdf" {
        return Kind::Pdf;
    }
    if mime == "image/svg+xml" || ext == "svg" {
        return Kind::Text;
    }
    if mime.starts_with("image/") {
        return Kind::Image;
    }
    if mime.starts_with("audio/")
        || mime == "video/ogg"
        || (mime.is_empty() || mime == "application/octet-stream")
            && AUDIO_EXTENSIONS.contains(&ext.as_str())
        || (mime == "video/webm" && ext == "webm")
    {
        return Kind::Audio;
    }
    if mime.starts_with("text/") || TEXT_MIMES.contains(&mime.as_str()) {
        return Kind::Text;
    }
    if TEXT_EXTENSIONS.contains(&ext.as_str()) && looks_like_text(bytes) {
        return Kind::Text;
    }
    if (mime.is_empty() || mime == "application/octet-stream") && looks_like_text(bytes) {
        return Kind::Text;
    }
    Kind::Other
}

/// True for UTF-8 without NUL bytes in its first 8 KB (a cut multi-byte character at the end
/// is fine).
pub fn looks_like_text(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let head = &bytes[..bytes.len().min(8192)];
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() == 8192,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_win_over_labels() {
        let png = b"\x89PNG\r\n\x1a\n....";
        assert_eq!(classify("a.txt", "text/plain", png), Kind::Image);
        assert_eq!(
            classify("x", "application/octet-stream", b"%PDF-1.7\n"),
            Kind::Pdf
        );
        assert_eq!(classify("a.webp", "", b"RIFF\0\0\0\0WEBPVP8 "), Kind::Image);
        assert_eq!(image_mime(b"GIF89a..."), Some("image/gif"));
    }

    #[test]
    fn labels_and_names() {
        assert_eq!(classify("broken.png", "image/png", b"garbage"), Kind::Image);
        assert_eq!(
            classify("voice-message.ogg", "audio/ogg", b"OggS"),
            Kind::Audio
        );
        assert_eq!(
            classify("clip.m4a", "application/octet-stream", b"\0\0\0 ftyp"),
            Kind::Audio
        );
        assert_eq!(classify("notes.md", "text/markdown", b"# hi"), Kind::Text);
        assert_eq!(classify("data.json", "application/json", b"{}"), Kind::Text);
        assert_eq!(
            classify("main.rs", "application/octet-stream", b"fn main() {}"),
            Kind::Text
        );
        assert_eq!(
            classify("blob.bin", "application/octet-stream", &[0, 1, 2, 3]),
            Kind::Other
        );
        assert_eq!(
            classify("a.zip", "application/zip", b"PK\x03\x04"),
            Kind::Other
        );
        assert_eq!(classify("x.svg", "image/svg+xml", b"<svg/>"), Kind::Text);
    }

    #[test]
    fn text_detection() {
        assert!(looks_like_text("héllo".as_bytes()));
        assert!(!looks_like_text(&[0xff, 0xfe, 0x00]));
        assert!(!looks_like_text(b""));
    }
}
