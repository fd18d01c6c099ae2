//! Files users attach: downloaded (size-capped) and handed to the agent with the event.

use std::time::Duration;

use ecdysis_chat::Attachment;
use serenity::model::channel::Attachment as DiscordAttachment;
use tracing::warn;

pub(crate) struct Downloader {
    client: reqwest::Client,
    max_bytes: u64,
}

/// What came of an event's files: the ones downloaded, and a note for each one left out.
#[derive(Default)]
pub(crate) struct Downloaded {
    pub files: Vec<Attachment>,
    pub notes: Vec<String>,
}

impl Downloader {
    pub fn new(max_bytes: u64) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self { client, max_bytes }
    }

    pub async fn download_all(&self, attachments: &[DiscordAttachment]) -> Downloaded {
        let mut out = Downloaded::default();
        for attachment in attachments {
            match self.download(attachment).await {
                Ok(file) => out.files.push(file),
                Err(why) => {
                    warn!(file = %attachment.filename, %why, "attachment not downloaded");
                    out.notes.push(format!(
                        "[attached file {} was not downloaded: {why}]",
                        attachment.filename
                    ));
                }
            }
        }
        out
    }

    async fn download(&self, attachment: &DiscordAttachment) -> Result<Attachment, String> {
        let limit = self.max_bytes;
        if u64::from(attachment.size) > limit {
            return Err(too_big(u64::from(attachment.size), limit));
        }
        let mut response = self
            .client
            .get(&attachment.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("download failed ({e})"))?;
        let mut bytes = Vec::with_capacity(attachment.size as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("download failed ({e})"))?
        {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_big((bytes.len() + chunk.len()) as u64, limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        let mime = attachment
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        Ok(Attachment::new(&attachment.filename, mime, bytes))
    }
}

fn too_big(size: u64, limit: u64) -> String {
    format!(
        "it is larger ({:.1} MB) than the {:.1} MB limit",
        size as f64 / 1_048_576.0,
        limit as f64 / 1_048_576.0
    )
}
