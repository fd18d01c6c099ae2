//! What the model reads of the files of a message: images (scaled to the providers' limits),
//! PDFs (their text, and the PDF itself for providers that read documents), text files (inline
//! up to a limit), voice and audio (a transcript), and a one-line note for everything left out
//! and why. What is computed (a scaled image, a text, a transcript) is kept per artifact, so
//! later turns read it without decoding, parsing or transcribing again.
//!
//! Files of earlier messages are shown again for a bounded number of user turns
//! (`media.image_turns`), then only referred to, so a long thread does not resend every image
//! forever. Transcripts stay: they are what the user said.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use tracing::warn;

use super::background::{self, BackgroundError};
use super::document::{self, DocumentError, cut, human_size};
use super::image::{self as model_image, ImageError, ImageLimits};
use super::kind::{Kind, classify};
use super::settings::MediaSettings;
use super::transcribe::Transcriber;
use crate::agent::provider::{DocumentData, ImageData, Part};
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::store::{Artifact, Extract, Store, StoreError};

/// PDFs up to this size also go as documents where the provider reads them (Anthropic takes
/// 32 MB requests and 100 pages).
const DOCUMENT_MAX_BYTES: usize = 10 * 1024 * 1024;
const DOCUMENT_MAX_PAGES: usize = 100;

/// Why an image or a PDF could not be read for the model (the text goes into the note the
/// model reads), or what was made of it could not be kept (logged).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("preparing it failed ({0})")]
    PrepareImage(#[source] BackgroundError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("reading it failed ({0})")]
    ReadPdf(#[source] BackgroundError),
    #[error(transparent)]
    Pdf(#[from] DocumentError),
    #[error(transparent)]
    KeepBlob(#[from] BlobError),
    #[error(transparent)]
    KeepExtract(#[from] StoreError),
}

/// A file of a message, as the reader needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub artifact_id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

impl From<&crate::bus::StoredFile> for FileRef {
    fn from(f: &crate::bus::StoredFile) -> Self {
        Self {
            artifact_id: f.artifact_id.clone(),
            blob_key: f.blob_key.clone(),
            name: f.name.clone(),
            mime: f.mime.clone(),
            size: f.size,
        }
    }
}

impl From<&Artifact> for FileRef {
    fn from(a: &Artifact) -> Self {
        Self {
            artifact_id: a.id.clone(),
            blob_key: a.blob_key.clone(),
            name: a.name.clone(),
            mime: a.mime.clone(),
            size: a.size,
        }
    }
}

/// The parts for the model, and the transcripts to show in the thread.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Read {
    pub parts: Vec<Part>,
    /// (file name, transcript) of audio transcribed now.
    pub heard: Vec<(String, String)>,
}

/// Reads files for the model.
pub struct Reader {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    transcriber: Option<Transcriber>,
    settings: MediaSettings,
    limits: ImageLimits,
    /// Files are also in the sandbox workspace under `/workspace/inbox/`.
    in_sandbox: bool,
}

impl Reader {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        transcriber: Option<Transcriber>,
        settings: MediaSettings,
        in_sandbox: bool,
    ) -> Self {
        Self {
            store,
            blobs,
            transcriber,
            settings,
            limits: ImageLimits::default(),
            in_sandbox,
        }
    }

    pub fn settings(&self) -> &MediaSettings {
        &self.settings
    }

    /// The files of the new message.
    pub async fn current(&self, files: &[FileRef], vision: bool) -> Read {
        let mut read = Read::default();
        for file in files {
            self.file(file, vision, None, &mut read).await;
        }
        read
    }

    /// The files of a message `turns_ago` user turns back (1 = the message before the new one).
    pub async fn earlier(&self, files: &[FileRef], turns_ago: usize, vision: bool) -> Vec<Part> {
        let mut read = Read::default();
        for file in files {
            self.file(file, vision, Some(turns_ago), &mut read).await;
        }
        read.parts
    }

    /// Where the file also is, for notes.
    fn whereabouts(&self, file: &FileRef) -> String {
        if self.in_sandbox {
            format!(
                "; the file is at /workspace/inbox/{}",
                crate::sandbox::inbox_name(&file.name)
            )
        } else {
            String::new()
        }
    }

    async fn file(&self, file: &FileRef, vision: bool, turns_ago: Option<usize>, read: &mut Read) {
        let kind = classify(&file.name, &file.mime, &[]);
        let shown_again = turns_ago.is_none_or(|n| n <= self.settings.image_turns);
        // Earlier transcripts come from what was kept; nothing is fetched for a reference.
        if let Some(n) = turns_ago
            && !shown_again
            && kind != Kind::Audio
        {
            read.parts.push(Part::Text(format!(
                "[file `{}` ({}, artifact {}) was attached {n} messages ago and is no longer shown{}]",
                file.name,
                human_size(file.size.max(0) as u64),
                file.artifact_id,
                self.whereabouts(file),
            )));
            return;
        }
        let bytes = match self.blobs.get(&file.blob_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                read.parts.push(Part::Text(format!(
                    "[file `{}` is missing from storage]",
                    file.name
                )));
                return;
            }
            Err(e) => {
                warn!(file = %file.name, error = %e, "cannot read a received file");
                read.parts.push(Part::Text(format!(
                    "[file `{}` could not be read from storage]",
                    file.name
                )));
                return;
            }
        };
        match classify(&file.name, &file.mime, &bytes) {
            Kind::Image => self.image(file, bytes, vision, read).await,
            Kind::Pdf => self.pdf(file, bytes, read).await,
            Kind::Text => self.text(file, &bytes, read),
            Kind::Audio => self.audio(file, bytes, turns_ago.is_none(), read).await,
            Kind::Other => read.parts.push(Part::Text(format!(
                "[file `{}` ({}, {}) is attached; its content is not shown: it is not an image, PDF, text or audio file{}]",
                file.name,
                file.mime,
                human_size(bytes.len() as u64),
                self.whereabouts(file),
            ))),
        }
    }

    async fn image(&self, file: &FileRef, bytes: Bytes, vision: bool, read: &mut Read) {
        if !vision {
            read.parts.push(Part::Text(format!(
                "[image `{}` is attached, but this model cannot see images, so it is not shown{}]",
                file.name,
                self.whereabouts(file),
            )));
            return;
        }
        match self.model_image(file, bytes).await {
            Ok((image, label)) => {
                read.parts.push(Part::Text(label));
                read.parts.push(Part::Image(image));
            }
            Err(why) => read.parts.push(Part::Text(format!(
                "[image `{}` could not be shown: {why}]",
                file.name
            ))),
        }
    }

    /// The scaled image: kept from an earlier turn, or made now (and kept).
    async fn model_image(
        &self,
        file: &FileRef,
        bytes: Bytes,
    ) -> Result<(ImageData, String), ReadError> {
        let label = |w: u64, h: u64, ow: u64, oh: u64| {
            if (w, h) == (ow, oh) {
                format!("[image `{}`, {w}×{h}]", file.name)
            } else {
                format!("[image `{}`, {ow}×{oh} scaled to {w}×{h}]", file.name)
            }
        };
        if let Ok(Some(kept)) = self.store.extract(&file.artifact_id, "image").await
            && let (Some(key), Some(mime)) = (&kept.blob_key, &kept.mime)
            && let Ok(Some(scaled)) = self.blobs.get(key).await
        {
            let detail: serde_json::Value = kept
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default();
            let n = |k: &str| {
                detail
                    .get(k)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            };
            return Ok((
                ImageData {
                    mime: mime.clone(),
                    base64: base64::engine::general_purpose::STANDARD.encode(&scaled),
                },
                label(
                    n("width"),
                    n("height"),
                    n("original_width"),
                    n("original_height"),
                ),
            ));
        }
        let limits = self.limits;
        let prepared = background::run("image", move || model_image::prepare(&bytes, limits))
            .await
            .map_err(ReadError::PrepareImage)??;
        let key = format!("derived/{}/model-image", file.artifact_id);
        let detail = json!({
            "width": prepared.width, "height": prepared.height,
            "original_width": prepared.original.0, "original_height": prepared.original.1,
        });
        let kept = async {
            self.blobs
                .put(&key, prepared.bytes.clone(), prepared.mime)
                .await?;
            self.store
                .put_extract(
                    &file.artifact_id,
                    &Extract {
                        kind: "image".into(),
                        text: None,
                        blob_key: Some(key.clone()),
                        mime: Some(prepared.mime.into()),
                        detail: Some(detail.to_string()),
                    },
                )
                .await?;
            Ok::<(), ReadError>(())
        };
        if let Err(e) = kept.await {
            warn!(file = %file.name, error = %e, "cannot keep the scaled image; it is made again next time");
        }
        Ok((
            ImageData {
                mime: prepared.mime.into(),
                base64: base64::engine::general_purpose::STANDARD.encode(&prepared.bytes),
            },
            label(
                u64::from(prepared.width),
                u64::from(prepared.height),
                u64::from(prepared.original.0),
                u64::from(prepared.original.1),
            ),
        ))
    }

    async fn pdf(&self, file: &FileRef, bytes: Bytes, read: &mut Read) {
        let (text, pages) = match self.pdf_text(file, bytes.clone()).await {
            Ok(found) => found,
            Err(why) => {
                read.parts.push(Part::Text(format!(
                    "[PDF `{}` could not be read: {why}{}]",
                    file.name,
                    self.whereabouts(file)
                )));
                return;
            }
        };
        let limit = self.settings.inline_text_bytes;
        let (head, was_cut) = cut(&text, limit);
        let mut body = format!(
            "[PDF `{}`, {pages} page(s), {}]\n",
            file.name,
            human_size(bytes.len() as u64)
        );
        if head.trim().is_empty() {
            body.push_str("(the PDF has no text layer: it may be scanned images)");
        } else {
            body.push_str(head);
        }
        if was_cut {
            body.push_str(&format!(
                "\n[the rest of `{}` ({} of text) was left out: over the {} limit for inline text{}]",
                file.name,
                human_size((text.len() - head.len()) as u64),
                human_size(limit as u64),
                self.whereabouts(file),
            ));
        }
        let as_document = bytes.len() <= DOCUMENT_MAX_BYTES && pages <= DOCUMENT_MAX_PAGES;
        read.parts.push(Part::Document(DocumentData {
            name: file.name.clone(),
            mime: "application/pdf".into(),
            base64: as_document.then(|| base64::engine::general_purpose::STANDARD.encode(&bytes)),
            text: body,
            pages,
        }));
    }

    /// A PDF's text and page count: kept, or extracted now (and kept).
    async fn pdf_text(&self, file: &FileRef, bytes: Bytes) -> Result<(String, usize), ReadError> {
        if let Ok(Some(kept)) = self.store.extract(&file.artifact_id, "text").await
            && let Some(text) = kept.text
        {
            let pages = kept
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|d| d.get("pages").and_then(serde_json::Value::as_u64))
                .unwrap_or(1) as usize;
            return Ok((text, pages));
        }
        let extracted = background::run("pdf", move || document::pdf_text(&bytes))
            .await
            .map_err(ReadError::ReadPdf)??;
        let kept = self
            .store
            .put_extract(
                &file.artifact_id,
                &Extract {
                    kind: "text".into(),
                    text: Some(extracted.text.clone()),
                    detail: Some(json!({ "pages": extracted.pages }).to_string()),
                    ..Extract::default()
                },
            )
            .await;
        if let Err(e) = kept {
            warn!(file = %file.name, error = %e, "cannot keep a PDF's text");
        }
        Ok((extracted.text, extracted.pages))
    }

    fn text(&self, file: &FileRef, bytes: &[u8], read: &mut Read) {
        let text = match document::text_file(bytes) {
            Ok(text) => text,
            Err(why) => {
                read.parts.push(Part::Text(format!(
                    "[file `{}` could not be read: {why}{}]",
                    file.name,
                    self.whereabouts(file)
                )));
                return;
            }
        };
        let limit = self.settings.inline_text_bytes;
        let (head, was_cut) = cut(&text, limit);
        let mut body = format!(
            "[file `{}` ({}, {})]\n{head}",
            file.name,
            file.mime,
            human_size(bytes.len() as u64)
        );
        if was_cut {
            body.push_str(&format!(
                "\n[the rest of `{}` ({}) was left out: over the {} limit for inline text{}]",
                file.name,
                human_size((text.len() - head.len()) as u64),
                human_size(limit as u64),
                self.whereabouts(file),
            ));
        }
        read.parts.push(Part::Text(body));
    }

    async fn audio(&self, file: &FileRef, bytes: Bytes, now: bool, read: &mut Read) {
        if let Ok(Some(kept)) = self.store.extract(&file.artifact_id, "transcript").await
            && let Some(text) = kept.text
        {
            read.parts
                .push(Part::Text(transcript_text(&file.name, &text)));
            return;
        }
        let Some(transcriber) = &self.transcriber else {
            read.parts.push(Part::Text(format!(
                "[audio `{}` ({}) is attached; it was not transcribed because transcription is off (ECDYSIS_TRANSCRIBE is not set), so what it says is unknown]",
                file.name,
                human_size(bytes.len() as u64)
            )));
            return;
        };
        if !now {
            // Transcribed when it arrived, or it failed then: do not try on every turn.
            read.parts.push(Part::Text(format!(
                "[audio `{}` is attached; it has no transcript]",
                file.name
            )));
            return;
        }
        match transcriber.transcribe(&file.name, &file.mime, bytes).await {
            Ok(text) => {
                let kept = self
                    .store
                    .put_extract(
                        &file.artifact_id,
                        &Extract {
                            kind: "transcript".into(),
                            text: Some(text.clone()),
                            ..Extract::default()
                        },
                    )
                    .await;
                if let Err(e) = kept {
                    warn!(file = %file.name, error = %e, "cannot keep a transcript");
                }
                read.parts
                    .push(Part::Text(transcript_text(&file.name, &text)));
                read.heard.push((file.name.clone(), text));
            }
            Err(e) => {
                warn!(file = %file.name, error = %e, "transcription failed");
                read.parts.push(Part::Text(format!(
                    "[audio `{}` could not be transcribed: {e}]",
                    file.name
                )));
            }
        }
    }
}

fn transcript_text(name: &str, text: &str) -> String {
    if text.trim().is_empty() {
        format!("[audio `{name}`: the transcript is empty (silence or no speech)]")
    } else {
        format!("[audio `{name}`, transcript]\n{text}")
    }
}

/// The message that shows users what was heard: the transcript, quoted.
pub fn heard_quote(heard: &[(String, String)]) -> Option<String> {
    if heard.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (name, text) in heard {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&format!("🎙️ Heard in `{name}`:\n"));
        let text = if text.trim().is_empty() {
            "(nothing: no speech)"
        } else {
            text.trim()
        };
        for line in text.lines() {
            out.push_str("> ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Some(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_line() {
        assert_eq!(heard_quote(&[]), None);
        assert_eq!(
            heard_quote(&[("v.ogg".into(), "hello\nworld".into())]).unwrap(),
            "🎙️ Heard in `v.ogg`:\n> hello\n> world"
        );
    }
}
