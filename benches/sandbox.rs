//! Sandbox benchmark (namespace backend, bubblewrap): `/run true` end to end through the bus
//! (event accepted → reply delivered), cold (a channel's first run: new workspace) and warm,
//! plus a cold run on a machine that must first restore the workspace; the runner alone; and
//! snapshot + restore of a 50 MB workspace on the local blob store (and S3 when
//! ECDYSIS_TEST_S3_ENDPOINT is set).
//! Run: `cargo bench --bench sandbox` (needs bwrap; as root the sandbox uses per-channel uids).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecdysis::config::{Config, S3Config, SandboxBackend};
use ecdysis::sandbox::{Workspaces, channel_key};
use ecdysis::server::app::App;
use ecdysis::storage::blob::{BlobStore, LocalBlobStore, S3BlobStore};
use ecdysis_chat::{
    ChannelRef, ChatAdapter, ConversationRef, Delivered, DeliveryError, Event, EventSink, Reply,
    UserRef,
};
use tokio::sync::Notify;

#[derive(Default)]
struct Recorder {
    delivered: Mutex<HashMap<u64, (Instant, String)>>,
    notify: Notify,
}

#[async_trait]
impl ChatAdapter for Recorder {
    fn platform(&self) -> &str {
        "bench"
    }

    async fn deliver(&self, reply: &Reply) -> Result<Delivered, DeliveryError> {
        let n = reply.route["n"].as_u64().unwrap_or(u64::MAX);
        self.delivered
            .lock()
            .unwrap()
            .insert(n, (Instant::now(), reply.text.clone()));
        self.notify.notify_waiters();
        Ok(Delivered::default())
    }
}

impl Recorder {
    async fn wait(&self, n: u64) -> (Instant, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.notify.notified();
            if let Some(done) = self.delivered.lock().unwrap().get(&n) {
                return done.clone();
            }
            assert!(Instant::now() < deadline, "no reply to event {n}");
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{label}: n={} p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.first().copied().unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN),
    );
}

/// `/run true` through the bus, one at a time; the latency of each.
async fn run_true(app: &App, recorder: &Recorder, next: &mut u64, channel: &str) -> f64 {
    let n = *next;
    *next += 1;
    let conversation = ConversationRef::new("bench", "w", channel, None);
    let mut event = Event::from_text(
        format!("e{n}"),
        conversation,
        UserRef {
            id: "u".into(),
            name: None,
        },
        "/run true",
    );
    event.route = serde_json::json!({ "n": n });
    let started = Instant::now();
    app.bus.submit(event).await.unwrap();
    let (done, text) = recorder.wait(n).await;
    assert!(text.contains("exit 0"), "unexpected reply: {text}");
    done.duration_since(started).as_secs_f64() * 1000.0
}

async fn end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = Config::embedded(dir.path());
    config.sandbox.backend = Some(SandboxBackend::Namespace);
    let app = App::open(config).await.unwrap();
    let Some(runner) = app.sandbox.clone() else {
        panic!("the namespace sandbox is not available here (is bwrap installed?)");
    };
    println!("sandbox: {}", runner.sandbox().describe());
    let recorder = Arc::new(Recorder::default());
    app.bus.register_adapter(recorder.clone());
    let workers = app.bus.start().await.unwrap();
    let mut next = 0;

    // Warm the process (first spawn, first SQLite writes) before measuring.
    for _ in 0..5 {
        run_true(&app, &recorder, &mut next, "warmup").await;
    }
    let mut cold = Vec::new();
    for i in 0..40 {
        cold.push(run_true(&app, &recorder, &mut next, &format!("cold-{i}")).await);
    }
    summary("/run true end to end, cold (a channel's first run)", cold);
    let mut warm = Vec::new();
    for _ in 0..300 {
        warm.push(run_true(&app, &recorder, &mut next, "warm").await);
    }
    summary("/run true end to end, warm", warm);

    // A machine without the workspace: restore (a small workspace) before the run.
    run_one(
        &app,
        &recorder,
        &mut next,
        "restore",
        "echo data > kept.txt",
    )
    .await;
    let key = channel_key(&ChannelRef {
        platform: "bench".into(),
        workspace: "w".into(),
        channel: "restore".into(),
    });
    let mut restore = Vec::new();
    for _ in 0..40 {
        runner.workspaces().forget_local(&key).await.unwrap();
        restore.push(run_true(&app, &recorder, &mut next, "restore").await);
    }
    summary(
        "/run true end to end, cold with restore from the blob store",
        restore,
    );

    // The runner alone (no bus, no database): workspace checks + sandbox + scans.
    let channel = ChannelRef {
        platform: "bench".into(),
        workspace: "w".into(),
        channel: "direct".into(),
    };
    let mut direct = Vec::new();
    let mut sandbox_only = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        let report = runner.run(&channel, "true").await.unwrap();
        direct.push(started.elapsed().as_secs_f64() * 1000.0);
        sandbox_only.push(report.output.duration.as_secs_f64() * 1000.0);
    }
    summary("runner.run(\"true\"), warm", direct);
    summary(
        "  of which the sandboxed process (bwrap start to exit)",
        sandbox_only,
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

async fn run_one(app: &App, recorder: &Recorder, next: &mut u64, channel: &str, command: &str) {
    let n = *next;
    *next += 1;
    let mut event = Event::from_text(
        format!("e{n}"),
        ConversationRef::new("bench", "w", channel, None),
        UserRef::default(),
        format!("/run {command}"),
    );
    event.route = serde_json::json!({ "n": n });
    app.bus.submit(event).await.unwrap();
    recorder.wait(n).await;
}

/// 50 MB: half incompressible, half text, in 100 files over a few directories.
fn fill(dir: &Path) {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..100 {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let size = 512 * 1024;
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        } else {
            (0..)
                .map(|n| {
                    format!("line {n} of file {i}: the quick brown fox jumps over the lazy dog\n")
                })
                .flat_map(String::into_bytes)
                .take(size)
                .collect()
        };
        std::fs::write(sub.join(format!("f{i}.bin")), bytes).unwrap();
    }
}

async fn snapshot_restore(label: &str, blobs: Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let workspaces = Workspaces::open(&dir.path().join("ws"), blobs, 1 << 30)
        .await
        .unwrap();
    let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut save = Vec::new();
    let mut restore = Vec::new();
    let mut compressed = 0;
    for round in 0..5 {
        workspaces.prepare(&key).await.unwrap();
        let root = workspaces.reference(&key).dir;
        if round == 0 {
            fill(&root);
        } else {
            // A change, so every round writes a new snapshot.
            std::fs::write(root.join("round"), round.to_string()).unwrap();
        }
        let scan = workspaces.scan(&key).await.unwrap();
        let started = Instant::now();
        let snapshot = workspaces.snapshot(&key, &scan).await.unwrap();
        save.push(started.elapsed().as_secs_f64() * 1000.0);
        compressed = snapshot.compressed_bytes;
        workspaces.forget_local(&key).await.unwrap();
        let started = Instant::now();
        workspaces.prepare(&key).await.unwrap();
        restore.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(workspaces.scan(&key).await.unwrap().bytes, scan.bytes);
    }
    println!(
        "{label}: 50 MB workspace (100 files, half incompressible) → {:.1} MB compressed",
        compressed as f64 / 1024.0 / 1024.0
    );
    summary("  snapshot (scan excluded: tar + zstd + put)", save);
    summary("  restore (get + unzstd + untar + rename)", restore);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    end_to_end().await;
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(
        LocalBlobStore::open(&dir.path().join("blobs"))
            .await
            .unwrap(),
    );
    snapshot_restore("local blob store", local).await;
    if let Ok(endpoint) = std::env::var("ECDYSIS_TEST_S3_ENDPOINT") {
        let config = S3Config {
            endpoint_url: Some(endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            session_token: None,
        };
        let bucket = format!("ecdysis-bench-{}", uuid::Uuid::new_v4().simple());
        let client = {
            use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .http_client(aws_smithy_http_client::Builder::new().build_http())
                    .region(Region::new("us-east-1"))
                    .endpoint_url(&endpoint)
                    .force_path_style(true)
                    .credentials_provider(Credentials::new("test", "test", None, None, "test"))
                    .build(),
            )
        };
        match client.create_bucket().bucket(&bucket).send().await {
            Ok(_) => {
                let s3 = Arc::new(S3BlobStore::new(&config, &bucket, "bench").unwrap());
                snapshot_restore(&format!("S3 ({endpoint})"), s3).await;
            }
            Err(e) => println!("S3: cannot create a bucket at {endpoint} ({e}); skipped"),
        }
    }
}
