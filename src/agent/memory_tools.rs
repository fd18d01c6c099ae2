//! The memory tools (`memory_search`, `memory_save`, `memory_forget`): the model's access to
//! the channel's notes. Every call is scoped to the channel of the conversation it runs for, or
//! to its profile's shared notes (`memory = "profile"`, see [`crate::engine::profile`]).
//! `memory_search` ranks by full text and, with embeddings on, by meaning too (and then also
//! searches the channel's compacted history).

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::embeddings::MemorySearch as Search;
use crate::engine::commands::MAX_NOTE_CHARS;
use crate::engine::profile::Profiles;
use crate::engine::tools::{
    Tool, ToolContext, ToolError, ToolOutput, ToolRegistry, arguments, input_schema_of, item_number,
};
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

/// `value` trimmed; an error naming `field` when nothing is left.
fn non_empty<'a>(field: &str, value: &'a str) -> Result<&'a str, ToolError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ToolError::InvalidInput(format!(
            "`{field}` (a non-empty string) is required"
        )));
    }
    Ok(value)
}

/// A note's number as the model writes it (see [`item_number`]).
fn note_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    item_number(&Value::deserialize(deserializer)?)
        .ok_or_else(|| D::Error::custom("`id` (a note number) is required"))
}

fn store_error(e: crate::storage::store::StoreError) -> ToolError {
    ToolError::Failed(format!("the memory store failed: {e}"))
}

/// What the model passes to `memory_search`.
#[derive(Deserialize, JsonSchema)]
struct SearchArgs {
    query: String,
}

/// What the model passes to `memory_save`.
#[derive(Deserialize, JsonSchema)]
struct SaveArgs {
    text: String,
}

/// What the model passes to `memory_forget`.
#[derive(Deserialize, JsonSchema)]
struct ForgetArgs {
    #[serde(deserialize_with = "note_number")]
    id: i64,
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
        input_schema_of::<SearchArgs>()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let args: SearchArgs = arguments(input)?;
        let query = non_empty("query", &args.query)?;
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
        input_schema_of::<SaveArgs>()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let args: SaveArgs = arguments(input)?;
        let text = non_empty("text", &args.text)?;
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
        input_schema_of::<ForgetArgs>()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let ForgetArgs { id } = arguments(input)?;
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
    use serde_json::json;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn inputs_are_checked() {
        let query = |input| {
            let args: SearchArgs = arguments(input)?;
            non_empty("query", &args.query).map(str::to_string)
        };
        assert!(query(json!({"query": "  "})).is_err());
        assert!(query(json!({"query": 3})).is_err());
        assert!(query(json!({})).is_err());
        assert_eq!(query(json!({"query": " sky "})).unwrap(), "sky");

        let id = |input| arguments::<ForgetArgs>(input).map(|a| a.id);
        assert_eq!(id(json!({"id": 12})).unwrap(), 12);
        assert_eq!(id(json!({"id": " #12 "})).unwrap(), 12);
        assert_eq!(id(json!({"id": "12"})).unwrap(), 12);
        for bad in [json!({"id": "twelve"}), json!({"id": 1.5}), json!({})] {
            assert!(id(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn schemas_are_what_the_model_read_before() {
        for (schema, field, kind) in [
            (input_schema_of::<SearchArgs>(), "query", "string"),
            (input_schema_of::<SaveArgs>(), "text", "string"),
            (input_schema_of::<ForgetArgs>(), "id", "integer"),
        ] {
            assert_eq!(schema["type"], "object");
            assert_eq!(schema["required"], json!([field]));
            assert_eq!(schema["properties"][field]["type"], kind);
            assert!(schema.get("additionalProperties").is_none(), "{schema}");
        }
    }
}
