//! `[media]` (what happens to files users send) and `[models."<provider>/<model>"]` (what a
//! model can do) in `ecdysis.toml`, with their environment overrides.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{ConfigError, ModelSpec, Provider, ProviderKeys};

/// Where transcription goes unless a base URL is set.
pub const DEFAULT_TRANSCRIBE_BASE_URL: &str = "https://api.openai.com/v1";

/// `[media]` as the file (and the environment) give it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaFile {
    /// `ECDYSIS_TRANSCRIBE`: `openai/<model>` or `off`.
    transcribe: Option<String>,
    transcribe_base_url: Option<String>,
    transcribe_api_key: Option<String>,
    image_turns: Option<i64>,
    inline_text_kb: Option<i64>,
}

/// One `[models."<provider>/<model>"]` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// `false`: the model cannot read images (it gets a note instead).
    vision: Option<bool>,
}

/// An OpenAI-compatible `/audio/transcriptions` endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct TranscribeSettings {
    pub model: String,
    /// The API base (`…/v1`); requests go to `{base_url}/audio/transcriptions`.
    pub base_url: String,
    pub api_key: Option<String>,
}

impl std::fmt::Debug for TranscribeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscribeSettings")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "set"))
            .finish()
    }
}

/// The validated media settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSettings {
    /// `None`: voice and audio get a note saying transcription is off.
    pub transcribe: Option<TranscribeSettings>,
    /// Later user turns an image is still shown in (then a text reference takes its place).
    pub image_turns: usize,
    /// Bytes of a text file or a PDF's text put inline (the rest is left out, with a note).
    pub inline_text_bytes: usize,
    /// Models marked `vision = false` (as `provider/model`).
    pub no_vision: Vec<String>,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            transcribe: None,
            image_turns: 3,
            inline_text_bytes: 32 * 1024,
            no_vision: Vec::new(),
        }
    }
}

impl MediaSettings {
    /// Whether `model` reads images (every model does unless its entry says `vision = false`).
    pub fn vision(&self, model: &ModelSpec) -> bool {
        let key = model.to_string();
        !self.no_vision.contains(&key)
    }

    /// The transcription key, for masking.
    pub fn transcribe_api_key(&self) -> Option<String> {
        self.transcribe.as_ref().and_then(|t| t.api_key.clone())
    }
}

/// Check `[media]` and `[models]`. The transcription endpoint falls back to `OPENAI_BASE_URL`
/// and `OPENAI_API_KEY`.
pub fn validate(
    file: MediaFile,
    models: BTreeMap<String, ModelFile>,
    openai: &ProviderKeys,
) -> Result<MediaSettings, ConfigError> {
    let defaults = MediaSettings::default();
    let transcribe = match file.transcribe.as_deref().map(str::trim) {
        None | Some("") | Some("off") => None,
        Some(text) => {
            let spec = ModelSpec::parse("media.transcribe", text)?;
            if spec.provider != Provider::OpenAi {
                return Err(ConfigError::value(
                    "media.transcribe",
                    format!("`{text}`: transcription speaks the OpenAI API; use `openai/<model>`"),
                ));
            }
            let base_url = file
                .transcribe_base_url
                .filter(|u| !u.trim().is_empty())
                .or_else(|| openai.base_url.clone())
                .unwrap_or_else(|| DEFAULT_TRANSCRIBE_BASE_URL.into());
            let parsed = url::Url::parse(&base_url).map_err(|e| {
                ConfigError::value(
                    "media.transcribe_base_url",
                    format!("`{base_url}` is not a URL ({e})"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::value(
                    "media.transcribe_base_url",
                    format!("`{base_url}` must be an http(s) URL"),
                ));
            }
            Some(TranscribeSettings {
                model: spec.name,
                base_url: base_url.trim_end_matches('/').to_string(),
                api_key: file
                    .transcribe_api_key
                    .filter(|k| !k.is_empty())
                    .or_else(|| openai.api_key.clone()),
            })
        }
    };
    let image_turns = match file.image_turns {
        None => defaults.image_turns,
        Some(n) if (0..=100).contains(&n) => n as usize,
        Some(n) => {
            return Err(ConfigError::value(
                "media.image_turns",
                format!("{n} must be between 0 and 100"),
            ));
        }
    };
    let inline_text_bytes = match file.inline_text_kb {
        None => defaults.inline_text_bytes,
        Some(n) if (1..=1024).contains(&n) => n as usize * 1024,
        Some(n) => {
            return Err(ConfigError::value(
                "media.inline_text_kb",
                format!("{n} must be between 1 and 1024"),
            ));
        }
    };
    let mut no_vision = Vec::new();
    for (name, entry) in models {
        let key = format!("models.\"{name}\"");
        let spec = ModelSpec::parse(&key, &name)?;
        if entry.vision == Some(false) {
            no_vision.push(spec.to_string());
        }
    }
    Ok(MediaSettings {
        transcribe,
        image_turns,
        inline_text_bytes,
        no_vision,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::Config;

    fn load(
        vars: &[(&str, &str)],
        toml: Option<&str>,
    ) -> Result<Config, crate::config::ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = toml.map(|text| {
            let path = dir.path().join("ecdysis.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        Config::load_with(path.as_deref(), &|name| vars.get(name).cloned())
    }

    #[test]
    fn transcription_falls_back_to_the_openai_settings() {
        let c = load(
            &[
                ("ECDYSIS_TRANSCRIBE", "openai/whisper-1"),
                ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
                ("OPENAI_API_KEY", "sk-transcribe-fallback"),
            ],
            None,
        )
        .unwrap();
        let t = c.media.transcribe.unwrap();
        assert_eq!(t.model, "whisper-1");
        assert_eq!(t.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(t.api_key.as_deref(), Some("sk-transcribe-fallback"));
        let c = load(
            &[
                ("ECDYSIS_TRANSCRIBE", "openai/w"),
                ("ECDYSIS_TRANSCRIBE_BASE_URL", "http://127.0.0.1:7/v1"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            c.media.transcribe.unwrap().base_url,
            "http://127.0.0.1:7/v1"
        );
        assert!(load(&[], None).unwrap().media.transcribe.is_none());
        assert!(load(&[("ECDYSIS_TRANSCRIBE", "anthropic/x")], None).is_err());
        assert!(load(&[("ECDYSIS_TRANSCRIBE", "whisper")], None).is_err());
    }

    #[test]
    fn vision_is_on_unless_a_model_says_no() {
        let c = load(
            &[],
            Some("[models.\"openai/llama3\"]\nvision = false\n[models.\"anthropic/claude-x\"]\nvision = true\n"),
        )
        .unwrap();
        let spec = |t: &str| crate::config::ModelSpec::parse("m", t).unwrap();
        assert!(!c.media.vision(&spec("openai/llama3")));
        assert!(c.media.vision(&spec("anthropic/claude-x")));
        assert!(c.media.vision(&spec("openai/gpt-x")));
        assert!(load(&[], Some("[models.\"llama3\"]\nvision = false\n")).is_err());
        assert!(load(&[], Some("[models.\"openai/x\"]\nvisoin = false\n")).is_err());
    }

    #[test]
    fn limits_are_checked() {
        let c = load(&[("ECDYSIS_UPLOAD_MAX_MB", "3")], None).unwrap();
        assert_eq!(c.web_upload_max_bytes, 3 * 1024 * 1024);
        assert_eq!(load(&[], None).unwrap().web_upload_max_bytes, 20 << 20);
        assert!(load(&[("ECDYSIS_UPLOAD_MAX_MB", "0")], None).is_err());
        assert!(load(&[("ECDYSIS_MEDIA_IMAGE_TURNS", "-1")], None).is_err());
        let c = load(&[("ECDYSIS_MEDIA_INLINE_TEXT_KB", "8")], None).unwrap();
        assert_eq!(c.media.inline_text_bytes, 8192);
    }
}
