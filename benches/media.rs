//! Media benchmark: what files users send cost.
//!
//! 1. Preparing a 12-megapixel photo (4000×3000 JPEG) for the model: decode + scale + encode,
//!    in process (target ≤ 150 ms).
//! 2. The Slack acknowledgement latency (signed `POST /slack/events` → 200) of DMs with a 5 MB
//!    image attached, against the same DMs without files, at a fixed rate into an in-process
//!    app behind the fake Slack (target: the same, p99 ≤ 10 ms). The files are fetched by the
//!    workers meanwhile, on the same cores.
//!
//! Run: `cargo bench --bench media` (`-- --events 200 --rate 50` to change the load).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ecdysis::config::Config;
use ecdysis::media::image::{ImageLimits, prepare};
use ecdysis::server::app::App;
use ecdysis_slack::signature::sign;
use ecdysis_testkit::llm::FakeLlm;
use ecdysis_testkit::slack::FakeSlack;
use serde_json::json;

const SECRET: &str = "media-bench-secret";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A photo-like JPEG of `w`×`h` (texture, so it compresses like a photo).
fn photo(w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut seed = 7u32;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let noise = (seed >> 24) as u8 / 8;
        image::Rgb([
            ((x / 8) as u8).wrapping_add(noise),
            ((y / 8) as u8).wrapping_add(noise),
            ((x + y) / 16) as u8,
        ])
    });
    ecdysis::media::image::jpeg::encode(&image::DynamicImage::ImageRgb8(img), quality)
        .expect("encode the photo")
}

fn bench_prepare() {
    let jpeg = photo(4000, 3000, 90);
    let limits = ImageLimits::default();
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..12 {
        let started = Instant::now();
        let prepared = prepare(&jpeg, limits).expect("prepare the photo");
        times.push(started.elapsed());
        out = Some(prepared);
    }
    times.sort();
    let out = out.expect("ran");
    println!(
        "prepare a 12 MP photo ({:.1} MB JPEG 4000×3000 → {}×{} {}, {} KB): p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms (target ≤ 150 ms)",
        jpeg.len() as f64 / 1_048_576.0,
        out.width,
        out.height,
        out.mime,
        out.bytes.len() / 1024,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times[0]),
    );
}

async fn bench_acks(events: u64, rate: u64) {
    let slack = FakeSlack::start().await.expect("fake Slack");
    let llm = FakeLlm::start().await.expect("fake model");
    let dir = tempfile::tempdir().expect("tempdir");
    let vars: HashMap<String, String> = [
        (
            "ECDYSIS_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("ECDYSIS_SANDBOX", "off".into()),
        ("ECDYSIS_CHROMIUM", "/nonexistent/chromium".into()),
        ("SLACK_SIGNING_SECRET", SECRET.into()),
        ("SLACK_BOT_TOKEN", "xoxb-bench".into()),
        ("SLACK_API_URL", slack.api_url()),
        // A model, so every image is fetched, stored and prepared for it, as in real use.
        ("ECDYSIS_MODEL", "anthropic/claude-bench".into()),
        ("ANTHROPIC_API_KEY", "sk-ant-bench".into()),
        ("ANTHROPIC_BASE_URL", llm.anthropic_base_url()),
        ("ECDYSIS_SLACK_STREAMING", "off".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::load_with(None, &|name| vars.get(name).cloned()).expect("config");
    let app = App::open(config).await.expect("app");
    let router = app.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let workers = app.bus.start().await.expect("workers");
    let image = photo(2600, 2000, 97);
    let url = slack.add_file("photo.jpg", image.clone());
    println!(
        "Slack acks at {rate}/s, {events} DMs each (load average {}):",
        load_average()
    );
    let client = reqwest::Client::new();
    let mut last_ack = Instant::now();
    for with_file in [false, true] {
        let mut tasks = Vec::new();
        let start = Instant::now();
        for n in 0..events {
            let at = start + Duration::from_micros(n * 1_000_000 / rate.max(1));
            tokio::time::sleep_until(at.into()).await;
            let tag = if with_file { "file" } else { "plain" };
            // Each phase its own timestamps: a Slack message's event id is `{channel}:{ts}`.
            let second = if with_file {
                1_700_003_000
            } else {
                1_700_002_000
            };
            let ts = format!("{second}.{n:06}");
            let mut event = json!({
                "type": "message", "channel_type": "im", "channel": format!("D{}", n % 20),
                "user": "U1", "ts": ts, "text": format!("look {n}"),
            });
            if with_file {
                event["subtype"] = json!("file_share");
                event["files"] = json!([{"id": format!("F{n}"), "name": "photo.jpg",
                    "mimetype": "image/jpeg", "size": image.len(), "url_private_download": url}]);
            }
            let body = json!({
                "type": "event_callback", "team_id": "T1", "api_app_id": "AFAKE",
                "event_id": format!("Ev{tag}{n}"), "event_time": 1,
                "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
                "event": event,
            })
            .to_string();
            let client = client.clone();
            let url = format!("{base}/slack/events");
            tasks.push(tokio::spawn(async move {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let sent = Instant::now();
                let status = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-slack-request-timestamp", now.to_string())
                    .header("x-slack-signature", sign(SECRET, now, body.as_bytes()))
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                (sent.elapsed(), status)
            }));
        }
        let mut times = Vec::new();
        let mut failed = 0;
        for task in tasks {
            match task.await {
                Ok((took, 200)) => times.push(took),
                _ => failed += 1,
            }
        }
        last_ack = Instant::now();
        times.sort();
        println!(
            "  {}: ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({failed} not 200)",
            if with_file {
                format!("with a {:.1} MB image", image.len() as f64 / 1_048_576.0)
            } else {
                "without files".to_string()
            },
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(times.last().copied().unwrap_or_default()),
        );
    }
    // Let the workers fetch and prepare what they were given, then say how far they got.
    let images_seen = || {
        llm.requests()
            .iter()
            .filter(|r| r.raw.contains("\"type\":\"image\""))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while images_seen() < events as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  after the acks: {} of {events} files fetched, {} images read by the model ({:.1} s after the last ack)",
        slack.calls_to("download").len(),
        images_seen(),
        last_ack.elapsed().as_secs_f64(),
    );
    workers.shutdown(Duration::from_secs(10)).await;
}

fn main() {
    bench_prepare();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench_acks(arg("--events", 200), arg("--rate", 50)));
}
