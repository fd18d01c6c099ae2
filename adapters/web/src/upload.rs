//! `POST /api/chat/{conversation}` as `multipart/form-data`: the fields `text`, `user`, `id`
//! and one or more `file` parts, turned into a message with attachments. The whole body is
//! limited by `ECDYSIS_UPLOAD_MAX_MB` (413 above it, before anything is stored).

use bytes::Bytes;
use ecdysis_chat::Attachment;

/// A parsed upload.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    pub text: String,
    pub user: Option<String>,
    pub id: Option<String>,
    pub files: Vec<Attachment>,
}

/// Files one message may carry.
const MAX_FILES: usize = 20;
/// The longest text field.
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Why an upload is refused (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum UploadError {
    #[error("the multipart body has no boundary")]
    NoBoundary,
    #[error("the multipart body is malformed: {0}")]
    Malformed(String),
    #[error("unknown form field `{0}` (expected text, user, id and file)")]
    UnknownField(String),
    #[error("at most {MAX_FILES} files per message")]
    TooManyFiles,
    #[error("the field `{0}` is not UTF-8 text or is too long")]
    BadText(&'static str),
}

/// Parse a `multipart/form-data` body whose `content-type` header is `content_type`.
pub(crate) async fn parse(content_type: &str, body: Bytes) -> Result<Upload, UploadError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| UploadError::NoBoundary)?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut upload = Upload::default();
    let malformed = |e: multer::Error| UploadError::Malformed(e.to_string());
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" | "files" | "file[]" => {
                if upload.files.len() >= MAX_FILES {
                    return Err(UploadError::TooManyFiles);
                }
                let named = field.file_name().map(clean_name).filter(|n| !n.is_empty());
                let file_name = named
                    .clone()
                    .unwrap_or_else(|| format!("file-{}", upload.files.len() + 1));
                let mime = field
                    .content_type()
                    .map(|m| m.essence_str().to_string())
                    .filter(|m| !m.is_empty() && m != "application/octet-stream")
                    .unwrap_or_else(|| guess_mime(&file_name).to_string());
                let bytes = field.bytes().await.map_err(malformed)?;
                // A file input left empty still sends a part with no name and no bytes.
                if bytes.is_empty() && named.is_none() {
                    continue;
                }
                upload.files.push(Attachment::new(file_name, mime, bytes));
            }
            "text" | "user" | "id" => {
                let bytes = field.bytes().await.map_err(malformed)?;
                let key = match name.as_str() {
                    "text" => "text",
                    "user" => "user",
                    _ => "id",
                };
                if bytes.len() > MAX_TEXT_BYTES {
                    return Err(UploadError::BadText(key));
                }
                let value =
                    String::from_utf8(bytes.to_vec()).map_err(|_| UploadError::BadText(key))?;
                match key {
                    "text" => upload.text = value,
                    "user" => upload.user = Some(value),
                    _ => upload.id = Some(value),
                }
            }
            other => return Err(UploadError::UnknownField(other.to_string())),
        }
    }
    Ok(upload)
}

/// A file name as the browser sent it, without any directory part.
fn clean_name(name: &str) -> String {
    name.rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

/// A MIME type from a file name, for parts sent without one.
fn guess_mime(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "wav" => "audio/wav",
        "webm" => "audio/webm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One multipart part: field name, file name, content type, bytes.
    type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

    fn body(parts: &[Part<'_>]) -> (String, Bytes) {
        let boundary = "XyZ";
        let mut out = Vec::new();
        for (name, file, mime, data) in parts {
            out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
            if let Some(file) = file {
                disposition.push_str(&format!("; filename=\"{file}\""));
            }
            out.extend_from_slice(disposition.as_bytes());
            out.extend_from_slice(b"\r\n");
            if let Some(mime) = mime {
                out.extend_from_slice(format!("Content-Type: {mime}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (
            format!("multipart/form-data; boundary={boundary}"),
            Bytes::from(out),
        )
    }

    #[tokio::test]
    async fn fields_and_files() {
        let (ct, b) = body(&[
            ("text", None, None, b"look at this"),
            ("user", None, None, b"ann"),
            (
                "file",
                Some("C:\\pics\\a.png"),
                Some("image/png"),
                b"\x89PNG",
            ),
            ("file", Some("notes.md"), None, b"# hi"),
        ]);
        let u = parse(&ct, b).await.unwrap();
        assert_eq!(u.text, "look at this");
        assert_eq!(u.user.as_deref(), Some("ann"));
        assert_eq!(u.files.len(), 2);
        assert_eq!(u.files[0].name, "a.png");
        assert_eq!(u.files[0].mime, "image/png");
        assert_eq!(u.files[1].mime, "text/markdown");
    }

    #[tokio::test]
    async fn bad_bodies_are_refused() {
        let (ct, b) = body(&[("evil", None, None, b"x")]);
        assert_eq!(
            parse(&ct, b).await.unwrap_err(),
            UploadError::UnknownField("evil".into())
        );
        assert_eq!(
            parse("multipart/form-data", Bytes::new())
                .await
                .unwrap_err(),
            UploadError::NoBoundary
        );
        let (ct, _) = body(&[]);
        assert!(matches!(
            parse(&ct, Bytes::from_static(b"--XyZ\r\nbroken")).await,
            Err(UploadError::Malformed(_))
        ));
    }
}
