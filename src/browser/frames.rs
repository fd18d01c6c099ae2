//! The rolling film of an interactive session: screencast frames kept in memory (bounded in
//! bytes and in time) while the session is open, and their encoding into an H.264 MP4 of what
//! the agent did.
//!
//! Chromium sends a frame only when something was painted, so each frame stands for the time
//! until the next one. Long pauses (the model thinking) are shortened to [`MAX_HOLD`], so the
//! video shows the steps rather than the waiting.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use super::BrowserError;
use super::record::{
    FPS, Scratch, VideoFormat, finish, human_bytes, shrink, spawn_ffmpeg, write_frame,
};

/// The longest a single frame is shown in a session video.
pub const MAX_HOLD: Duration = Duration::from_millis(1500);
/// How long the last frame is shown.
const LAST_HOLD: Duration = Duration::from_millis(1000);
/// Frames kept per session, in bytes of JPEG.
pub const MAX_BUFFER_BYTES: usize = 24 * 1024 * 1024;

/// Screencast frames of one session, oldest first.
#[derive(Debug)]
pub struct FrameBuffer {
    frames: VecDeque<(Instant, Bytes)>,
    bytes: usize,
    max_bytes: usize,
    max_frames: usize,
}

impl FrameBuffer {
    /// A buffer of at most `max_bytes` and `max_frames` frames.
    pub fn new(max_bytes: usize, max_frames: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_frames: max_frames.max(2),
        }
    }

    /// Add a frame, dropping the oldest beyond the bounds.
    pub fn push(&mut self, at: Instant, jpeg: Bytes) {
        self.bytes += jpeg.len();
        self.frames.push_back((at, jpeg));
        while self.frames.len() > 1
            && (self.bytes > self.max_bytes || self.frames.len() > self.max_frames)
        {
            if let Some((_, old)) = self.frames.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The frames from `since` on, starting with the one on screen at `since`.
    pub fn since(&self, since: Option<Instant>) -> Vec<(Instant, Bytes)> {
        let Some(since) = since else {
            return self.frames.iter().cloned().collect();
        };
        let first = self
            .frames
            .iter()
            .rposition(|(at, _)| *at <= since)
            .unwrap_or(0);
        self.frames
            .iter()
            .skip(first)
            .enumerate()
            .map(|(i, (at, jpeg))| {
                if i == 0 {
                    ((*at).max(since), jpeg.clone())
                } else {
                    (*at, jpeg.clone())
                }
            })
            .collect()
    }
}

/// How many ticks of the [`FPS`] clock each frame is shown, the whole at most `max_seconds`
/// (the newest part is kept).
pub fn timeline(frames: &[(Instant, Bytes)], end: Instant, max_seconds: f64) -> Vec<u64> {
    let mut clock = 0.0f64;
    let mut ticks = Vec::with_capacity(frames.len());
    for (i, (at, _)) in frames.iter().enumerate() {
        let until = frames.get(i + 1).map(|(next, _)| *next).unwrap_or(end);
        let cap = if i + 1 == frames.len() {
            LAST_HOLD
        } else {
            MAX_HOLD
        };
        let shown = until.saturating_duration_since(*at).min(cap);
        let start = (clock * FPS as f64).round() as u64;
        clock += shown.as_secs_f64();
        let stop = (clock * FPS as f64).round() as u64;
        ticks.push(stop - start);
    }
    // At least one tick for the last frame, so the video is never empty.
    if let Some(last) = ticks.last_mut() {
        *last = (*last).max(1);
    }
    let cap = (max_seconds * FPS as f64).round().max(1.0) as u64;
    let mut total: u64 = ticks.iter().sum();
    for t in ticks.iter_mut() {
        if total <= cap {
            break;
        }
        let cut = (*t).min(total - cap);
        *t -= cut;
        total -= cut;
    }
    ticks
}

/// A finished session video.
#[derive(Clone, Debug)]
pub struct SessionVideo {
    pub bytes: Bytes,
    pub seconds: f64,
    /// Distinct frames in it.
    pub frames: usize,
}

impl SessionVideo {
    pub fn describe(&self) -> String {
        format!(
            "Recording of the browser session · {:.1} s, {} distinct frames, MP4 {}",
            self.seconds,
            self.frames,
            human_bytes(self.bytes.len())
        )
    }
}

/// Encode `frames` (shown until `end`) as an H.264 MP4 of at most `max_seconds`, shrunk when
/// over `max_bytes`.
pub async fn encode(
    frames: &[(Instant, Bytes)],
    end: Instant,
    max_seconds: f64,
    max_bytes: usize,
    ffmpeg: &Path,
    work_dir: &Path,
) -> Result<SessionVideo, BrowserError> {
    if frames.is_empty() {
        return Err(BrowserError::Navigation(
            "the session has no frames to record yet; open a page first".into(),
        ));
    }
    let ticks = timeline(frames, end, max_seconds);
    tokio::fs::create_dir_all(work_dir).await?;
    let out = Scratch(work_dir.join(format!("session-{}.mp4", uuid::Uuid::new_v4().simple())));
    let mut child = spawn_ffmpeg(ffmpeg, VideoFormat::Mp4, &out.0)?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(BrowserError::Ffmpeg("no stdin".into()));
    };
    let mut written = 0u64;
    let mut shown = 0usize;
    let fed: Result<(), BrowserError> = async {
        for ((_, jpeg), n) in frames.iter().zip(&ticks) {
            if *n > 0 {
                shown += 1;
            }
            for _ in 0..*n {
                write_frame(&mut stdin, jpeg).await?;
                written += 1;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = fed {
        let _ = child.kill().await;
        return Err(e);
    }
    drop(stdin);
    finish(child).await?;
    let mut bytes = tokio::fs::read(&out.0).await?;
    if bytes.len() > max_bytes {
        warn!(
            bytes = bytes.len(),
            max_bytes, "the session video is over the upload limit; shrinking it"
        );
        bytes = shrink(ffmpeg, VideoFormat::Mp4, &out.0, work_dir).await?;
        if bytes.len() > max_bytes {
            return Err(BrowserError::TooLarge(format!(
                "the session video is {} even at half size, over the {} upload limit",
                human_bytes(bytes.len()),
                human_bytes(max_bytes)
            )));
        }
    }
    Ok(SessionVideo {
        bytes: Bytes::from(bytes),
        seconds: written as f64 / FPS as f64,
        frames: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_and_frames() {
        let start = Instant::now();
        let mut buffer = FrameBuffer::new(1000, 100);
        for i in 0..10 {
            buffer.push(start + Duration::from_millis(i * 10), frame(300));
        }
        assert_eq!(buffer.len(), 3);
        assert!(buffer.bytes() <= 1000);
        let mut buffer = FrameBuffer::new(1 << 20, 4);
        for i in 0..10 {
            buffer.push(start + Duration::from_millis(i * 10), frame(1));
        }
        assert_eq!(buffer.len(), 4);
        // One frame larger than the byte bound is still kept.
        let mut buffer = FrameBuffer::new(10, 4);
        buffer.push(start, frame(100));
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn since_starts_with_the_frame_on_screen() {
        let start = Instant::now();
        let mut buffer = FrameBuffer::new(1 << 20, 100);
        for i in 0..5 {
            buffer.push(start + Duration::from_secs(i), frame(i as usize + 1));
        }
        let from = start + Duration::from_millis(2500);
        let frames = buffer.since(Some(from));
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].0, from);
        assert_eq!(frames[0].1.len(), 3);
        assert_eq!(buffer.since(None).len(), 5);
    }

    #[test]
    fn pauses_are_shortened_and_the_length_capped() {
        let start = Instant::now();
        let frames: Vec<_> = [0u64, 100, 10_000, 10_200]
            .iter()
            .map(|ms| (start + Duration::from_millis(*ms), frame(1)))
            .collect();
        let end = start + Duration::from_millis(60_000);
        let ticks = timeline(&frames, end, 30.0);
        // 100 ms, then a 9.9 s pause held 1.5 s, 200 ms, and the last frame 1 s.
        assert_eq!(ticks, vec![3, 37, 5, 25]);
        let capped = timeline(&frames, end, 1.0);
        assert_eq!(capped.iter().sum::<u64>(), 25);
        assert_eq!(capped.last(), Some(&25));
    }
}
