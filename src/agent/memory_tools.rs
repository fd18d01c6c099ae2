//! The memory tools (`memory_search`, `memory_save`, `memory_forget`): the model's access to
//! the channel's notes. Every call is scoped to the channel of the conversation it runs for, or
//! to its profile's shared notes (`memory = "profile"`, see [`crate::engine::profile`]).
//! `memory_search` ranks by full text and, with embeddings on, by meaning too (and then also
//! searches the channel's compacted history).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::embeddings::MemorySearch as Search;
use crate::engine::commands::MAX_NOTE_CHARS;
use crate::engine::profile::Profiles;
use crate::engine::tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};
use crate::storage::store::{ItemSource, NewNote, NoteId, Store};

const SEARCH_LIMIT: usize = 10;

/// Register the three memory tools (search by full text only); `profiles` decides whose notes
/// a conversation uses.
pub fn register(registry: &mut ToolRegistry, store: Arc<dyn Store>, profiles: Profiles) {
    register_with(registry, store.clone(), Search::full_text(store), profiles);
}

/// Register the three memory tools, searching with `search`.
pub fn register_with(
    registry: &mut ToolRegistry,
    store: Arc<dyn Store>,
    search: Search,
    profiles: Profiles,
) {
    registry.register(Arc::new(MemorySearch {
        search: search.clone(),
        profiles: profiles.clone(),
    }));
    registry.register(Arc::new(MemorySave {
        store: store.clone(),
        search,
        profiles: profiles.clone(),
    }));
    registry.register(Arc::new(MemoryForget { store, profiles }));
}

fn string_field<'a>(input: &'a Value, field: &str) -> Result<&'a str, ToolError> {
    input
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ToolError::InvalidInput(format!("`{field}` (a non-empty string) is required"))
        })
}

fn store_error(e: crate::storage::store::StoreError) -> ToolError {
    ToolError::Failed(format!("the memory store failed: {e}"))
}

/// Search over the channel's notes (and compacted history, with embeddings on).
pub struct MemorySearch {
    search: Search,
    profiles: Profiles,
}

#[async_trait]
impl Tool for MemorySearch {
    fn name(&self) -> &'static str {
        "memory_search"
    }

    fn description(&self) -> &'static str {
        "Search this channel's saved notes (and, when semantic memory is on, its earlier compacted conversation) by words and meaning."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": { "query": { "type": "string" } },
            "required": ["query"],
        })
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let query = string_field(&input, "query")?;
        let found = self
            .search
            .search(
                &self.profiles.memory_channel(&context.conversation),
                query,
                SEARCH_LIMIT,
            )
            .await
            .map_err(store_error)?;
        if found.is_empty() {
            return Ok(ToolOutput::text(format!("No note matches “{query}”.")));
        }
        let mut out = String::new();
        for hit in found {
            match &hit.item.source {
                ItemSource::Note { .. } => {
                    out.push_str(&format!("#{} {}\n", hit.item.item.id, hit.item.text))
                }
                ItemSource::Summary => out.push_str(&format!(
                    "(summary of earlier conversation) {}\n",
                    hit.item.text
                )),
                ItemSource::Transcript => {
                    out.push_str(&format!("(earlier conversation) {}\n", hit.item.text))
                }
            }
        }
        Ok(ToolOutput::text(out.trim_end()))
    }
}

/// Save a note for the channel.
pub struct MemorySave {
    store: Arc<dyn Store>,
    search: Search,
    profiles: Profiles,
}

#[async_trait]
impl Tool for MemorySave {
    fn name(&self) -> &'static str {
        "memory_save"
    }

    fn description(&self) -> &'static str {
        "Save a durable note for this channel (a fact, decision or preference worth remembering)."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": { "text": { "type": "string" } },
            "required": ["text"],
        })
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let text = string_field(&input, "text")?;
        let chars = text.chars().count();
        if chars > MAX_NOTE_CHARS {
            return Err(ToolError::InvalidInput(format!(
                "the note has {chars} characters; the limit is {MAX_NOTE_CHARS}"
            )));
        }
        // An event can run again after a crash: the same note from the same step is stored once.
        let source = format!(
            "agent:{}:{}:{:016x}",
            context.event_id,
            context.step,
            fnv1a(text.as_bytes())
        );
        let id = self
            .store
            .remember(&NewNote {
                channel: self.profiles.memory_channel(&context.conversation),
                text: text.to_string(),
                created_by: context.user_id.clone(),
                source: Some(source),
            })
            .await
            .map_err(store_error)?;
        self.search.note_written();
        Ok(ToolOutput::text(format!("Saved as #{id}.")))
    }
}

/// Delete one of the channel's notes.
pub struct MemoryForget {
    store: Arc<dyn Store>,
    profiles: Profiles,
}

#[async_trait]
impl Tool for MemoryForget {
    fn name(&self) -> &'static str {
        "memory_forget"
    }

    fn description(&self) -> &'static str {
        "Delete one of this channel's notes by its number."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": { "id": { "type": "integer" } },
            "required": ["id"],
        })
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let id = match input.get("id") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().trim_start_matches('#').parse().ok(),
            _ => None,
        }
        .ok_or_else(|| ToolError::InvalidInput("`id` (a note number) is required".into()))?;
        let deleted = self
            .store
            .forget(
                &self.profiles.memory_channel(&context.conversation),
                NoteId(id),
            )
            .await
            .map_err(store_error)?;
        Ok(ToolOutput::text(if deleted {
            format!("Deleted #{id}.")
        } else {
            format!("This channel has no note #{id}; nothing was deleted.")
        }))
    }
}

/// A stable 64-bit hash (FNV-1a) for idempotency keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn inputs_are_checked() {
        assert!(string_field(&json!({"query": "  "}), "query").is_err());
        assert!(string_field(&json!({"query": 3}), "query").is_err());
        assert_eq!(
            string_field(&json!({"query": " sky "}), "query").unwrap(),
            "sky"
        );
    }
}
