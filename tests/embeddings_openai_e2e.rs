//! `openai/<model>` against a fake OpenAI-compatible `/v1/embeddings` on loopback: batching,
//! retries, and every bad answer the issue names (500, a wrong dimension, NaN, a time-out):
//! full-text search still answers, the rows stay queued and are embedded later, and the
//! failure shows in the logs and in `doctor`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ecdysis::config::Config;
use ecdysis::embeddings::openai::OpenAiEmbedder;
use ecdysis::embeddings::{Embedder, Indexer, MemorySearch};
use ecdysis::storage::store::{self, Clock, NewNote};
use ecdysis_chat::ChannelRef;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail500,
    /// 500 once, then fine.
    FailOnce,
    /// Vectors of two different lengths in one answer.
    MixedDimension,
    /// Vectors of 4 numbers (the model gave 8 before).
    ShortDimension,
    Nan,
    Slow,
}

#[derive(Clone)]
struct Fake {
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    batches: Arc<Mutex<Vec<usize>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

fn vector(text: &str, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| {
            text.bytes().fold(i as u32 + 1, |h, b| {
                h.wrapping_mul(31).wrapping_add(u32::from(b))
            }) as f32
                % 97.0
                + 1.0
        })
        .collect()
}

async fn embeddings(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers.get("authorization") {
        fake.auth
            .lock()
            .unwrap()
            .push(auth.to_str().unwrap().to_string());
    }
    let inputs: Vec<String> = body["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    fake.batches.lock().unwrap().push(inputs.len());
    let mode = {
        let mut mode = fake.mode.lock().unwrap();
        let now = *mode;
        if now == Mode::FailOnce {
            *mode = Mode::Ok;
        }
        now
    };
    let data: Vec<Value> = match mode {
        Mode::Fail500 | Mode::FailOnce => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
        }
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return (StatusCode::OK, "{}").into_response();
        }
        Mode::Nan => inputs
            .iter()
            .enumerate()
            // serde_json cannot write NaN: a server that does sends a non-number.
            .map(|(i, _)| json!({"index": i, "embedding": [1.0, null, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}))
            .collect(),
        Mode::MixedDimension => inputs
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "embedding": vector(t, if i % 2 == 0 { 8 } else { 6 })}))
            .collect(),
        Mode::ShortDimension => inputs
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "embedding": vector(t, 4)}))
            .collect(),
        // Out of order, as the API allows: the client sorts by index.
        Mode::Ok => inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| json!({"index": i, "embedding": vector(t, 8)}))
            .collect(),
    };
    Json(json!({"object": "list", "data": data, "model": body["model"]})).into_response()
}

async fn start_fake() -> (String, Fake) {
    let fake = Fake {
        mode: Arc::new(Mutex::new(Mode::Ok)),
        requests: Arc::default(),
        batches: Arc::default(),
        auth: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, fake)
}

fn embedder(base: &str, retries: u32) -> Arc<OpenAiEmbedder> {
    Arc::new(
        OpenAiEmbedder::new(
            "text-embedding-fake",
            base,
            Some("sk-embed-test-key".into()),
            Duration::from_secs(1),
            retries,
        )
        .unwrap(),
    )
}

fn channel() -> ChannelRef {
    ChannelRef {
        platform: "test".into(),
        workspace: "W1".into(),
        channel: "c".into(),
    }
}

/// Log lines written while a test runs, for checking warnings.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn batches_retries_and_keeps_order() {
    let (base, fake) = start_fake().await;
    let e = embedder(&base, 2);
    assert_eq!(e.model(), "openai/text-embedding-fake");
    *fake.mode.lock().unwrap() = Mode::FailOnce;
    let texts: Vec<String> = (0..3).map(|i| format!("text {i}")).collect();
    let vectors = e.embed(&texts).await.unwrap();
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        2,
        "one retry after the 500"
    );
    assert_eq!(vectors.len(), 3);
    for (t, v) in texts.iter().zip(&vectors) {
        let mut want = vector(t, 8);
        ecdysis::embeddings::normalize(&mut want);
        assert_eq!(v, &want, "answers come back in input order, normalised");
    }
    assert!(
        fake.auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "Bearer sk-embed-test-key")
    );
    // The indexer sends batches of its size.
    let data = tempfile::tempdir().unwrap();
    let store = store::open(&format!("sqlite://{}/b.db", data.path().display()))
        .await
        .unwrap();
    for i in 0..5 {
        store
            .remember(&NewNote {
                channel: channel(),
                text: format!("note number {i}"),
                created_by: "U1".into(),
                source: None,
            })
            .await
            .unwrap();
    }
    fake.batches.lock().unwrap().clear();
    let indexer = Indexer::new(store.clone(), e.clone(), 2);
    assert_eq!(indexer.drain(|_| {}).await.unwrap(), 5);
    assert_eq!(*fake.batches.lock().unwrap(), vec![2, 2, 1]);
}

/// One bad answer: the pass fails, full text still finds the note, the row keeps its error,
/// a warning is logged, and once the endpoint is good again the row is embedded.
async fn bad_answer_is_survived(mode: Mode, expected_error: &str) {
    let (base, fake) = start_fake().await;
    let e = embedder(&base, 0);
    let data = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::default());
    let store = store::open_with_clock(
        &format!("sqlite://{}/x.db", data.path().display()),
        clock.clone(),
    )
    .await
    .unwrap();
    if mode == Mode::ShortDimension {
        // The model answered 8 numbers before; 4 now is wrong.
        e.embed(&["warm up".to_string()]).await.unwrap();
    }
    *fake.mode.lock().unwrap() = mode;
    let id = store
        .remember(&NewNote {
            channel: channel(),
            text: "The release train leaves on Thursdays".into(),
            created_by: "U1".into(),
            source: None,
        })
        .await
        .unwrap();
    // A second note, so one answer can hold vectors of two lengths.
    store
        .remember(&NewNote {
            channel: channel(),
            text: "Lunch is catered on Wednesdays".into(),
            created_by: "U1".into(),
            source: None,
        })
        .await
        .unwrap();
    let indexer = Indexer::new(store.clone(), e.clone(), 8).with_backoff(Duration::from_secs(30));
    let search = MemorySearch::hybrid(store.clone(), e.clone(), 0.0, 1 << 20, None);

    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let pass = indexer.run_once().await.unwrap();
    assert_eq!(pass.failed, 2, "{mode:?}");
    let found = search.search(&channel(), "train", 5).await.unwrap();
    drop(guard);
    assert_eq!(found.len(), 1, "{mode:?}: full text still answers");
    assert_eq!(found[0].note_id(), Some(id.0));
    assert!(!found[0].by_meaning());
    let logged = logs.text();
    assert!(logged.contains("WARN"), "{mode:?}: {logged}");
    assert!(
        logged.contains("embedding failed; the rows stay queued"),
        "{mode:?}: {logged}"
    );
    assert!(
        !logged.contains("sk-embed-test-key"),
        "the key never reaches the logs"
    );
    let status = store.index_status(e.model()).await.unwrap();
    assert_eq!((status.waiting, status.failing), (2, 2), "{mode:?}");
    let error = status.last_error.unwrap();
    assert!(error.contains(expected_error), "{mode:?}: {error}");

    // Good again: after the backoff the row is embedded and found by meaning too.
    *fake.mode.lock().unwrap() = Mode::Ok;
    assert_eq!(indexer.run_once().await.unwrap().embedded, 0, "not due yet");
    clock.advance(31_000);
    assert_eq!(indexer.run_once().await.unwrap().embedded, 2, "{mode:?}");
    let found = search
        .search(&channel(), "The release train leaves on Thursdays", 5)
        .await
        .unwrap();
    assert!(found[0].by_meaning() && found[0].by_words, "{mode:?}");
    let status = store.index_status(e.model()).await.unwrap();
    assert_eq!((status.waiting, status.vectors), (0, 2));
}

#[tokio::test]
async fn endpoint_500_is_survived() {
    bad_answer_is_survived(Mode::Fail500, "500").await;
}

#[tokio::test]
async fn wrong_dimension_is_survived() {
    bad_answer_is_survived(Mode::ShortDimension, "dimension").await;
}

#[tokio::test]
async fn mixed_dimensions_are_survived() {
    bad_answer_is_survived(Mode::MixedDimension, "dimension").await;
}

#[tokio::test]
async fn nan_is_survived() {
    bad_answer_is_survived(Mode::Nan, "not an embeddings answer").await;
}

#[tokio::test]
async fn time_out_is_survived() {
    bad_answer_is_survived(Mode::Slow, "longer than").await;
}

#[tokio::test]
async fn doctor_tests_the_embedder_and_counts_the_queue() {
    let (base, fake) = start_fake().await;
    let data = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/d.db", data.path().display());
    let store = store::open(&db).await.unwrap();
    store
        .remember(&NewNote {
            channel: channel(),
            text: "waiting to be embedded".into(),
            created_by: "U1".into(),
            source: None,
        })
        .await
        .unwrap();
    let env = |name: &str| match name {
        "DATABASE_URL" => Some(db.clone()),
        "ECDYSIS_DATA_DIR" => Some(data.path().display().to_string()),
        "ECDYSIS_EMBEDDINGS" => Some("openai/text-embedding-fake".into()),
        "ECDYSIS_EMBEDDINGS_BASE_URL" => Some(base.clone()),
        "ECDYSIS_EMBEDDINGS_API_KEY" => Some("sk-embed-test-key".into()),
        "ECDYSIS_EMBEDDINGS_MAX_RETRIES" => Some("0".into()),
        "ECDYSIS_SANDBOX" => Some("off".into()),
        _ => None,
    };
    let config = Config::load_with(None, &env).unwrap();
    let report = ecdysis::server::doctor::run(&config).await;
    let line = report
        .lines
        .iter()
        .find(|l| l.contains("embeddings"))
        .unwrap();
    assert!(line.starts_with("ok"), "{line}");
    assert!(line.contains("8 dimensions"), "{line}");
    assert!(line.contains("1 rows wait to be embedded"), "{line}");

    *fake.mode.lock().unwrap() = Mode::Fail500;
    let report = ecdysis::server::doctor::run(&config).await;
    assert!(report.failed);
    let line = report
        .lines
        .iter()
        .find(|l| l.contains("embeddings"))
        .unwrap();
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("500"), "{line}");
    assert!(line.contains("ECDYSIS_EMBEDDINGS_BASE_URL"), "{line}");
    assert!(!line.contains("sk-embed-test-key"), "{line}");
}
