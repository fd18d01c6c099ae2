//! Compaction: when a conversation outgrows its token budget, its older turns are summarised
//! by the model into one summary row. First the model gets one chance to save durable facts
//! with `memory_save`; then the compacted rows are archived verbatim (JSON lines) in the blob
//! store, and only then does one transaction mark them compacted and add the summary that
//! points to the archive. Nothing is deleted: the archive and the rows stay readable.
//!
//! It runs right after the answer of the turn that found the conversation over budget, so that
//! answer does not wait for two more model calls; that turn (and any turn while the summary is
//! being written) shows the model the newest turns that fit the budget.

use std::time::Instant;

use bytes::Bytes;
use ecdysis_chat::ConversationRef;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::context::{self, ToolRow, message_tokens, row_message};
use super::provider::{ChatMessage, ChatRequest, ToolChoice};
use super::{CONTEXT_ROWS, Core, TurnError, TurnStats};
use crate::bus::EventContext;
use crate::engine::live::Live;
use crate::engine::tools::ToolContext;
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::store::{
    Compaction, ContextMessages, EventId, Message, NewCompaction, NewMessage, Role,
};

/// The instruction of the memory flush before a compaction.
pub const FLUSH_PROMPT: &str = "[Compaction] The conversation above is about to be shortened \
into a summary. If it holds durable facts this channel will want later (decisions, preferences, \
names, settings) that are not saved yet, save each with memory_save now. Otherwise reply: \
nothing to save.";

/// The instruction that asks for the summary.
pub const SUMMARY_PROMPT: &str = "[Compaction] Summarise the conversation above for your own \
future reference in at most 200 words: who asked for what, what was decided or done, open \
questions, and the facts needed to continue. Reply with the summary only.";

/// The longest summary asked for.
const SUMMARY_MAX_TOKENS: u32 = 1_024;

/// One archived transcript row (a line of the archive).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchivedMessage {
    pub id: i64,
    pub event_id: Option<i64>,
    pub role: Role,
    pub text: String,
    pub meta: Option<String>,
    pub created_at: i64,
    #[serde(default)]
    pub attachments: Vec<ArchivedFile>,
}

/// A file of an archived row (its bytes stay where they are in the blob store).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub id: String,
    pub blob_key: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
}

impl From<&Message> for ArchivedMessage {
    fn from(m: &Message) -> Self {
        Self {
            id: m.id.0,
            event_id: m.event_id.map(|e| e.0),
            role: m.role,
            text: m.text.clone(),
            meta: m.meta.clone(),
            created_at: m.created_at.0,
            attachments: m
                .attachments
                .iter()
                .map(|a| ArchivedFile {
                    id: a.id.clone(),
                    blob_key: a.blob_key.clone(),
                    name: a.name.clone(),
                    mime: a.mime.clone(),
                    size: a.size,
                })
                .collect(),
        }
    }
}

/// Why an archive could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("archive `{0}` is missing from the blob store")]
    Missing(String),
    #[error("archive `{key}` line {line} is not a transcript row: {problem}")]
    Corrupt {
        key: String,
        line: usize,
        problem: String,
    },
}

/// Read an archive back (for exports): the compacted rows, in order.
pub async fn read_archive(
    blobs: &dyn BlobStore,
    key: &str,
) -> Result<Vec<ArchivedMessage>, ArchiveError> {
    let bytes = blobs
        .get(key)
        .await?
        .ok_or_else(|| ArchiveError::Missing(key.to_string()))?;
    String::from_utf8_lossy(&bytes)
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| ArchiveError::Corrupt {
                key: key.to_string(),
                line: n + 1,
                problem: e.to_string(),
            })
        })
        .collect()
}

/// The blob key of a compaction's archive: one JSON-lines file per compaction, grouped by
/// conversation.
pub fn archive_key(conversation: &ConversationRef, first: i64, last: i64) -> String {
    format!(
        "transcripts/{}/{}/{}/{}/{first:012}-{last:012}.jsonl",
        segment(&conversation.platform),
        segment(&conversation.workspace),
        segment(&conversation.channel),
        conversation
            .thread
            .as_deref()
            .map(segment)
            .unwrap_or_else(|| "_".into()),
    )
}

/// A blob key segment from an id.
fn segment(text: &str) -> String {
    crate::storage::blob::segment(text, 80)
}

/// Which rows to compact: the index (into `window.messages`) of the first row to keep, or
/// `None` when nothing can be compacted. The kept tail is at most `keep_tokens` and starts at a
/// user message (a turn boundary); rows of the current event are never compacted.
pub fn plan(window: &ContextMessages, current_event: EventId, keep_tokens: usize) -> Option<usize> {
    let rows = context::row_tokens(window, current_event);
    let mut kept = 0usize;
    let mut keep_from = rows.last().map(|(i, _)| i + 1)?;
    for (index, tokens) in rows.iter().rev() {
        kept += tokens;
        if kept > keep_tokens {
            break;
        }
        if window.messages[*index].role == Role::User {
            keep_from = *index;
        }
    }
    // Never past the current event's rows.
    if let Some(current) = window
        .messages
        .iter()
        .position(|m| m.event_id == Some(current_event))
    {
        keep_from = keep_from.min(current);
    }
    (keep_from > 0).then_some(keep_from)
}

/// How much of the transcript a compaction keeps verbatim: half of what the transcript may
/// take, so the next turns have room to grow before the next compaction.
pub fn keep_tokens(allowance: usize) -> usize {
    allowance / 2
}

impl Core {
    /// Compact a conversation after the turn of `event` found it over budget. One compaction per
    /// conversation runs at a time; failures are logged (the turns keep fitting the budget by
    /// showing the model only the newest turns, and the next turn tries again).
    pub(super) async fn compact_in_background(
        self: std::sync::Arc<Self>,
        event: EventContext,
        setup: super::TurnSetup,
    ) {
        let conversation = event.conversation.clone();
        if !self.lock_compacting().insert(conversation.clone()) {
            return;
        }
        let started = Instant::now();
        let deadline = started + self.config.turn_timeout;
        let mut stats = TurnStats::default();
        let mut result = self.compact_now(&event, &setup, deadline, &mut stats).await;
        // The usage of the flush and summary calls, whatever the outcome.
        if let Err(e) = self
            .store
            .record_turn(
                &conversation,
                Some(event.event_id),
                &event.payload.user.id,
                &[],
                &stats.usage,
            )
            .await
            && result.is_ok()
        {
            result = Err(e.into());
        }
        if let Some(budgets) = &self.budgets {
            budgets.counted(
                &conversation,
                &event.payload.user.id,
                &stats.usage,
                Instant::now(),
            );
        }
        self.lock_compacting().remove(&conversation);
        match result {
            Ok(Some(compaction)) => info!(
                %conversation,
                messages = compaction.message_count,
                own_ms = started.elapsed().saturating_sub(stats.model_time).as_millis() as u64,
                model_ms = stats.model_time.as_millis() as u64,
                "compaction finished"
            ),
            Ok(None) => {}
            Err(e) => {
                warn!(%conversation, error = %e, "compaction failed; it is tried again next turn")
            }
        }
    }

    async fn compact_now(
        &self,
        event: &EventContext,
        setup: &super::TurnSetup,
        deadline: Instant,
        stats: &mut TurnStats,
    ) -> Result<Option<Compaction>, TurnError> {
        let system = setup.stable_system();
        let window = self
            .store
            .context_messages(&event.conversation, CONTEXT_ROWS)
            .await?;
        // The budget check of the turn, repeated on fresh rows: the transcript's allowance is
        // the budget minus the stable prefix (notes and the new message vary; they are small).
        let fixed = system
            .iter()
            .map(|b| context::estimate_tokens(&b.text))
            .sum::<usize>()
            + context::tools_tokens(&setup.tool_defs);
        let allowance = self.config.compaction_budget_tokens.saturating_sub(fixed);
        let Some(keep_from) = plan(&window, event.event_id, keep_tokens(allowance)) else {
            return Ok(None);
        };
        let result = self
            .compact(event, &window, keep_from, setup, deadline, stats)
            .await;
        self.windows.invalidate(&event.conversation);
        result.map(Some)
    }

    /// Compact `window.messages[..keep_from]` (and the previous summary).
    pub(super) async fn compact(
        &self,
        event: &EventContext,
        window: &ContextMessages,
        keep_from: usize,
        setup: &super::TurnSetup,
        deadline: Instant,
        stats: &mut TurnStats,
    ) -> Result<Compaction, TurnError> {
        let conversation = &event.conversation;
        let rows = &window.messages[..keep_from];
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(TurnError::Internal("nothing to compact".into()));
        };
        let (first_id, last_id) = (first.id, last.id);
        let mut old = Vec::with_capacity(rows.len() + 1);
        if let Some((summary, _)) = &window.summary {
            old.push(context::summary_message(&summary.text));
        }
        old.extend(rows.iter().filter_map(row_message));
        let old = context::pair_tools(old);
        let old_tokens: usize = old.iter().map(message_tokens).sum();
        info!(
            %conversation, %first_id, %last_id, rows = rows.len(), tokens = old_tokens,
            "compacting the older part of the conversation"
        );

        // 1. One chance to save durable facts.
        let flush = self.request(
            setup,
            old.clone(),
            ChatMessage::user_text(FLUSH_PROMPT),
            ToolChoice::Auto,
            self.config.max_output_tokens,
        );
        let answer = self
            .call(event, &setup.models, &flush, deadline, stats, &Live::off())
            .await?;
        let mut saved = Vec::new();
        let save_context = ToolContext {
            event_id: event.event_id.0,
            step: 0,
            conversation: conversation.clone(),
            user_id: event.payload.user.id.clone(),
            route: event.payload.route.clone(),
            poster: event.poster.clone(),
        };
        for (_, name, input) in answer.tool_calls() {
            if name != "memory_save" {
                continue;
            }
            let Some(tool) = setup.tools.get(name) else {
                continue;
            };
            match tool.call(&save_context, input.clone()).await {
                Ok(output) => {
                    if let Ok(id) = output
                        .text
                        .trim_start_matches("Saved as #")
                        .trim_end_matches('.')
                        .parse::<i64>()
                    {
                        saved.push(id);
                    }
                }
                Err(e) => warn!(error = %e, "memory_save before compaction failed"),
            }
        }
        if !saved.is_empty() {
            let row = ToolRow::MemoryFlush {
                saved: saved.clone(),
            };
            self.store
                .append_messages(
                    conversation,
                    Some(event.event_id),
                    &[NewMessage {
                        role: Role::Tool,
                        text: format!(
                            "memory_save before compaction: {}",
                            saved
                                .iter()
                                .map(|id| format!("#{id}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        meta: Some(serde_json::to_string(&row)?),
                        attachments: Vec::new(),
                    }],
                )
                .await?;
        }

        // 2. The summary.
        let ask = self.request(
            setup,
            old,
            ChatMessage::user_text(SUMMARY_PROMPT),
            ToolChoice::None,
            SUMMARY_MAX_TOKENS.min(self.config.max_output_tokens),
        );
        let summary = self
            .call(event, &setup.models, &ask, deadline, stats, &Live::off())
            .await?
            .text();
        let summary = summary.trim();
        if summary.is_empty() {
            return Err(TurnError::Internal(
                "the model returned an empty summary".into(),
            ));
        }

        // 3. The archive first (a blob before the row that points to it), then one transaction.
        let mut archived: Vec<&Message> = Vec::with_capacity(rows.len() + 1);
        if let Some((summary, _)) = &window.summary {
            archived.push(summary);
        }
        archived.extend(rows.iter());
        let mut lines = String::new();
        for row in archived {
            let line = serde_json::to_string(&ArchivedMessage::from(row))?;
            lines.push_str(&line);
            lines.push('\n');
        }
        let key = archive_key(conversation, first_id.0, last_id.0);
        self.blobs
            .put(&key, Bytes::from(lines), "application/x-ndjson")
            .await
            .map_err(TurnError::Archive)?;
        let compaction = self
            .store
            .compact(
                conversation,
                &NewCompaction {
                    event_id: Some(event.event_id),
                    first_message_id: first_id,
                    last_message_id: last_id,
                    summary: summary.to_string(),
                    archive_key: key,
                },
            )
            .await?;
        info!(
            %conversation, messages = compaction.message_count, archive = %compaction.archive_key,
            "conversation compacted"
        );
        Ok(compaction)
    }

    fn request(
        &self,
        setup: &super::TurnSetup,
        mut messages: Vec<ChatMessage>,
        last: ChatMessage,
        tool_choice: ToolChoice,
        max_tokens: u32,
    ) -> ChatRequest {
        messages.push(last);
        ChatRequest {
            system: setup.stable_system(),
            messages: context::merge_roles(messages),
            tools: setup.tool_defs.clone(),
            tool_choice,
            max_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::{MessageId, UnixMs};

    fn row(id: i64, event: i64, role: Role, chars: usize) -> Message {
        Message {
            id: MessageId(id),
            event_id: Some(EventId(event)),
            role,
            text: "x".repeat(chars),
            meta: None,
            attachments: Vec::new(),
            created_at: UnixMs(0),
        }
    }

    #[test]
    fn plan_keeps_a_tail_that_starts_a_turn() {
        // Five turns of ~100 + ~100 tokens, then the current event's message.
        let mut messages = Vec::new();
        for turn in 0..5 {
            messages.push(row(turn * 2 + 1, turn + 1, Role::User, 400));
            messages.push(row(turn * 2 + 2, turn + 1, Role::Assistant, 400));
        }
        messages.push(row(11, 6, Role::User, 400));
        let window = ContextMessages {
            summary: None,
            messages,
        };
        // 450 tokens hold two turns (2 × 2 × 104).
        assert_eq!(plan(&window, EventId(6), 450), Some(6));
        // Everything fits: nothing to do.
        assert_eq!(plan(&window, EventId(6), 10_000), None);
        // Nothing fits: everything before the current event is compacted.
        assert_eq!(plan(&window, EventId(6), 10), Some(10));
    }

    #[test]
    fn archive_keys_are_safe_and_ordered() {
        let c = ConversationRef::new("slack", "T/1", "C 1", Some("1700.5".into()));
        let key = archive_key(&c, 3, 42);
        assert_eq!(
            key,
            "transcripts/slack/T_1/C_1/1700.5/000000000003-000000000042.jsonl"
        );
        assert!(crate::storage::blob::validate_key(&key).is_ok());
        let c = ConversationRef::new("web", "local", "..", None);
        assert!(crate::storage::blob::validate_key(&archive_key(&c, 1, 2)).is_ok());
    }
}
