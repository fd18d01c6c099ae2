//! One contract for every blob store backend: the local directory store and the S3 store (run
//! against the real S3 server that `.ci/run` starts; skipped on a laptop without it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use ecdysis::config::S3Config;
use ecdysis::storage::blob::{BlobError, BlobStore, LocalBlobStore, S3BlobStore};
use futures_util::StreamExt;
use futures_util::future::join_all;

/// Deterministic pseudo-random bytes (xorshift64*), distinct per seed.
fn payload(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn assert_invalid_key<T: std::fmt::Debug>(result: Result<T, BlobError>, what: &str) {
    match result {
        Err(BlobError::InvalidKey(_)) => {}
        other => panic!("{what}: expected InvalidKey, got {other:?}"),
    }
}

async fn get(store: &dyn BlobStore, key: &str) -> Option<Bytes> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn put(store: &dyn BlobStore, key: &str, bytes: Bytes) {
    store
        .put(key, bytes, "application/octet-stream")
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

async fn list(store: &dyn BlobStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
}

/// The contract every backend keeps. `store` must start empty.
async fn contract(store: &dyn BlobStore) {
    // Reachable, and empty.
    store.ping().await.expect("ping");
    assert_eq!(list(store, "").await, Vec::<String>::new());

    // Round trips: text, every byte value, empty, and 5 MB.
    put(
        store,
        "notes/hello.txt",
        Bytes::from_static(b"hello, world"),
    )
    .await;
    assert_eq!(
        get(store, "notes/hello.txt").await.as_deref(),
        Some(&b"hello, world"[..])
    );
    let every_byte: Bytes = (0..=255u8).cycle().take(4096).collect::<Vec<u8>>().into();
    put(store, "bin/every-byte.bin", every_byte.clone()).await;
    assert_eq!(get(store, "bin/every-byte.bin").await, Some(every_byte));
    put(store, "bin/empty", Bytes::new()).await;
    assert_eq!(get(store, "bin/empty").await, Some(Bytes::new()));
    let big = payload(5, 5 * 1024 * 1024 + 3);
    store
        .put("bin/big.dat", big.clone(), "application/octet-stream")
        .await
        .expect("put 5 MB");
    let got = get(store, "bin/big.dat").await.expect("5 MB blob present");
    assert_eq!(got.len(), big.len());
    assert!(got == big, "5 MB blob came back different");

    // Overwrite with shorter bytes: the old tail must not survive.
    put(store, "notes/hello.txt", Bytes::from_static(b"bye")).await;
    assert_eq!(
        get(store, "notes/hello.txt").await.as_deref(),
        Some(&b"bye"[..])
    );
    put(store, "bin/big.dat", payload(6, 1000)).await;
    assert_eq!(get(store, "bin/big.dat").await, Some(payload(6, 1000)));

    // Missing keys are None: never written, a "directory" of other keys, below a blob.
    assert_eq!(get(store, "never/written").await, None);
    assert_eq!(get(store, "notes").await, None);
    assert_eq!(get(store, "notes/hello.txt/below").await, None);

    // Delete, then delete again and delete what never was: all fine.
    put(store, "tmp/gone", Bytes::from_static(b"x")).await;
    store.delete("tmp/gone").await.expect("delete");
    assert_eq!(get(store, "tmp/gone").await, None);
    store.delete("tmp/gone").await.expect("delete again");
    store.delete("never/written").await.expect("delete missing");
    assert!(!list(store, "").await.contains(&"tmp/gone".to_string()));

    // Listing: nested keys, sorted, by plain string prefix, other prefixes excluded.
    for key in [
        "docs/2026/b.txt",
        "docs/2025/z.txt",
        "docs/2026/a.txt",
        "docs/2026/sub/c.txt",
        "docs-other/x",
        "documents/y",
        "zeta",
    ] {
        put(store, key, Bytes::from(key.as_bytes().to_vec())).await;
    }
    assert_eq!(
        list(store, "docs/").await,
        [
            "docs/2025/z.txt",
            "docs/2026/a.txt",
            "docs/2026/b.txt",
            "docs/2026/sub/c.txt"
        ]
    );
    assert_eq!(
        list(store, "docs/2026/").await,
        ["docs/2026/a.txt", "docs/2026/b.txt", "docs/2026/sub/c.txt"]
    );
    assert_eq!(list(store, "docs/2026/b").await, ["docs/2026/b.txt"]);
    assert_eq!(
        list(store, "docs").await,
        [
            "docs-other/x",
            "docs/2025/z.txt",
            "docs/2026/a.txt",
            "docs/2026/b.txt",
            "docs/2026/sub/c.txt"
        ]
    );
    assert_eq!(list(store, "nothing/").await, Vec::<String>::new());
    assert_eq!(list(store, "zeta").await, ["zeta"]);
    let all = list(store, "").await;
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "list must be sorted");
    assert_eq!(
        all,
        [
            "bin/big.dat",
            "bin/empty",
            "bin/every-byte.bin",
            "docs-other/x",
            "docs/2025/z.txt",
            "docs/2026/a.txt",
            "docs/2026/b.txt",
            "docs/2026/sub/c.txt",
            "documents/y",
            "notes/hello.txt",
            "zeta",
        ]
    );

    // Invalid keys are refused by every operation, and nothing is written.
    for bad in ["../x", "/abs", "a//b", "a/../b", "", "sp ace", "trailing/"] {
        assert_invalid_key(
            store
                .put(bad, Bytes::from_static(b"evil"), "text/plain")
                .await,
            &format!("put {bad:?}"),
        );
        assert_invalid_key(store.get(bad).await, &format!("get {bad:?}"));
        assert_invalid_key(store.delete(bad).await, &format!("delete {bad:?}"));
    }
    for bad in ["../", "/abs", "a//"] {
        assert_invalid_key(store.list(bad).await, &format!("list {bad:?}"));
    }
    assert_eq!(
        list(store, "").await,
        all,
        "an invalid key changed the store"
    );

    // Concurrent puts to one key leave exactly one complete value, and a reader running
    // meanwhile only ever sees nothing or one complete value.
    const WRITERS: u64 = 6;
    const SIZE: usize = 1024 * 1024;
    let payloads: Vec<Bytes> = (0..WRITERS).map(|i| payload(100 + i, SIZE)).collect();
    let done = AtomicBool::new(false);
    let writers = async {
        let results = join_all(
            payloads
                .iter()
                .map(|bytes| store.put("race/same", bytes.clone(), "application/octet-stream")),
        )
        .await;
        done.store(true, Ordering::SeqCst);
        results
    };
    let reader = async {
        let mut reads = 0;
        while !done.load(Ordering::SeqCst) && reads < 200 {
            if let Some(seen) = store.get("race/same").await.expect("get during race") {
                assert!(
                    payloads.contains(&seen),
                    "a reader saw a partial or mixed blob ({} bytes)",
                    seen.len()
                );
            }
            reads += 1;
            tokio::task::yield_now().await;
        }
    };
    let (results, ()) = tokio::join!(writers, reader);
    for result in results {
        result.expect("concurrent put");
    }
    let last = get(store, "race/same").await.expect("raced key present");
    assert!(
        payloads.contains(&last),
        "after the race the blob is none of the written values ({} bytes)",
        last.len()
    );

    // Clean up what is left so a caller can check the store's own leftovers.
    store.delete("race/same").await.expect("delete race key");
    store.ping().await.expect("ping at the end");
}

/// Every regular file under `dir`, relative, `/`-separated.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                walk(base, &entry.path(), out);
            } else {
                let relative = entry
                    .path()
                    .strip_prefix(base)
                    .expect("under base")
                    .to_owned();
                out.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_keeps_the_contract() {
    let outer = tempfile::tempdir().expect("tempdir");
    let root = outer.path().join("blobs");
    let store = LocalBlobStore::open(&root).await.expect("open");
    let canonical = root.canonicalize().expect("root exists after open");
    assert_eq!(store.describe(), format!("file://{}", canonical.display()));

    contract(&store).await;

    // No temporary files left behind: the only files are the keys.
    let keys: BTreeSet<String> = list(&store, "").await.into_iter().collect();
    assert_eq!(
        files_under(&root),
        keys,
        "stray files in the store directory"
    );
    // Invalid keys wrote nothing next to the store either.
    let beside: Vec<_> = std::fs::read_dir(outer.path())
        .expect("read tempdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, ["blobs"], "something was written outside the store");

    // Data is on disk, not in the value: a second store over the same dir sees it.
    let again = LocalBlobStore::open(&root).await.expect("reopen");
    assert_eq!(list(&again, "").await, keys.into_iter().collect::<Vec<_>>());
    assert_eq!(
        get(&again, "notes/hello.txt").await.as_deref(),
        Some(&b"bye"[..])
    );

    // A store whose directory vanished fails its ping and its puts (and is not recreated).
    let gone_dir = outer.path().join("gone");
    let gone = LocalBlobStore::open(&gone_dir).await.expect("open gone");
    std::fs::remove_dir_all(&gone_dir).expect("remove");
    assert!(gone.ping().await.is_err(), "ping on a vanished dir passed");
    assert!(
        gone.put("k", Bytes::from_static(b"v"), "text/plain")
            .await
            .is_err(),
        "put into a vanished dir passed"
    );
    assert!(!gone_dir.exists(), "the vanished dir was recreated");
}

/// A raw client for the test's own bucket set-up and checks (the store does not create buckets).
fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn s3_config(endpoint: &str) -> S3Config {
    S3Config {
        endpoint_url: Some(endpoint.to_string()),
        region: Some("us-east-1".to_string()),
        access_key_id: Some("test".to_string()),
        secret_access_key: Some("test".to_string()),
        session_token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_keeps_the_contract() {
    let Some(endpoint) = common::s3_endpoint() else {
        return;
    };
    let client = raw_client(&endpoint);
    let bucket = format!("ecdysis-contract-{}", uuid::Uuid::new_v4().simple());
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket at {endpoint}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });

    let config = s3_config(&endpoint);
    let store = S3BlobStore::new(&config, &bucket, "/contract/run/").unwrap();
    assert_eq!(store.describe(), format!("s3://{bucket}/contract/run"));
    assert!(!store.describe().contains("test"), "describe leaks secrets");

    // An object beside the store's prefix is not the store's.
    client
        .put_object()
        .bucket(&bucket)
        .key("contract/running")
        .body(Bytes::from_static(b"outside").into())
        .send()
        .await
        .expect("put outside object");

    contract(&store).await;

    // Keys live under `prefix/`, with the content type given.
    store
        .put("typed.png", Bytes::from_static(b"\x89PNG"), "image/png")
        .await
        .expect("put typed");
    let head = client
        .head_object()
        .bucket(&bucket)
        .key("contract/run/typed.png")
        .send()
        .await
        .expect("object stored under the prefix");
    assert_eq!(head.content_type(), Some("image/png"));

    // Another prefix in the same bucket is another store.
    let other = S3BlobStore::new(&config, &bucket, "elsewhere").unwrap();
    assert_eq!(list(&other, "").await, Vec::<String>::new());
    assert_eq!(get(&other, "typed.png").await, None);

    // Listing pages through more than one ListObjectsV2 answer (1000 keys a page).
    const MANY: usize = 1010;
    let puts = futures_util::stream::iter(0..MANY)
        .map(|i| {
            let client = client.clone();
            let bucket = bucket.clone();
            async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(format!("contract/run/many/{i:05}"))
                    .body(Bytes::new().into())
                    .send()
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for put in puts {
        put.expect("put one of many");
    }
    let many = list(&store, "many/").await;
    assert_eq!(many.len(), MANY);
    assert_eq!(many.first().map(String::as_str), Some("many/00000"));
    assert_eq!(many.last().map(String::as_str), Some("many/01009"));

    // A missing bucket fails the ping with a readable message, and is never read as "no blob".
    let missing = S3BlobStore::new(&config, &format!("{bucket}-missing"), "").unwrap();
    match missing.ping().await {
        Err(error @ BlobError::S3 { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("-missing") && text.contains("does not exist"),
                "unhelpful message: {text}"
            );
        }
        other => panic!("ping of a missing bucket: {other:?}"),
    }
    assert!(
        matches!(missing.get("k").await, Err(BlobError::S3 { .. })),
        "get from a missing bucket must fail"
    );
    assert!(
        matches!(missing.delete("k").await, Err(BlobError::S3 { .. })),
        "delete in a missing bucket must fail"
    );

    // An unreachable endpoint is an error naming the cause, not a hang.
    let closed = S3Config {
        endpoint_url: Some("http://127.0.0.1:9".to_string()),
        ..config.clone()
    };
    let unreachable = S3BlobStore::new(&closed, &bucket, "").unwrap();
    let started = std::time::Instant::now();
    match unreachable.ping().await {
        Err(error @ BlobError::S3 { .. }) => {
            let text = error.to_string();
            assert!(text.contains("unreachable"), "unhelpful message: {text}");
        }
        other => panic!("ping of a closed port: {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
