//! The native slash commands: their definitions with typed options, registering them
//! (`ecdysis discord register [--guild ID]`), and turning an invocation's options back into the
//! argument text the core's command handlers read (`/screenshot url:X full_page:true` →
//! `X full_page`).

use ecdysis_chat::{Command, CommandName};
use serde_json::{Value, json};
use tracing::info;

use crate::model::CommandOption;
use crate::rest::Rest;
use crate::{DiscordError, Settings};

/// The type of an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    Text,
    Integer,
    Number,
    Bool,
}

/// One option of a slash command.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionKind,
    pub required: bool,
    /// Written as the bare value (the command's main argument); others as `name=value`, and a
    /// true boolean as its name.
    pub positional: bool,
    pub description: &'static str,
    pub choices: &'static [&'static str],
}

const fn main_text(name: &'static str, description: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Text,
        required: true,
        positional: true,
        description,
        choices: &[],
    }
}

const fn flag(name: &'static str, kind: OptionKind, description: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        kind,
        required: false,
        positional: false,
        description,
        choices: &[],
    }
}

const SCREENSHOT: &[OptionSpec] = &[
    main_text("url", "The page to capture"),
    flag(
        "full_page",
        OptionKind::Bool,
        "Capture the whole page, not just the first screen",
    ),
    flag(
        "width",
        OptionKind::Integer,
        "Viewport width in pixels (default 1280)",
    ),
    flag(
        "height",
        OptionKind::Integer,
        "Viewport height in pixels (default 800)",
    ),
    flag(
        "scale",
        OptionKind::Number,
        "Device scale factor (default 1)",
    ),
    flag(
        "selector",
        OptionKind::Text,
        "Capture only the element matching this CSS selector",
    ),
    flag(
        "wait",
        OptionKind::Text,
        "networkidle, selector:<css> or a delay like 500ms",
    ),
    OptionSpec {
        name: "format",
        kind: OptionKind::Text,
        required: false,
        positional: false,
        description: "Image format",
        choices: &["png", "jpeg", "webp"],
    },
];

const RECORD: &[OptionSpec] = &[
    main_text("url", "The page to record"),
    flag(
        "seconds",
        OptionKind::Number,
        "Length of the video (default 5)",
    ),
    flag("scroll", OptionKind::Bool, "Scroll down while recording"),
    flag("gif", OptionKind::Bool, "Post a GIF instead of an MP4"),
    flag(
        "width",
        OptionKind::Integer,
        "Viewport width in pixels (default 1280)",
    ),
    flag(
        "height",
        OptionKind::Integer,
        "Viewport height in pixels (default 720)",
    ),
    flag(
        "wait",
        OptionKind::Text,
        "networkidle, selector:<css> or a delay like 500ms",
    ),
];

/// A command's description and options.
pub fn spec(name: &CommandName) -> (&'static str, &'static [OptionSpec]) {
    const ASK: &[OptionSpec] = &[main_text("prompt", "What to ask")];
    const RUN: &[OptionSpec] = &[main_text("command", "The shell command to run")];
    const REMEMBER: &[OptionSpec] = &[main_text("text", "The note to save")];
    const RECALL: &[OptionSpec] = &[main_text("query", "Words to look for")];
    const PAIR: &[OptionSpec] = &[OptionSpec {
        name: "code",
        kind: OptionKind::Text,
        required: false,
        positional: true,
        description: "The pairing code to approve (none: list the codes waiting)",
        choices: &[],
    }];
    const FORGET: &[OptionSpec] = &[OptionSpec {
        name: "id",
        kind: OptionKind::Integer,
        required: true,
        positional: true,
        description: "The note's number, as /recall or /memory show it",
        choices: &[],
    }];
    const REMIND: &[OptionSpec] = &[main_text(
        "when_what",
        "When, then what: in 10 minutes stand-up · every weekday at 9:00 ask: any news?",
    )];
    const UNSCHEDULE: &[OptionSpec] = &[OptionSpec {
        name: "id",
        kind: OptionKind::Integer,
        required: true,
        positional: true,
        description: "The job's number, as /schedules shows it",
        choices: &[],
    }];
    match name {
        CommandName::Ask => ("Ask the agent", ASK),
        CommandName::Remind => ("Schedule a reminder, a recurring post or a check", REMIND),
        CommandName::Schedules => ("List this channel's scheduled jobs", &[]),
        CommandName::Unschedule => ("Cancel a scheduled job", UNSCHEDULE),
        CommandName::Run => ("Run a shell command in this channel's sandbox", RUN),
        CommandName::Screenshot => ("Take a screenshot of a web page", SCREENSHOT),
        CommandName::Record => ("Record a video of a web page", RECORD),
        CommandName::Remember => ("Save a note for this channel", REMEMBER),
        CommandName::Recall => ("Find this channel's notes", RECALL),
        CommandName::Forget => ("Delete a note of this channel", FORGET),
        CommandName::Memory => ("List this channel's notes", &[]),
        CommandName::Status => ("Show the bot's status", &[]),
        CommandName::Help => ("Show what the bot can do", &[]),
        CommandName::Pair => ("Approve a DM pairing code (bot admins)", PAIR),
        CommandName::Unknown(_) => ("", &[]),
    }
}

/// The slash command definitions of every chat command, as `PUT …/commands` takes them.
pub fn definitions() -> Value {
    CommandName::ALL
        .iter()
        .map(|name| {
            let (description, options) = spec(name);
            json!({
                "name": name.as_str(),
                "description": description,
                "type": 1,
                "options": options.iter().map(option_definition).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// An option's definition: its type (string 3, integer 4, boolean 5, number 10), whether it
/// is required, and the values it may take.
fn option_definition(spec: &OptionSpec) -> Value {
    let kind = match spec.kind {
        OptionKind::Text => 3,
        OptionKind::Integer => 4,
        OptionKind::Bool => 5,
        OptionKind::Number => 10,
    };
    let mut option = json!({
        "type": kind,
        "name": spec.name,
        "description": spec.description,
        "required": spec.required,
    });
    if !spec.choices.is_empty() {
        option["choices"] = spec
            .choices
            .iter()
            .map(|choice| json!({ "name": choice, "value": choice }))
            .collect();
    }
    option
}

/// Read an invocation into the shared [`Command`], its options rebuilt as argument text.
pub(crate) fn command_from_options(name: &str, options: &[CommandOption]) -> Command {
    let name = CommandName::parse(name);
    let (_, specs) = spec(&name);
    let mut positional = Vec::new();
    let mut named = Vec::new();
    // Options in the order the definition lists them, then any the definition does not know.
    let known = specs
        .iter()
        .filter_map(|spec| Some((spec, options.iter().find(|o| o.name == spec.name)?)));
    for (spec, option) in known {
        let Some(value) = option.value.as_ref().and_then(value_text) else {
            continue;
        };
        if spec.positional {
            positional.push(value);
        } else if spec.kind == OptionKind::Bool {
            if value == "true" {
                named.push(spec.name.to_string());
            }
        } else {
            named.push(format!("{}={}", spec.name, quoted(&value)));
        }
    }
    for option in options
        .iter()
        .filter(|o| !specs.iter().any(|s| s.name == o.name))
    {
        if let Some(value) = option.value.as_ref().and_then(value_text) {
            named.push(format!("{}={}", option.name, quoted(&value)));
        }
    }
    let args = positional
        .into_iter()
        .chain(named)
        .collect::<Vec<_>>()
        .join(" ");
    Command { name, args }
}

/// A string, number or boolean option's value as text.
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn quoted(value: &str) -> String {
    if value.chars().any(char::is_whitespace) {
        format!("\"{}\"", value.replace('"', "'"))
    } else {
        value.to_string()
    }
}

/// Register every slash command: in one guild (instant) or globally (may take up to an hour
/// to show everywhere). Replaces what was registered before. Returns how many were registered.
pub async fn register_commands(
    settings: &Settings,
    guild: Option<u64>,
) -> Result<usize, DiscordError> {
    if settings.token.is_none() {
        return Err(DiscordError::Config(
            "DISCORD_TOKEN is needed to register slash commands".into(),
        ));
    }
    let rest = Rest::new(settings);
    let count = rest.set_commands(guild, &definitions()).await?;
    let application = rest.application_id().unwrap_or_default();
    info!(application, guild, count, "slash commands registered");
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: serde_json::Value) -> Vec<CommandOption> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn every_command_is_defined() {
        let defs = definitions();
        let names: Vec<_> = defs
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), CommandName::ALL.len());
        let screenshot = defs
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "screenshot")
            .unwrap();
        assert_eq!(screenshot["options"][0]["name"], "url");
        assert_eq!(screenshot["options"][0]["required"], true);
        assert_eq!(
            screenshot["options"][1]["type"], 5,
            "full_page is a boolean"
        );
    }

    #[test]
    fn options_become_argument_text() {
        let c = command_from_options(
            "screenshot",
            &options(json!([
                {"name": "full_page", "type": 5, "value": true},
                {"name": "url", "type": 3, "value": "https://example.com"},
                {"name": "selector", "type": 3, "value": "#main .x"},
                {"name": "width", "type": 4, "value": 1024}
            ])),
        );
        assert_eq!(c.name, CommandName::Screenshot);
        assert_eq!(
            c.args,
            "https://example.com full_page width=1024 selector=\"#main .x\""
        );
        let c = command_from_options(
            "record",
            &options(json!([
                {"name": "url", "type": 3, "value": "https://x"},
                {"name": "gif", "type": 5, "value": false}
            ])),
        );
        assert_eq!(c.args, "https://x");
        let c = command_from_options(
            "forget",
            &options(json!([{"name": "id", "type": 4, "value": 12}])),
        );
        assert_eq!((c.name, c.args.as_str()), (CommandName::Forget, "12"));
        assert_eq!(command_from_options("status", &[]).args, "");
    }
}
