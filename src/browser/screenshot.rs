//! Screenshots: the viewport, the full page or one element, at a chosen size and device scale
//! factor, fitted to the platform's upload limit.

use base64::Engine;
use bytes::Bytes;
use ecdysis_chat::Attachment;
use serde::Deserialize;
use tracing::info;

use super::cdp::protocol::{CaptureScreenshot, Clip};
use super::image_fit::{self, Encoding, Limits};
use super::{BrowserError, BrowserService, PageLease, Viewport, WaitFor};

/// Tallest full-page capture, in CSS pixels (longer pages are cut).
pub const MAX_FULL_PAGE_HEIGHT: u32 = 16_384;
/// Viewport bounds, in CSS pixels.
pub const MIN_SIDE: u32 = 100;
pub const MAX_SIDE: u32 = 4_096;

/// What to capture.
#[derive(Clone, Debug, PartialEq)]
pub struct ScreenshotRequest {
    pub url: String,
    pub viewport: Viewport,
    pub full_page: bool,
    /// Capture only the first element matching this CSS selector.
    pub selector: Option<String>,
    pub wait: WaitFor,
    /// The encoding asked for; `None` is PNG, converted only when too large.
    pub format: Option<Encoding>,
}

impl ScreenshotRequest {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            viewport: Viewport::default(),
            full_page: false,
            selector: None,
            wait: WaitFor::Load,
            format: None,
        }
    }
}

/// A captured, fitted screenshot.
#[derive(Clone, Debug)]
pub struct Screenshot {
    pub bytes: Bytes,
    pub encoding: Encoding,
    pub width: u32,
    pub height: u32,
    /// Size as captured, before any downscaling.
    pub captured: (u32, u32),
    /// Where the page ended up.
    pub url: String,
    pub title: Option<String>,
}

impl Screenshot {
    pub fn file_name(&self) -> String {
        format!("screenshot.{}", self.encoding.extension())
    }

    pub fn attachment(&self) -> Attachment {
        Attachment::new(self.file_name(), self.encoding.mime(), self.bytes.clone())
    }

    /// One line for the thread.
    pub fn describe(&self) -> String {
        let mut text = format!("Screenshot of {}", self.url);
        if let Some(title) = &self.title {
            text.push_str(&format!(" (“{title}”)"));
        }
        text.push_str(&format!(" · {}×{}", self.width, self.height));
        if (self.width, self.height) != self.captured {
            text.push_str(&format!(
                ", scaled down from {}×{}",
                self.captured.0, self.captured.1
            ));
        }
        if self.encoding != Encoding::Png {
            text.push_str(&format!(
                " · {} to fit the upload limit",
                self.encoding.extension().to_uppercase()
            ));
        }
        text
    }
}

#[derive(Deserialize)]
struct Rect {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

/// Check a request's numbers before anything starts.
pub fn validate(request: &ScreenshotRequest) -> Result<(), BrowserError> {
    let v = request.viewport;
    if !(MIN_SIDE..=MAX_SIDE).contains(&v.width) || !(MIN_SIDE..=MAX_SIDE).contains(&v.height) {
        return Err(BrowserError::BadRequest(format!(
            "width and height must be between {MIN_SIDE} and {MAX_SIDE} pixels"
        )));
    }
    if !(0.25..=4.0).contains(&v.scale) {
        return Err(BrowserError::BadRequest(
            "the scale (device pixel ratio) must be between 0.25 and 4".into(),
        ));
    }
    if request
        .selector
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return Err(BrowserError::BadRequest("the selector is empty".into()));
    }
    Ok(())
}

impl BrowserService {
    /// Take a screenshot for `channel` (its own cookies, its own rate budget).
    pub async fn screenshot(
        &self,
        channel: &str,
        request: &ScreenshotRequest,
    ) -> Result<Screenshot, BrowserError> {
        validate(request)?;
        let url = self.check_url(&request.url).await?;
        self.check_rate(channel)?;
        let started = std::time::Instant::now();
        let (png, loaded_url, title) = match self.capture(channel, &url, request).await {
            Err(e) if e.is_gone() => self.capture(channel, &url, request).await?,
            other => other?,
        };
        self.fit_screenshot(png, loaded_url, title, request.format, started)
            .await
    }

    /// Fit a captured PNG to the upload limits (an interactive session's page, or a fresh one).
    pub async fn fit_screenshot(
        &self,
        png: Vec<u8>,
        loaded_url: String,
        title: Option<String>,
        format: Option<Encoding>,
        started: std::time::Instant,
    ) -> Result<Screenshot, BrowserError> {
        let limits = Limits {
            max_bytes: self.settings().max_upload_bytes,
            max_side: self.settings().max_image_pixels,
            prefer: format,
        };
        let (captured, fitted) = tokio::task::spawn_blocking(move || {
            let captured = image::ImageReader::new(std::io::Cursor::new(&png))
                .with_guessed_format()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .unwrap_or_default();
            (captured, image_fit::fit(&png, limits))
        })
        .await
        .map_err(|e| BrowserError::Cdp(format!("image task failed: {e}")))?;
        let fitted = fitted?;
        info!(
            url = %loaded_url,
            width = fitted.width,
            height = fitted.height,
            bytes = fitted.bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "screenshot taken"
        );
        Ok(Screenshot {
            bytes: fitted.bytes,
            encoding: fitted.encoding,
            width: fitted.width,
            height: fitted.height,
            captured,
            url: loaded_url,
            title,
        })
    }

    async fn capture(
        &self,
        channel: &str,
        url: &url::Url,
        request: &ScreenshotRequest,
    ) -> Result<(Vec<u8>, String, Option<String>), BrowserError> {
        let lease = self.page(channel, request.viewport).await?;
        let loaded = lease.open(url, &request.wait).await?;
        let png = capture_png(&lease, request).await?;
        Ok((png, loaded.url, loaded.title))
    }
}

/// Capture the loaded page as PNG.
pub async fn capture_png(
    lease: &PageLease,
    request: &ScreenshotRequest,
) -> Result<Vec<u8>, BrowserError> {
    let clip = match (&request.selector, request.full_page) {
        (Some(selector), _) => {
            let script = format!(
                "(() => {{ const e = document.querySelector({}); if (!e) return null; \
                 const r = e.getBoundingClientRect(); \
                 return {{ x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height }}; }})()",
                serde_json::to_string(selector).unwrap_or_default()
            );
            let rect: Option<Rect> = lease.eval(&script).await?;
            let rect = rect.ok_or_else(|| BrowserError::SelectorNotFound(selector.clone()))?;
            if rect.width < 1.0 || rect.height < 1.0 {
                return Err(BrowserError::BadRequest(format!(
                    "the element matching `{selector}` has no visible size"
                )));
            }
            Some(Clip {
                x: rect.x.max(0.0),
                y: rect.y.max(0.0),
                width: rect.width.min(MAX_SIDE as f64 * 4.0),
                height: rect.height.min(MAX_FULL_PAGE_HEIGHT as f64),
                scale: 1.0,
            })
        }
        (None, true) => {
            let height: f64 = lease
                .eval(
                    "Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0)",
                )
                .await?;
            Some(Clip {
                x: 0.0,
                y: 0.0,
                width: request.viewport.width as f64,
                height: height
                    .max(request.viewport.height as f64)
                    .min(MAX_FULL_PAGE_HEIGHT as f64),
                scale: 1.0,
            })
        }
        (None, false) => None,
    };
    let params = CaptureScreenshot {
        format: "png",
        capture_beyond_viewport: clip.is_some(),
        clip,
        from_surface: true,
        optimize_for_speed: true,
    };
    let shot = lease
        .page()
        .execute(&params)
        .await
        .map_err(|e| lease.cdp(e))?;
    base64::engine::general_purpose::STANDARD
        .decode(&shot.data)
        .map_err(|e| BrowserError::Cdp(format!("unreadable screenshot data: {e}")))
}
