//! The model's scheduling tools: `schedule_create`, `schedule_list` and `schedule_cancel`, so
//! "remind me tomorrow morning to …" works through the agent. They read the same phrases as
//! `/remind`, in the asking user's time zone, and act on the conversation's channel only.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::when::{self, PHRASES};
use super::{JobRequest, Scheduler};
use crate::engine::tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};
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
        json!({
            "type": "object",
            "properties": {
                "when": {
                    "type": "string",
                    "description": format!("When it runs, one of: {PHRASES}"),
                },
                "text": { "type": "string", "description": "What to post, or the prompt" },
                "kind": { "type": "string", "enum": ["post", "agent"] },
            },
            "required": ["when", "text"],
        })
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let field = |name: &str| {
            input
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let when_text =
            field("when").ok_or_else(|| ToolError::InvalidInput("`when` is required".into()))?;
        let text = field("text")
            .ok_or_else(|| ToolError::InvalidInput("`text` is required".into()))?
            .to_string();
        let kind = match field("kind") {
            None | Some("post") => JobKind::Post,
            Some("agent") => JobKind::Agent,
            Some(other) => {
                return Err(ToolError::InvalidInput(format!(
                    "`kind` is `post` or `agent`, not `{other}`"
                )));
            }
        };
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
            kind,
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
        json!({ "type": "object", "properties": {} })
    }

    async fn call(&self, context: &ToolContext, _input: Value) -> Result<ToolOutput, ToolError> {
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
        json!({
            "type": "object",
            "properties": { "id": { "type": "integer" } },
            "required": ["id"],
        })
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let id = input
            .get("id")
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str()?.trim().trim_start_matches('#').parse().ok())
            })
            .ok_or_else(|| ToolError::InvalidInput("`id` (a job number) is required".into()))?;
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
