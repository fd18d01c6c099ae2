//! The interactive browser as model tools: `browser_open`, `browser_snapshot`,
//! `browser_click`, `browser_type`, `browser_select`, `browser_scroll`, `browser_back` and
//! `browser_wait`, all working on the conversation's [`Session`] (its own tab in the channel's
//! browser context). The session's page is also what `browser_screenshot` and
//! `browser_record` show when they are given no URL (see [`super::tools`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::actions::{Action, MAX_WAIT, Outcome};
use super::frames::{self, SessionVideo};
use super::session::{Session, SessionGuard, Sessions, session_key};
use super::{BrowserError, channel_key};
use crate::engine::tools::{Tool, ToolContext, ToolError, ToolOutput};

/// Map a browser error to a tool error the model can act on.
pub(crate) fn tool_error(e: BrowserError) -> ToolError {
    match e {
        BrowserError::BadRequest(_) | BrowserError::Refused(_) => {
            ToolError::InvalidInput(e.to_string())
        }
        other => ToolError::Failed(other.to_string()),
    }
}

const NO_PAGE: &str = "no page is open in this conversation; call browser_open with a URL first";

/// Which interactive tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    Snapshot,
    Click,
    Type,
    Select,
    Scroll,
    Back,
    Wait,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Open,
        Kind::Snapshot,
        Kind::Click,
        Kind::Type,
        Kind::Select,
        Kind::Scroll,
        Kind::Back,
        Kind::Wait,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Open => "browser_open",
            Kind::Snapshot => "browser_snapshot",
            Kind::Click => "browser_click",
            Kind::Type => "browser_type",
            Kind::Select => "browser_select",
            Kind::Scroll => "browser_scroll",
            Kind::Back => "browser_back",
            Kind::Wait => "browser_wait",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Snapshot => "snapshot",
            Kind::Click => "click",
            Kind::Type => "type",
            Kind::Select => "select",
            Kind::Scroll => "scroll",
            Kind::Back => "back",
            Kind::Wait => "wait",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Kind::Open => {
                "Open a URL in this conversation's browser tab (kept open between calls, with this channel's cookies and logins). Returns a text snapshot of the page: headings, text, and interactive elements numbered like [12] for the other browser_* tools."
            }
            Kind::Snapshot => {
                "A fresh text snapshot of the open page, with numbered references [n] to links, buttons and fields."
            }
            Kind::Click => {
                "Click element [ref] of the last snapshot; waits for the page to settle and returns the new snapshot."
            }
            Kind::Type => {
                "Replace the text of field [ref] with `text` (submit: press Enter afterwards); returns the new snapshot."
            }
            Kind::Select => "Choose an option (by value or visible text) in the <select> [ref].",
            Kind::Scroll => "Scroll the page (direction) or bring element [ref] into view.",
            Kind::Back => "Go back to the previous page of this tab.",
            Kind::Wait => {
                "Wait until `text` appears on the page or a CSS `selector` matches (default 5 s)."
            }
        }
    }

    fn schema(self) -> Value {
        let reference = json!({ "type": "integer", "minimum": 1, "description": "the [n] of the last snapshot" });
        let (properties, required): (Value, Vec<&str>) = match self {
            Kind::Open => (
                json!({ "url": { "type": "string", "description": "http:// or https:// URL" } }),
                vec!["url"],
            ),
            Kind::Snapshot => (
                json!({ "max_tokens": { "type": "integer", "minimum": 200, "maximum": 20000, "description": "longest snapshot (default from the settings)" } }),
                vec![],
            ),
            Kind::Click => (json!({ "ref": reference }), vec!["ref"]),
            Kind::Type => (
                json!({
                    "ref": reference,
                    "text": { "type": "string" },
                    "submit": { "type": "boolean", "description": "press Enter after typing" }
                }),
                vec!["ref", "text"],
            ),
            Kind::Select => (
                json!({ "ref": reference, "value": { "type": "string", "description": "option value or visible text" } }),
                vec!["ref", "value"],
            ),
            Kind::Scroll => (
                json!({
                    "direction": { "type": "string", "enum": ["up", "down", "left", "right", "top", "bottom"] },
                    "ref": reference
                }),
                vec![],
            ),
            Kind::Back => (json!({}), vec![]),
            Kind::Wait => (
                json!({
                    "text": { "type": "string" },
                    "selector": { "type": "string", "description": "CSS selector" },
                    "timeout_seconds": { "type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT.as_secs() }
                }),
                vec![],
            ),
        };
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false
        })
    }
}

/// One interactive tool.
pub struct ActionTool {
    kind: Kind,
    sessions: Arc<Sessions>,
}

impl ActionTool {
    pub fn new(kind: Kind, sessions: Arc<Sessions>) -> Self {
        Self { kind, sessions }
    }
}

/// Every interactive tool, in the order the model is offered them.
pub fn all(sessions: &Arc<Sessions>) -> Vec<Arc<dyn Tool>> {
    Kind::ALL
        .iter()
        .map(|kind| Arc::new(ActionTool::new(*kind, sessions.clone())) as Arc<dyn Tool>)
        .collect()
}

fn parse_action(action: &str, input: Value) -> Result<Action, ToolError> {
    let mut object = match input {
        Value::Object(object) => object,
        Value::Null => serde_json::Map::new(),
        _ => {
            return Err(ToolError::InvalidInput(
                "the input must be an object".into(),
            ));
        }
    };
    if object.contains_key("action") {
        return Err(ToolError::InvalidInput("unknown field `action`".into()));
    }
    object.insert("action".into(), Value::String(action.into()));
    serde_json::from_value(Value::Object(object))
        .map_err(|e| ToolError::InvalidInput(e.to_string()))
}

/// Run `action` in the conversation's session, opening one for `open`; a session whose
/// browser went away is closed (and, for `open`, started again once).
pub async fn run(
    sessions: &Sessions,
    guard: &mut SessionGuard,
    channel: &str,
    key: &str,
    action: &Action,
) -> Result<Outcome, BrowserError> {
    let opening = matches!(action, Action::Open { .. });
    for attempt in 0..2 {
        if guard.is_none() {
            if !opening {
                return Err(BrowserError::BadRequest(NO_PAGE.into()));
            }
            if let Action::Open { url } = action {
                // Refuse a bad URL before a tab is taken.
                sessions.browser().check_url(url).await?;
            }
            sessions.make_room(key);
            let session = Session::start(sessions.browser(), channel).await?;
            info!(conversation = %key, "browser session opened");
            **guard = Some(session);
        }
        let Some(session) = guard.as_mut() else {
            return Err(BrowserError::BadRequest(NO_PAGE.into()));
        };
        match session.act(sessions.browser(), channel, action).await {
            Err(e) if e.is_gone() => {
                warn!(error = %e, "the browser session's tab is gone");
                **guard = None;
                if !opening || attempt > 0 {
                    return Err(BrowserError::Gone(format!(
                        "{e}; the page was lost, call browser_open again"
                    )));
                }
            }
            other => return other,
        }
    }
    Err(BrowserError::BadRequest(NO_PAGE.into()))
}

#[async_trait]
impl Tool for ActionTool {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn description(&self) -> &'static str {
        self.kind.description()
    }

    fn input_schema(&self) -> Value {
        self.kind.schema()
    }

    async fn call(&self, context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let key = session_key(&context.conversation);
        let channel = channel_key(&context.conversation);
        if self.kind == Kind::Snapshot {
            let max_tokens = match &input {
                Value::Null => None,
                Value::Object(o) => {
                    if let Some(k) = o.keys().find(|k| k.as_str() != "max_tokens") {
                        return Err(ToolError::InvalidInput(format!("unknown field `{k}`")));
                    }
                    match o.get("max_tokens") {
                        None => None,
                        Some(v) => Some(
                            v.as_u64()
                                .filter(|n| (200..=20_000).contains(n))
                                .ok_or_else(|| {
                                    ToolError::InvalidInput(
                                        "max_tokens must be a whole number from 200 to 20000"
                                            .into(),
                                    )
                                })? as usize,
                        ),
                    }
                }
                _ => {
                    return Err(ToolError::InvalidInput(
                        "the input must be an object".into(),
                    ));
                }
            };
            let mut guard = self.sessions.lock(&key, context.event_id).await;
            let session = guard
                .as_mut()
                .ok_or_else(|| ToolError::InvalidInput(NO_PAGE.into()))?;
            let snapshot = session.snapshot(max_tokens).await.map_err(tool_error)?;
            return Ok(ToolOutput::text(snapshot.render()));
        }
        let action = parse_action(self.kind.action(), input)?;
        let mut guard = self.sessions.lock(&key, context.event_id).await;
        let outcome = run(&self.sessions, &mut guard, &channel, &key, &action)
            .await
            .map_err(tool_error)?;
        Ok(ToolOutput::text(outcome.render()))
    }
}

/// Run scripted steps in the conversation's session and film them: the video and a line per
/// step (a failed step ends the script; the video shows what happened up to it).
pub async fn record_steps(
    sessions: &Sessions,
    context: &ToolContext,
    steps: &[Action],
) -> Result<(SessionVideo, String), BrowserError> {
    let key = session_key(&context.conversation);
    let channel = channel_key(&context.conversation);
    let mut guard = sessions.lock(&key, context.event_id).await;
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut last = None;
    for (i, step) in steps.iter().enumerate() {
        match run(sessions, &mut guard, &channel, &key, step).await {
            Ok(outcome) => {
                lines.push(format!("{}. {}", i + 1, outcome.summary));
                last = Some(outcome.snapshot);
            }
            Err(e) => {
                lines.push(format!("{}. failed: {e} (the script stopped here)", i + 1));
                break;
            }
        }
    }
    let Some(session) = guard.as_ref() else {
        return Err(BrowserError::BadRequest(NO_PAGE.into()));
    };
    // The last paint reaches the film a frame interval later.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let video = film(sessions, session, Some(started)).await?;
    let mut text = lines.join("\n");
    if let Some(snapshot) = last {
        text.push_str("\n\n");
        text.push_str(&snapshot.render());
    }
    Ok((video, text))
}

/// The film of the conversation's session so far.
pub async fn record_session(
    sessions: &Sessions,
    context: &ToolContext,
) -> Result<SessionVideo, BrowserError> {
    let guard = sessions
        .lock(&session_key(&context.conversation), context.event_id)
        .await;
    let session = guard
        .as_ref()
        .ok_or_else(|| BrowserError::BadRequest(NO_PAGE.into()))?;
    film(sessions, session, None).await
}

async fn film(
    sessions: &Sessions,
    session: &Session,
    since: Option<Instant>,
) -> Result<SessionVideo, BrowserError> {
    let browser = sessions.browser();
    browser.ffmpeg().await?;
    let frames = session.frames_since(since);
    let settings = browser.settings();
    frames::encode(
        &frames,
        Instant::now(),
        settings.max_record_seconds as f64,
        settings.max_upload_bytes,
        browser.ffmpeg_path(),
        browser.work_dir(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_become_actions() {
        assert_eq!(
            parse_action("click", json!({ "ref": 4 })).unwrap(),
            Action::Click { target: 4 }
        );
        assert_eq!(parse_action("back", Value::Null).unwrap(), Action::Back);
        assert!(parse_action("click", json!({ "ref": 4, "bogus": 1 })).is_err());
        assert!(parse_action("click", json!({ "ref": 4, "action": "open" })).is_err());
        assert!(parse_action("type", json!({ "ref": 4 })).is_err());
    }

    #[test]
    fn every_tool_has_an_object_schema() {
        for kind in Kind::ALL {
            let schema = kind.schema();
            assert_eq!(schema["type"], "object", "{kind:?}");
            assert_eq!(schema["additionalProperties"], false, "{kind:?}");
            assert!(kind.name().starts_with("browser_"));
        }
    }
}
