//! The browser as tools for the model: `browser_screenshot` (the model sees the image, the
//! thread gets the file), `browser_record` and `fetch_url` (a page's readable text), and the
//! interactive tools of [`super::interactive`]. Screenshots and recordings without a URL show
//! the conversation's interactive session.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;

use super::actions::Action;
use super::image_fit::{self, Encoding};
use super::interactive::{self, tool_error};
use super::record::{RecordRequest, VideoFormat};
use super::screenshot::{Screenshot, ScreenshotRequest, capture_png};
use super::session::{Sessions, session_key};
use super::{BrowserError, BrowserService, Viewport, WaitFor, channel_key};
use crate::engine::tools::{
    Tool, ToolContext, ToolError, ToolImage, ToolOutput, ToolRegistry, arguments, input_schema_of,
};

/// Longest side of the copy the model sees (what vision models take without resizing).
pub const MODEL_IMAGE_SIDE: u32 = 1568;
/// Largest image handed to the model.
pub const MODEL_IMAGE_BYTES: usize = 3_500_000;
/// Default and largest `fetch_url` text.
pub const FETCH_DEFAULT_CHARS: usize = 20_000;
pub const FETCH_MAX_CHARS: usize = 100_000;

/// The browser tools, in the order the model is offered them: the interactive ones (sharing
/// one set of sessions), then screenshots, recordings and `fetch_url`. `turn_limit` is the
/// longest an agent turn runs: a session is not closed for idleness before its turn is over.
pub fn all(browser: &BrowserService, turn_limit: std::time::Duration) -> Vec<Arc<dyn Tool>> {
    let sessions = Sessions::new(browser.clone(), turn_limit);
    let mut tools = interactive::all(&sessions);
    tools.push(Arc::new(ScreenshotTool::new(sessions.clone())));
    tools.push(Arc::new(RecordTool::new(sessions)));
    tools.push(Arc::new(FetchUrlTool::new(browser.clone())));
    tools
}

/// Add the browser tools to `registry`.
pub fn register(
    registry: &mut ToolRegistry,
    browser: &BrowserService,
    turn_limit: std::time::Duration,
) {
    for tool in all(browser, turn_limit) {
        registry.register(tool);
    }
}

fn wait(text: Option<&str>) -> Result<WaitFor, ToolError> {
    match text {
        None => Ok(WaitFor::Load),
        Some(text) => WaitFor::parse(text).map_err(ToolError::InvalidInput),
    }
}

/// `browser_screenshot`.
pub struct ScreenshotTool {
    sessions: Arc<Sessions>,
}

impl ScreenshotTool {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }

    /// The conversation's open page.
    async fn session_shot(
        &self,
        context: &ToolContext,
        request: &ScreenshotRequest,
    ) -> Result<Screenshot, BrowserError> {
        let guard = self
            .sessions
            .lock(&session_key(&context.conversation), context.event_id)
            .await;
        let session = guard.as_ref().ok_or_else(|| {
            BrowserError::BadRequest("give a `url`, or open a page with browser_open first".into())
        })?;
        let started = std::time::Instant::now();
        let png = capture_png(session.lease(), request).await?;
        let page = session.lease().page();
        let url = page.url().await.unwrap_or_default();
        let title = session
            .lease()
            .eval::<String>("document.title")
            .await
            .ok()
            .filter(|t| !t.trim().is_empty());
        self.sessions
            .browser()
            .fit_screenshot(png, url, title, None, started)
            .await
    }
}

/// What the model passes to `browser_screenshot`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScreenshotArgs {
    /// http:// or https:// URL (default: the open page)
    url: Option<String>,
    /// capture the whole page, not just the viewport
    #[serde(default)]
    full_page: bool,
    /// viewport width in CSS pixels (default 1280)
    #[schemars(range(min = 100, max = 4096))]
    width: Option<u32>,
    /// viewport height in CSS pixels (default 800)
    #[schemars(range(min = 100, max = 4096))]
    height: Option<u32>,
    /// device scale factor (default 1)
    #[schemars(range(min = 0.25, max = 4))]
    scale: Option<f64>,
    /// CSS selector: capture only this element
    selector: Option<String>,
    /// after load, also wait for: networkidle, selector:<css>, or a delay like 500ms
    wait: Option<String>,
}

#[async_trait]
impl Tool for ScreenshotTool {
    fn name(&self) -> &'static str {
        "browser_screenshot"
    }

    fn description(&self) -> &'static str {
        "Take a screenshot of a web page, or (without `url`) of the page open in this conversation's browser tab. You see the image, and it is posted into the thread with your reply."
    }

    fn input_schema(&self) -> serde_json::Value {
        input_schema_of::<ScreenshotArgs>()
    }

    async fn call(
        &self,
        context: &ToolContext,
        input: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let args: ScreenshotArgs = arguments(input)?;
        let defaults = Viewport::default();
        let Some(url) = args.url else {
            if args.width.is_some()
                || args.height.is_some()
                || args.scale.is_some()
                || args.wait.is_some()
            {
                return Err(ToolError::InvalidInput(
                    "width, height, scale and wait apply to a `url`; the open page is captured as it is".into(),
                ));
            }
            let mut request = ScreenshotRequest::new("");
            request.full_page = args.full_page;
            request.selector = args.selector;
            let shot = self
                .session_shot(context, &request)
                .await
                .map_err(tool_error)?;
            return shot_output(shot).await;
        };
        let request = ScreenshotRequest {
            url,
            viewport: Viewport {
                width: args.width.unwrap_or(defaults.width),
                height: args.height.unwrap_or(defaults.height),
                scale: args.scale.unwrap_or(defaults.scale),
            },
            full_page: args.full_page,
            selector: args.selector,
            wait: wait(args.wait.as_deref())?,
            format: None,
        };
        let shot = self
            .sessions
            .browser()
            .screenshot(&channel_key(&context.conversation), &request)
            .await
            .map_err(tool_error)?;
        shot_output(shot).await
    }
}

/// What the model gets for a screenshot: the line, the image, and the file for the thread.
async fn shot_output(shot: Screenshot) -> Result<ToolOutput, ToolError> {
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
        let img = crate::media::image::decode(&bytes).map_err(|e| e.to_string())?;
        let img = image_fit::scale_to_side(img, MODEL_IMAGE_SIDE).map_err(|e| e.to_string())?;
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
    sessions: Arc<Sessions>,
}

impl RecordTool {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

/// The most steps one scripted recording runs.
pub const MAX_RECORD_STEPS: usize = 20;

/// What the model passes to `browser_record`.
// The largest `seconds` is a setting: `RecordTool::input_schema` adds it to the schema.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RecordArgs {
    /// http:// or https:// URL (with steps: opened first)
    url: Option<String>,
    /// browser actions, e.g. {"action": "type", "ref": 3, "text": "Paris", "submit": true}; actions: open(url), click(ref), type(ref, text, submit), select(ref, value), scroll(direction|ref), back, wait(text|selector)
    #[schemars(with = "Option<Vec<StepSchema>>", length(max = MAX_RECORD_STEPS))]
    steps: Option<Vec<Action>>,
    /// length (default 5)
    #[schemars(extend("exclusiveMinimum" = 0))]
    seconds: Option<f64>,
    /// scroll from top to bottom while recording
    #[serde(default)]
    scroll: bool,
    /// an animated GIF instead of an MP4
    #[serde(default)]
    gif: bool,
    #[schemars(range(min = 100, max = 4096))]
    width: Option<u32>,
    #[schemars(range(min = 100, max = 4096))]
    height: Option<u32>,
    /// after load, also wait for: networkidle, selector:<css>, or a delay like 500ms
    wait: Option<String>,
}

/// A `browser_record` step as its schema shows it: only the `action` (the `steps` description
/// lists each action's fields). The steps themselves are read as [`Action`]s.
#[derive(JsonSchema)]
#[schemars(description = "")]
#[expect(dead_code, reason = "only the schema is used")]
struct StepSchema {
    action: StepAction,
}

/// The actions a `browser_record` step can take (those of [`Action`]).
#[derive(JsonSchema)]
#[schemars(rename_all = "snake_case", description = "")]
#[expect(dead_code, reason = "only the schema is used")]
enum StepAction {
    Open,
    Click,
    Type,
    Select,
    Scroll,
    Back,
    Wait,
}

#[async_trait]
impl Tool for RecordTool {
    fn name(&self) -> &'static str {
        "browser_record"
    }

    fn description(&self) -> &'static str {
        "Record a video posted into the thread with your reply (you do not see it): with `steps`, run those browser actions in this conversation's tab and film them; with only `url`, film that page for some seconds (optionally scrolling); with neither, the film of this conversation's browser session so far."
    }

    fn input_schema(&self) -> serde_json::Value {
        let mut schema = input_schema_of::<RecordArgs>();
        if let Some(seconds) = schema
            .pointer_mut("/properties/seconds")
            .and_then(serde_json::Value::as_object_mut)
        {
            seconds.insert(
                "maximum".into(),
                self.sessions.browser().settings().max_record_seconds.into(),
            );
        }
        schema
    }

    async fn call(
        &self,
        context: &ToolContext,
        input: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let args: RecordArgs = arguments(input)?;
        let page_options = args.seconds.is_some()
            || args.scroll
            || args.gif
            || args.width.is_some()
            || args.height.is_some()
            || args.wait.is_some();
        if args.steps.is_some() || args.url.is_none() {
            if page_options {
                return Err(ToolError::InvalidInput(
                    "seconds, scroll, gif, width, height and wait apply to filming a `url` alone; a session is filmed as MP4 as it happens".into(),
                ));
            }
            return self.record_session(context, args.url, args.steps).await;
        }
        let Some(url) = args.url else {
            return Err(ToolError::InvalidInput("which page? Give a `url`.".into()));
        };
        let mut request = RecordRequest::new(url);
        request.seconds = args.seconds.unwrap_or(request.seconds);
        request.scroll = args.scroll;
        if args.gif {
            request.format = VideoFormat::Gif;
        }
        request.viewport.width = args.width.unwrap_or(request.viewport.width);
        request.viewport.height = args.height.unwrap_or(request.viewport.height);
        request.wait = wait(args.wait.as_deref())?;
        let recording = self
            .sessions
            .browser()
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

impl RecordTool {
    /// Film scripted steps (after opening `url`), or the session so far.
    async fn record_session(
        &self,
        context: &ToolContext,
        url: Option<String>,
        steps: Option<Vec<Action>>,
    ) -> Result<ToolOutput, ToolError> {
        let (video, text) = match steps {
            Some(steps) => {
                let mut script: Vec<Action> =
                    url.map(|url| Action::Open { url }).into_iter().collect();
                script.extend(steps);
                if script.is_empty() || script.len() > MAX_RECORD_STEPS {
                    return Err(ToolError::InvalidInput(format!(
                        "give from 1 to {MAX_RECORD_STEPS} steps"
                    )));
                }
                interactive::record_steps(&self.sessions, context, &script)
                    .await
                    .map_err(tool_error)?
            }
            None => (
                interactive::record_session(&self.sessions, context)
                    .await
                    .map_err(tool_error)?,
                String::new(),
            ),
        };
        let mut out = format!(
            "{}. It is attached to your reply in the thread.",
            video.describe()
        );
        if !text.is_empty() {
            out.push_str("\n\n");
            out.push_str(&text);
        }
        Ok(ToolOutput {
            text: out,
            images: Vec::new(),
            attachments: vec![ecdysis_chat::Attachment::new(
                "session.mp4",
                "video/mp4",
                video.bytes,
            )],
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

/// What the model passes to `fetch_url`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    /// http:// or https:// URL
    url: String,
    /// longest text returned (default 20000)
    #[schemars(range(min = 100, max = FETCH_MAX_CHARS))]
    max_chars: Option<usize>,
}

#[derive(Deserialize)]
struct PageText {
    title: String,
    text: String,
    html: String,
}

/// The largest document handed to the readability parser.
const MAX_READABLE_HTML: usize = 5 * 1024 * 1024;

/// A page's readable text.
#[derive(Clone, Debug)]
pub struct FetchedText {
    pub url: String,
    pub title: String,
    pub text: String,
    pub truncated: bool,
}

impl BrowserService {
    /// Load a page (its scripts run) and return its readable text as Markdown (the article,
    /// found by a port of Mozilla's Readability), or the page's visible text when it has no
    /// article; at most `max_chars` characters.
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
                "({ title: document.title || '', text: (document.body ? document.body.innerText : document.documentElement.innerText) || '', html: document.documentElement.outerHTML })",
            )
            .await?;
        drop(lease);
        let page_url = loaded.url.clone();
        let PageText { title, text, html } = page;
        let (title, text) = tokio::task::spawn_blocking(move || match readable(&html, &page_url) {
            Some((article_title, article)) => (
                if article_title.trim().is_empty() {
                    title
                } else {
                    article_title
                },
                article,
            ),
            None => (title, text),
        })
        .await
        .map_err(|e| BrowserError::Cdp(format!("text extraction failed: {e}")))?;
        let page = PageText {
            title,
            text,
            html: String::new(),
        };
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

/// The article of a page as Markdown, with its title; `None` when the page has no readable
/// article (a form, a list of links, an app).
pub fn readable(html: &str, url: &str) -> Option<(String, String)> {
    if html.len() > MAX_READABLE_HTML {
        return None;
    }
    let config = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Markdown,
        ..dom_smoothie::Config::default()
    };
    let mut parser = dom_smoothie::Readability::new(html, Some(url), Some(config)).ok()?;
    let article = parser.parse().ok()?;
    let text = article.text_content.to_string();
    if text.trim().is_empty() {
        return None;
    }
    Some((article.title, text))
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
        input_schema_of::<FetchArgs>()
    }

    async fn call(
        &self,
        context: &ToolContext,
        input: serde_json::Value,
    ) -> Result<ToolOutput, ToolError> {
        let args: FetchArgs = arguments(input)?;
        let max = args
            .max_chars
            .unwrap_or(FETCH_DEFAULT_CHARS)
            .clamp(100, FETCH_MAX_CHARS);
        let page = self
            .browser
            .fetch_text(&channel_key(&context.conversation), &args.url, max)
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
    use serde_json::json;

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
            poster: crate::bus::Poster::detached(),
        }
    }

    #[test]
    fn tools_register_with_schemas() {
        let mut registry = ToolRegistry::new();
        register(
            &mut registry,
            &service(),
            std::time::Duration::from_secs(120),
        );
        let names: Vec<_> = registry.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "browser_open",
                "browser_snapshot",
                "browser_click",
                "browser_type",
                "browser_select",
                "browser_scroll",
                "browser_back",
                "browser_wait",
                "browser_screenshot",
                "browser_record",
                "fetch_url"
            ]
        );
        for tool in registry.iter() {
            let schema = tool.input_schema();
            assert_eq!(schema["type"], "object", "{}", tool.name());
            assert_eq!(schema["additionalProperties"], false, "{}", tool.name());
        }
        let record = registry.get("browser_record").unwrap().input_schema();
        let seconds = &record["properties"]["seconds"];
        assert_eq!(
            seconds["maximum"],
            BrowserSettings::default().max_record_seconds
        );
        assert_eq!(seconds["exclusiveMinimum"], 0);
        let steps = &record["properties"]["steps"];
        assert_eq!(steps["maxItems"], MAX_RECORD_STEPS);
        assert_eq!(steps["items"]["required"], json!(["action"]));
        assert_eq!(steps["items"]["properties"]["action"]["enum"][6], "wait");
        assert!(record.get("required").is_none(), "{record}");
        assert_eq!(
            registry.get("fetch_url").unwrap().input_schema()["required"][0],
            "url"
        );
    }

    #[tokio::test]
    async fn actions_without_an_open_page_say_so_and_launch_nothing() {
        let s = service();
        let mut registry = ToolRegistry::new();
        register(&mut registry, &s, std::time::Duration::from_secs(120));
        for name in [
            "browser_snapshot",
            "browser_click",
            "browser_screenshot",
            "browser_record",
        ] {
            let input = if name == "browser_click" {
                json!({ "ref": 1 })
            } else {
                json!({})
            };
            let e = registry
                .get(name)
                .unwrap()
                .call(&context(), input)
                .await
                .unwrap_err();
            assert!(
                e.to_string().contains("browser_open") || e.to_string().contains("ffmpeg"),
                "{name}: {e}"
            );
        }
        let e = registry
            .get("browser_open")
            .unwrap()
            .call(&context(), json!({ "url": "http://10.0.0.1/" }))
            .await
            .unwrap_err();
        assert!(matches!(e, ToolError::InvalidInput(_)), "{e}");
        assert_eq!(s.stats().launches, 0);
    }

    #[test]
    fn readable_text_comes_from_the_article() {
        let paragraph =
            "Rust is a language empowering everyone to build reliable and efficient software. "
                .repeat(12);
        let html = format!(
            "<html><head><title>Rust</title></head><body><nav><a href='/a'>Home</a> <a href='/b'>Menu</a></nav>\
             <article><h1>Why Rust</h1><p>{paragraph}</p><p>{paragraph}</p></article><footer>Cookie banner</footer></body></html>"
        );
        let (title, text) = readable(&html, "https://example.com/rust").unwrap();
        assert_eq!(title, "Rust");
        assert!(text.contains("empowering everyone"), "{text}");
        assert!(!text.contains("Cookie banner"), "{text}");
        assert!(readable("<html><body></body></html>", "https://example.com/").is_none());
    }

    #[tokio::test]
    async fn refused_urls_are_invalid_input_and_launch_nothing() {
        let s = service();
        let mut registry = ToolRegistry::new();
        register(&mut registry, &s, std::time::Duration::from_secs(120));
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
