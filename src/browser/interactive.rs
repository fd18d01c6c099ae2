//! The interactive browser as model tools: `browser_open`, `browser_snapshot`,
//! `browser_click`, `browser_type`, `browser_select`, `browser_scroll`, `browser_back` and
//! `browser_wait`, all working on the conversation's [`Session`] (its own tab in the channel's
//! browser context). The session's page is also what `browser_screenshot` and
//! `browser_record` show when they are given no URL (see [`super::tools`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn};

use super::actions::{Action, Direction, MAX_WAIT, Outcome};
use super::frames::{self, SessionVideo};
use super::session::{Session, SessionGuard, Sessions, session_key};
use super::{BrowserError, channel_key};
use crate::engine::tools::{Tool, ToolContext, ToolError, ToolOutput, arguments, input_schema_of};

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
        match self {
            Kind::Open => input_schema_of::<OpenArgs>(),
            Kind::Snapshot => input_schema_of::<SnapshotArgs>(),
            Kind::Click => input_schema_of::<ClickArgs>(),
            Kind::Type => input_schema_of::<TypeArgs>(),
            Kind::Select => input_schema_of::<SelectArgs>(),
            Kind::Scroll => input_schema_of::<ScrollArgs>(),
            Kind::Back => input_schema_of::<BackArgs>(),
            Kind::Wait => input_schema_of::<WaitArgs>(),
        }
    }

    /// What the model asked for: the input of this tool read into its argument struct. No
    /// input at all (`null`) is read as `{}`.
    fn request(self, input: Value) -> Result<Request, ToolError> {
        let input = match input {
            Value::Null => Value::Object(serde_json::Map::new()),
            input => input,
        };
        let action = match self {
            Kind::Snapshot => {
                let args: SnapshotArgs = arguments(input)?;
                if args
                    .max_tokens
                    .is_some_and(|n| !(MIN_SNAPSHOT_TOKENS..=MAX_SNAPSHOT_TOKENS).contains(&n))
                {
                    return Err(ToolError::InvalidInput(format!(
                        "max_tokens must be a whole number from {MIN_SNAPSHOT_TOKENS} to {MAX_SNAPSHOT_TOKENS}"
                    )));
                }
                return Ok(Request::Snapshot {
                    max_tokens: args.max_tokens,
                });
            }
            Kind::Open => {
                let args: OpenArgs = arguments(input)?;
                Action::Open { url: args.url }
            }
            Kind::Click => {
                let args: ClickArgs = arguments(input)?;
                Action::Click {
                    target: args.target,
                }
            }
            Kind::Type => {
                let args: TypeArgs = arguments(input)?;
                Action::Type {
                    target: args.target,
                    text: args.text,
                    submit: args.submit,
                }
            }
            Kind::Select => {
                let args: SelectArgs = arguments(input)?;
                Action::Select {
                    target: args.target,
                    value: args.value,
                }
            }
            Kind::Scroll => {
                let args: ScrollArgs = arguments(input)?;
                Action::Scroll {
                    direction: args.direction,
                    target: args.target,
                }
            }
            Kind::Back => {
                let BackArgs {} = arguments(input)?;
                Action::Back
            }
            Kind::Wait => {
                let args: WaitArgs = arguments(input)?;
                Action::Wait {
                    text: args.text,
                    selector: args.selector,
                    timeout_seconds: args.timeout_seconds,
                }
            }
        };
        Ok(Request::Act(action))
    }
}

/// What an interactive tool is asked to do.
#[derive(Debug, PartialEq)]
enum Request {
    /// `browser_snapshot`: read the open page again.
    Snapshot { max_tokens: Option<usize> },
    /// Any other: an action on the page.
    Act(Action),
}

/// The shortest and the longest snapshot the model may ask for.
const MIN_SNAPSHOT_TOKENS: usize = 200;
const MAX_SNAPSHOT_TOKENS: usize = 20_000;

/// What the model passes to `browser_open`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OpenArgs {
    /// http:// or https:// URL
    url: String,
}

/// What the model passes to `browser_snapshot`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SnapshotArgs {
    /// longest snapshot (default from the settings)
    #[schemars(range(min = MIN_SNAPSHOT_TOKENS, max = MAX_SNAPSHOT_TOKENS))]
    max_tokens: Option<usize>,
}

/// What the model passes to `browser_click`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClickArgs {
    /// the [n] of the last snapshot
    #[serde(rename = "ref")]
    #[schemars(range(min = 1))]
    target: u64,
}

/// What the model passes to `browser_type`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TypeArgs {
    /// the [n] of the last snapshot
    #[serde(rename = "ref")]
    #[schemars(range(min = 1))]
    target: u64,
    text: String,
    /// press Enter after typing
    #[serde(default)]
    submit: bool,
}

/// What the model passes to `browser_select`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SelectArgs {
    /// the [n] of the last snapshot
    #[serde(rename = "ref")]
    #[schemars(range(min = 1))]
    target: u64,
    /// option value or visible text
    value: String,
}

/// What the model passes to `browser_scroll`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScrollArgs {
    direction: Option<Direction>,
    /// the [n] of the last snapshot
    #[serde(rename = "ref")]
    #[schemars(range(min = 1))]
    target: Option<u64>,
}

/// What the model passes to `browser_back`: nothing.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("properties" = {}))]
struct BackArgs {}

/// What the model passes to `browser_wait`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    text: Option<String>,
    /// CSS selector
    selector: Option<String>,
    #[schemars(range(max = MAX_WAIT.as_secs()), extend("exclusiveMinimum" = 0))]
    timeout_seconds: Option<f64>,
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
        let action = match self.kind.request(input)? {
            Request::Snapshot { max_tokens } => {
                let mut guard = self.sessions.lock(&key, context.event_id).await;
                let session = guard
                    .as_mut()
                    .ok_or_else(|| ToolError::InvalidInput(NO_PAGE.into()))?;
                let snapshot = session.snapshot(max_tokens).await.map_err(tool_error)?;
                return Ok(ToolOutput::text(snapshot.render()));
            }
            Request::Act(action) => action,
        };
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

    use serde_json::json;

    #[test]
    fn inputs_become_actions() {
        let act = |kind: Kind, input: Value| match kind.request(input) {
            Ok(Request::Act(action)) => Ok(action),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            act(Kind::Click, json!({ "ref": 4 })).unwrap(),
            Action::Click { target: 4 }
        );
        assert_eq!(act(Kind::Back, Value::Null).unwrap(), Action::Back);
        assert_eq!(
            act(Kind::Type, json!({ "ref": 2, "text": "Paris" })).unwrap(),
            Action::Type {
                target: 2,
                text: "Paris".into(),
                submit: false
            }
        );
        assert_eq!(
            act(Kind::Scroll, json!({ "direction": "bottom" })).unwrap(),
            Action::Scroll {
                direction: Some(Direction::Bottom),
                target: None
            }
        );
        assert_eq!(
            act(
                Kind::Wait,
                json!({ "text": "Done", "timeout_seconds": 0.5 })
            )
            .unwrap(),
            Action::Wait {
                text: Some("Done".into()),
                selector: None,
                timeout_seconds: Some(0.5)
            }
        );
        for (kind, bad) in [
            (Kind::Click, json!({ "ref": 4, "bogus": 1 })),
            (Kind::Click, json!({ "ref": 4, "action": "open" })),
            (Kind::Type, json!({ "ref": 4 })),
            (Kind::Scroll, json!({ "direction": "sideways" })),
            (Kind::Back, json!({ "x": 1 })),
            (Kind::Open, json!("https://a.example")),
        ] {
            let e = act(kind, bad.clone()).unwrap_err();
            assert!(matches!(e, ToolError::InvalidInput(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn snapshot_sizes_are_checked() {
        assert_eq!(
            Kind::Snapshot.request(Value::Null).unwrap(),
            Request::Snapshot { max_tokens: None }
        );
        assert_eq!(
            Kind::Snapshot
                .request(json!({ "max_tokens": 500 }))
                .unwrap(),
            Request::Snapshot {
                max_tokens: Some(500)
            }
        );
        let e = Kind::Snapshot
            .request(json!({ "max_tokens": 50 }))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            ToolError::InvalidInput("max_tokens must be a whole number from 200 to 20000".into())
                .to_string()
        );
        for bad in [json!({ "max_tokens": 1.5 }), json!("500")] {
            let e = Kind::Snapshot.request(bad.clone()).unwrap_err();
            assert!(matches!(e, ToolError::InvalidInput(_)), "{bad}: {e}");
        }
        let e = Kind::Snapshot.request(json!({ "other": 1 })).unwrap_err();
        assert!(e.to_string().contains("unknown field `other`"), "{e}");
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
