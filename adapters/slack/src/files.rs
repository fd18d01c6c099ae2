//! Files users attach to their messages: referred to when the event is acknowledged, and
//! downloaded later (by the core's worker, through [`ecdysis_chat::ChatAdapter::fetch_file`])
//! with the bot token, which is sent to Slack's own hosts only, within a size cap.

use bytes::Bytes;
use ecdysis_chat::{FetchError, RemoteFile};
use url::Url;

use crate::events::FileRef;

/// A message's files as the event carries them, and a note for each one that cannot be
/// fetched at all (no URL).
pub(crate) fn remote_files(files: &[FileRef]) -> (Vec<RemoteFile>, Vec<String>) {
    let mut out = Vec::with_capacity(files.len());
    let mut notes = Vec::new();
    for file in files {
        let name = file
            .name
            .clone()
            .or_else(|| file.title.clone())
            .unwrap_or_else(|| "file".into());
        let Some(url) = file
            .url_private_download
            .as_deref()
            .or(file.url_private.as_deref())
        else {
            notes.push(format!(
                "[file `{name}` could not be read: Slack gave no download URL]"
            ));
            continue;
        };
        out.push(RemoteFile {
            id: file.id.clone(),
            name,
            mime: file
                .mimetype
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: file.size,
            url: url.to_string(),
        });
    }
    (out, notes)
}

/// What a download may use.
pub(crate) struct Limits<'a> {
    pub max_bytes: u64,
    /// The host of `SLACK_API_URL`: besides `*.slack.com`, the only host the token is sent to.
    pub api_host: Option<&'a str>,
}

/// Download one file with the bot token. A URL off Slack is refused before any request.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    token: &str,
    file: &RemoteFile,
    limits: &Limits<'_>,
) -> Result<Bytes, FetchError> {
    if file.size.is_some_and(|size| size > limits.max_bytes) {
        return Err(FetchError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let url = trusted(&file.url, limits.api_host)?;
    let mut response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| FetchError::Temporary(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let why = format!("HTTP {status}");
        return Err(
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                FetchError::Temporary(why)
            } else {
                FetchError::Permanent(why)
            },
        );
    }
    if response
        .content_length()
        .is_some_and(|len| len > limits.max_bytes)
    {
        return Err(FetchError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Temporary(e.without_url().to_string()))?
    {
        if bytes.len() as u64 + chunk.len() as u64 > limits.max_bytes {
            return Err(FetchError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// The URL when the bot token may be sent there: `*.slack.com` over https, or the API's own
/// host (a self-hosted gateway or a test fake).
fn trusted(url: &str, api_host: Option<&str>) -> Result<Url, FetchError> {
    let foreign = |host: &str| FetchError::ForeignHost {
        platform: "Slack".into(),
        host: host.to_string(),
    };
    let parsed = Url::parse(url).map_err(|_| foreign("an unreadable URL"))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let on_slack =
        parsed.scheme() == "https" && (host == "slack.com" || host.ends_with(".slack.com"));
    let on_api = api_host.is_some_and(|api| api == host);
    if on_slack || on_api {
        Ok(parsed)
    } else {
        Err(foreign(&host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_goes_to_slack_or_the_api_host_only() {
        assert!(
            trusted(
                "https://files.slack.com/files-pri/T1-F1/download/a.png",
                None
            )
            .is_ok()
        );
        assert!(trusted("http://files.slack.com/x", None).is_err());
        assert!(trusted("https://evil.example/x", None).is_err());
        assert!(trusted("https://slack.com.evil.example/x", None).is_err());
        assert!(trusted("http://127.0.0.1:9/files/a.png", Some("127.0.0.1")).is_ok());
        assert!(trusted("http://127.0.0.2:9/files/a.png", Some("127.0.0.1")).is_err());
        assert!(matches!(
            trusted("https://evil.example/x", None),
            Err(FetchError::ForeignHost { host, .. }) if host == "evil.example"
        ));
    }

    #[test]
    fn files_without_a_url_get_a_note() {
        let files: Vec<FileRef> = serde_json::from_value(serde_json::json!([
            {"id": "F1", "name": "a.png", "mimetype": "image/png", "size": 3,
             "url_private_download": "https://files.slack.com/a.png"},
            {"id": "F2", "name": "b.txt"},
        ]))
        .unwrap();
        let (remote, notes) = remote_files(&files);
        assert_eq!(remote.len(), 1);
        assert_eq!(remote[0].id.as_deref(), Some("F1"));
        assert_eq!(remote[0].mime, "image/png");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("b.txt"));
    }
}
