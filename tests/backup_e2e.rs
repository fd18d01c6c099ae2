//! Backups through the real `ecdysis export` / `ecdysis import` commands: a channel of a SQLite
//! database (notes, two conversations, an artifact, a compaction with its archive) moves into a
//! fresh Postgres schema with another blob directory, nothing changed; a second import adds
//! nothing; an export of the copy says the same as the original.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use ecdysis::storage::backup::Line;
use ecdysis::storage::blob::{BlobStore, LocalBlobStore};
use ecdysis::storage::store::{
    self, Completion, MessageId, NewArtifact, NewCompaction, NewEvent, NewMessage, NewNote, Role,
    Store, UnixMs,
};
use ecdysis_chat::{ChannelRef, ConversationRef};

fn channel() -> ChannelRef {
    ChannelRef {
        platform: "slack".into(),
        workspace: "T1".into(),
        channel: "C1".into(),
    }
}

/// Run the binary with a database and blob directory; its stdout, or a panic with stderr.
fn ecdysis(args: &[&str], database_url: &str, blobs: &Path) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("ECDYSIS_BLOB_URL", format!("file://{}", blobs.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

/// A channel with everything an export carries, plus another channel that must stay out.
async fn populate(store: &dyn Store, blobs: &dyn BlobStore) {
    let c = channel();
    for (i, text) in ["deploys go out on tuesdays", "the on-call phone is blue"]
        .iter()
        .enumerate()
    {
        store
            .remember(&NewNote {
                channel: c.clone(),
                text: text.to_string(),
                created_by: "U1".into(),
                source: Some(format!("event:{i}")),
            })
            .await
            .unwrap();
    }
    store
        .remember(&NewNote {
            channel: ChannelRef {
                channel: "C-other".into(),
                ..c.clone()
            },
            text: "not part of the export".into(),
            created_by: "U1".into(),
            source: None,
        })
        .await
        .unwrap();
    let main = ConversationRef::new("slack", "T1", "C1", None);
    let thread = ConversationRef::new("slack", "T1", "C1", Some("1700.1".into()));
    for (n, conversation) in [&main, &thread].into_iter().enumerate() {
        for turn in 0..3 {
            let inserted = store
                .insert_event(&NewEvent {
                    platform_event_id: format!("Ev{n}-{turn}"),
                    conversation: conversation.clone(),
                    user_id: "U1".into(),
                    payload: "{}".into(),
                    text: format!("question {turn} in {n}"),
                    attachments: Vec::new(),
                })
                .await
                .unwrap();
            let claimed = store
                .claim_events("w", UnixMs::now().plus(60_000), 1)
                .await
                .unwrap()
                .pop()
                .unwrap();
            assert_eq!(claimed.id, inserted.event_id);
            let mut attachments = Vec::new();
            if n == 0 && turn == 1 {
                blobs
                    .put(
                        "artifacts/slack/shot-1/shot.png",
                        Bytes::from_static(b"\x89PNG fake"),
                        "image/png",
                    )
                    .await
                    .unwrap();
                attachments.push(NewArtifact {
                    id: "shot-1".into(),
                    blob_key: "artifacts/slack/shot-1/shot.png".into(),
                    name: "shot.png".into(),
                    mime: "image/png".into(),
                    size: 9,
                });
            }
            store
                .complete_event(
                    &claimed,
                    "w",
                    &Completion {
                        messages: vec![NewMessage {
                            role: Role::Assistant,
                            text: format!("answer {turn} in {n}"),
                            meta: None,
                            attachments,
                        }],
                        ..Completion::default()
                    },
                )
                .await
                .unwrap()
                .unwrap();
        }
    }
    // Compact the first two turns of the main conversation.
    let messages = store.messages(&main, MessageId(0), 100).await.unwrap();
    blobs
        .put(
            "transcripts/slack/T1/C1/1.jsonl",
            Bytes::from_static(b"{\"role\":\"user\",\"text\":\"question 0 in 0\"}\n"),
            "application/x-ndjson",
        )
        .await
        .unwrap();
    store
        .compact(
            &main,
            &NewCompaction {
                event_id: None,
                first_message_id: messages[0].id,
                last_message_id: messages[3].id,
                summary: "they asked two questions".into(),
                archive_key: "transcripts/slack/T1/C1/1.jsonl".into(),
            },
        )
        .await
        .unwrap();
}

/// What a store holds of the channel, without its ids.
async fn snapshot(store: &dyn Store) -> serde_json::Value {
    let c = channel();
    let notes: Vec<_> = store
        .channel_notes(&c)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.text, n.created_by, n.created_at))
        .collect();
    let mut conversations = Vec::new();
    for info in store.conversations(Some(&c), 100).await.unwrap() {
        let messages: Vec<_> = store
            .messages(&info.conversation, MessageId(0), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                (
                    m.role,
                    m.text,
                    m.created_at,
                    m.attachments
                        .into_iter()
                        .map(|a| (a.id, a.blob_key, a.name, a.mime, a.size))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let context = store
            .context_messages(&info.conversation, 100)
            .await
            .unwrap();
        let compactions: Vec<_> = store
            .compactions(&info.conversation)
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.archive_key, k.message_count, k.created_at))
            .collect();
        conversations.push(serde_json::json!({
            "conversation": info.conversation.to_string(),
            "messages": messages,
            "compactions": compactions,
            "context_summary": context.summary.map(|(m, _)| m.text),
            "context": context.messages.into_iter().map(|m| m.text).collect::<Vec<_>>(),
        }));
    }
    conversations.sort_by_key(|c| c["conversation"].as_str().unwrap_or_default().to_string());
    serde_json::json!({ "notes": notes, "conversations": conversations })
}

#[tokio::test]
async fn a_channel_moves_from_sqlite_to_postgres_and_imports_once() {
    let Some(pg) = common::postgres_url() else {
        return;
    };
    let pg = common::fresh_postgres(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}/source.db", dir.path().display());
    let source_blobs_dir = dir.path().join("source-blobs");
    let target_blobs_dir = dir.path().join("target-blobs");
    let source = store::open(&sqlite_url).await.unwrap();
    let source_blobs = LocalBlobStore::open(&source_blobs_dir).await.unwrap();
    populate(source.as_ref(), &source_blobs).await;
    let before = snapshot(source.as_ref()).await;

    let file = dir.path().join("c1.jsonl");
    let file_arg = file.display().to_string();
    let (_, said) = ecdysis(
        &[
            "export",
            "--channel",
            "slack:T1:C1",
            "--out",
            &file_arg,
            "--files",
        ],
        &sqlite_url,
        &source_blobs_dir,
    );
    assert!(said.contains("2 notes"), "{said}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Line> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(matches!(lines[0], Line::Header { .. }));
    assert!(!text.contains("not part of the export"));
    for kind in [
        "\"type\":\"note\"",
        "\"type\":\"message\"",
        "\"type\":\"compaction\"",
        "\"type\":\"archive\"",
        "\"type\":\"file\"",
        "\"role\":\"summary\"",
    ] {
        assert!(text.contains(kind), "{kind} in the export");
    }

    let (_, said) = ecdysis(&["import", "--in", &file_arg], &pg, &target_blobs_dir);
    assert!(
        said.contains("2 notes (0 already there), 13 messages (0 already there) in 2 conversations, 1 compactions"),
        "{said}"
    );
    let target = store::open(&pg).await.unwrap();
    assert_eq!(
        snapshot(target.as_ref()).await,
        before,
        "the copy says the same"
    );
    let target_blobs = LocalBlobStore::open(&target_blobs_dir).await.unwrap();
    assert_eq!(
        target_blobs
            .get("artifacts/slack/shot-1/shot.png")
            .await
            .unwrap()
            .unwrap(),
        Bytes::from_static(b"\x89PNG fake")
    );
    assert!(
        target_blobs
            .get("transcripts/slack/T1/C1/1.jsonl")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        target
            .recall(&channel(), "tuesdays", 5)
            .await
            .unwrap()
            .len(),
        1,
        "imported notes are searchable"
    );

    // Twice: nothing new (standard input this time).
    let output = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .arg("import")
        .env_clear()
        .env("DATABASE_URL", &pg)
        .env(
            "ECDYSIS_BLOB_URL",
            format!("file://{}", target_blobs_dir.display()),
        )
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("0 notes (2 already there), 0 messages (13 already there)")
            && said.contains("0 compactions, 0 archives, 0 files"),
        "{said}"
    );
    assert_eq!(snapshot(target.as_ref()).await, before);

    // An export of the copy says the same (without the files), and importing it back into the
    // source adds nothing: the source has every one of those notes and messages already.
    let (copy, _) = ecdysis(
        &["export", "--channel", "slack:T1:C1"],
        &pg,
        &target_blobs_dir,
    );
    let copy_file = dir.path().join("copy.jsonl");
    std::fs::write(&copy_file, &copy).unwrap();
    let (_, said) = ecdysis(
        &["import", "--in", &copy_file.display().to_string()],
        &sqlite_url,
        &source_blobs_dir,
    );
    assert!(
        said.contains("0 notes (2 already there), 0 messages (13 already there)"),
        "{said}"
    );
    assert_eq!(snapshot(source.as_ref()).await, before);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        "{\"type\":\"header\",\"format\":\"ecdysis-export\",\"version\":1,\"channel\":{\"platform\":\"web\",\"workspace\":\"local\",\"channel\":\"x\"},\"exported_at\":0}\n{\"type\":\"nonsense\"}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(["import", "--in", &file.display().to_string()])
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("ECDYSIS_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("line 2"), "{said}");
    let output = Command::new(env!("CARGO_BIN_EXE_ecdysis"))
        .args(["export", "--channel", "nonsense"])
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("ECDYSIS_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("platform:workspace:channel"));
}
