//! Browser benchmark: screenshot latency of a local page with a warm browser and with a cold
//! one (launch included), p50/p99; the total time of a 5 s recording to MP4; RSS of this
//! process and of Chromium (all its processes) while idle and after the idle timeout.
//!
//! The interactive tools: click → settled snapshot latency on a local page (a click that
//! changes the page in place, and one that navigates), and the size in tokens of the snapshot
//! of a typical 200-element page.
//!
//! `cargo bench --bench browser` (needs Chromium and ffmpeg; skips without Chromium);
//! `BENCH_INTERACTIVE_ONLY=1` runs only the interactive part.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use ecdysis::browser::actions::Action;
use ecdysis::browser::record::RecordRequest;
use ecdysis::browser::screenshot::ScreenshotRequest;
use ecdysis::browser::session::Session;
use ecdysis::browser::{BrowserOptions, BrowserService, Source, StaticResolver};
use ecdysis::config::BrowserSettings;

const PAGE: &str = r#"<!doctype html><html><head><title>Bench</title><style>
body { margin: 0; font: 16px sans-serif; } #block { width: 200px; height: 100px; background: #f00; }
</style></head><body><div id="block"></div><h1>Benchmark page</h1><p>Some text to render.</p></body></html>"#;

const ANIMATED: &str = r#"<!doctype html><html><body style="margin:0"><div id="b" style="position:absolute;width:100px;height:100px;background:#f00"></div>
<script>const b=document.getElementById('b');function f(t){document.body.style.background=`hsl(${(t/10)%360},80%,60%)`;b.style.left=`${(t/5)%1000}px`;requestAnimationFrame(f);}requestAnimationFrame(f);</script></body></html>"#;

/// A form page with about 200 interactive elements (links, fields, buttons, selects).
fn big_page() -> String {
    let mut html = String::from(
        "<!doctype html><html><head><title>Shop admin</title></head><body><header><h1>Shop admin</h1><nav>",
    );
    for i in 0..40 {
        html.push_str(&format!("<a href=\"/section/{i}\">Section {i}</a> "));
    }
    html.push_str("</nav></header><main><h2>Filters</h2><form>");
    for i in 0..20 {
        html.push_str(&format!(
            "<label>Filter {i} <input name=\"f{i}\" placeholder=\"value {i}\"></label>"
        ));
    }
    for i in 0..10 {
        html.push_str(&format!(
            "<label>Choice {i} <select name=\"s{i}\"><option>Any</option><option>Red</option><option>Blue</option></select></label>\
             <label><input type=\"checkbox\" name=\"c{i}\"> Option {i}</label>"
        ));
    }
    html.push_str("<button>Apply</button></form><h2>Orders</h2><table>");
    for i in 0..59 {
        html.push_str(&format!(
            "<tr><td>Order #{i:04}</td><td>Customer {i}</td><td><a href=\"/order/{i}\">Open</a></td><td><button>Refund</button></td></tr>"
        ));
    }
    html.push_str("</table><p>Showing 59 of 1,204 orders.</p></main></body></html>");
    html
}

const TOGGLE_PAGE: &str = r#"<!doctype html><html><head><title>Counter</title></head><body>
<h1>Counter</h1><p id="n">Clicked 0 times</p><button id="b">Add one</button>
<p><a href="/other">Other page</a></p><script>let n = 0;
document.getElementById('b').addEventListener('click', () => { n++; document.getElementById('n').textContent = `Clicked ${n} times`; });
</script></body></html>"#;

const OTHER_PAGE: &str = r#"<!doctype html><html><head><title>Other</title></head><body>
<h1>Other page</h1><p><a href="/counter">Back to the counter</a></p></body></html>"#;

/// The reference of the first snapshot element named `name`.
fn reference(snapshot: &str, name: &str) -> u64 {
    snapshot
        .lines()
        .flat_map(|l| l.split('['))
        .find_map(|part| {
            let (n, rest) = part.split_once(']')?;
            rest.contains(&format!("\"{name}\""))
                .then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no [n] for {name} in\n{snapshot}"))
}

/// The system load average (the machine is shared; numbers vary with it).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn interactive(browser: &BrowserService, base: &str) {
    println!("interactive tools · load average {}", load_average());
    let channel = "bench:interactive:c";
    let mut session = Session::start(browser, channel).await.expect("session");
    let open = |path: &str| Action::Open {
        url: format!("{base}{path}"),
    };
    // The snapshot of a 200-element page: natural size, and as the model gets it.
    session
        .act(browser, channel, &open("big"))
        .await
        .expect("open big");
    let full = session.snapshot(Some(50_000)).await.expect("snapshot");
    let budget = session.snapshot(None).await.expect("snapshot");
    println!(
        "{:<34} {} interactive elements: {} tokens in full, {} tokens as sent ({} lines cut; budget {})",
        "snapshot of a 200-element page",
        full.refs,
        full.tokens(),
        budget.tokens(),
        budget.truncated,
        browser.settings().snapshot_max_tokens
    );
    let mut samples = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        session.snapshot(None).await.expect("snapshot");
        samples.push(started.elapsed());
    }
    report("snapshot alone (200 elements)", samples);

    // Click → settled snapshot, in place and with a navigation.
    let first = session
        .act(browser, channel, &open("counter"))
        .await
        .expect("open");
    let add = reference(&first.snapshot.text, "Add one");
    for _ in 0..3 {
        session
            .act(browser, channel, &Action::Click { target: add })
            .await
            .expect("warm-up");
    }
    let mut in_place = Vec::new();
    for _ in 0..WARM_RUNS {
        let started = Instant::now();
        session
            .act(browser, channel, &Action::Click { target: add })
            .await
            .expect("click");
        in_place.push(started.elapsed());
    }
    report("click → snapshot (same page)", in_place);
    let mut navigating = Vec::new();
    let mut page = session.snapshot(None).await.expect("snapshot");
    for i in 0..WARM_RUNS {
        let name = if i % 2 == 0 {
            "Other page"
        } else {
            "Back to the counter"
        };
        let target = reference(&page.text, name);
        let started = Instant::now();
        let outcome = session
            .act(browser, channel, &Action::Click { target })
            .await
            .expect("click");
        navigating.push(started.elapsed());
        page = outcome.snapshot;
    }
    report("click → snapshot (navigation)", navigating);
    println!(
        "load average after: {} (target p99 ≤ 300 ms warm)",
        load_average()
    );
}

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
        .route("/anim", get(|| async { Html(ANIMATED) }))
        .route("/big", get(|| async { Html(big_page()) }))
        .route("/counter", get(|| async { Html(TOGGLE_PAGE) }))
        .route("/other", get(|| async { Html(OTHER_PAGE) }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let url = format!("http://{addr}/");
    let work = std::env::temp_dir().join(format!("ecdysis-browser-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let request = ScreenshotRequest::new(&url);
    println!("browser bench: {} · page {url}", chromium.display());
    let rss_start = rss_kib(std::process::id());
    if std::env::var_os("BENCH_INTERACTIVE_ONLY").is_some() {
        let browser = BrowserService::new(
            BrowserOptions {
                settings: BrowserSettings {
                    allow: vec!["127.0.0.1".into()],
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
        interactive(&browser, &url).await;
        browser.shutdown().await;
        let _ = std::fs::remove_dir_all(&work);
        return;
    }

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

    interactive(&browser, &url).await;

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
