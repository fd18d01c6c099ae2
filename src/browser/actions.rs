//! What the model can do in an interactive session: open, click, type, select, scroll, go
//! back and wait. Each action waits until the page has settled and answers with a short line
//! (what happened, where the page is now) and a fresh snapshot.
//!
//! References (`[12]`) are those of the last snapshot; one whose element is gone (the page
//! changed or navigated) is refused with a request to take a new snapshot. Clicks and typing
//! go through CDP's input events (trusted events, like a person's), not script calls.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::cdp::protocol::{
    DispatchKeyEvent, DispatchMouseEvent, GetNavigationHistory, InsertText, NavigateToHistoryEntry,
};
use super::session::{Aftermath, Session};
use super::snapshot::Snapshot;
use super::{BrowserError, BrowserService};

/// The longest `browser_wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The default `browser_wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// One step, as the model asks for it (also the items of a scripted `browser_record`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Open {
        url: String,
    },
    Click {
        #[serde(rename = "ref")]
        target: u64,
    },
    Type {
        #[serde(rename = "ref")]
        target: u64,
        text: String,
        #[serde(default)]
        submit: bool,
    },
    Select {
        #[serde(rename = "ref")]
        target: u64,
        value: String,
    },
    Scroll {
        direction: Option<Direction>,
        #[serde(rename = "ref")]
        target: Option<u64>,
    },
    Back,
    Wait {
        text: Option<String>,
        selector: Option<String>,
        timeout_seconds: Option<f64>,
    },
}

/// Where `browser_scroll` goes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    Left,
    Right,
    Top,
    Bottom,
}

impl Direction {
    fn script(self) -> &'static str {
        match self {
            Self::Up => "window.scrollBy(0, -Math.round(innerHeight * 0.8))",
            Self::Down => "window.scrollBy(0, Math.round(innerHeight * 0.8))",
            Self::Left => "window.scrollBy(-Math.round(innerWidth * 0.8), 0)",
            Self::Right => "window.scrollBy(Math.round(innerWidth * 0.8), 0)",
            Self::Top => "window.scrollTo(0, 0)",
            Self::Bottom => "window.scrollTo(0, document.documentElement.scrollHeight)",
        }
    }
}

/// What an action did.
#[derive(Debug)]
pub struct Outcome {
    /// One or two lines for the model.
    pub summary: String,
    /// The page afterwards.
    pub snapshot: Snapshot,
}

impl Outcome {
    /// The summary, then the snapshot.
    pub fn render(&self) -> String {
        format!("{}\n\n{}", self.summary, self.snapshot.render())
    }
}

/// The element behind a reference, as a script sees it.
#[derive(Debug, Deserialize)]
struct Target {
    error: Option<String>,
    #[serde(default)]
    desc: String,
    #[serde(default)]
    x: f64,
    #[serde(default)]
    y: f64,
    #[serde(default)]
    hit: bool,
    #[serde(default)]
    password: bool,
    #[serde(default)]
    chosen: String,
    #[serde(default)]
    options: Vec<String>,
}

/// Finds element `n` (the `el` of the script that follows), or answers `{ error }`.
const RESOLVE: &str = r#"const refs = window.__ecdysisRefs;
  const el = refs instanceof Map ? refs.get(n) : undefined;
  if (!el || !el.isConnected) return { error: 'stale' };
  const field = ['input', 'select', 'textarea'].includes(el.localName);
  const button = el.localName === 'input' && ['submit', 'button', 'reset'].includes((el.getAttribute('type') || '').toLowerCase());
  const label = el.labels && el.labels.length ? Array.from(el.labels).map((l) => Array.from(l.childNodes).filter((c) => c.nodeType === 3 || !['INPUT', 'SELECT', 'TEXTAREA'].includes(c.nodeName)).map((c) => c.textContent).join(' ')).join(' ') : '';
  const desc = (el.getAttribute('aria-label') || label || (button ? el.value : '') || (field ? (el.getAttribute('placeholder') || el.getAttribute('name') || '') : el.innerText) || el.localName || '').replace(/\s+/g, ' ').trim().slice(0, 60);
  if (el.disabled || el.getAttribute('aria-disabled') === 'true') return { error: 'disabled', desc };"#;

const CLICK_JS: &str = r#"((n) => {
  RESOLVE
  el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
  const r = el.getBoundingClientRect();
  if (r.width <= 0 || r.height <= 0) return { error: 'hidden', desc };
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  const root = el.getRootNode();
  const ok = !!hit && (hit === el || el.contains(hit) || (hit.closest && hit.closest('label') && hit.closest('label').control === el)
    || (root instanceof ShadowRoot && hit.contains(root.host)));
  return { x, y, hit: ok, desc };
})"#;

const CLICK_FALLBACK_JS: &str = r#"((n) => {
  RESOLVE
  el.click();
  return { desc };
})"#;

const TYPE_JS: &str = r#"((n, allowPassword) => {
  RESOLVE
  const t = (el.getAttribute('type') || 'text').toLowerCase();
  const password = el.localName === 'input' && t === 'password';
  if (password && !allowPassword) return { password: true, desc };
  const textual = (el.localName === 'input' && !['button', 'submit', 'reset', 'image', 'checkbox', 'radio', 'file', 'range', 'color', 'hidden'].includes(t))
    || el.localName === 'textarea' || el.isContentEditable;
  if (!textual) return { error: 'not_editable', desc };
  if (el.readOnly) return { error: 'readonly', desc };
  el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
  el.focus();
  if (typeof el.select === 'function') el.select();
  else { const range = document.createRange(); range.selectNodeContents(el); const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range); }
  return { password, desc };
})"#;

const SELECT_JS: &str = r#"((n, value) => {
  RESOLVE
  if (el.localName !== 'select') return { error: 'not_select', desc };
  const want = String(value).trim().toLowerCase();
  const options = Array.from(el.options);
  const o = options.find((o) => o.value.toLowerCase() === want)
    || options.find((o) => o.text.trim().toLowerCase() === want)
    || options.find((o) => o.text.trim().toLowerCase().includes(want));
  if (!o) return { error: 'no_option', desc, options: options.map((o) => o.text.trim()).slice(0, 40) };
  el.focus();
  o.selected = true;
  el.dispatchEvent(new Event('input', { bubbles: true }));
  el.dispatchEvent(new Event('change', { bubbles: true }));
  return { chosen: o.text.trim(), desc };
})"#;

const SCROLL_TO_JS: &str = r#"((n) => {
  RESOLVE
  el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
  return { desc };
})"#;

fn script(template: &str) -> String {
    template.replace("RESOLVE", RESOLVE)
}

fn js_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

impl Target {
    /// The script's refusal as a clear error.
    fn check(&self, n: u64) -> Result<(), BrowserError> {
        let Some(error) = self.error.as_deref() else {
            return Ok(());
        };
        let desc = if self.desc.is_empty() {
            String::new()
        } else {
            format!(" (“{}”)", self.desc)
        };
        Err(BrowserError::BadRequest(match error {
            "stale" => format!(
                "[{n}] is not on the page any more (it changed or navigated since the snapshot); take a new snapshot with browser_snapshot and use its numbers"
            ),
            "disabled" => format!("[{n}]{desc} is disabled"),
            "hidden" => format!("[{n}]{desc} has no visible size, so it cannot be clicked"),
            "not_editable" => {
                format!("[{n}]{desc} is not a text field; use browser_click or browser_select")
            }
            "readonly" => format!("[{n}]{desc} is read-only"),
            "not_select" => {
                format!("[{n}]{desc} is not a <select>; click it and then the option instead")
            }
            "no_option" => format!(
                "[{n}]{desc} has no option matching that value; its options are: {}",
                self.options.join(" | ")
            ),
            other => format!("[{n}]{desc}: {other}"),
        }))
    }
}

impl Session {
    async fn target(&self, template: &str, args: &str) -> Result<Target, BrowserError> {
        let call = format!("{}({args})", script(template));
        self.lease().eval::<Target>(&call).await
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.limits().action_timeout
    }

    async fn key(&self, key: &str, code: i64, text: Option<&str>) -> Result<(), BrowserError> {
        for kind in ["keyDown", "keyUp"] {
            let params = DispatchKeyEvent {
                kind,
                key: key.to_string(),
                code: key.to_string(),
                windows_virtual_key_code: code,
                native_virtual_key_code: code,
                text: text.filter(|_| kind == "keyDown").map(str::to_string),
            };
            self.lease()
                .page()
                .execute(&params)
                .await
                .map_err(|e| self.lease().cdp(e))?;
        }
        Ok(())
    }

    async fn click_at(&self, x: f64, y: f64) -> Result<(), BrowserError> {
        let page = self.lease().page();
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            let press = kind != "mouseMoved";
            let params = DispatchMouseEvent {
                kind,
                x,
                y,
                button: press.then_some("left"),
                click_count: press.then_some(1),
                buttons,
            };
            page.execute(&params)
                .await
                .map_err(|e| self.lease().cdp(e))?;
        }
        Ok(())
    }

    /// Run one action and report the page afterwards.
    pub async fn act(
        &mut self,
        browser: &BrowserService,
        channel: &str,
        action: &Action,
    ) -> Result<Outcome, BrowserError> {
        self.begin();
        let before = self.lease().page().url().await.ok();
        let (summary, aftermath) = match action {
            Action::Open { url } => {
                let url = browser.check_url(url).await?;
                browser.check_rate(channel)?;
                let loaded = self.goto(&url).await?;
                (format!("Opened {}.", loaded.url), Aftermath::default())
            }
            Action::Click { target } => {
                let found = self.target(CLICK_JS, &target.to_string()).await?;
                found.check(*target)?;
                let mut summary = format!("Clicked [{target}] “{}”.", found.desc);
                if found.hit {
                    self.click_at(found.x, found.y).await?;
                } else {
                    // Something covers the element: a script click still reaches it.
                    let again = self.target(CLICK_FALLBACK_JS, &target.to_string()).await?;
                    again.check(*target)?;
                    summary.push_str(
                        " (It was covered by another element, so it was clicked by script.)",
                    );
                }
                (summary, self.settle(Instant::now(), self.deadline()).await?)
            }
            Action::Type {
                target,
                text,
                submit,
            } => {
                let allow = self.limits().allow_password_typing;
                let found = self.target(TYPE_JS, &format!("{target}, {allow}")).await?;
                found.check(*target)?;
                if found.password && !allow {
                    return Err(BrowserError::BadRequest(format!(
                        "[{target}] is a password field; typing passwords is turned off ([browser] allow_password_typing / ECDYSIS_BROWSER_ALLOW_PASSWORD_TYPING). Ask the user to log in themselves or to enable it."
                    )));
                }
                let page = self.lease().page();
                if text.is_empty() {
                    self.key("Backspace", 8, None).await?;
                } else {
                    page.execute(&InsertText { text: text.clone() })
                        .await
                        .map_err(|e| self.lease().cdp(e))?;
                }
                if *submit {
                    self.key("Enter", 13, Some("\r")).await?;
                }
                let shown = if found.password {
                    "the password".to_string()
                } else {
                    format!("“{}”", text.chars().take(80).collect::<String>())
                };
                let mut summary = format!("Typed {shown} into [{target}] “{}”", found.desc);
                summary.push_str(if *submit { " and pressed Enter." } else { "." });
                (summary, self.settle(Instant::now(), self.deadline()).await?)
            }
            Action::Select { target, value } => {
                let found = self
                    .target(SELECT_JS, &format!("{target}, {}", js_string(value)))
                    .await?;
                found.check(*target)?;
                let summary = format!(
                    "Selected “{}” in [{target}] “{}”.",
                    found.chosen, found.desc
                );
                (summary, self.settle(Instant::now(), self.deadline()).await?)
            }
            Action::Scroll { direction, target } => {
                let summary = match (target, direction) {
                    (Some(n), _) => {
                        let found = self.target(SCROLL_TO_JS, &n.to_string()).await?;
                        found.check(*n)?;
                        format!("Scrolled to [{n}] “{}”.", found.desc)
                    }
                    (None, direction) => {
                        let direction = direction.unwrap_or(Direction::Down);
                        self.lease()
                            .eval::<serde_json::Value>(&format!(
                                "({}, [Math.round(scrollY), Math.max(0, document.documentElement.scrollHeight - innerHeight)])",
                                direction.script()
                            ))
                            .await
                            .map(|at| {
                                format!(
                                    "Scrolled {}; now {} of {} pixels down.",
                                    format!("{direction:?}").to_lowercase(),
                                    at[0],
                                    at[1]
                                )
                            })?
                    }
                };
                (summary, self.settle(Instant::now(), self.deadline()).await?)
            }
            Action::Back => {
                let history = self
                    .lease()
                    .page()
                    .execute(&GetNavigationHistory {})
                    .await
                    .map_err(|e| self.lease().cdp(e))?;
                let index = history.current_index;
                let Some(entry) = index
                    .checked_sub(1)
                    .and_then(|i| history.entries.get(i as usize))
                    .filter(|_| index > 0)
                else {
                    return Err(BrowserError::BadRequest(
                        "there is no earlier page in this session".into(),
                    ));
                };
                if entry.url == "about:blank" {
                    return Err(BrowserError::BadRequest(
                        "there is no earlier page in this session".into(),
                    ));
                }
                let url = entry.url.clone();
                self.lease()
                    .page()
                    .execute(&NavigateToHistoryEntry { entry_id: entry.id })
                    .await
                    .map_err(|e| self.lease().cdp(e))?;
                (
                    format!("Went back to {url}."),
                    self.settle(Instant::now(), self.deadline()).await?,
                )
            }
            Action::Wait {
                text,
                selector,
                timeout_seconds,
            } => (
                self.wait_for(text.as_deref(), selector.as_deref(), *timeout_seconds)
                    .await?,
                Aftermath::default(),
            ),
        };
        let snapshot = self.snapshot(None).await?;
        let mut summary = summary;
        if before.as_deref() != Some(snapshot.url.as_str())
            && !matches!(action, Action::Open { .. })
        {
            summary.push_str(&format!(" The page is now {}.", snapshot.url));
        }
        for dialog in aftermath.dialogs {
            summary.push_str(&format!(
                " The page showed a dialog {dialog}, which was accepted."
            ));
        }
        Ok(Outcome { summary, snapshot })
    }

    /// Wait until `text` is on the page or `selector` matches.
    async fn wait_for(
        &self,
        text: Option<&str>,
        selector: Option<&str>,
        timeout: Option<f64>,
    ) -> Result<String, BrowserError> {
        let (check, what) = match (text, selector) {
            (Some(text), None) if !text.trim().is_empty() => (
                format!(
                    "!!document.body && document.body.innerText.includes({})",
                    js_string(text)
                ),
                format!("the text “{text}”"),
            ),
            (None, Some(selector)) if !selector.trim().is_empty() => (
                format!("!!document.querySelector({})", js_string(selector)),
                format!("an element matching `{selector}`"),
            ),
            _ => {
                return Err(BrowserError::BadRequest(
                    "give either `text` or `selector` (not both)".into(),
                ));
            }
        };
        let limit = match timeout {
            None => DEFAULT_WAIT,
            Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).min(MAX_WAIT),
            Some(_) => {
                return Err(BrowserError::BadRequest(
                    "timeout_seconds must be a positive number".into(),
                ));
            }
        };
        let started = Instant::now();
        loop {
            // A navigation in between makes the check fail once; it is tried again.
            if let Ok(true) = self.lease().eval::<bool>(&check).await {
                self.settle(Instant::now(), self.deadline()).await?;
                return Ok(format!(
                    "Found {what} after {:.1} s.",
                    started.elapsed().as_secs_f64()
                ));
            }
            if started.elapsed() >= limit {
                return Err(BrowserError::Action(format!(
                    "{what} did not appear within {:.1} s; take a snapshot to see what the page shows",
                    limit.as_secs_f64()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_parse_from_the_model_s_json() {
        let steps: Vec<Action> = serde_json::from_value(json!([
            { "action": "open", "url": "https://example.com" },
            { "action": "type", "ref": 3, "text": "ann", "submit": true },
            { "action": "click", "ref": 4 },
            { "action": "select", "ref": 5, "value": "France" },
            { "action": "scroll", "direction": "down" },
            { "action": "back" },
            { "action": "wait", "text": "Welcome" }
        ]))
        .unwrap();
        assert_eq!(
            steps[1],
            Action::Type {
                target: 3,
                text: "ann".into(),
                submit: true
            }
        );
        assert_eq!(
            steps[4],
            Action::Scroll {
                direction: Some(Direction::Down),
                target: None
            }
        );
        assert!(serde_json::from_value::<Action>(json!({ "action": "fly" })).is_err());
        assert!(serde_json::from_value::<Action>(json!({ "action": "click" })).is_err());
    }

    #[test]
    fn scripts_have_their_resolver() {
        for template in [
            CLICK_JS,
            CLICK_FALLBACK_JS,
            TYPE_JS,
            SELECT_JS,
            SCROLL_TO_JS,
        ] {
            let s = script(template);
            assert!(!s.contains("RESOLVE"));
            assert!(s.contains("window.__ecdysisRefs"));
        }
    }

    #[test]
    fn stale_references_ask_for_a_new_snapshot() {
        let target = Target {
            error: Some("stale".into()),
            desc: String::new(),
            x: 0.0,
            y: 0.0,
            hit: false,
            password: false,
            chosen: String::new(),
            options: Vec::new(),
        };
        let e = target.check(12).unwrap_err().to_string();
        assert!(e.contains("[12]") && e.contains("browser_snapshot"), "{e}");
    }
}
