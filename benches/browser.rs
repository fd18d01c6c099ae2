//! Browser benchmark: screenshot latency of a local page with a warm browser and with a cold
//! one (launch included), p50/p99; the total time of a 5 s recording to MP4; RSS of this
//! process and of Chromium (all its processes) while idle and after the idle timeout.
//!
//! `cargo bench --bench browser` (needs Chromium and ffmpeg; skips without Chromium).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use ecdysis::browser::record::RecordRequest;
use ecdysis::browser::screenshot::ScreenshotRequest;
use ecdysis::browser::{BrowserOptions, BrowserService, Source, StaticResolver};
use ecdysis::config::BrowserSettings;

const PAGE: &str = r#"<!doctype html><html><head><title>Bench</title><style>
body { margin: 0; font: 16px sans-serif; } #block { width: 200px; height: 100px; background: #f00; }
</style></head><body><div id="block"></div><h1>Benchmark page</h1><p>Some text to render.</p></body></html>"#;

const ANIMATED: &str = r#"<!doctype html><html><body style="margin:0"><div id="b" style="position:absolute;width:100px;height:100px;background:#f00"></div>
<script>const b=document.getElementById('b');function f(t){document.body.style.background=`hsl(${(t/10)%360},80%,60%)`;b.style.left=`${(t/5)%1000}px`;requestAnimationFrame(f);}requestAnimationFrame(f);</script></body></html>"#;

const WARM_RUNS: usize = 60;
const COLD_RUNS: usize = 8;
const IDLE: Duration = Duration::from_secs(3);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Resident set size of one process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size (shared pages split between the processes sharing them), in KiB:
/// summing it over Chromium's processes does not count shared memory several times.
fn pss_kib(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn proc_field(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                && let Some((_, rest)) = stat.rsplit_once(')')
                && let Some(ppid) = rest.split_whitespace().nth(1)
                && let Ok(ppid) = ppid.parse::<u32>()
            {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Processes whose command line mentions `needle` (Chromium's profile directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline"))
                && String::from_utf8_lossy(&cmd).contains(needle)
            {
                out.push(p);
            }
        }
    }
    out
}

fn service(chromium: &Path, work_dir: &Path) -> BrowserService {
    BrowserService::new(
        BrowserOptions {
            settings: BrowserSettings {
                allow: vec!["127.0.0.1".into()],
                idle: IDLE,
                ..BrowserSettings::default()
            },
            ffmpeg: PathBuf::from("ffmpeg"),
            work_dir: work_dir.to_path_buf(),
            resolver: Arc::new(StaticResolver::only()),
            extra_args: Vec::new(),
        },
        Source::Local(chromium.to_path_buf()),
    )
    .expect("service")
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<34} n={:<3} p50 {:>10}  p99 {:>10}  min {:>10}  max {:>10}",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(chromium) = ecdysis::browser::find_chromium(&BrowserSettings::default()) else {
        println!("browser bench skipped: no Chromium on PATH (apt-get install chromium)");
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/anim", get(|| async { Html(ANIMATED) }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let url = format!("http://{addr}/");
    let work = std::env::temp_dir().join(format!("ecdysis-browser-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let request = ScreenshotRequest::new(&url);
    println!("browser bench: {} · page {url}", chromium.display());
    let rss_start = rss_kib(std::process::id());

    // Cold: a new browser every time, launch included.
    let mut cold = Vec::new();
    for _ in 0..COLD_RUNS {
        let browser = service(&chromium, &work);
        let started = Instant::now();
        browser
            .screenshot("bench:cold:c", &request)
            .await
            .expect("cold screenshot");
        cold.push(started.elapsed());
        browser.shutdown().await;
    }
    report("screenshot, cold (launch incl.)", cold);

    // Warm: one browser, many screenshots (rate limit raised for the bench).
    let browser = BrowserService::new(
        BrowserOptions {
            settings: BrowserSettings {
                allow: vec!["127.0.0.1".into()],
                idle: IDLE,
                rate_per_minute: 100_000,
                ..BrowserSettings::default()
            },
            ffmpeg: PathBuf::from("ffmpeg"),
            work_dir: work.clone(),
            resolver: Arc::new(StaticResolver::only()),
            extra_args: Vec::new(),
        },
        Source::Local(chromium.clone()),
    )
    .expect("service");
    for _ in 0..3 {
        browser
            .screenshot("bench:warm:w", &request)
            .await
            .expect("warm-up");
    }
    let mut warm = Vec::new();
    for _ in 0..WARM_RUNS {
        let started = Instant::now();
        browser
            .screenshot("bench:warm:w", &request)
            .await
            .expect("warm screenshot");
        warm.push(started.elapsed());
    }
    report("screenshot, warm (1280x800 PNG)", warm);

    // Recording: 5 s to MP4, total time from request to bytes.
    match browser.ffmpeg().await {
        Ok(_) => {
            let mut record = RecordRequest::new(format!("{url}anim"));
            record.seconds = 5.0;
            let started = Instant::now();
            let recording = browser
                .record("bench:warm:w", &record)
                .await
                .expect("recording");
            println!(
                "{:<34} total {:>10}  ({} frames, {} KB, target ≤ 8 s)",
                "5 s recording to MP4 (1280x720)",
                ms(started.elapsed()),
                recording.frames,
                recording.bytes.len() / 1024
            );
        }
        Err(e) => println!("recording skipped: {e}"),
    }

    // Memory while idle (browser still open), then after the idle timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = browser.chromium_pid().await.expect("chromium runs");
    let pids = tree(pid);
    let chromium_rss: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
    let chromium_pss: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
    println!(
        "RSS idle, browser open             bot {} MiB (at start {} MiB) · Chromium PSS {} MiB (RSS sum {} MiB) in {} processes",
        rss_kib(std::process::id()) / 1024,
        rss_start / 1024,
        chromium_pss / 1024,
        chromium_rss / 1024,
        pids.len()
    );
    let waited = Instant::now();
    while browser.is_running().await && waited.elapsed() < IDLE * 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = processes_mentioning(&work.display().to_string());
    let left_rss: u64 = left.iter().map(|p| rss_kib(*p)).sum();
    println!(
        "RSS after idle timeout ({} s)       bot {} MiB · Chromium {} MiB in {} processes (closed after {:.1} s idle)",
        IDLE.as_secs(),
        rss_kib(std::process::id()) / 1024,
        left_rss / 1024,
        left.len(),
        waited.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&work);
}
