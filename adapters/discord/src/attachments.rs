//! Files users attach: referred to when the message is submitted, downloaded later by the
//! core's worker (through [`ecdysis_chat::ChatAdapter::fetch_file`]) from Discord's CDN (or the
//! configured API host, a proxy or a test fake), size-capped. No token is sent: Discord's
//! attachment URLs are signed.

use std::time::Duration;

use bytes::Bytes;
use ecdysis_chat::{FetchError, RemoteFile};
use url::Url;

use crate::model::Attachment as DiscordAttachment;

/// Hosts Discord serves attachments from.
const CDN_HOSTS: &[&str] = &["cdn.discordapp.com", "media.discordapp.net"];

pub(crate) struct Downloader {
    client: reqwest::Client,
    max_bytes: u64,
    /// The host of `DISCORD_API_URL` when it is not Discord's own (a proxy or a test fake).
    api_host: Option<String>,
}

/// A message's attachments as the event carries them.
pub(crate) fn remote_files(attachments: &[DiscordAttachment]) -> Vec<RemoteFile> {
    attachments
        .iter()
        .map(|a| RemoteFile {
            id: Some(a.id.get().to_string()),
            name: a.filename.clone(),
            mime: a
                .content_type
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: Some(a.size),
            url: a.url.clone(),
        })
        .collect()
}

impl Downloader {
    pub fn new(max_bytes: u64, api_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let api_host = Url::parse(api_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .filter(|h| h != "discord.com");
        Self {
            client,
            max_bytes,
            api_host,
        }
    }

    /// Download one attachment.
    pub async fn fetch(&self, file: &RemoteFile) -> Result<Bytes, FetchError> {
        let limit = self.max_bytes;
        if file.size.is_some_and(|size| size > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let url = self.trusted(&file.url)?;
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| FetchError::Temporary(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let why = format!("HTTP {status}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                FetchError::Temporary(why)
            } else {
                FetchError::Permanent(why)
            });
        }
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Temporary(e.without_url().to_string()))?
        {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::TooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    }

    fn trusted(&self, url: &str) -> Result<Url, FetchError> {
        let foreign = |host: &str| FetchError::ForeignHost {
            platform: "Discord".into(),
            host: host.to_string(),
        };
        let parsed = Url::parse(url).map_err(|_| foreign("an unreadable URL"))?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let on_cdn = parsed.scheme() == "https" && CDN_HOSTS.contains(&host.as_str());
        let on_api = self.api_host.as_deref() == Some(host.as_str());
        if on_cdn || on_api {
            Ok(parsed)
        } else {
            Err(foreign(&host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cdn_or_the_api_host() {
        let d = Downloader::new(1 << 20, "https://discord.com");
        assert!(
            d.trusted("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1")
                .is_ok()
        );
        assert!(d.trusted("http://cdn.discordapp.com/a.png").is_err());
        assert!(d.trusted("https://evil.example/a.png").is_err());
        assert!(d.trusted("http://127.0.0.1:9/a.png").is_err());
        let d = Downloader::new(1 << 20, "http://127.0.0.1:9");
        assert!(d.trusted("http://127.0.0.1:9/attachments/a.png").is_ok());
        assert!(d.trusted("http://127.0.0.2:9/a.png").is_err());
    }
}
