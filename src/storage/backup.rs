//! Backups of one channel as JSON lines: `ecdysis export --channel platform:workspace:channel`
//! writes its memory notes and the transcripts of all its conversations (threads included),
//! with compaction summaries, their verbatim archives and artifact metadata — optionally the
//! artifact files too (`--files`). `ecdysis import` reads such a file into any database
//! (SQLite or Postgres) and blob store.
//!
//! Importing is idempotent: every note and message carries a key derived from where it came
//! from (its channel or conversation, original id and time), so importing the same export
//! twice, or two exports of the same database, adds nothing the second time. Times are kept.
//! The channel's active scheduled jobs travel too (keyed the same way), and go on running
//! where they are imported.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::storage::blob::BlobStore;
use crate::storage::store::{
    Created, ImportedCompaction, ImportedMessage, ImportedNote, JobKind, MessageId, NewArtifact,
    NewSchedule, NoteId, Role, ScheduleId, Store, UnixMs,
};

/// The `format` of the first line.
pub const FORMAT: &str = "ecdysis-export";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// Messages read per query while exporting.
const PAGE: i64 = 1000;

/// What went wrong in a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("`{0}` is not a channel: use platform:workspace:channel (e.g. slack:T012:C345)")]
    Channel(String),
    #[error(transparent)]
    Store(#[from] crate::storage::store::StoreError),
    #[error(transparent)]
    Blob(#[from] crate::storage::blob::BlobError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
}

/// One line of an export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The first line.
    Header {
        format: String,
        version: u32,
        channel: ChannelRef,
        exported_at: UnixMs,
    },
    Note {
        id: NoteId,
        text: String,
        created_by: String,
        #[serde(default)]
        source: Option<String>,
        created_at: UnixMs,
    },
    /// An artifact's bytes (with `--files`), before the message that points to it.
    File {
        key: String,
        mime: String,
        data: String,
    },
    Message {
        conversation: ConversationRef,
        id: MessageId,
        role: Role,
        text: String,
        #[serde(default)]
        meta: Option<String>,
        created_at: UnixMs,
        #[serde(default)]
        attachments: Vec<ArtifactLine>,
    },
    Compaction {
        conversation: ConversationRef,
        summary_message_id: MessageId,
        first_message_id: MessageId,
        last_message_id: MessageId,
        message_count: i64,
        archive_key: String,
        created_at: UnixMs,
    },
    /// A compaction archive (JSON lines of the compacted messages), verbatim.
    Archive { key: String, content: String },
    /// An active scheduled job of the channel.
    Schedule {
        id: ScheduleId,
        conversation: ConversationRef,
        created_by: String,
        kind: JobKind,
        text: String,
        spec: String,
        description: String,
        timezone: String,
        route: String,
        next_due_at: UnixMs,
        #[serde(default)]
        max_runs: Option<i64>,
        created_at: UnixMs,
    },
}

/// An artifact's metadata as exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactLine {
    pub id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

/// What an export or import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub notes: usize,
    pub notes_existing: usize,
    pub conversations: usize,
    pub messages: usize,
    pub messages_existing: usize,
    pub compactions: usize,
    pub archives: usize,
    pub files: usize,
    pub schedules: usize,
    pub schedules_existing: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} notes ({} already there), {} messages ({} already there) in {} conversations, {} compactions, {} archives, {} files, {} scheduled jobs ({} already there)",
            self.notes,
            self.notes_existing,
            self.messages,
            self.messages_existing,
            self.conversations,
            self.compactions,
            self.archives,
            self.files,
            self.schedules,
            self.schedules_existing
        )
    }
}

/// `platform:workspace:channel`; the channel part may itself hold `:` (web chat names).
pub fn parse_channel(text: &str) -> Result<ChannelRef, BackupError> {
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(w), Some(c)) if !p.is_empty() && !c.is_empty() => Ok(ChannelRef {
            platform: p.into(),
            workspace: w.into(),
            channel: c.into(),
        }),
        _ => Err(BackupError::Channel(text.into())),
    }
}

async fn write_line(out: &mut (impl AsyncWrite + Unpin), line: &Line) -> Result<(), BackupError> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    out.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Write a channel's export to `out`.
pub async fn export(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    channel: &ChannelRef,
    with_files: bool,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<Summary, BackupError> {
    let mut summary = Summary::default();
    write_line(
        out,
        &Line::Header {
            format: FORMAT.into(),
            version: VERSION,
            channel: channel.clone(),
            exported_at: UnixMs::now(),
        },
    )
    .await?;
    for note in store.channel_notes(channel).await? {
        write_line(
            out,
            &Line::Note {
                id: note.id,
                text: note.text,
                created_by: note.created_by,
                source: note.source,
                created_at: note.created_at,
            },
        )
        .await?;
        summary.notes += 1;
    }
    let mut conversations = store.conversations(Some(channel), i64::MAX).await?;
    conversations.sort_by_key(|c| c.id);
    for info in conversations {
        let conversation = info.conversation;
        summary.conversations += 1;
        let mut after = MessageId(0);
        loop {
            let page = store.messages(&conversation, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() as i64 == PAGE;
            for message in page {
                if with_files {
                    for a in &message.attachments {
                        if let Some(bytes) = blobs.get(&a.blob_key).await? {
                            write_line(
                                out,
                                &Line::File {
                                    key: a.blob_key.clone(),
                                    mime: a.mime.clone(),
                                    data: B64.encode(&bytes),
                                },
                            )
                            .await?;
                            summary.files += 1;
                        }
                    }
                }
                write_line(
                    out,
                    &Line::Message {
                        conversation: conversation.clone(),
                        id: message.id,
                        role: message.role,
                        text: message.text,
                        meta: message.meta,
                        created_at: message.created_at,
                        attachments: message
                            .attachments
                            .into_iter()
                            .map(|a| ArtifactLine {
                                id: a.id,
                                blob_key: a.blob_key,
                                name: a.name,
                                mime: a.mime,
                                size: a.size,
                            })
                            .collect(),
                    },
                )
                .await?;
                summary.messages += 1;
            }
            if !full {
                break;
            }
        }
        for compaction in store.compactions(&conversation).await? {
            if let Some(bytes) = blobs.get(&compaction.archive_key).await? {
                write_line(
                    out,
                    &Line::Archive {
                        key: compaction.archive_key.clone(),
                        content: String::from_utf8_lossy(&bytes).into_owned(),
                    },
                )
                .await?;
                summary.archives += 1;
            }
            write_line(
                out,
                &Line::Compaction {
                    conversation: conversation.clone(),
                    summary_message_id: compaction.summary_message_id,
                    first_message_id: compaction.first_message_id,
                    last_message_id: compaction.last_message_id,
                    message_count: compaction.message_count,
                    archive_key: compaction.archive_key,
                    created_at: compaction.created_at,
                },
            )
            .await?;
            summary.compactions += 1;
        }
    }
    // Active jobs only: the others are history, and the transcript keeps what they posted.
    let limit = i64::MAX;
    for job in store.channel_schedules(channel, false, limit).await? {
        let Some(next_due_at) = job.next_due_at else {
            continue;
        };
        write_line(
            out,
            &Line::Schedule {
                id: job.id,
                conversation: job.conversation,
                created_by: job.created_by,
                kind: job.kind,
                text: job.text,
                spec: job.spec,
                description: job.description,
                timezone: job.timezone,
                route: job.route,
                next_due_at,
                max_runs: job.max_runs,
                created_at: job.created_at,
            },
        )
        .await?;
        summary.schedules += 1;
    }
    out.flush().await?;
    Ok(summary)
}

fn conversation_key(c: &ConversationRef) -> String {
    c.to_string()
}

/// Read an export from `input` into `store` and `blobs`.
pub async fn import(
    store: &Arc<dyn Store>,
    blobs: &dyn BlobStore,
    input: &mut (impl AsyncBufRead + Unpin),
) -> Result<Summary, BackupError> {
    let mut summary = Summary::default();
    let mut channel: Option<ChannelRef> = None;
    // Original message id → id here, per conversation.
    let mut ids: HashMap<String, BTreeMap<MessageId, MessageId>> = HashMap::new();
    let mut lines = input.lines();
    let mut n = 0;
    while let Some(text) = lines.next_line().await? {
        n += 1;
        if text.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| BackupError::Line { line: n, problem };
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        match line {
            Line::Header {
                format,
                version,
                channel: c,
                ..
            } => {
                if format != FORMAT || version > VERSION {
                    return Err(bad(format!(
                        "this is `{format}` version {version}; this ecdysis reads `{FORMAT}` up to version {VERSION}"
                    )));
                }
                channel = Some(c);
            }
            _ if channel.is_none() => {
                return Err(bad("the file does not start with an export header".into()));
            }
            Line::Note {
                id,
                text,
                created_by,
                created_at,
                ..
            } => {
                let Some(c) = &channel else { continue };
                let note = ImportedNote {
                    channel: c.clone(),
                    source: format!(
                        "import:{}:{}:{}:{id}:{created_at}",
                        c.platform, c.workspace, c.channel
                    ),
                    text,
                    created_by,
                    created_at,
                };
                let (_, written) = store.import_note(&note).await?;
                if written {
                    summary.notes += 1;
                } else {
                    summary.notes_existing += 1;
                }
            }
            Line::File { key, mime, data } => {
                if blobs.get(&key).await?.is_none() {
                    let bytes = B64
                        .decode(data.as_bytes())
                        .map_err(|e| bad(format!("file `{key}`: {e}")))?;
                    blobs.put(&key, Bytes::from(bytes), &mime).await?;
                    summary.files += 1;
                }
            }
            Line::Archive { key, content } => {
                if blobs.get(&key).await?.is_none() {
                    blobs
                        .put(&key, Bytes::from(content), "application/x-ndjson")
                        .await?;
                    summary.archives += 1;
                }
            }
            Line::Message {
                conversation,
                id,
                role,
                text,
                meta,
                created_at,
                attachments,
            } => {
                let key = conversation_key(&conversation);
                let message = ImportedMessage {
                    import_key: format!("{key}:{id}:{created_at}"),
                    role,
                    text,
                    meta,
                    created_at,
                    attachments: attachments
                        .into_iter()
                        .map(|a| NewArtifact {
                            id: a.id,
                            blob_key: a.blob_key,
                            name: a.name,
                            mime: a.mime,
                            size: a.size,
                        })
                        .collect(),
                };
                let (new_id, written) = store.import_message(&conversation, &message).await?;
                let map = ids.entry(key).or_default();
                if map.is_empty() {
                    summary.conversations += 1;
                }
                map.insert(id, new_id);
                if written {
                    summary.messages += 1;
                } else {
                    summary.messages_existing += 1;
                }
            }
            Line::Compaction {
                conversation,
                summary_message_id,
                first_message_id,
                last_message_id,
                message_count,
                archive_key,
                created_at,
            } => {
                let map = ids
                    .get(&conversation_key(&conversation))
                    .ok_or_else(|| bad("a compaction before its conversation's messages".into()))?;
                let mapped = |id: MessageId| map.get(&id).copied();
                let first = map.range(first_message_id..).next().map(|(_, v)| *v);
                let last = map.range(..=last_message_id).next_back().map(|(_, v)| *v);
                let (Some(summary_id), Some(first), Some(last)) =
                    (mapped(summary_message_id), first, last)
                else {
                    return Err(bad(
                        "a compaction whose messages are not in the export".into()
                    ));
                };
                let written = store
                    .import_compaction(
                        &conversation,
                        &ImportedCompaction {
                            summary_message_id: summary_id,
                            first_message_id: first,
                            last_message_id: last,
                            message_count,
                            archive_key,
                            created_at,
                        },
                    )
                    .await?;
                if written {
                    summary.compactions += 1;
                }
            }
            Line::Schedule {
                id,
                conversation,
                created_by,
                kind,
                text,
                spec,
                description,
                timezone,
                route,
                next_due_at,
                max_runs,
                created_at,
            } => {
                let job = NewSchedule {
                    import_key: Some(format!("{conversation}#{id}@{created_at}")),
                    conversation,
                    created_by,
                    kind,
                    text,
                    spec,
                    description,
                    timezone,
                    route,
                    next_due_at,
                    max_runs,
                };
                // An import restores what was there: the per-channel cap does not apply.
                match store.create_schedule(&job, i64::MAX).await? {
                    Created::Stored(_) => summary.schedules += 1,
                    Created::Duplicate | Created::OverCap { .. } => summary.schedules_existing += 1,
                }
            }
        }
    }
    if channel.is_none() {
        return Err(BackupError::Line {
            line: n,
            problem: "empty input: no export header".into(),
        });
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let line = Line::Message {
            conversation: ConversationRef::new("slack", "T1", "C1", Some("17.5".into())),
            id: MessageId(3),
            role: Role::Summary,
            text: "t".into(),
            meta: None,
            created_at: UnixMs(9),
            attachments: vec![],
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.starts_with("{\"type\":\"message\""), "{text}");
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), line);
        assert!(parse_channel("web:local:a:b").is_ok());
        assert!(parse_channel("web:local").is_err());
    }
}
