//! The DevTools Protocol messages the browser service sends and reads, typed: each command's
//! parameters and answer, each event's fields. Only the fields ecdysis uses are declared
//! (unknown fields in an answer or event are ignored); names follow the protocol's
//! (<https://chromedevtools.github.io/devtools-protocol/>).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command: its method name, parameters (the value itself) and answer.
pub trait Command: Serialize {
    const METHOD: &'static str;
    type Response: DeserializeOwned;
}

/// An event: its method name and fields.
pub trait Event: DeserializeOwned {
    const METHOD: &'static str;
}

/// An answer whose fields ecdysis does not read.
#[derive(Debug, Deserialize)]
pub struct Done {}

macro_rules! command {
    ($params:ty, $method:literal, $response:ty) => {
        impl Command for $params {
            const METHOD: &'static str = $method;
            type Response = $response;
        }
    };
}

macro_rules! event {
    ($event:ty, $method:literal) => {
        impl Event for $event {
            const METHOD: &'static str = $method;
        }
    };
}

// --- Browser ---

#[derive(Debug, Serialize)]
pub struct GetVersion {}
command!(GetVersion, "Browser.getVersion", Version);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    /// For example `HeadlessChrome/131.0.6778.85`.
    pub product: String,
}

#[derive(Debug, Serialize)]
pub struct CloseBrowser {}
command!(CloseBrowser, "Browser.close", Done);

// --- Target ---

#[derive(Debug, Serialize)]
pub struct CreateBrowserContext {}
command!(
    CreateBrowserContext,
    "Target.createBrowserContext",
    BrowserContextCreated
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserContextCreated {
    pub browser_context_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DisposeBrowserContext {
    pub browser_context_id: String,
}
command!(DisposeBrowserContext, "Target.disposeBrowserContext", Done);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTarget {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_context_id: Option<String>,
}
command!(CreateTarget, "Target.createTarget", TargetCreated);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetCreated {
    pub target_id: String,
}

/// Attach in flattened mode: the tab's messages travel on the browser's websocket, marked
/// with the session id.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachToTarget {
    pub target_id: String,
    pub flatten: bool,
}
command!(AttachToTarget, "Target.attachToTarget", Attached);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    pub session_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTarget {
    pub target_id: String,
}
command!(CloseTarget, "Target.closeTarget", Done);

// --- Page ---

#[derive(Debug, Serialize)]
pub struct EnablePage {}
command!(EnablePage, "Page.enable", Done);

#[derive(Debug, Serialize)]
pub struct SetLifecycleEventsEnabled {
    pub enabled: bool,
}
command!(
    SetLifecycleEventsEnabled,
    "Page.setLifecycleEventsEnabled",
    Done
);

#[derive(Debug, Serialize)]
pub struct Navigate {
    pub url: String,
}
command!(Navigate, "Page.navigate", Navigated);

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Navigated {
    pub frame_id: String,
    /// Absent for a navigation within the same document.
    pub loader_id: Option<String>,
    /// Why the navigation failed (`net::ERR_NAME_NOT_RESOLVED`, …).
    pub error_text: Option<String>,
    pub is_download: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddScriptToEvaluateOnNewDocument {
    pub source: String,
    pub run_immediately: bool,
}
command!(
    AddScriptToEvaluateOnNewDocument,
    "Page.addScriptToEvaluateOnNewDocument",
    Done
);

#[derive(Debug, Serialize)]
pub struct GetFrameTree {}
command!(GetFrameTree, "Page.getFrameTree", FrameTreeAnswer);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameTreeAnswer {
    pub frame_tree: FrameTree,
}

#[derive(Debug, Deserialize)]
pub struct FrameTree {
    pub frame: Frame,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Frame {
    pub id: String,
    pub parent_id: Option<String>,
    pub loader_id: String,
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct GetNavigationHistory {}
command!(GetNavigationHistory, "Page.getNavigationHistory", History);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub current_index: i64,
    pub entries: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NavigateToHistoryEntry {
    pub entry_id: i64,
}
command!(NavigateToHistoryEntry, "Page.navigateToHistoryEntry", Done);

#[derive(Debug, Serialize)]
pub struct BringToFront {}
command!(BringToFront, "Page.bringToFront", Done);

/// Frames as JPEG, one at a time: the next comes after the last one's [`ScreencastFrameAck`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartScreencast {
    pub format: &'static str,
    pub quality: i64,
    pub max_width: i64,
    pub max_height: i64,
    pub every_nth_frame: i64,
}
command!(StartScreencast, "Page.startScreencast", Done);

impl StartScreencast {
    /// JPEG frames of at most `max_width` × `max_height` device pixels, every frame.
    pub fn jpeg(quality: i64, max_width: i64, max_height: i64) -> Self {
        Self {
            format: "jpeg",
            quality,
            max_width,
            max_height,
            every_nth_frame: 1,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScreencastFrameAck {
    pub session_id: i64,
}
command!(ScreencastFrameAck, "Page.screencastFrameAck", Done);

#[derive(Debug, Serialize)]
pub struct StopScreencast {}
command!(StopScreencast, "Page.stopScreencast", Done);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureScreenshot {
    pub format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<Clip>,
    pub capture_beyond_viewport: bool,
    pub from_surface: bool,
    pub optimize_for_speed: bool,
}
command!(CaptureScreenshot, "Page.captureScreenshot", Screenshot);

/// A rectangle of the page, in CSS pixels, and the scale to capture it at.
#[derive(Clone, Debug, Serialize)]
pub struct Clip {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub scale: f64,
}

#[derive(Debug, Deserialize)]
pub struct Screenshot {
    /// The image, base64.
    pub data: String,
}

#[derive(Debug, Serialize)]
pub struct HandleJavaScriptDialog {
    pub accept: bool,
}
command!(HandleJavaScriptDialog, "Page.handleJavaScriptDialog", Done);

// --- Network and Fetch ---

#[derive(Debug, Serialize)]
pub struct EnableNetwork {}
command!(EnableNetwork, "Network.enable", Done);

/// Pause every request (at the request stage) until it is continued or failed.
#[derive(Debug, Serialize)]
pub struct EnableFetch {
    pub patterns: Vec<RequestPattern>,
}
command!(EnableFetch, "Fetch.enable", Done);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPattern {
    pub url_pattern: String,
    pub request_stage: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContinueRequest {
    pub request_id: String,
}
command!(ContinueRequest, "Fetch.continueRequest", Done);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailRequest {
    pub request_id: String,
    /// A `Network.ErrorReason`, such as `BlockedByClient`.
    pub error_reason: &'static str,
}
command!(FailRequest, "Fetch.failRequest", Done);

// --- Emulation, Runtime, Input ---

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetDeviceMetricsOverride {
    pub width: i64,
    pub height: i64,
    pub device_scale_factor: f64,
    pub mobile: bool,
    pub screen_width: i64,
    pub screen_height: i64,
}
command!(
    SetDeviceMetricsOverride,
    "Emulation.setDeviceMetricsOverride",
    Done
);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluate {
    pub expression: String,
    pub return_by_value: bool,
    pub await_promise: bool,
}
command!(Evaluate, "Runtime.evaluate", Evaluated);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluated {
    pub result: RemoteObject,
    pub exception_details: Option<ExceptionDetails>,
}

#[derive(Debug, Deserialize)]
pub struct RemoteObject {
    /// The value, for a result returned by value (absent for `undefined`).
    pub value: Option<Value>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ExceptionDetails {
    pub text: String,
    pub exception: Option<RemoteObject>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchKeyEvent {
    /// `keyDown` or `keyUp`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub key: String,
    pub code: String,
    pub windows_virtual_key_code: i64,
    pub native_virtual_key_code: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}
command!(DispatchKeyEvent, "Input.dispatchKeyEvent", Done);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchMouseEvent {
    /// `mouseMoved`, `mousePressed` or `mouseReleased`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub x: f64,
    pub y: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub button: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_count: Option<i64>,
    pub buttons: i64,
}
command!(DispatchMouseEvent, "Input.dispatchMouseEvent", Done);

#[derive(Debug, Serialize)]
pub struct InsertText {
    pub text: String,
}
command!(InsertText, "Input.insertText", Done);

// --- Events ---

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPaused {
    pub request_id: String,
    pub request: Request,
}
event!(RequestPaused, "Fetch.requestPaused");

#[derive(Debug, Deserialize)]
pub struct Request {
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseReceived {
    /// The resource type: `Document`, `Script`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub frame_id: Option<String>,
    pub loader_id: String,
    pub response: Response,
}
event!(ResponseReceived, "Network.responseReceived");

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub url: String,
    pub status: i64,
    pub status_text: String,
    pub mime_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleEvent {
    pub frame_id: String,
    pub loader_id: String,
    /// `load`, `DOMContentLoaded`, `networkIdle`, …
    pub name: String,
}
event!(LifecycleEvent, "Page.lifecycleEvent");

#[derive(Debug, Deserialize)]
pub struct FrameNavigated {
    pub frame: Frame,
}
event!(FrameNavigated, "Page.frameNavigated");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestWillBeSent {
    pub request_id: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub request: Request,
}
event!(RequestWillBeSent, "Network.requestWillBeSent");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadingFinished {
    pub request_id: String,
}
event!(LoadingFinished, "Network.loadingFinished");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadingFailed {
    pub request_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub error_text: String,
    pub canceled: Option<bool>,
}
event!(LoadingFailed, "Network.loadingFailed");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameStartedLoading {
    pub frame_id: String,
}
event!(FrameStartedLoading, "Page.frameStartedLoading");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameStoppedLoading {
    pub frame_id: String,
}
event!(FrameStoppedLoading, "Page.frameStoppedLoading");

#[derive(Debug, Deserialize)]
pub struct JavascriptDialogOpening {
    /// `alert`, `confirm`, `prompt` or `beforeunload`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}
event!(JavascriptDialogOpening, "Page.javascriptDialogOpening");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScreencastFrame {
    /// The JPEG, base64.
    pub data: String,
    pub session_id: i64,
}
event!(ScreencastFrame, "Page.screencastFrame");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_serialize_as_the_protocol_names_them() {
        let params = serde_json::to_value(CreateTarget {
            url: "about:blank".into(),
            browser_context_id: None,
        })
        .unwrap();
        assert_eq!(params, serde_json::json!({ "url": "about:blank" }));
        let params = serde_json::to_value(DispatchMouseEvent {
            kind: "mousePressed",
            x: 1.0,
            y: 2.0,
            button: Some("left"),
            click_count: Some(1),
            buttons: 1,
        })
        .unwrap();
        assert_eq!(
            params,
            serde_json::json!({ "type": "mousePressed", "x": 1.0, "y": 2.0, "button": "left", "clickCount": 1, "buttons": 1 })
        );
    }

    #[test]
    fn events_read_the_fields_used_and_ignore_the_rest() {
        let event: ResponseReceived = serde_json::from_value(serde_json::json!({
            "requestId": "1", "loaderId": "L", "timestamp": 1.0, "type": "Document", "frameId": "F",
            "response": { "url": "http://x/", "status": 404, "statusText": "Not Found",
                          "mimeType": "text/html", "headers": {} }
        }))
        .unwrap();
        assert_eq!(event.kind, "Document");
        assert_eq!(event.response.status, 404);
        assert_eq!(event.frame_id.as_deref(), Some("F"));
    }
}
