//! Tools the model can call, and the registry the agent reads their definitions from.
//!
//! Adding a tool is one module: implement [`Tool`] and register it in `App::open_with` (and add
//! its name to [`BUILTIN_TOOLS`], which profiles are checked against). Tools that come and go
//! while the server runs (MCP servers' tools) come from a [`ToolSource`] instead.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ecdysis_chat::{Attachment, ConversationRef};

/// The memory tools, always offered.
pub const MEMORY_TOOLS: &[&str] = &["memory_search", "memory_save", "memory_forget"];
/// The tools a profile's `sandbox = false` removes.
pub const SANDBOX_TOOLS: &[&str] = &["run_command"];
/// The tools a profile's `browser = false` removes.
pub const BROWSER_TOOLS: &[&str] = &[
    "browser_open",
    "browser_snapshot",
    "browser_click",
    "browser_type",
    "browser_select",
    "browser_scroll",
    "browser_back",
    "browser_wait",
    "browser_screenshot",
    "browser_record",
    "fetch_url",
];

/// Other built-in tools (on when configured).
pub const OTHER_TOOLS: &[&str] = &[
    "web_search",
    "schedule_create",
    "schedule_list",
    "schedule_cancel",
];

/// Every built-in tool name a profile's `tools` may list.
pub fn builtin_tools() -> impl Iterator<Item = &'static str> {
    MEMORY_TOOLS
        .iter()
        .chain(SANDBOX_TOOLS)
        .chain(BROWSER_TOOLS)
        .chain(OTHER_TOOLS)
        .copied()
}

/// Who and where a tool call runs for.
#[derive(Clone, Debug)]
pub struct ToolContext {
    pub event_id: i64,
    /// The step of the agent loop (1-based), so side effects can be made idempotent per step.
    pub step: usize,
    pub conversation: ConversationRef,
    pub user_id: String,
    /// The adapter's route of the event (see `ecdysis_chat::Event::route`), for tools that post
    /// into the conversation while they run (approval prompts).
    pub route: serde_json::Value,
    /// Posts there at once (approval prompts).
    pub poster: crate::bus::Poster,
}

/// An image handed back to the model (where the provider accepts image input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolImage {
    pub mime: String,
    pub bytes: Bytes,
}

/// What a tool returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolOutput {
    /// What the model reads.
    pub text: String,
    /// Images the model sees.
    pub images: Vec<ToolImage>,
    /// Files that go into the thread with the final reply.
    pub attachments: Vec<Attachment>,
}

impl ToolOutput {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}

/// Why a tool call failed; the message goes back to the model as an error result.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("{0}")]
    Failed(String),
}

/// The JSON schema of a tool's input, derived from the struct its arguments are read into
/// (the fields' doc comments are their descriptions; `Option` fields are not required), with
/// nested types inlined and without the `$schema`/`title` keys providers do not take.
pub fn input_schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
        // The struct's own doc comment: the tool's description already says what it is.
        object.remove("description");
    }
    tidy(&mut schema);
    schema
}

/// An item's number (a note's, a job's) as the model writes it: `12`, or the text `"12"` or
/// `"#12"` (as the listings show it). `None` for anything else.
pub fn item_number(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().trim_start_matches('#').parse().ok(),
        _ => None,
    }
}

/// Formats schemars gives Rust's number types; the model needs only `type` and the limits.
const NUMBER_FORMATS: &[&str] = &[
    "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64",
    "float", "double",
];

/// Take out of a derived schema what only costs the model tokens or misleads it: `null` as a
/// type or enum value of `Option` fields (leaving one out means the same, and a `null` among
/// an enum's values reads as one more choice) and number formats (`uint64`).
fn tidy(schema: &mut serde_json::Value) {
    use serde_json::Value;
    match schema {
        Value::Object(object) => {
            if object
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| NUMBER_FORMATS.contains(&f))
            {
                object.remove("format");
            }
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_mut_slice() {
                    let only = only.take();
                    object.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(values)) = object.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            object.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// A tool's arguments read from the model's input into their struct: a wrong or missing field
/// is an [`ToolError::InvalidInput`] that says which (the model reads it and tries again).
pub fn arguments<T: serde::de::DeserializeOwned>(input: serde_json::Value) -> Result<T, ToolError> {
    serde_json::from_value(input).map_err(|e| ToolError::InvalidInput(e.to_string()))
}

/// One tool.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The name the model calls it by (`memory_search`, `run_command`, `time__get_current_time`).
    fn name(&self) -> &str;
    /// One or two sentences for the model.
    fn description(&self) -> &str;
    /// JSON Schema of the input object.
    fn input_schema(&self) -> serde_json::Value;
    async fn call(
        &self,
        context: &ToolContext,
        input: serde_json::Value,
    ) -> Result<ToolOutput, ToolError>;
}

/// A tool from a [`ToolSource`], with the group it belongs to (the MCP server's name).
#[derive(Clone)]
pub struct SourcedTool {
    pub group: String,
    pub tool: Arc<dyn Tool>,
}

/// Tools that change while the server runs (an MCP server lists new ones, restarts, goes down):
/// read again for every turn.
pub trait ToolSource: Send + Sync + 'static {
    /// The tools offered in `conversation` now, in a stable order.
    fn tools_for(&self, conversation: &ConversationRef) -> Vec<SourcedTool>;
}

/// The tools offered to the model, in a stable order (the prompt prefix must not change turn to
/// turn, or prompt caching breaks), and the sources of tools that come and go.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Vec<Arc<dyn Tool>>,
    sources: Vec<Arc<dyn ToolSource>>,
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a tool; a later tool with the same name replaces the earlier one.
    pub fn register(&mut self, tool: Arc<dyn Tool>) {
        self.tools.retain(|t| t.name() != tool.name());
        self.tools.push(tool);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.iter().find(|t| t.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Tool>> {
        self.tools.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Add a source of tools that come and go (read per turn, after the registered tools).
    pub fn add_source(&mut self, source: Arc<dyn ToolSource>) {
        self.sources.push(source);
    }

    pub fn sources(&self) -> &[Arc<dyn ToolSource>] {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An example of a tool's arguments.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through serde in the test
    struct Example {
        /// Where to go.
        url: String,
        /// How many, at most.
        #[schemars(range(min = 1, max = 10))]
        limit: Option<u32>,
        kind: Kind,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Post,
        Agent,
    }

    #[test]
    fn argument_structs_give_the_schema_and_read_the_input() {
        let schema = input_schema_of::<Example>();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], serde_json::json!(["url", "kind"]));
        assert_eq!(schema["properties"]["url"]["description"], "Where to go.");
        assert_eq!(schema["properties"]["limit"]["maximum"], 10);
        assert_eq!(
            schema["properties"]["limit"]["type"], "integer",
            "no `null` type nor number format for an optional number: {schema}"
        );
        assert!(schema["properties"]["limit"].get("format").is_none());
        assert_eq!(
            schema["properties"]["kind"]["enum"],
            serde_json::json!(["post", "agent"])
        );
        for key in ["$schema", "title", "description"] {
            assert!(schema.get(key).is_none(), "{key} in {schema}");
        }
        assert!(
            schema.get("$defs").is_none(),
            "nested types are inlined: {schema}"
        );

        let ok: Example =
            arguments(serde_json::json!({ "url": "https://a.example", "kind": "agent" })).unwrap();
        assert!(matches!(ok.kind, Kind::Agent) && ok.limit.is_none());
        for bad in [
            serde_json::json!({ "kind": "post" }),
            serde_json::json!({ "url": "u", "kind": "other" }),
            serde_json::json!({ "url": "u", "kind": "post", "extra": 1 }),
        ] {
            let e = arguments::<Example>(bad.clone()).err().unwrap();
            assert!(matches!(e, ToolError::InvalidInput(_)), "{bad}: {e}");
        }
    }
}
