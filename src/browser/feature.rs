//! The `/screenshot` and `/record` commands: argument parsing and friendly replies.
//!
//! `/screenshot https://x full_page width=1280 height=800 scale=2 selector=#main
//! wait=networkidle|selector:#x|500ms format=jpeg`
//! `/record https://x seconds=5 scroll gif width=1280 height=720 wait=…`

use async_trait::async_trait;

use super::image_fit::Encoding;
use super::record::{RecordRequest, VideoFormat};
use super::screenshot::ScreenshotRequest;
use super::{BrowserService, WaitFor, channel_key};
use crate::bus::{EventContext, Outgoing};
use crate::engine::commands::Feature;
use crate::engine::progress;

pub const SCREENSHOT_USAGE: &str = "Usage: `/screenshot <url> [full_page] [width=1280] [height=800] [scale=1] [selector=<css>] [wait=networkidle|selector:<css>|500ms] [format=png|jpeg|webp]`";
pub const RECORD_USAGE: &str = "Usage: `/record <url> [seconds=5] [scroll] [gif] [width=1280] [height=720] [wait=networkidle|selector:<css>|500ms]`";

/// Split arguments on whitespace, keeping `"quoted parts"` together.
fn tokens(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in args.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("`{key}={value}` is not a number"))
}

/// Parse `/screenshot` arguments.
pub fn parse_screenshot(args: &str) -> Result<ScreenshotRequest, String> {
    let mut url = None;
    let mut request = ScreenshotRequest::new("");
    for token in tokens(args) {
        match token.split_once('=') {
            Some((key, value)) => match key.to_ascii_lowercase().as_str() {
                "width" | "w" => request.viewport.width = number(key, value)?,
                "height" | "h" => request.viewport.height = number(key, value)?,
                "scale" | "dpr" | "device_scale_factor" => {
                    request.viewport.scale = number(key, value)?
                }
                "selector" | "element" => request.selector = Some(value.to_string()),
                "wait" => request.wait = WaitFor::parse(value)?,
                "format" => {
                    request.format =
                        Some(Encoding::parse(value).ok_or_else(|| {
                            format!("`format={value}` is not one of png, jpeg, webp")
                        })?)
                }
                "full_page" | "fullpage" | "full" => {
                    request.full_page = matches!(value, "1" | "true" | "yes" | "on")
                }
                _ if url.is_none() && looks_like_url(&token) => url = Some(token.clone()),
                _ => return Err(format!("unknown option `{key}=`")),
            },
            None => match token.to_ascii_lowercase().as_str() {
                "full_page" | "fullpage" | "full" | "--full-page" => request.full_page = true,
                "jpeg" | "jpg" | "webp" | "png" => request.format = Encoding::parse(&token),
                _ if url.is_none() => url = Some(token),
                _ => return Err(format!("unexpected `{token}`")),
            },
        }
    }
    request.url = url.ok_or("which page? Give a URL.")?;
    Ok(request)
}

/// Parse `/record` arguments.
pub fn parse_record(args: &str) -> Result<RecordRequest, String> {
    let mut url = None;
    let mut request = RecordRequest::new("");
    for token in tokens(args) {
        match token.split_once('=') {
            Some((key, value)) => match key.to_ascii_lowercase().as_str() {
                "seconds" | "secs" | "s" | "duration" => {
                    request.seconds = number(key, value.trim_end_matches('s'))?
                }
                "width" | "w" => request.viewport.width = number(key, value)?,
                "height" | "h" => request.viewport.height = number(key, value)?,
                "wait" => request.wait = WaitFor::parse(value)?,
                "format" => {
                    request.format = match value.to_ascii_lowercase().as_str() {
                        "mp4" => VideoFormat::Mp4,
                        "gif" => VideoFormat::Gif,
                        _ => return Err(format!("`format={value}` is not one of mp4, gif")),
                    }
                }
                "scroll" => request.scroll = matches!(value, "1" | "true" | "yes" | "on"),
                _ if url.is_none() && looks_like_url(&token) => url = Some(token.clone()),
                _ => return Err(format!("unknown option `{key}=`")),
            },
            None => {
                let lower = token.to_ascii_lowercase();
                if lower == "scroll" {
                    request.scroll = true;
                } else if lower == "gif" {
                    request.format = VideoFormat::Gif;
                } else if lower == "mp4" {
                    request.format = VideoFormat::Mp4;
                } else if let Some(n) = lower
                    .strip_suffix('s')
                    .and_then(|n| n.parse::<f64>().ok())
                    .or_else(|| lower.parse::<f64>().ok())
                {
                    request.seconds = n;
                } else if url.is_none() {
                    url = Some(token);
                } else {
                    return Err(format!("unexpected `{token}`"));
                }
            }
        }
    }
    request.url = url.ok_or("which page? Give a URL.")?;
    Ok(request)
}

/// A URL with a query string contains `=`; tell it apart from `key=value`.
fn looks_like_url(token: &str) -> bool {
    token.contains("://") || token.contains('/') || token.contains('?')
}

/// `/screenshot`.
pub struct ScreenshotFeature {
    browser: BrowserService,
}

impl ScreenshotFeature {
    pub fn new(browser: BrowserService) -> Self {
        Self { browser }
    }
}

#[async_trait]
impl Feature for ScreenshotFeature {
    async fn run(&self, event: &EventContext, args: &str) -> anyhow::Result<Vec<Outgoing>> {
        let request = match parse_screenshot(args) {
            Ok(request) => request,
            Err(problem) => {
                return Ok(vec![Outgoing::text(format!(
                    "{problem}\n{SCREENSHOT_USAGE}"
                ))]);
            }
        };
        let channel = channel_key(&event.conversation);
        let line = progress::line(
            "browser_screenshot",
            &serde_json::json!({ "url": request.url }),
        );
        let shot = event
            .live
            .during(line, self.browser.screenshot(&channel, &request))
            .await;
        Ok(vec![match shot {
            Ok(shot) => Outgoing {
                text: shot.describe(),
                attachments: vec![shot.attachment()],
                ..Outgoing::default()
            },
            Err(e) => Outgoing::text(format!(
                "Could not take a screenshot of {}: {e}.",
                request.url
            )),
        }])
    }
}

/// `/record`.
pub struct RecordFeature {
    browser: BrowserService,
}

impl RecordFeature {
    pub fn new(browser: BrowserService) -> Self {
        Self { browser }
    }
}

#[async_trait]
impl Feature for RecordFeature {
    async fn run(&self, event: &EventContext, args: &str) -> anyhow::Result<Vec<Outgoing>> {
        let request = match parse_record(args) {
            Ok(request) => request,
            Err(problem) => {
                return Ok(vec![Outgoing::text(format!("{problem}\n{RECORD_USAGE}"))]);
            }
        };
        let channel = channel_key(&event.conversation);
        let line = progress::line("browser_record", &serde_json::json!({ "url": request.url }));
        let recording = event
            .live
            .during(line, self.browser.record(&channel, &request))
            .await;
        Ok(vec![match recording {
            Ok(recording) => Outgoing {
                text: recording.describe(),
                attachments: vec![recording.attachment()],
                ..Outgoing::default()
            },
            Err(e) => Outgoing::text(format!("Could not record {}: {e}.", request.url)),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn screenshot_arguments() {
        let r = parse_screenshot(
            "https://x.example/a?b=c full_page width=1024 height=700 scale=2 selector=\"#main .x\" wait=selector:#ready format=jpeg",
        )
        .unwrap();
        assert_eq!(r.url, "https://x.example/a?b=c");
        assert!(r.full_page);
        assert_eq!((r.viewport.width, r.viewport.height), (1024, 700));
        assert_eq!(r.viewport.scale, 2.0);
        assert_eq!(r.selector.as_deref(), Some("#main .x"));
        assert_eq!(r.wait, WaitFor::Selector("#ready".into()));
        assert_eq!(r.format, Some(Encoding::Jpeg));

        let r = parse_screenshot("example.com wait=500ms").unwrap();
        assert_eq!(r.url, "example.com");
        assert!(!r.full_page);
        assert_eq!(r.wait, WaitFor::Delay(Duration::from_millis(500)));
        assert_eq!(r.wait, WaitFor::parse("500ms").unwrap());

        assert!(parse_screenshot("").is_err());
        assert!(parse_screenshot("https://x width=wide").is_err());
        assert!(parse_screenshot("https://x bogus=1").is_err());
        assert!(parse_screenshot("https://x wait=never").is_err());
    }

    #[test]
    fn record_arguments() {
        let r = parse_record("https://x.example seconds=3 scroll").unwrap();
        assert_eq!(r.url, "https://x.example");
        assert_eq!(r.seconds, 3.0);
        assert!(r.scroll);
        assert_eq!(r.format, VideoFormat::Mp4);
        let r = parse_record("https://x.example 7s gif").unwrap();
        assert_eq!(r.seconds, 7.0);
        assert_eq!(r.format, VideoFormat::Gif);
        let r = parse_record("https://x.example").unwrap();
        assert_eq!(r.seconds, 5.0);
        assert!(parse_record("seconds=3").is_err());
    }
}
