//! Recordings: `Page.startScreencast` frames (acknowledged one by one) piped into ffmpeg over
//! stdin, so the video lasts exactly as long as the recording did.
//!
//! Chromium sends a frame only when something was painted, so frames come at a variable rate.
//! Each frame is written for every tick of a constant [`FPS`] clock it was on screen for (by
//! this process's clock), and ffmpeg reads them at that fixed rate. Stamping frames with
//! ffmpeg's own wall clock (`-use_wallclock_as_timestamps 1`) measured 2.2 s and 3.8 s for a
//! 3 s recording on a loaded 2-core machine: ffmpeg reads late while it encodes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use ecdysis_chat::Attachment;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tracing::{info, warn};

use super::cdp::protocol::{
    BringToFront, ScreencastFrame, ScreencastFrameAck, StartScreencast, StopScreencast,
};
use super::{BrowserError, BrowserService, PageLease, Viewport, WaitFor};

/// How long ffmpeg may take to finish after the last frame.
const FFMPEG_FINISH: Duration = Duration::from_secs(120);
/// How often the scripted scroll moves.
const SCROLL_EVERY: Duration = Duration::from_millis(100);
/// Frames per second of the video ffmpeg encodes.
pub const FPS: u32 = 25;

/// The container a recording is posted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoFormat {
    Mp4,
    Gif,
}

impl VideoFormat {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Mp4 => "video/mp4",
            Self::Gif => "image/gif",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Mp4 => "mp4",
            Self::Gif => "gif",
        }
    }
}

/// What to record.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordRequest {
    pub url: String,
    pub viewport: Viewport,
    pub seconds: f64,
    /// Scroll from the top to the bottom of the page while recording.
    pub scroll: bool,
    pub format: VideoFormat,
    pub wait: WaitFor,
}

impl RecordRequest {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            viewport: Viewport {
                width: 1280,
                height: 720,
                scale: 1.0,
            },
            seconds: 5.0,
            scroll: false,
            format: VideoFormat::Mp4,
            wait: WaitFor::Load,
        }
    }
}

/// A finished recording.
#[derive(Clone, Debug)]
pub struct Recording {
    pub bytes: Bytes,
    pub format: VideoFormat,
    /// How long the recording ran.
    pub seconds: f64,
    /// Screencast frames received.
    pub frames: usize,
    pub url: String,
    pub title: Option<String>,
}

impl Recording {
    pub fn file_name(&self) -> String {
        format!("recording.{}", self.format.extension())
    }

    pub fn attachment(&self) -> Attachment {
        Attachment::new(self.file_name(), self.format.mime(), self.bytes.clone())
    }

    pub fn describe(&self) -> String {
        let mut text = format!("Recording of {}", self.url);
        if let Some(title) = &self.title {
            text.push_str(&format!(" (“{title}”)"));
        }
        text.push_str(&format!(
            " · {:.1} s, {} {}",
            self.seconds,
            self.format.extension().to_uppercase(),
            human_bytes(self.bytes.len())
        ));
        text
    }
}

pub(crate) fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MB", n as f64 / 1024.0 / 1024.0)
    } else {
        format!("{} KB", n.div_ceil(1024))
    }
}

/// `ffmpeg -version`'s first line, or why it cannot run.
pub async fn ffmpeg_version(path: &Path) -> Result<String, String> {
    let run = Command::new(path)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Err(_) => Err(format!("`{} -version` did not answer", path.display())),
        Ok(Err(e)) => Err(format!("cannot run `{}`: {e}", path.display())),
        Ok(Ok(out)) if !out.status.success() => Err(format!(
            "`{} -version` failed with {}",
            path.display(),
            out.status
        )),
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("ffmpeg")
            .to_string()),
    }
}

/// The ffmpeg arguments for constant-rate JPEG frames on stdin → `out`.
pub fn ffmpeg_args(format: VideoFormat, out: &Path) -> Vec<String> {
    let fps = FPS.to_string();
    let mut args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-f",
        "image2pipe",
        "-framerate",
        fps.as_str(),
        "-c:v",
        "mjpeg",
        "-i",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tail: &[&str] = match format {
        VideoFormat::Mp4 => &[
            "-fps_mode",
            "cfr",
            "-r",
            fps.as_str(),
            "-vf",
            "scale=trunc(iw/2)*2:trunc(ih/2)*2",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "26",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ],
        VideoFormat::Gif => &[
            "-vf",
            "fps=10,scale='min(960,iw)':-1:flags=lanczos,split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse",
            "-loop",
            "0",
            "-f",
            "gif",
        ],
    };
    args.extend(tail.iter().map(|s| s.to_string()));
    args.push("-y".into());
    args.push(out.display().to_string());
    args
}

/// Deletes the scratch file however the recording ends.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl BrowserService {
    /// Record a page for `channel`.
    pub async fn record(
        &self,
        channel: &str,
        request: &RecordRequest,
    ) -> Result<Recording, BrowserError> {
        let max = self.settings().max_record_seconds as f64;
        if !(request.seconds > 0.0 && request.seconds <= max) {
            return Err(BrowserError::BadRequest(format!(
                "a recording lasts more than 0 and at most {max} seconds"
            )));
        }
        super::screenshot::validate(&super::screenshot::ScreenshotRequest {
            viewport: request.viewport,
            ..super::screenshot::ScreenshotRequest::new(&request.url)
        })?;
        self.ffmpeg().await?;
        let url = self.check_url(&request.url).await?;
        self.check_rate(channel)?;
        let started = Instant::now();
        let lease = match self.page(channel, request.viewport).await {
            Err(e) if e.is_gone() => self.page(channel, request.viewport).await?,
            other => other?,
        };
        let loaded = lease.open(&url, &request.wait).await?;
        let work_dir = &self.inner.options.work_dir;
        tokio::fs::create_dir_all(work_dir).await?;
        let out = Scratch(work_dir.join(format!(
            "recording-{}.{}",
            uuid::Uuid::new_v4().simple(),
            request.format.extension()
        )));
        let (seconds, frames) =
            capture(&lease, &self.inner.options.ffmpeg, request, &out.0).await?;
        drop(lease);
        let mut bytes = tokio::fs::read(&out.0).await?;
        let limit = self.settings().max_upload_bytes;
        if bytes.len() > limit {
            warn!(
                bytes = bytes.len(),
                limit, "the recording is over the upload limit; shrinking it"
            );
            bytes = shrink(&self.inner.options.ffmpeg, request.format, &out.0, work_dir).await?;
            if bytes.len() > limit {
                return Err(BrowserError::TooLarge(format!(
                    "the recording is {} even at half size, over the {} upload limit; record fewer seconds",
                    human_bytes(bytes.len()),
                    human_bytes(limit)
                )));
            }
        }
        info!(
            url = %loaded.url,
            seconds,
            frames,
            bytes = bytes.len(),
            total_ms = started.elapsed().as_millis() as u64,
            "recording done"
        );
        Ok(Recording {
            bytes: Bytes::from(bytes),
            format: request.format,
            seconds,
            frames,
            url: loaded.url,
            title: loaded.title,
        })
    }
}

/// Run the screencast into ffmpeg for the requested time; returns (seconds, frames).
async fn capture(
    lease: &PageLease,
    ffmpeg: &Path,
    request: &RecordRequest,
    out: &Path,
) -> Result<(f64, usize), BrowserError> {
    let page = lease.page();
    let mut frames = page.listen::<ScreencastFrame>();
    let _ = page.execute(&BringToFront {}).await;
    let scale = request.viewport.scale;
    let start = StartScreencast::jpeg(
        80,
        (request.viewport.width as f64 * scale).round() as i64,
        (request.viewport.height as f64 * scale).round() as i64,
    );
    let scroll_step = if request.scroll {
        let room: f64 = lease
            .eval("Math.max(0, document.documentElement.scrollHeight - window.innerHeight)")
            .await?;
        let ticks = (request.seconds / SCROLL_EVERY.as_secs_f64()).max(1.0);
        (room / ticks).ceil()
    } else {
        0.0
    };

    let mut child = spawn_ffmpeg(ffmpeg, request.format, out)?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(BrowserError::Ffmpeg("no stdin".into()));
    };
    page.execute(&start).await.map_err(|e| lease.cdp(e))?;
    let began = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(request.seconds);
    let ticks = (request.seconds * FPS as f64).round().max(1.0) as u64;
    let mut scroll = tokio::time::interval(SCROLL_EVERY);
    let mut current: Option<Vec<u8>> = None;
    let mut written = 0u64;
    let mut count = 0usize;
    let engine = base64::engine::general_purpose::STANDARD;
    let outcome: Result<(), BrowserError> = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                frame = frames.next() => {
                    let Some(frame) = frame else {
                        return Err(BrowserError::Gone("the screencast ended".into()));
                    };
                    // The ticks up to now showed the previous frame.
                    let due = ((began.elapsed().as_secs_f64() * FPS as f64).floor() as u64 + 1)
                        .min(ticks);
                    if let Some(previous) = &current {
                        while written < due {
                            write_frame(&mut stdin, previous).await?;
                            written += 1;
                        }
                    }
                    let jpeg = engine
                        .decode(&frame.data)
                        .map_err(|e| BrowserError::Cdp(format!("unreadable frame: {e}")))?;
                    page.execute(&ScreencastFrameAck { session_id: frame.session_id })
                        .await
                        .map_err(|e| lease.cdp(e))?;
                    current = Some(jpeg);
                    count += 1;
                }
                _ = scroll.tick(), if scroll_step > 0.0 => {
                    let script = format!("window.scrollBy(0, {scroll_step})");
                    let _ = lease.eval::<serde_json::Value>(&script).await;
                }
            }
        }
    }
    .await;
    let _ = page.execute(&StopScreencast {}).await;
    if let Err(e) = outcome {
        let _ = child.kill().await;
        return Err(e);
    }
    let Some(last) = current else {
        let _ = child.kill().await;
        return Err(BrowserError::Navigation(
            "the page produced no frames to record".into(),
        ));
    };
    // The rest of the recording showed the last frame (a page that stopped changing sends
    // nothing more).
    while written < ticks {
        write_frame(&mut stdin, &last).await?;
        written += 1;
    }
    drop(stdin);
    finish(child).await?;
    Ok((ticks as f64 / FPS as f64, count))
}

pub(crate) fn spawn_ffmpeg(
    ffmpeg: &Path,
    format: VideoFormat,
    out: &Path,
) -> Result<Child, BrowserError> {
    Command::new(ffmpeg)
        .args(ffmpeg_args(format, out))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BrowserError::FfmpegMissing(format!("cannot run {}: {e}", ffmpeg.display())))
}

pub(crate) async fn write_frame(stdin: &mut ChildStdin, jpeg: &[u8]) -> Result<(), BrowserError> {
    stdin
        .write_all(jpeg)
        .await
        .map_err(|e| BrowserError::Ffmpeg(format!("ffmpeg stopped reading frames: {e}")))
}

/// Wait for ffmpeg to exit; its stderr explains a failure.
pub(crate) async fn finish(mut child: Child) -> Result<(), BrowserError> {
    let mut stderr = child.stderr.take();
    let waited = tokio::time::timeout(FFMPEG_FINISH, child.wait()).await;
    let mut text = String::new();
    if let Some(stderr) = stderr.as_mut() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            stderr.take(16 * 1024).read_to_string(&mut text),
        )
        .await;
    }
    match waited {
        Err(_) => {
            let _ = child.kill().await;
            Err(BrowserError::Ffmpeg("it did not finish in time".into()))
        }
        Ok(Err(e)) => Err(BrowserError::Ffmpeg(e.to_string())),
        Ok(Ok(status)) if !status.success() => Err(BrowserError::Ffmpeg(format!(
            "exit {status}: {}",
            text.trim()
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Re-encode at half size and lower quality.
pub(crate) async fn shrink(
    ffmpeg: &Path,
    format: VideoFormat,
    input: &Path,
    work_dir: &Path,
) -> Result<Vec<u8>, BrowserError> {
    let out = Scratch(work_dir.join(format!(
        "shrunk-{}.{}",
        uuid::Uuid::new_v4().simple(),
        format.extension()
    )));
    let mut args: Vec<String> = vec![
        "-hide_banner".into(),
        "-loglevel".into(),
        "error".into(),
        "-nostdin".into(),
        "-i".into(),
        input.display().to_string(),
    ];
    let tail: &[&str] = match format {
        VideoFormat::Mp4 => &[
            "-vf",
            "scale=trunc(iw/4)*2:trunc(ih/4)*2",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "32",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ],
        VideoFormat::Gif => &[
            "-vf",
            "fps=6,scale=trunc(iw/4)*2:-1:flags=lanczos,split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse",
            "-loop",
            "0",
            "-f",
            "gif",
        ],
    };
    args.extend(tail.iter().map(|s| s.to_string()));
    args.push("-y".into());
    args.push(out.0.display().to_string());
    let child = Command::new(ffmpeg)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            BrowserError::FfmpegMissing(format!("cannot run {}: {e}", ffmpeg.display()))
        })?;
    finish(child).await?;
    Ok(tokio::fs::read(&out.0).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffmpeg_gets_the_design_flags() {
        let args = ffmpeg_args(VideoFormat::Mp4, Path::new("/tmp/x.mp4")).join(" ");
        for flag in [
            "-f image2pipe -framerate 25",
            "-c:v mjpeg -i -",
            "-fps_mode cfr -r 25",
            "-c:v libx264",
            "-pix_fmt yuv420p",
            "-movflags +faststart",
        ] {
            assert!(args.contains(flag), "{flag} missing from {args}");
        }
        assert!(args.ends_with("/tmp/x.mp4"));
        let gif = ffmpeg_args(VideoFormat::Gif, Path::new("/tmp/x.gif")).join(" ");
        assert!(
            gif.contains("paletteuse") && gif.contains("-f gif"),
            "{gif}"
        );
    }

    #[tokio::test]
    async fn a_missing_ffmpeg_is_explained() {
        let e = ffmpeg_version(Path::new("/nonexistent/ffmpeg"))
            .await
            .unwrap_err();
        assert!(e.contains("/nonexistent/ffmpeg"), "{e}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(1), "1 KB");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MB");
    }
}
