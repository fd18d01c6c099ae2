//! Files users attach to their messages: downloaded with the bot token, size-capped and within
//! a time budget (Slack wants its acknowledgement within 3 s), and handed to the agent.

use std::time::Duration;

use ecdysis_chat::Attachment;
use tokio::time::Instant;
use url::Url;

use crate::events::FileRef;

/// The downloaded files and, for those left out, a line for the agent saying why.
#[derive(Debug, Default)]
pub(crate) struct Downloaded {
    pub attachments: Vec<Attachment>,
    pub notes: Vec<String>,
}

/// What a download may use.
pub(crate) struct Limits<'a> {
    pub max_bytes: u64,
    pub budget: Duration,
    /// The host of `SLACK_API_URL`: besides `*.slack.com`, the only host the token is sent to.
    pub api_host: Option<&'a str>,
}

/// Download the files of one message.
pub(crate) async fn download(
    client: &reqwest::Client,
    token: &str,
    files: &[FileRef],
    limits: &Limits<'_>,
) -> Downloaded {
    let mut out = Downloaded::default();
    let deadline = Instant::now() + limits.budget;
    for file in files {
        let name = file.name.clone().unwrap_or_else(|| "file".into());
        let Some(url) = file
            .url_private_download
            .as_deref()
            .or(file.url_private.as_deref())
        else {
            out.notes.push(format!(
                "[file `{name}` could not be read: Slack gave no download URL]"
            ));
            continue;
        };
        if file.size.is_some_and(|size| size > limits.max_bytes) {
            out.notes.push(too_large(&name, limits.max_bytes));
            continue;
        }
        let Some(url) = trusted(url, limits.api_host) else {
            out.notes.push(format!(
                "[file `{name}` was not downloaded: its URL is not on Slack]"
            ));
            continue;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, fetch(client, token, url, limits.max_bytes)).await {
            Ok(Ok(bytes)) => out.attachments.push(Attachment::new(
                name,
                file.mimetype
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
                bytes,
            )),
            Ok(Err(Fetch::TooLarge)) => out.notes.push(too_large(&name, limits.max_bytes)),
            Ok(Err(Fetch::Failed(why))) => {
                tracing::warn!(file = %name, error = %why, "cannot download a Slack file");
                out.notes
                    .push(format!("[file `{name}` could not be downloaded]"));
            }
            Err(_) => out.notes.push(format!(
                "[file `{name}` was not downloaded in time; send it again or a smaller one]"
            )),
        }
    }
    out
}

fn too_large(name: &str, max: u64) -> String {
    format!(
        "[file `{name}` was not attached: it is larger than {} MB]",
        max / 1024 / 1024
    )
}

/// The URL when the bot token may be sent there: `*.slack.com` over https, or the API's own
/// host (a self-hosted gateway or a test fake).
fn trusted(url: &str, api_host: Option<&str>) -> Option<Url> {
    let parsed = Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    let on_slack =
        parsed.scheme() == "https" && (host == "slack.com" || host.ends_with(".slack.com"));
    let on_api = api_host.is_some_and(|api| api == host);
    (on_slack || on_api).then_some(parsed)
}

enum Fetch {
    TooLarge,
    Failed(String),
}

async fn fetch(
    client: &reqwest::Client,
    token: &str,
    url: Url,
    max: u64,
) -> Result<Vec<u8>, Fetch> {
    let mut response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Fetch::Failed(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(Fetch::Failed(format!("HTTP {}", response.status())));
    }
    if response.content_length().is_some_and(|len| len > max) {
        return Err(Fetch::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Fetch::Failed(e.without_url().to_string()))?
    {
        if bytes.len() as u64 + chunk.len() as u64 > max {
            return Err(Fetch::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
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
            .is_some()
        );
        assert!(trusted("http://files.slack.com/x", None).is_none());
        assert!(trusted("https://evil.example/x", None).is_none());
        assert!(trusted("https://slack.com.evil.example/x", None).is_none());
        assert!(trusted("http://127.0.0.1:9/files/a.png", Some("127.0.0.1")).is_some());
        assert!(trusted("http://127.0.0.2:9/files/a.png", Some("127.0.0.1")).is_none());
    }
}
