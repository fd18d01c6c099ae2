//! The line a user sees while a tool runs ("running `pytest` in the sandbox", "taking a
//! screenshot of https://…", "searching memory"), from the tool's name and input.

use serde_json::Value;

/// The longest piece of tool input quoted in a line.
const QUOTE_CHARS: usize = 80;

/// A short description of a tool call for the live reply.
pub fn line(tool: &str, input: &Value) -> String {
    let field = |name: &str| input.get(name).and_then(Value::as_str).map(quote);
    match tool {
        "run_command" => match field("command") {
            Some(command) => format!("running `{command}` in the sandbox"),
            None => "running a command in the sandbox".into(),
        },
        "browser_screenshot" => match field("url") {
            Some(url) => format!("taking a screenshot of {url}"),
            None => "taking a screenshot of the open page".into(),
        },
        "browser_record" => match field("url") {
            Some(url) => format!("recording a video of {url}"),
            None => "recording a video of the browser session".into(),
        },
        "browser_open" => match field("url") {
            Some(url) => format!("opening {url}"),
            None => "opening a page".into(),
        },
        "browser_snapshot" => "reading the open page".into(),
        "browser_click" => "clicking on the page".into(),
        "browser_type" => "typing on the page".into(),
        "browser_select" => "choosing an option on the page".into(),
        "browser_scroll" => "scrolling the page".into(),
        "browser_back" => "going back a page".into(),
        "browser_wait" => "waiting for the page".into(),
        "fetch_url" => match field("url") {
            Some(url) => format!("reading {url}"),
            None => "reading a page".into(),
        },
        "web_search" => match field("query") {
            Some(query) => format!("searching the web for “{query}”"),
            None => "searching the web".into(),
        },
        "memory_search" => "searching memory".into(),
        "memory_save" => "saving a note".into(),
        "memory_forget" => "forgetting a note".into(),
        other => match other.split_once("__") {
            Some((server, tool)) => format!("calling `{tool}` on {server}"),
            None => format!("using `{other}`"),
        },
    }
}

/// One line of input, cut short, without backticks (it is shown inside code quotes).
fn quote(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let clean = one_line.replace('`', "'");
    if clean.chars().count() <= QUOTE_CHARS {
        return clean;
    }
    let mut cut: String = clean.chars().take(QUOTE_CHARS).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_name_what_runs() {
        assert_eq!(
            line("run_command", &json!({"command": "pytest -q\n  tests/"})),
            "running `pytest -q tests/` in the sandbox"
        );
        assert_eq!(
            line(
                "browser_screenshot",
                &json!({"url": "https://example.com/"})
            ),
            "taking a screenshot of https://example.com/"
        );
        assert_eq!(
            line("memory_search", &json!({"query": "x"})),
            "searching memory"
        );
        assert_eq!(line("time__now", &json!({})), "calling `now` on time");
        let long = line("run_command", &json!({"command": "x".repeat(200)}));
        assert!(long.chars().count() < 120, "{long}");
        assert_eq!(
            line("run_command", &json!({"command": "echo `id`"})),
            "running `echo 'id'` in the sandbox"
        );
    }
}
