//! The model's scheduling tools: `schedule_create`, `schedule_list` and `schedule_cancel`, so
//! "remind me tomorrow morning to …" works through the agent. They read the same phrases as
//! `/remind`, in the asking user's time zone, and act on the conversation's channel only.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::when::{self, PHRASES};
use super::{JobRequest, Scheduler};
use crate::engine::tools::{
    Tool, ToolContext, ToolError, ToolOutput, ToolRegistry, arguments, input_schema_of, item_number,
};
use crate::storage::store::{JobKind, ScheduleId};

/// Register the three tools.
pub fn register(registry: &mut ToolRegistry, scheduler: &Arc<Scheduler>) {
    registry.register(Arc::new(ScheduleCreate(scheduler.clone())));
    registry.register(Arc::new(ScheduleList(scheduler.clone())));
    registry.register(Arc::new(ScheduleCancel(scheduler.clone())));
}

fn store_error(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(format!("the schedule store failed: {e}"))
}

/// `value` trimmed; `{field} is required` when nothing is left.
fn non_empty<'a>(field: &str, value: &'a str) -> Result<&'a str, ToolError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ToolError::InvalidInput(format!("`{field}` is required")));
    }
    Ok(value)
}

/// What the model passes to `schedule_create`.
#[derive(Deserialize, JsonSchema)]
struct CreateArgs {
    #[schemars(description = format!("When it runs, one of: {PHRASES}"))]
    when: String,
    /// What to post, or the prompt
    text: String,
    #[serde(default)]
    kind: Kind,
}

/// What a job does when it runs: `post` posts the text as it is, `agent` runs it as a prompt.
#[derive(Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    Post,
    Agent,
}

impl From<Kind> for JobKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Post => JobKind::Post,
            Kind::Agent => JobKind::Agent,
        }
    }
}

/// What the model passes to `schedule_list`: nothing.
#[derive(Deserialize, JsonSchema)]
#[schemars(extend("properties" = {}))]
struct ListArgs {}

/// What the model passes to `schedule_cancel`.
#[derive(Deserialize, JsonSchema)]
struct CancelArgs {
    #[serde(deserialize_with = "job_number")]
    id: i64,
}

/// A job's number as the model writes it (see [`item_number`]).
fn job_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    item_number(&Value::deserialize(deserializer)?)
        .ok_or_else(|| serde::de::Error::custom("`id` (a job number) is required"))
}

/// Create a reminder, recurring post or heartbeat prompt in this conversation.
pub struct ScheduleCreate(Arc<Scheduler>);

#[async_trait]
impl Tool for ScheduleCreate {
    fn name(&self) -> &str {
        "schedule_create"
    }

    fn description(&self) -> &str {
        "Schedule a message in this conversation: a reminder (kind `post`: the text is posted as it is) or a prompt you run then (kind `agent`: answer NOTHING_TO_REPORT then to post nothing). `when` is one of the user's phrases, read in their time zone."
    }

    fn input_schema(&self) -> Value {
        input_schema_of::<CreateArgs>()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let args: CreateArgs = arguments(input)?;
        let when_text = non_empty("when", &args.when)?;
        let text = non_empty("text", &args.text)?.to_string();
        let (timezone, tz) = self
            .0
            .timezone_for(&context.conversation, &context.user_id, &context.route)
            .await;
        let when = when::parse_only(when_text, self.0.now(), &tz)
            .map_err(|e| ToolError::InvalidInput(e.to_string()))?;
        let request = JobRequest {
            conversation: &context.conversation,
            user_id: &context.user_id,
            route: &context.route,
            kind: args.kind.into(),
            text,
            when,
            timezone,
        };
        let job = self
            .0
            .create(request)
            .await
            .map_err(|e| ToolError::InvalidInput(e.to_string()))?;
        Ok(ToolOutput::text(Scheduler::confirmation(&job)))
    }
}

/// List this channel's scheduled jobs.
pub struct ScheduleList(Arc<Scheduler>);

#[async_trait]
impl Tool for ScheduleList {
    fn name(&self) -> &str {
        "schedule_list"
    }

    fn description(&self) -> &str {
        "List this channel's scheduled jobs with their ids and next run times."
    }

    fn input_schema(&self) -> Value {
        input_schema_of::<ListArgs>()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let ListArgs {} = arguments(input)?;
        let jobs = self
            .0
            .channel_jobs(&context.conversation.channel_ref())
            .await
            .map_err(store_error)?;
        if jobs.is_empty() {
            return Ok(ToolOutput::text("This channel has no scheduled jobs."));
        }
        let lines: Vec<String> = jobs.iter().map(Scheduler::describe).collect();
        Ok(ToolOutput::text(lines.join("\n")))
    }
}

/// Cancel one of this channel's jobs.
pub struct ScheduleCancel(Arc<Scheduler>);

#[async_trait]
impl Tool for ScheduleCancel {
    fn name(&self) -> &str {
        "schedule_cancel"
    }

    fn description(&self) -> &str {
        "Cancel a scheduled job of this channel by its id (as schedule_list shows it)."
    }

    fn input_schema(&self) -> Value {
        input_schema_of::<CancelArgs>()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let CancelArgs { id } = arguments(input)?;
        let cancelled = self
            .0
            .cancel(ScheduleId(id), Some(&context.conversation.channel_ref()))
            .await
            .map_err(store_error)?;
        if cancelled {
            Ok(ToolOutput::text(format!("Cancelled job #{id}.")))
        } else {
            Err(ToolError::InvalidInput(format!(
                "this channel has no active job #{id}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_are_what_the_model_read_before() {
        let create = input_schema_of::<CreateArgs>();
        assert_eq!(create["required"], json!(["when", "text"]));
        assert_eq!(
            create["properties"]["when"]["description"],
            format!("When it runs, one of: {PHRASES}")
        );
        assert_eq!(
            create["properties"]["text"]["description"],
            "What to post, or the prompt"
        );
        assert_eq!(
            create["properties"]["kind"]["enum"],
            json!(["post", "agent"])
        );
        let list = input_schema_of::<ListArgs>();
        assert_eq!(
            (&list["type"], &list["properties"]),
            (&json!("object"), &json!({}))
        );
        let cancel = input_schema_of::<CancelArgs>();
        assert_eq!(cancel["required"], json!(["id"]));
        assert_eq!(cancel["properties"]["id"]["type"], "integer");
        for schema in [create, cancel] {
            assert!(schema.get("additionalProperties").is_none(), "{schema}");
        }
    }

    #[test]
    fn arguments_are_read_as_before() {
        let create = |input| arguments::<CreateArgs>(input).map(|a| JobKind::from(a.kind));
        assert!(matches!(
            create(json!({ "when": "in 5 minutes", "text": "tea" })),
            Ok(JobKind::Post)
        ));
        assert!(matches!(
            create(json!({ "when": "in 5 minutes", "text": "tea", "kind": "agent" })),
            Ok(JobKind::Agent)
        ));
        let e = create(json!({ "when": "in 5 minutes", "text": "tea", "kind": "shout" }))
            .err()
            .unwrap();
        assert!(e.to_string().contains("`post` or `agent`"), "{e}");
        let blank = arguments::<CreateArgs>(json!({ "when": " ", "text": "tea" })).unwrap();
        let e = non_empty("when", &blank.when).err().unwrap();
        assert!(e.to_string().contains("`when` is required"), "{e}");

        let id = |input| arguments::<CancelArgs>(input).map(|a| a.id);
        assert_eq!(id(json!({ "id": 7 })).unwrap(), 7);
        assert_eq!(id(json!({ "id": "#7" })).unwrap(), 7);
        let e = id(json!({ "id": "seven" })).err().unwrap();
        assert!(e.to_string().contains("a job number"), "{e}");
        assert!(arguments::<ListArgs>(json!({})).is_ok());
    }
}
