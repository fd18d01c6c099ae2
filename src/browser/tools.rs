//! The browser as tools for the model: `browser_screenshot` (the model sees the image, the
//! thread gets the file), `browser_record` and `fetch_url` (a page's readable text).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::image_fit::{self, Encoding};
use super::record::{RecordRequest, VideoFormat};
use super::screenshot::{Screenshot, ScreenshotRequest};
use super::{BrowserError, BrowserService, Viewport, WaitFor, channel_key};
use crate::tools::{Tool, ToolContext, ToolError, ToolImage, ToolOutput, ToolRegistry};

/// Longest side of the copy the model sees (what vision models take without resizing).
pub const MODEL_IMAGE_SIDE: u32 = 1568;
/// Largest image handed to the model.
pub const MODEL_IMAGE_BYTES: usize = 3_500_000;
/// Default and largest `fetch_url` text.
pub const FETCH_DEFAULT_CHARS: usize = 20_000;
pub const FETCH_MAX_CHARS: usize = 100_000;

/// The three browser tools, in the order the model is offered them.
pub fn all(browser: &BrowserService) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(ScreenshotTool::new(browser.clone())),
        Arc::new(RecordTool::new(browser.clone())),
        Arc::new(FetchUrlTool::new(browser.clone())),
    ]
}

/// Add the three browser tools to `registry`.
pub fn register(registry: &mut ToolRegistry, browser: &BrowserService) {
    for tool in all(browser) {
        registry.register(tool);
    }
}

fn tool_error(e: BrowserError) -> ToolError {
    match e {
        BrowserError::BadRequest(_) | BrowserError::Refused(_) => {
            ToolError::InvalidInput(e.to_string())
        }
        other => ToolError::Failed(other.to_string()),
    }
}

fn input<T: for<'de> Deserialize<'de>>(value: serde_json::Value) -> Result<T, ToolError> {
    serde_json::from_value(value).map_err(|e| ToolError::InvalidInput(e.to_string()))
}

fn wait(text: Option<&str>) -> Result<WaitFor, ToolError> {
    match text {
        None => Ok(WaitFor::Load),
        Some(text) => WaitFor::parse(text).map_err(ToolError::InvalidInput),
    }
}

/// `browser_screenshot`.
pub struct ScreenshotTool {
    browser: BrowserService,
}

impl ScreenshotTool {
    pub fn new(browser: BrowserService) -> Self {
        Self { browser }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScreenshotInput {
    url: String,
    #[serde(default)]
    full_page: bool,
    width: Option<u32>,
    height: Option<u32>,
    scale: Option<f64>,
    selector: Option<String>,
    wait: Option<String>,
}

#[async_trait]
impl Tool for ScreenshotTool {
    fn name(&self) -> &'static str {
        "browser_screenshot"
    }

    fn description(&self) -> &'static str {
        "Open a web page in a headless browser and take a screenshot. You see the image, and it is posted into the thread with your reply."
    }

    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "url": { "type": "string", "description": "http:// or https:// URL" },
                "full_page": { "type": "boolean", "description": "capture the whole page, not just the viewport" },
                "width": { "type": "integer", "minimum": 100, "maximum": 4096, "description": "viewport width in CSS pixels (default 1280)" },
                "height": { "type": "integer", "minimum": 100, "maximum": 4096, "description": "viewport height in CSS pixels (default 800)" },
                "scale": { "type": "number", "minimum": 0.25, "maximum": 4, "description": "device scale factor (default 1)" },
                "selector": { "type": "string", "description": "CSS selector: capture only this element" },
                "wait": { "type": "string", "description": "after load, also wait for: networkidle, selector:<css>, or a delay like 500ms" }
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    async fn call(
        &self,
        context: &ToolContext,
        input_value: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let input: ScreenshotInput = input(input_value)?;
        let defaults = Viewport::default();
        let request = ScreenshotRequest {
            url: input.url,
            viewport: Viewport {
                width: input.width.unwrap_or(defaults.width),
                height: input.height.unwrap_or(defaults.height),
                scale: input.scale.unwrap_or(defaults.scale),
            },
            full_page: input.full_page,
            selector: input.selector,
            wait: wait(input.wait.as_deref())?,
            format: None,
        };
        let shot = self
            .browser
            .screenshot(&channel_key(&context.conversation), &request)
            .await
            .map_err(tool_error)?;
        let image = model_image(&shot).await?;
        Ok(ToolOutput {
            text: format!(
                "{}. The image is attached to your reply in the thread.",
                shot.describe()
            ),
            images: vec![image],
            attachments: vec![shot.attachment()],
        })
    }
}

/// The copy of a screenshot the model sees: at most [`MODEL_IMAGE_SIDE`] pixels a side and
/// [`MODEL_IMAGE_BYTES`] bytes.
pub async fn model_image(shot: &Screenshot) -> Result<ToolImage, ToolError> {
    if shot.width.max(shot.height) <= MODEL_IMAGE_SIDE && shot.bytes.len() <= MODEL_IMAGE_BYTES {
        return Ok(ToolImage {
            mime: shot.encoding.mime().to_string(),
            bytes: shot.bytes.clone(),
        });
    }
    let bytes = shot.bytes.clone();
    let fitted = tokio::task::spawn_blocking(move || {
        let img = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
        let img = image_fit::scale_to_side(&img, MODEL_IMAGE_SIDE);
        let mut png = image_fit::encode(&img, Encoding::Png, 100).map_err(|e| e.to_string())?;
        let mut encoding = Encoding::Png;
        if png.len() > MODEL_IMAGE_BYTES {
            png = image_fit::encode(&img, Encoding::Jpeg, 80).map_err(|e| e.to_string())?;
            encoding = Encoding::Jpeg;
        }
        Ok::<_, String>((png, encoding))
    })
    .await
    .map_err(|e| ToolError::Failed(e.to_string()))?
    .map_err(ToolError::Failed)?;
    Ok(ToolImage {
        mime: fitted.1.mime().to_string(),
        bytes: Bytes::from(fitted.0),
    })
}

/// `browser_record`.
pub struct RecordTool {
    browser: BrowserService,
}

impl RecordTool {
    pub fn new(browser: BrowserService) -> Self {
        Self { browser }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordInput {
    url: String,
    seconds: Option<f64>,
    #[serde(default)]
    scroll: bool,
    #[serde(default)]
    gif: bool,
    width: Option<u32>,
    height: Option<u32>,
    wait: Option<String>,
}

#[async_trait]
impl Tool for RecordTool {
    fn name(&self) -> &'static str {
        "browser_record"
    }

    fn description(&self) -> &'static str {
        "Record a short video of a web page (optionally scrolling through it). The MP4 (or GIF) is posted into the thread with your reply; you do not see it."
    }

    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "url": { "type": "string", "description": "http:// or https:// URL" },
                "seconds": { "type": "number", "exclusiveMinimum": 0, "maximum": self.browser.settings().max_record_seconds, "description": "length (default 5)" },
                "scroll": { "type": "boolean", "description": "scroll from top to bottom while recording" },
                "gif": { "type": "boolean", "description": "an animated GIF instead of an MP4" },
                "width": { "type": "integer", "minimum": 100, "maximum": 4096 },
                "height": { "type": "integer", "minimum": 100, "maximum": 4096 },
                "wait": { "type": "string", "description": "after load, also wait for: networkidle, selector:<css>, or a delay like 500ms" }
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    async fn call(
        &self,
        context: &ToolContext,
        input_value: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let input: RecordInput = input(input_value)?;
        let mut request = RecordRequest::new(input.url);
        request.seconds = input.seconds.unwrap_or(request.seconds);
        request.scroll = input.scroll;
        if input.gif {
            request.format = VideoFormat::Gif;
        }
        request.viewport.width = input.width.unwrap_or(request.viewport.width);
        request.viewport.height = input.height.unwrap_or(request.viewport.height);
        request.wait = wait(input.wait.as_deref())?;
        let recording = self
            .browser
            .record(&channel_key(&context.conversation), &request)
            .await
            .map_err(tool_error)?;
        Ok(ToolOutput {
            text: format!(
                "{}. It is attached to your reply in the thread.",
                recording.describe()
            ),
            images: Vec::new(),
            attachments: vec![recording.attachment()],
        })
    }
}

/// `fetch_url`.
pub struct FetchUrlTool {
    browser: BrowserService,
}

impl FetchUrlTool {
    pub fn new(browser: BrowserService) -> Self {
        Self { browser }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchInput {
    url: String,
    max_chars: Option<usize>,
}

#[derive(Deserialize)]
struct PageText {
    title: String,
    text: String,
}

/// A page's readable text.
#[derive(Clone, Debug)]
pub struct FetchedText {
    pub url: String,
    pub title: String,
    pub text: String,
    pub truncated: bool,
}

impl BrowserService {
    /// Load a page and return its visible text, at most `max_chars` characters.
    pub async fn fetch_text(
        &self,
        channel: &str,
        url: &str,
        max_chars: usize,
    ) -> Result<FetchedText, BrowserError> {
        let url = self.check_url(url).await?;
        self.check_rate(channel)?;
        let lease = self.page(channel, Viewport::default()).await?;
        let loaded = lease.open(&url, &WaitFor::Load).await?;
        let page: PageText = lease
            .eval(
                "({ title: document.title || '', text: (document.body ? document.body.innerText : document.documentElement.innerText) || '' })",
            )
            .await?;
        let text = collapse_blank_lines(&page.text);
        let truncated = text.chars().count() > max_chars;
        let text = if truncated {
            text.chars().take(max_chars).collect()
        } else {
            text
        };
        Ok(FetchedText {
            url: loaded.url,
            title: page.title,
            text,
            truncated,
        })
    }
}

/// Trim lines and keep at most one empty line in a row.
fn collapse_blank_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines().map(str::trim_end) {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

#[async_trait]
impl Tool for FetchUrlTool {
    fn name(&self) -> &'static str {
        "fetch_url"
    }

    fn description(&self) -> &'static str {
        "Open a web page in a headless browser (JavaScript runs) and return its title and readable text, cut to a length limit."
    }

    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "properties": {
                "url": { "type": "string", "description": "http:// or https:// URL" },
                "max_chars": { "type": "integer", "minimum": 100, "maximum": FETCH_MAX_CHARS, "description": "longest text returned (default 20000)" }
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    async fn call(
        &self,
        context: &ToolContext,
        input_value: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let input: FetchInput = input(input_value)?;
        let max = input
            .max_chars
            .unwrap_or(FETCH_DEFAULT_CHARS)
            .clamp(100, FETCH_MAX_CHARS);
        let page = self
            .browser
            .fetch_text(&channel_key(&context.conversation), &input.url, max)
            .await
            .map_err(tool_error)?;
        let mut text = format!("URL: {}\nTitle: {}\n\n{}", page.url, page.title, page.text);
        if page.truncated {
            text.push_str(&format!("\n\n[cut at {max} characters]"));
        }
        Ok(ToolOutput::text(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::{BrowserOptions, Source, SystemResolver};
    use crate::config::BrowserSettings;
    use ecdysis_chat::ConversationRef;

    fn service() -> BrowserService {
        BrowserService::new(
            BrowserOptions {
                settings: BrowserSettings::default(),
                ffmpeg: "ffmpeg".into(),
                work_dir: std::env::temp_dir(),
                resolver: Arc::new(SystemResolver),
                extra_args: Vec::new(),
            },
            Source::Local("/nonexistent/chromium".into()),
        )
        .unwrap()
    }

    fn context() -> ToolContext {
        ToolContext {
            event_id: 1,
            step: 1,
            conversation: ConversationRef::new("web", "local", "c", None),
            user_id: "u".into(),
            route: serde_json::Value::Null,
        }
    }

    #[test]
    fn tools_register_with_schemas() {
        let mut registry = ToolRegistry::new();
        register(&mut registry, &service());
        let names: Vec<_> = registry.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["browser_screenshot", "browser_record", "fetch_url"]);
        for tool in registry.iter() {
            let schema = tool.input_schema();
            assert_eq!(schema["type"], "object");
            assert_eq!(schema["required"][0], "url");
        }
    }

    #[tokio::test]
    async fn refused_urls_are_invalid_input_and_launch_nothing() {
        let s = service();
        let mut registry = ToolRegistry::new();
        register(&mut registry, &s);
        for name in ["browser_screenshot", "browser_record", "fetch_url"] {
            let tool = registry.get(name).unwrap();
            let e = tool
                .call(&context(), json!({ "url": "http://169.254.169.254/" }))
                .await
                .unwrap_err();
            assert!(
                matches!(e, ToolError::InvalidInput(_)) || e.to_string().contains("ffmpeg"),
                "{name}: {e}"
            );
            let e = tool
                .call(&context(), json!({ "url": "x", "bogus": 1 }))
                .await
                .unwrap_err();
            assert!(matches!(e, ToolError::InvalidInput(_)), "{name}: {e}");
        }
        assert_eq!(s.stats().launches, 0);
    }

    #[test]
    fn blank_lines_collapse() {
        assert_eq!(collapse_blank_lines("a  \n\n\n\nb\n"), "a\n\nb");
    }
}
