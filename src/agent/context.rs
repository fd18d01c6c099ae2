//! What the model reads each turn, and a cheap token estimate (characters / 4).
//!
//! The order is fixed: the stable system prompt (identity, platform, channel, tools; cached) →
//! the channel's relevant memory notes → the conversation's summary and recent transcript
//! (this thread only) → the new message. Stored tool rows become tool-use / tool-result
//! messages again; a half-finished step (a crash between call and result) is left out.

use ecdysis_chat::ConversationRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provider::{ChatMessage, ChatRole, Part, SystemBlock, ToolDef};
use crate::embeddings::Recalled;
use crate::engine::tools::ToolRegistry;
use crate::storage::store::{ContextMessages, EventId, Message, MessageId, Role};

/// Longest note text put into the context (longer notes are cut; `memory_search` has them whole).
const NOTE_CHARS: usize = 600;

/// Tokens of a text, estimated as characters / 4 (rounded up).
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Per-message overhead of the wire formats (role markers, separators).
const MESSAGE_OVERHEAD: usize = 4;

/// Estimated tokens of one message.
pub fn message_tokens(message: &ChatMessage) -> usize {
    MESSAGE_OVERHEAD
        + message
            .parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => estimate_tokens(text),
                // Providers bill images by size; a typical screenshot is ~1,500 tokens.
                Part::Image(_) => 1_500,
                // A PDF read as pages costs more than its text; its text is the floor.
                Part::Document(d) => estimate_tokens(&d.text).max(if d.base64.is_some() {
                    d.pages * 1_000
                } else {
                    0
                }),
                Part::ToolUse { name, input, .. } => {
                    estimate_tokens(name) + estimate_tokens(&input.to_string()) + 8
                }
                Part::ToolResult { text, images, .. } => {
                    estimate_tokens(text) + images.len() * 1_500 + 8
                }
            })
            .sum::<usize>()
}

/// Estimated tokens of the tool definitions.
pub fn tools_tokens(tools: &[ToolDef]) -> usize {
    // Counted as they go on the wire: JSON with its keys, quotes and escapes (a description
    // full of quoted examples costs more than its plain text).
    tools
        .iter()
        .map(|t| serde_json::to_string(t).map_or(0, |wire| estimate_tokens(&wire)) + 8)
        .sum()
}

/// The tool definitions, in the registry's stable order.
pub fn tool_defs(tools: &ToolRegistry) -> Vec<ToolDef> {
    tools
        .iter()
        .map(|t| ToolDef {
            name: t.name().to_string(),
            description: t.description().to_string(),
            input_schema: t.input_schema(),
        })
        .collect()
}

/// The stable system prompt: the same text every turn of a conversation, so it is cached. A
/// profile's `instructions` go at its end, so the prefix before them is the same for every
/// profile and the whole prompt is stable per profile.
pub fn system_prompt(
    conversation: &ConversationRef,
    tools: &ToolRegistry,
    instructions: Option<&str>,
) -> String {
    let place = match &conversation.thread {
        Some(thread) => format!("channel {} (thread {thread})", conversation.channel),
        None => format!("channel {}", conversation.channel),
    };
    let names: Vec<&str> = tools.iter().map(|t| t.name()).collect();
    let memory_line = if names.contains(&"memory_search") || names.contains(&"memory_save") {
        "Memory: this channel has saved notes shared by everyone in it. Notes that may be relevant are \
shown before the conversation. Use memory_search to find others, memory_save for facts worth \
keeping (decisions, preferences, names, settings), and memory_forget to delete a wrong note.\n"
    } else {
        "Memory: saved notes of this channel that may be relevant are shown before the conversation.\n"
    };
    let tools_line = if names.is_empty() {
        "You have no tools in this chat.".to_string()
    } else {
        format!(
            "Tools: {}. Use them when they help; never invent their results.",
            names.join(", ")
        )
    };
    let mut prompt = format!(
        "You are ecdysis, an AI assistant that lives in a team chat. You are talking on {platform} \
(workspace {workspace}), in {place}. Several people may write here; answer the latest message.\n\
Be concise and concrete; use short paragraphs or lists and the chat's markdown. Say so when you \
are unsure or could not do something.\n\
{memory_line}{tools_line}",
        platform = conversation.platform,
        workspace = conversation.workspace,
    );
    if let Some(instructions) = instructions.map(str::trim).filter(|i| !i.is_empty()) {
        prompt.push_str("\n\nInstructions for this channel:\n");
        prompt.push_str(instructions);
    }
    prompt
}

/// Words too common to find a note by.
const STOP_WORDS: &[&str] = &[
    "about", "and", "are", "but", "can", "could", "did", "does", "for", "from", "had", "has",
    "have", "how", "its", "just", "like", "not", "now", "our", "please", "should", "that", "the",
    "their", "them", "then", "there", "they", "this", "was", "were", "what", "when", "where",
    "which", "who", "why", "will", "with", "would", "you", "your",
];

/// The words of a message worth searching the notes for: no common or short words (short
/// ones with a digit, like `s3`, stay), the longest (most specific) first, at most 12.
pub fn recall_query(text: &str) -> String {
    let mut words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3 || w.chars().any(|c| c.is_ascii_digit()))
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect();
    words.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then(a.cmp(b)));
    words.dedup();
    words.truncate(12);
    words.join(" ")
}

/// The notes block (empty when nothing was found): saved notes by number, then passages of
/// the channel's compacted history (found when semantic memory is on).
pub fn notes_block(found: &[Recalled]) -> String {
    if found.is_empty() {
        return String::new();
    }
    let clip = |text: &str| {
        let mut out: String = text.chars().take(NOTE_CHARS).collect();
        if text.chars().count() > NOTE_CHARS {
            out.push('…');
        }
        out
    };
    let mut out = String::new();
    let notes: Vec<&Recalled> = found.iter().filter(|r| r.note_id().is_some()).collect();
    if !notes.is_empty() {
        out.push_str("Saved notes of this channel that may be relevant:");
        for note in notes {
            out.push_str(&format!(
                "\n#{} {}",
                note.item.item.id,
                clip(&note.item.text)
            ));
        }
    }
    let history: Vec<&Recalled> = found.iter().filter(|r| r.note_id().is_none()).collect();
    if !history.is_empty() {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str("Earlier conversation in this channel that may be relevant:");
        for passage in history {
            out.push_str(&format!(
                "\n- {}",
                clip(&passage.item.text).replace('\n', " / ")
            ));
        }
    }
    out
}

/// The system blocks: the stable prompt (marked for caching), then the notes of this turn.
pub fn system_blocks(stable: String, notes: &[Recalled]) -> Vec<SystemBlock> {
    let mut blocks = vec![SystemBlock {
        text: stable,
        cache: true,
    }];
    let notes = notes_block(notes);
    if !notes.is_empty() {
        blocks.push(SystemBlock {
            text: notes,
            cache: false,
        });
    }
    blocks
}

/// A tool call as the transcript stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredCall {
    pub id: String,
    pub name: String,
    pub input: Value,
}

/// A tool result as the transcript stores it (images are not kept, only counted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub id: String,
    pub name: String,
    pub text: String,
    pub is_error: bool,
    #[serde(default)]
    pub images: usize,
}

/// The `meta` of a `tool` transcript row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolRow {
    /// The model asked for tools (with the text it wrote alongside).
    ToolUse {
        text: String,
        calls: Vec<StoredCall>,
    },
    /// What the tools answered.
    ToolResult { results: Vec<StoredResult> },
    /// Notes saved just before a compaction (not replayed to the model).
    MemoryFlush { saved: Vec<i64> },
}

/// The summary of compacted turns, as the model reads it.
pub fn summary_message(summary: &str) -> ChatMessage {
    ChatMessage::user_text(format!(
        "[Summary of the earlier conversation; older turns were compacted]\n{summary}"
    ))
}

/// The stored text of a user row as the model should read it (`/ask x` is just `x`).
fn user_text(text: &str) -> &str {
    text.strip_prefix("/ask ").unwrap_or(text)
}

/// One stored row as a message (`None` for rows the model does not read).
pub fn row_message(row: &Message) -> Option<ChatMessage> {
    match row.role {
        Role::User => Some(ChatMessage::user_text(user_text(&row.text))),
        Role::Assistant => Some(ChatMessage::assistant_text(row.text.clone())),
        Role::Summary => Some(summary_message(&row.text)),
        Role::Tool => {
            let meta: ToolRow = serde_json::from_str(row.meta.as_deref()?).ok()?;
            match meta {
                ToolRow::ToolUse { text, calls } => {
                    let mut parts = Vec::with_capacity(calls.len() + 1);
                    if !text.trim().is_empty() {
                        parts.push(Part::Text(text));
                    }
                    parts.extend(calls.into_iter().map(|c| Part::ToolUse {
                        id: c.id,
                        name: c.name,
                        input: c.input,
                    }));
                    Some(ChatMessage {
                        role: ChatRole::Assistant,
                        parts,
                    })
                }
                ToolRow::ToolResult { results } => Some(ChatMessage {
                    role: ChatRole::User,
                    parts: results
                        .into_iter()
                        .map(|r| {
                            let mut text = r.text;
                            if r.images > 0 {
                                text.push_str(&format!(
                                    "\n[{} image(s) shown at the time, not kept]",
                                    r.images
                                ));
                            }
                            Part::ToolResult {
                                id: r.id,
                                text,
                                images: Vec::new(),
                                is_error: r.is_error,
                            }
                        })
                        .collect(),
                }),
                ToolRow::MemoryFlush { .. } => None,
            }
        }
    }
}

/// Merge neighbours with the same role (both APIs want alternating turns).
pub fn merge_roles(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for message in messages {
        if message.parts.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == message.role => last.parts.extend(message.parts),
            _ => out.push(message),
        }
    }
    out
}

/// Keep only complete tool steps: a tool use whose result follows in the next message, and a
/// result whose use precedes it. Leading assistant messages are dropped (a conversation starts
/// with the user).
pub fn pair_tools(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut messages = merge_roles(messages);
    let ids = |m: &ChatMessage, uses: bool| -> Vec<String> {
        m.parts
            .iter()
            .filter_map(|p| match p {
                Part::ToolUse { id, .. } if uses => Some(id.clone()),
                Part::ToolResult { id, .. } if !uses => Some(id.clone()),
                _ => None,
            })
            .collect()
    };
    for i in 0..messages.len() {
        let used = if messages[i].role == ChatRole::Assistant {
            ids(&messages[i], true)
        } else {
            Vec::new()
        };
        let answered = match messages.get(i + 1) {
            Some(next) if next.role == ChatRole::User => ids(next, false),
            _ => Vec::new(),
        };
        messages[i].parts.retain(|p| match p {
            Part::ToolUse { id, .. } => answered.contains(id),
            _ => true,
        });
        if let Some(next) = messages.get_mut(i + 1)
            && next.role == ChatRole::User
        {
            next.parts.retain(|p| match p {
                Part::ToolResult { id, .. } => used.contains(id),
                _ => true,
            });
        }
        if i == 0 && messages[0].role == ChatRole::User {
            messages[0]
                .parts
                .retain(|p| !matches!(p, Part::ToolResult { .. }));
        }
    }
    let mut out = merge_roles(messages);
    while out.first().is_some_and(|m| m.role == ChatRole::Assistant) {
        out.remove(0);
    }
    out
}

/// What the model reads of earlier messages' files (images still shown, documents' text,
/// transcripts, references), by message id.
pub type FileParts = std::collections::HashMap<MessageId, Vec<Part>>;

/// The transcript part of the context: the summary, then the rows after it. Rows of the
/// current event (its user message, steps of an earlier attempt) are left out.
pub fn transcript(window: &ContextMessages, current_event: EventId) -> Vec<ChatMessage> {
    transcript_with_files(window, current_event, &FileParts::new())
}

/// [`transcript`], with the parts of the files of earlier user messages after their text.
pub fn transcript_with_files(
    window: &ContextMessages,
    current_event: EventId,
    files: &FileParts,
) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(window.messages.len() + 1);
    if let Some((summary, _)) = &window.summary {
        messages.push(summary_message(&summary.text));
    }
    messages.extend(
        window
            .messages
            .iter()
            .filter(|m| m.event_id != Some(current_event))
            .filter_map(|row| {
                let mut message = row_message(row)?;
                if let Some(parts) = files.get(&row.id) {
                    message.parts.extend(parts.iter().cloned());
                }
                Some(message)
            }),
    );
    pair_tools(messages)
}

/// Rows of the current window the model reads (for compaction planning): same filter as
/// [`transcript`], with each row's estimated tokens.
pub fn row_tokens(window: &ContextMessages, current_event: EventId) -> Vec<(usize, usize)> {
    window
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.event_id != Some(current_event))
        .map(|(i, m)| (i, row_message(m).map(|m| message_tokens(&m)).unwrap_or(0)))
        .collect()
}

/// Drop the oldest turns until the transcript fits `allowance` tokens (the last resort when
/// compaction could not run; nothing is deleted, the model just sees less).
pub fn fit(messages: Vec<ChatMessage>, allowance: usize) -> Fitted {
    let sizes: Vec<usize> = messages.iter().map(message_tokens).collect();
    let before: usize = sizes.iter().sum();
    let mut tokens = before;
    let mut start = 0;
    while tokens > allowance && start < messages.len() {
        tokens -= sizes[start];
        start += 1;
    }
    let messages = if start == 0 {
        messages
    } else {
        pair_tools(messages.into_iter().skip(start).collect())
    };
    Fitted {
        messages,
        before,
        tokens,
    }
}

/// A transcript cut to its allowance.
#[derive(Debug)]
pub struct Fitted {
    pub messages: Vec<ChatMessage>,
    /// Estimated tokens of the whole transcript.
    pub before: usize,
    /// Estimated tokens of what was kept.
    pub tokens: usize,
}

/// The new message: the text, then what the model reads of the files that came with it.
pub fn new_message(prompt: &str, files: Vec<Part>) -> ChatMessage {
    let mut text = prompt.trim().to_string();
    if text.is_empty() {
        text = if files.is_empty() {
            "(empty message)".into()
        } else {
            "(the message has only the files below)".into()
        };
    }
    let mut parts = Vec::with_capacity(files.len() + 1);
    parts.push(Part::Text(text));
    parts.extend(files);
    ChatMessage {
        role: ChatRole::User,
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::{Compaction, CompactionId, UnixMs};
    use serde_json::json;

    fn row(id: i64, event: i64, role: Role, text: &str, meta: Option<Value>) -> Message {
        Message {
            id: MessageId(id),
            event_id: Some(EventId(event)),
            role,
            text: text.into(),
            meta: meta.map(|m| m.to_string()),
            attachments: Vec::new(),
            created_at: UnixMs(0),
        }
    }

    fn texts(messages: &[ChatMessage]) -> Vec<(ChatRole, String)> {
        messages
            .iter()
            .map(|m| {
                let text = m
                    .parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => t.clone(),
                        Part::ToolUse { name, .. } => format!("use:{name}"),
                        Part::ToolResult { text, .. } => format!("result:{text}"),
                        Part::Image(_) => "image".into(),
                        Part::Document(d) => format!("document:{}", d.name),
                    })
                    .collect::<Vec<_>>()
                    .join("|");
                (m.role, text)
            })
            .collect()
    }

    #[test]
    fn recall_query_keeps_specific_words() {
        assert_eq!(
            recall_query("Which staging database should I use for S3? The DB!"),
            "database staging use s3"
        );
        assert_eq!(recall_query("is it ok?"), "");
        let many = (0..30)
            .map(|i| format!("word{i:02}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(recall_query(&many).split(' ').count(), 12);
    }

    #[test]
    fn estimate_is_chars_over_four() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééééé"), 2);
    }

    #[test]
    fn transcript_replays_tool_steps_and_skips_the_current_event() {
        let use_meta = json!({"type": "tool_use", "text": "Saving.",
            "calls": [{"id": "t1", "name": "memory_save", "input": {"text": "x"}}]});
        let result_meta = json!({"type": "tool_result",
            "results": [{"id": "t1", "name": "memory_save", "text": "Saved as #1.", "is_error": false}]});
        let window = ContextMessages {
            summary: Some((
                row(1, 1, Role::Summary, "they like tea", None),
                Compaction {
                    id: CompactionId(1),
                    summary_message_id: MessageId(1),
                    first_message_id: MessageId(0),
                    last_message_id: MessageId(0),
                    message_count: 0,
                    archive_key: "k".into(),
                    created_at: UnixMs(0),
                },
            )),
            messages: vec![
                row(2, 2, Role::User, "/ask remember x", None),
                row(3, 2, Role::Tool, "memory_save", Some(use_meta)),
                row(4, 2, Role::Tool, "memory_save → Saved", Some(result_meta)),
                row(5, 2, Role::Assistant, "Done.", None),
                row(6, 3, Role::User, "now this", None),
                row(
                    7,
                    3,
                    Role::Tool,
                    "from an earlier attempt",
                    Some(json!({"type": "tool_use", "text": "", "calls": []})),
                ),
            ],
        };
        let messages = transcript(&window, EventId(3));
        assert_eq!(
            texts(&messages),
            vec![
                (
                    ChatRole::User,
                    "[Summary of the earlier conversation; older turns were compacted]\nthey like tea|remember x"
                        .to_string()
                ),
                (ChatRole::Assistant, "Saving.|use:memory_save".into()),
                (ChatRole::User, "result:Saved as #1.".into()),
                (ChatRole::Assistant, "Done.".into()),
            ]
        );
    }

    #[test]
    fn half_finished_tool_steps_are_left_out() {
        let use_meta = json!({"type": "tool_use", "text": "",
            "calls": [{"id": "t9", "name": "memory_search", "input": {}}]});
        let window = ContextMessages {
            summary: None,
            messages: vec![
                row(1, 1, Role::Assistant, "hello first", None),
                row(2, 1, Role::User, "question", None),
                row(3, 1, Role::Tool, "", Some(use_meta)),
                row(4, 2, Role::User, "next", None),
                row(
                    5,
                    2,
                    Role::Tool,
                    "",
                    Some(json!({"type": "memory_flush", "saved": [1]})),
                ),
            ],
        };
        assert_eq!(
            texts(&transcript(&window, EventId(99))),
            vec![(ChatRole::User, "question|next".to_string())]
        );
    }

    #[tokio::test]
    async fn system_prompt_is_stable_and_names_place_and_tools() {
        let c = ConversationRef::new("slack", "T1", "C42", Some("1700.1".into()));
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let mut tools = ToolRegistry::new();
        crate::agent::memory_tools::register(
            &mut tools,
            store,
            crate::engine::profile::Profiles::default(),
        );
        let a = system_prompt(&c, &tools, None);
        assert_eq!(a, system_prompt(&c, &tools, None));
        let b = system_prompt(&c, &tools, Some("Answer in French."));
        assert!(b.starts_with(&a) && b.ends_with("Answer in French."), "{b}");
        assert!(a.contains("slack") && a.contains("C42") && a.contains("thread 1700.1"));
        assert!(a.contains("memory_search, memory_save, memory_forget"));
        let budget = estimate_tokens(&a) + tools_tokens(&tool_defs(&tools));
        assert!(budget < 2_000, "{budget}");
    }

    #[test]
    fn fit_drops_oldest_first() {
        let messages: Vec<ChatMessage> = (0..10)
            .flat_map(|i| {
                [
                    ChatMessage::user_text(format!("q{i} {}", "x".repeat(400))),
                    ChatMessage::assistant_text(format!("a{i}")),
                ]
            })
            .collect();
        let fitted = fit(messages, 350);
        assert!(fitted.before > 1_000);
        assert!(fitted.tokens <= 350);
        let kept = fitted.messages;
        assert!(kept.iter().map(message_tokens).sum::<usize>() <= 350);
        assert_eq!(kept.first().unwrap().role, ChatRole::User);
        assert!(texts(&kept).last().unwrap().1 == "a9");
    }
}
