//! The commands every platform shares, and how to read them from text.

use serde::{Deserialize, Serialize};

/// The command words. The same words on Slack (`/ecdysis <cmd>`), Discord (native
/// slash commands) and the web and terminal chats (a leading `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandName {
    Ask,
    Run,
    Screenshot,
    Record,
    Remember,
    Recall,
    Forget,
    Memory,
    Status,
    /// Schedule a reminder, a recurring post or a heartbeat prompt.
    Remind,
    /// List the channel's scheduled jobs.
    Schedules,
    /// Cancel a scheduled job.
    Unschedule,
    Help,
    /// A word that is not a command; the core answers with the help text.
    Unknown(String),
}

impl CommandName {
    /// Every known command, in the order help lists them.
    pub const ALL: [CommandName; 13] = [
        CommandName::Ask,
        CommandName::Remember,
        CommandName::Recall,
        CommandName::Forget,
        CommandName::Memory,
        CommandName::Run,
        CommandName::Screenshot,
        CommandName::Record,
        CommandName::Remind,
        CommandName::Schedules,
        CommandName::Unschedule,
        CommandName::Status,
        CommandName::Help,
    ];

    pub fn parse(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "ask" => Self::Ask,
            "run" => Self::Run,
            "screenshot" => Self::Screenshot,
            "record" => Self::Record,
            "remember" => Self::Remember,
            "recall" => Self::Recall,
            "forget" => Self::Forget,
            "memory" => Self::Memory,
            "status" => Self::Status,
            "remind" => Self::Remind,
            "schedules" => Self::Schedules,
            "unschedule" => Self::Unschedule,
            "help" => Self::Help,
            _ => Self::Unknown(word.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Ask => "ask",
            Self::Run => "run",
            Self::Screenshot => "screenshot",
            Self::Record => "record",
            Self::Remember => "remember",
            Self::Recall => "recall",
            Self::Forget => "forget",
            Self::Memory => "memory",
            Self::Status => "status",
            Self::Remind => "remind",
            Self::Schedules => "schedules",
            Self::Unschedule => "unschedule",
            Self::Help => "help",
            Self::Unknown(word) => word,
        }
    }
}

/// A command with its argument text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub name: CommandName,
    pub args: String,
}

impl Command {
    /// Read `<cmd> <args…>` (Slack's `/ecdysis remember x` gives `remember x`). Empty text is `help`.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        let (word, args) = match text.split_once(char::is_whitespace) {
            Some((word, args)) => (word, args.trim()),
            None => (text, ""),
        };
        if word.is_empty() {
            return Self {
                name: CommandName::Help,
                args: String::new(),
            };
        }
        Self {
            name: CommandName::parse(word),
            args: args.to_string(),
        }
    }

    /// Read `/<cmd> <args…>`; `None` when the text does not start with `/` (or is a path such as
    /// `/etc/hosts is …`, which has a second `/` in its first word).
    pub fn parse_slash(text: &str) -> Option<Self> {
        let rest = text.trim_start().strip_prefix('/')?;
        let first_word = rest.split(char::is_whitespace).next().unwrap_or_default();
        if first_word.is_empty() || first_word.contains('/') {
            return None;
        }
        Some(Self::parse(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slash_commands() {
        let c = Command::parse_slash("/remember  the sky is blue ").unwrap();
        assert_eq!(c.name, CommandName::Remember);
        assert_eq!(c.args, "the sky is blue");
        assert_eq!(
            Command::parse_slash("/HELP").unwrap().name,
            CommandName::Help
        );
        assert_eq!(
            Command::parse_slash("/frobnicate x").unwrap().name,
            CommandName::Unknown("frobnicate".into())
        );
        assert!(Command::parse_slash("hello /remember").is_none());
        assert!(Command::parse_slash("/etc/passwd is a file").is_none());
        assert!(Command::parse_slash("/").is_none());
    }

    #[test]
    fn empty_command_is_help() {
        assert_eq!(Command::parse("   ").name, CommandName::Help);
    }
}
