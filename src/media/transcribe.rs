//! Voice messages and audio files as text: an OpenAI-compatible `POST {base}/audio/transcriptions`
//! (OpenAI, Groq, a local whisper server), multipart with the file and the model name.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::settings::TranscribeSettings;

/// How long one transcription may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Largest file the endpoint is sent (OpenAI takes 25 MB).
pub const MAX_AUDIO_BYTES: usize = 25 * 1024 * 1024;

/// Why an audio file has no transcript.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("it is larger than the transcription limit of {} MB", MAX_AUDIO_BYTES / 1024 / 1024)]
    TooLarge,
    #[error("the transcription service answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the transcription service could not be reached ({0})")]
    Transport(String),
    #[error("the transcription service's answer could not be read ({0})")]
    Malformed(String),
}

/// A client of the transcription endpoint.
pub struct Transcriber {
    http: reqwest::Client,
    settings: TranscribeSettings,
}

impl Transcriber {
    pub fn new(http: reqwest::Client, settings: TranscribeSettings) -> Self {
        if let Some(key) = &settings.api_key {
            crate::redact::global().add_secret(key);
        }
        Self { http, settings }
    }

    /// `provider/model`, for notes.
    pub fn describe(&self) -> String {
        format!(
            "openai/{} at {}",
            self.settings.model, self.settings.base_url
        )
    }

    /// The transcript of one file.
    pub async fn transcribe(
        &self,
        name: &str,
        mime: &str,
        bytes: Bytes,
    ) -> Result<String, TranscribeError> {
        if bytes.len() > MAX_AUDIO_BYTES {
            return Err(TranscribeError::TooLarge);
        }
        let part = reqwest::multipart::Part::stream_with_length(bytes.clone(), bytes.len() as u64)
            .file_name(upload_name(name, mime))
            .mime_str(mime)
            .or_else(|_| {
                reqwest::multipart::Part::bytes(bytes.to_vec())
                    .file_name(upload_name(name, mime))
                    .mime_str("application/octet-stream")
            })
            .map_err(|e| TranscribeError::Transport(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("model", self.settings.model.clone())
            .text("response_format", "json")
            .part("file", part);
        let mut request = self
            .http
            .post(format!("{}/audio/transcriptions", self.settings.base_url))
            .timeout(TIMEOUT)
            .multipart(form);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| TranscribeError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| TranscribeError::Transport(e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(TranscribeError::Status {
                status: status.as_u16(),
                message: crate::agent::provider::error_message(&body),
            });
        }
        let parsed: Value = serde_json::from_str(&body)
            .map_err(|e| TranscribeError::Malformed(format!("not JSON ({e})")))?;
        let text = parsed
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| TranscribeError::Malformed("no `text` in it".into()))?;
        Ok(text.trim().to_string())
    }
}

/// Whisper servers tell formats by the file name's extension: make sure there is one.
fn upload_name(name: &str, mime: &str) -> String {
    if name
        .rsplit_once('.')
        .is_some_and(|(_, ext)| !ext.is_empty())
    {
        return name.to_string();
    }
    let ext = match mime.split(';').next().unwrap_or_default().trim() {
        "audio/ogg" | "video/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" | "audio/x-m4a" => "m4a",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/webm" | "video/webm" => "webm",
        "audio/flac" => "flac",
        _ => "ogg",
    };
    format!("{name}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_have_an_extension() {
        assert_eq!(
            upload_name("voice-message.ogg", "audio/ogg"),
            "voice-message.ogg"
        );
        assert_eq!(upload_name("clip", "audio/mp4"), "clip.m4a");
        assert_eq!(upload_name("x", "audio/ogg; codecs=opus"), "x.ogg");
    }
}
