//! MCP tools as the model sees them: `<server>__<tool>` (characters outside `[A-Za-z0-9_-]`
//! replaced by `_`, at most 64 characters) with the server's input schema, and their results
//! (text, images, audio, embedded resources, resource links, structured content) turned into a
//! [`ToolOutput`] within the server's output cap: images are shown to the model and, like
//! binary resources, attached to the reply.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use base64::Engine;
use ecdysis_chat::Attachment;
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};
use serde_json::Value;
use tracing::warn;

use super::client::Server;
use crate::engine::tools::{Tool, ToolContext, ToolError, ToolImage, ToolOutput};

/// The longest tool name the model APIs accept.
pub const MAX_NAME_CHARS: usize = 64;

/// The name the model calls a server's tool by.
pub fn exposed_name(server: &str, tool: &str) -> String {
    let mut name: String = format!("{server}__{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // ASCII only after the mapping, so any byte index is a character boundary.
    name.truncate(MAX_NAME_CHARS);
    name
}

/// One tool of one MCP server.
pub struct McpTool {
    server: Weak<Server>,
    server_name: String,
    /// The server's own name for it.
    remote: String,
    /// `<server>__<tool>`.
    exposed: String,
    description: String,
    schema: Value,
}

impl McpTool {
    /// The server's own name for the tool.
    pub fn remote_name(&self) -> &str {
        &self.remote
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }
}

/// Wrap the tools a server listed (skipping names that collide once made safe).
pub fn wrap(server: &Arc<Server>, listed: Vec<rmcp::model::Tool>) -> Vec<Arc<McpTool>> {
    let mut out: Vec<Arc<McpTool>> = Vec::with_capacity(listed.len());
    for tool in listed {
        let exposed = exposed_name(server.name(), &tool.name);
        if out.iter().any(|t| t.exposed == exposed) {
            warn!(server = %server.name(), tool = %tool.name, %exposed, "MCP tool skipped: its name collides with another once made safe");
            continue;
        }
        let description = tool
            .description
            .as_deref()
            .or(tool.title.as_deref())
            .unwrap_or_default()
            .to_string();
        out.push(Arc::new(McpTool {
            server: Arc::downgrade(server),
            server_name: server.name().to_string(),
            remote: tool.name.to_string(),
            exposed,
            description: format!("[MCP server {}] {description}", server.name())
                .trim_end()
                .to_string(),
            schema: Value::Object((*tool.input_schema).clone()),
        }));
    }
    out
}

#[async_trait]
impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.exposed
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn input_schema(&self) -> Value {
        self.schema.clone()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let server = self.server.upgrade().ok_or_else(|| {
            ToolError::Failed(format!(
                "the MCP server `{}` was shut down",
                self.server_name
            ))
        })?;
        let arguments = match input {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                return Err(ToolError::InvalidInput(format!(
                    "the input must be a JSON object, not {other}"
                )));
            }
        };
        if server.config.approval.needed(&self.remote, &self.exposed) {
            let Some(approvals) = &server.approvals else {
                return Err(ToolError::Failed(
                    "this tool needs a human approval and no approval mechanism is configured; it was not called".into(),
                ));
            };
            let shown = arguments
                .as_ref()
                .map(|a| Value::Object(a.clone()).to_string())
                .unwrap_or_else(|| "{}".into());
            let text = format!(
                "The model wants to call the MCP tool `{}` with:\n```\n{}\n```",
                self.exposed,
                crate::redact::global().snippet(&shown, 1_500)
            );
            // One prompt per distinct call of the step (the same call retried asks once).
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&shown, &mut hasher);
            let key = format!(
                "mcp:{}:{:016x}",
                self.exposed,
                std::hash::Hasher::finish(&hasher)
            );
            match approvals.ask(context, text, &key).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ToolError::Failed(
                        "a human denied this call (or did not answer in time); it was not made"
                            .into(),
                    ));
                }
                Err(e) => {
                    return Err(ToolError::Failed(format!(
                        "could not ask for approval: {e}; the call was not made"
                    )));
                }
            }
        }
        let result = server
            .call(&context.conversation, &self.remote, arguments)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let output = convert(&self.exposed, result, server.config.max_output_bytes);
        match output {
            Converted::Ok(output) => Ok(output),
            Converted::ToolError(text) => Err(ToolError::Failed(text)),
        }
    }
}

/// A converted result: a normal output, or the tool's own error (`isError`).
#[derive(Debug)]
pub enum Converted {
    Ok(ToolOutput),
    ToolError(String),
}

/// What a call returned, within `max_bytes` (text, decoded images and files together).
pub fn convert(tool: &str, result: CallToolResult, max_bytes: usize) -> Converted {
    let mut out = Output::new(max_bytes);
    for (index, block) in result.content.into_iter().enumerate() {
        match block {
            ContentBlock::Text(text) => out.text(&text.text),
            ContentBlock::Image(image) => out.image(tool, index, &image.mime_type, &image.data),
            ContentBlock::Audio(audio) => {
                let name = format!("{tool}-{index}.{}", extension(&audio.mime_type));
                out.file(&name, &audio.mime_type, &audio.data);
            }
            ContentBlock::Resource(resource) => match resource.resource {
                ResourceContents::TextResourceContents { uri, text, .. } => {
                    out.text(&format!("[resource {uri}]\n{text}"));
                }
                ResourceContents::BlobResourceContents {
                    uri,
                    mime_type,
                    blob,
                    ..
                } => {
                    let mime = mime_type.unwrap_or_else(|| "application/octet-stream".into());
                    let name = uri
                        .rsplit('/')
                        .find(|s| !s.is_empty())
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{tool}-{index}.{}", extension(&mime)));
                    if mime.starts_with("image/") {
                        out.image(tool, index, &mime, &blob);
                    } else {
                        out.file(&name, &mime, &blob);
                    }
                }
                _ => out.note("[a resource of a kind this version cannot read]"),
            },
            ContentBlock::ResourceLink(link) => {
                out.text(&format!("[resource link: {} {}]", link.name, link.uri));
            }
            _ => out.note("[content of a kind this version cannot read]"),
        }
    }
    if out.output.text.is_empty()
        && let Some(structured) = &result.structured_content
    {
        out.text(&structured.to_string());
    }
    if out.output.text.is_empty() && out.output.images.is_empty() {
        out.output.text = "(the tool returned no content)".into();
    }
    if result.is_error == Some(true) {
        Converted::ToolError(out.output.text)
    } else {
        Converted::Ok(out.output)
    }
}

/// Builds an output within a byte budget.
struct Output {
    output: ToolOutput,
    left: usize,
    cut: bool,
}

impl Output {
    fn new(max_bytes: usize) -> Self {
        Self {
            output: ToolOutput::default(),
            left: max_bytes,
            cut: false,
        }
    }

    fn note(&mut self, note: &str) {
        if !self.output.text.is_empty() {
            self.output.text.push('\n');
        }
        self.output.text.push_str(note);
    }

    fn text(&mut self, text: &str) {
        if self.cut {
            return;
        }
        if !self.output.text.is_empty() {
            self.output.text.push('\n');
        }
        if text.len() <= self.left {
            self.output.text.push_str(text);
            self.left -= text.len();
            return;
        }
        let mut end = self.left;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.output.text.push_str(&text[..end]);
        self.left = 0;
        self.cut = true;
        self.output
            .text
            .push_str("… (output cut at the server's size limit)");
    }

    fn decode(&mut self, what: &str, data: &str) -> Option<Vec<u8>> {
        // Base64 is 4/3 of the bytes: refuse before decoding what cannot fit.
        if data.len() / 4 * 3 > self.left {
            self.note(&format!("[{what} left out: over the output size limit]"));
            return None;
        }
        match base64::engine::general_purpose::STANDARD.decode(data.trim()) {
            Ok(bytes) if bytes.len() <= self.left => {
                self.left -= bytes.len();
                Some(bytes)
            }
            Ok(_) => {
                self.note(&format!("[{what} left out: over the output size limit]"));
                None
            }
            Err(_) => {
                self.note(&format!("[{what} left out: not valid base64]"));
                None
            }
        }
    }

    fn image(&mut self, tool: &str, index: usize, mime: &str, data: &str) {
        let Some(bytes) = self.decode("an image", data) else {
            return;
        };
        let name = format!("{tool}-{index}.{}", extension(mime));
        self.note(&format!(
            "[image {name} ({mime}, {} bytes), attached to the reply]",
            bytes.len()
        ));
        let bytes = bytes::Bytes::from(bytes);
        self.output.images.push(ToolImage {
            mime: mime.to_string(),
            bytes: bytes.clone(),
        });
        self.output
            .attachments
            .push(Attachment::new(name, mime, bytes));
    }

    fn file(&mut self, name: &str, mime: &str, data: &str) {
        let Some(bytes) = self.decode(&format!("the file {name}"), data) else {
            return;
        };
        self.note(&format!(
            "[file {name} ({mime}, {} bytes), attached to the reply]",
            bytes.len()
        ));
        self.output
            .attachments
            .push(Attachment::new(name, mime, bytes));
    }
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/svg+xml" => "svg",
        "audio/mpeg" => "mp3",
        "audio/wav" | "audio/x-wav" => "wav",
        "audio/ogg" => "ogg",
        "application/pdf" => "pdf",
        "application/json" => "json",
        "text/plain" => "txt",
        "text/csv" => "csv",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{EmbeddedResource, ImageContent, TextContent};

    fn result(content: Vec<ContentBlock>, is_error: bool) -> CallToolResult {
        let mut r = if is_error {
            CallToolResult::error(content)
        } else {
            CallToolResult::success(content)
        };
        r.structured_content = None;
        r
    }

    #[test]
    fn names_are_safe_and_short() {
        assert_eq!(
            exposed_name("time", "get_current_time"),
            "time__get_current_time"
        );
        assert_eq!(
            exposed_name("docs", "search.pages/v2"),
            "docs__search_pages_v2"
        );
        assert_eq!(exposed_name("x", "é"), "x___");
        let long = exposed_name("server", &"t".repeat(100));
        assert_eq!(long.len(), MAX_NAME_CHARS);
        assert!(long.starts_with("server__ttt"));
    }

    #[test]
    fn text_images_and_resources_become_output() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
        let r = result(
            vec![
                ContentBlock::Text(TextContent::new("hello")),
                ContentBlock::Image(ImageContent::new(png.clone(), "image/png")),
                ContentBlock::Resource(EmbeddedResource::new(ResourceContents::text(
                    "notes",
                    "file:///a.txt",
                ))),
                ContentBlock::Resource(EmbeddedResource::new(
                    ResourceContents::BlobResourceContents {
                        uri: "file:///report.pdf".into(),
                        mime_type: Some("application/pdf".into()),
                        blob: base64::engine::general_purpose::STANDARD.encode(b"%PDF"),
                        meta: None,
                    },
                )),
            ],
            false,
        );
        let Converted::Ok(out) = convert("s__t", r, 1 << 20) else {
            panic!("not ok");
        };
        assert!(
            out.text.starts_with("hello\n[image s__t-1.png"),
            "{}",
            out.text
        );
        assert!(out.text.contains("[resource file:///a.txt]\nnotes"));
        assert_eq!(out.images.len(), 1);
        assert_eq!(out.images[0].bytes.as_ref(), b"\x89PNG fake");
        let names: Vec<&str> = out.attachments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["s__t-1.png", "report.pdf"]);
    }

    #[test]
    fn output_is_capped_and_errors_are_errors() {
        let r = result(
            vec![ContentBlock::Text(TextContent::new("x".repeat(5000)))],
            false,
        );
        let Converted::Ok(out) = convert("t", r, 1024) else {
            panic!("not ok");
        };
        assert!(
            out.text.len() < 1200 && out.text.ends_with("size limit)"),
            "{}",
            out.text.len()
        );
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 4096]);
        let r = result(
            vec![ContentBlock::Image(ImageContent::new(big, "image/png"))],
            false,
        );
        let Converted::Ok(out) = convert("t", r, 1024) else {
            panic!("not ok");
        };
        assert!(
            out.images.is_empty() && out.text.contains("left out"),
            "{}",
            out.text
        );
        let r = result(
            vec![ContentBlock::Text(TextContent::new("no such city"))],
            true,
        );
        assert!(matches!(convert("t", r, 1024), Converted::ToolError(t) if t == "no such city"));
    }
}
