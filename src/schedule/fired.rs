//! What a fired job does when the bus hands its event to the command handler: post the text,
//! run the prompt through the agent (a heartbeat that finds nothing to report posts nothing),
//! or post the note of a skipped run. A job cancelled after its event was queued posts nothing.

use jiff::tz::TimeZone;

use super::spec::{self, show_instant};
use super::{Fired, FiredAction, NOTHING_TO_REPORT};
use crate::bus::{EventContext, Outgoing};
use crate::engine::commands::Agent;
use crate::storage::store::{JobStatus, Store};

/// The replies of a fired job's event.
pub async fn handle(
    store: &dyn Store,
    agent: Option<&dyn Agent>,
    event: &EventContext,
    fired: &Fired,
) -> anyhow::Result<Vec<Outgoing>> {
    let job = store.schedule(fired.job).await?;
    if job
        .as_ref()
        .is_some_and(|j| j.status == JobStatus::Cancelled)
    {
        tracing::info!(job = %fired.job, "the job was cancelled before it ran; nothing posted");
        return Ok(Vec::new());
    }
    match fired.action {
        FiredAction::Post => Ok(vec![Outgoing::text(format!("⏰ {}", event.payload.text))]),
        FiredAction::Skipped => Ok(vec![Outgoing::text(event.payload.text.clone())]),
        FiredAction::Agent => {
            let Some(agent) = agent else {
                return Ok(vec![Outgoing::text(format!(
                    "⏰ Job #{} could not run its prompt: no language model is configured.",
                    fired.job
                ))]);
            };
            let (description, tz) = match &job {
                Some(job) => (
                    job.description.clone(),
                    spec::time_zone(&job.timezone).unwrap_or(TimeZone::UTC),
                ),
                None => (String::new(), TimeZone::UTC),
            };
            let prompt = heartbeat_prompt(
                fired,
                &description,
                &show_instant(fired.due, &tz),
                &event.payload.text,
            );
            let answer = agent.answer(event, &prompt).await?;
            if nothing_to_report(&answer) {
                tracing::info!(job = %fired.job, "the heartbeat had nothing to report");
                return Ok(Vec::new());
            }
            Ok(answer)
        }
    }
}

/// The prompt a scheduled agent job runs: the user's prompt, and how to say "nothing new".
fn heartbeat_prompt(fired: &Fired, description: &str, due: &str, prompt: &str) -> String {
    let schedule = if description.is_empty() {
        String::new()
    } else {
        format!(", {description}")
    };
    format!(
        "(Scheduled job #{job}{schedule}, due {due}. Nobody is waiting for an answer right now: \
         what you answer is posted into this conversation. If there is nothing worth telling, \
         answer exactly {NOTHING_TO_REPORT} and nothing else, and nothing is posted.)\n\n{prompt}",
        job = fired.job,
    )
}

/// Whether an answer is only the "nothing to report" sentinel (markup and punctuation aside).
fn nothing_to_report(answer: &[Outgoing]) -> bool {
    let [only] = answer else {
        return answer.is_empty();
    };
    only.attachments.is_empty()
        && only
            .text
            .trim()
            .trim_matches(|c: char| c == '`' || c == '*' || c == '_' || c == '.' || c == '"')
            .trim()
            == NOTHING_TO_REPORT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinel_is_recognised_alone() {
        assert!(nothing_to_report(&[Outgoing::text("NOTHING_TO_REPORT")]));
        assert!(nothing_to_report(&[Outgoing::text(
            " `NOTHING_TO_REPORT`.\n"
        )]));
        assert!(!nothing_to_report(&[Outgoing::text(
            "Build failed. NOTHING_TO_REPORT otherwise"
        )]));
        assert!(!nothing_to_report(&[Outgoing::text("All green")]));
    }
}
