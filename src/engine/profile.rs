//! Agent profiles (`[[profile]]` in `ecdysis.toml`): per-channel personas and tool sets.
//!
//! A profile names the channels it is in force in (`platform:id`, `platform:workspace:id`,
//! `platform:workspace:*`, `platform:*` or `*`), extra instructions appended to the stable system
//! prompt, the model (and its fallbacks), the tools and MCP servers offered, whether the sandbox
//! and the browser are on, and whose memory the conversation uses (the channel's, or one shared
//! by every channel of the profile). The most specific channel pattern wins; a channel no profile
//! claims uses the built-in `default` profile (everything configured, channel memory).

use std::collections::BTreeMap;
use std::sync::Arc;

use ecdysis_chat::{ChannelRef, ConversationRef};
use serde::Deserialize;

use crate::config::{ConfigError, ModelSpec};
use crate::engine::tools::{BROWSER_TOOLS, SANDBOX_TOOLS, builtin_tools};

/// The name of the profile in force where no `[[profile]]` claims the channel.
pub const DEFAULT_PROFILE: &str = "default";
/// The platform part of the memory of a profile with `memory = "profile"`.
pub const PROFILE_MEMORY_PLATFORM: &str = "profile";

/// One `[[profile]]` as written in the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub name: Option<String>,
    pub channels: Option<Vec<String>>,
    pub instructions: Option<String>,
    pub model: Option<String>,
    pub fallback_models: Option<Vec<String>>,
    pub tools: Option<Vec<String>>,
    pub mcp: Option<Vec<String>>,
    pub sandbox: Option<bool>,
    pub browser: Option<bool>,
    pub memory: Option<String>,
}

/// Where a channel pattern applies: `*`, `platform:*`, `platform:workspace:*`, `platform:id`
/// (that channel id in any workspace) or `platform:workspace:id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelPattern {
    text: String,
    platform: Option<String>,
    workspace: Option<String>,
    channel: Option<String>,
}

impl ChannelPattern {
    /// Parse one pattern; the error says what shapes are accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "`{text}` is not a channel pattern (use `platform:id`, `platform:workspace:id`, `platform:workspace:*`, `platform:*` or `*`)"
            )
        };
        let any = |part: &str| (part != "*").then(|| part.to_string());
        let parts: Vec<&str> = text.splitn(3, ':').collect();
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(bad());
        }
        let (platform, workspace, channel) = match parts.as_slice() {
            ["*"] => (None, None, None),
            [platform, id] if *platform != "*" => (any(platform), None, any(id)),
            [platform, workspace, id] if *platform != "*" && *workspace != "*" => {
                (any(platform), any(workspace), any(id))
            }
            _ => return Err(bad()),
        };
        Ok(Self {
            text: text.to_string(),
            platform,
            workspace,
            channel,
        })
    }

    /// Whether the conversation's channel is matched.
    pub fn matches(&self, conversation: &ConversationRef) -> bool {
        let fits = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        fits(&self.platform, &conversation.platform)
            && fits(&self.workspace, &conversation.workspace)
            && fits(&self.channel, &conversation.channel)
    }

    /// How specific the pattern is: a named channel beats a workspace, which beats a platform,
    /// which beats `*`.
    pub fn specificity(&self) -> u8 {
        match (&self.platform, &self.workspace, &self.channel) {
            (None, _, _) => 0,
            (Some(_), None, None) => 1,
            (Some(_), Some(_), None) => 2,
            (Some(_), None, Some(_)) => 3,
            (Some(_), Some(_), Some(_)) => 4,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parse a list of channel patterns for `key`.
pub fn channel_patterns(key: &str, list: &[String]) -> Result<Vec<ChannelPattern>, ConfigError> {
    list.iter()
        .map(|p| ChannelPattern::parse(p).map_err(|problem| ConfigError::value(key, problem)))
        .collect()
}

/// Whose notes a conversation reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryScope {
    /// The channel's own notes (the default).
    #[default]
    Channel,
    /// One set of notes shared by every channel of the profile.
    Profile,
}

/// One entry of a profile's `tools`: a built-in tool's name, or an MCP tool (`<server>__<tool>`,
/// `<server>__*`, `<server>__prefix*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolPattern {
    Builtin(String),
    Mcp {
        server: String,
        /// The tool name after `<server>__`, or its prefix when `wildcard`.
        tool: String,
        wildcard: bool,
    },
}

impl ToolPattern {
    fn matches_mcp(&self, server_name: &str, tool_name: &str) -> bool {
        match self {
            ToolPattern::Mcp {
                server,
                tool,
                wildcard,
            } if server == server_name => {
                let rest = tool_name
                    .strip_prefix(server_name)
                    .and_then(|r| r.strip_prefix("__"))
                    .unwrap_or_default();
                if *wildcard {
                    rest.starts_with(tool.as_str())
                } else {
                    rest == tool
                }
            }
            _ => false,
        }
    }
}

/// A validated profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub channels: Vec<ChannelPattern>,
    /// Appended to the stable system prompt.
    pub instructions: Option<String>,
    /// `None`: the configured `model`.
    pub model: Option<ModelSpec>,
    /// `None`: the configured `fallback_models`.
    pub fallback_models: Option<Vec<ModelSpec>>,
    /// `None`: every tool. Set: the built-in tools named and the MCP tools matched (a server
    /// named in `mcp` whose tools no entry names offers all of them).
    pub tools: Option<Vec<ToolPattern>>,
    /// `None`: every MCP server offered in the channel.
    pub mcp: Option<Vec<String>>,
    pub sandbox: bool,
    pub browser: bool,
    pub memory: MemoryScope,
}

impl Profile {
    /// The profile of channels no `[[profile]]` claims.
    pub fn default_profile() -> Self {
        Self {
            name: DEFAULT_PROFILE.into(),
            channels: Vec::new(),
            instructions: None,
            model: None,
            fallback_models: None,
            tools: None,
            mcp: None,
            sandbox: true,
            browser: true,
            memory: MemoryScope::Channel,
        }
    }

    /// Whether the built-in tool `name` is offered under this profile.
    pub fn offers_builtin(&self, name: &str) -> bool {
        if !self.sandbox && SANDBOX_TOOLS.contains(&name) {
            return false;
        }
        if !self.browser && BROWSER_TOOLS.contains(&name) {
            return false;
        }
        match &self.tools {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|p| matches!(p, ToolPattern::Builtin(b) if b == name)),
        }
    }

    /// Whether the MCP tool `tool_name` (`<server>__<tool>`) of `server` is offered.
    pub fn offers_mcp(&self, server: &str, tool_name: &str) -> bool {
        let named = self.mcp.as_ref().map(|m| m.iter().any(|s| s == server));
        if named == Some(false) {
            return false;
        }
        let Some(patterns) = &self.tools else {
            return true;
        };
        let mentions_server = patterns
            .iter()
            .any(|p| matches!(p, ToolPattern::Mcp { server: s, .. } if s == server));
        if !mentions_server {
            // Named in `mcp` without naming its tools: all of them.
            return named == Some(true);
        }
        patterns.iter().any(|p| p.matches_mcp(server, tool_name))
    }

    /// Whether `/run` may run here.
    pub fn allows_sandbox(&self) -> bool {
        self.sandbox
    }

    /// Whether `/screenshot` and `/record` may run here.
    pub fn allows_browser(&self) -> bool {
        self.browser
    }

    /// The channel whose notes this conversation uses.
    pub fn memory_channel(&self, conversation: &ConversationRef) -> ChannelRef {
        match self.memory {
            MemoryScope::Channel => conversation.channel_ref(),
            MemoryScope::Profile => ChannelRef {
                platform: PROFILE_MEMORY_PLATFORM.into(),
                workspace: PROFILE_MEMORY_PLATFORM.into(),
                channel: self.name.clone(),
            },
        }
    }

    /// One line for `/status` and the admin page.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(model) = &self.model {
            parts.push(format!("model {model}"));
        }
        if let Some(tools) = &self.tools {
            parts.push(format!("{} tool pattern(s)", tools.len()));
        }
        if let Some(mcp) = &self.mcp {
            parts.push(format!("MCP: {}", mcp.join(", ")));
        }
        if !self.sandbox {
            parts.push("no sandbox".into());
        }
        if !self.browser {
            parts.push("no browser".into());
        }
        if self.memory == MemoryScope::Profile {
            parts.push("shared memory".into());
        }
        if parts.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, parts.join(", "))
        }
    }
}

/// The configured profiles; cheap to clone.
#[derive(Clone, Debug)]
pub struct Profiles {
    list: Arc<Vec<Arc<Profile>>>,
    default: Arc<Profile>,
}

impl Default for Profiles {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Profiles {
    pub fn new(list: Vec<Profile>) -> Self {
        Self {
            list: Arc::new(list.into_iter().map(Arc::new).collect()),
            default: Arc::new(Profile::default_profile()),
        }
    }

    /// The profiles in configuration order (without the default).
    pub fn list(&self) -> &[Arc<Profile>] {
        &self.list
    }

    /// The profile in force in a conversation: the one with the most specific matching channel
    /// pattern, else the default.
    pub fn for_conversation(&self, conversation: &ConversationRef) -> Arc<Profile> {
        self.list
            .iter()
            .filter_map(|p| {
                p.channels
                    .iter()
                    .filter(|c| c.matches(conversation))
                    .map(ChannelPattern::specificity)
                    .max()
                    .map(|s| (s, p))
            })
            // The first of equally specific profiles (validation rules out real ties).
            .fold(None::<(u8, &Arc<Profile>)>, |best, (s, p)| match best {
                Some((b, _)) if b >= s => best,
                _ => Some((s, p)),
            })
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.default.clone())
    }

    /// The channel whose notes a conversation uses (see [`MemoryScope`]).
    pub fn memory_channel(&self, conversation: &ConversationRef) -> ChannelRef {
        self.for_conversation(conversation)
            .memory_channel(conversation)
    }
}

/// Validate the `[[profile]]` entries against the configured MCP server names.
pub fn validate(
    files: Vec<ProfileFile>,
    mcp_servers: &[String],
) -> Result<Vec<Profile>, ConfigError> {
    let mut profiles: Vec<Profile> = Vec::with_capacity(files.len());
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for (index, file) in files.into_iter().enumerate() {
        let name = file
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ConfigError::value(
                    &format!("profile[{index}].name"),
                    "every [[profile]] needs a name",
                )
            })?
            .to_string();
        let key = |field: &str| format!("profile.{name}.{field}");
        if name == DEFAULT_PROFILE || profiles.iter().any(|p| p.name == name) {
            return Err(ConfigError::value(
                &key("name"),
                format!("`{name}` is used twice or is the built-in `{DEFAULT_PROFILE}` profile"),
            ));
        }
        let channels = channel_patterns(&key("channels"), &file.channels.unwrap_or_default())?;
        if channels.is_empty() {
            return Err(ConfigError::value(
                &key("channels"),
                "lists no channel (use `platform:id`, `platform:workspace:*` or `*`)",
            ));
        }
        for pattern in &channels {
            if let Some(other) = claimed.insert(pattern.as_str().to_string(), name.clone()) {
                return Err(ConfigError::value(
                    &key("channels"),
                    format!("`{pattern}` is already claimed by profile `{other}`"),
                ));
            }
        }
        let model = file
            .model
            .as_deref()
            .map(|m| ModelSpec::parse(&key("model"), m))
            .transpose()?;
        let fallback_models = file
            .fallback_models
            .map(|list| {
                list.iter()
                    .map(|m| ModelSpec::parse(&key("fallback_models"), m))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let mcp = match file.mcp {
            None => None,
            Some(list) => {
                for server in &list {
                    if !mcp_servers.contains(server) {
                        return Err(ConfigError::value(
                            &key("mcp"),
                            format!(
                                "unknown MCP server `{server}` (configured: {})",
                                names(mcp_servers)
                            ),
                        ));
                    }
                }
                Some(list)
            }
        };
        let tools = file
            .tools
            .map(|list| {
                list.iter()
                    .map(|t| tool_pattern(&key("tools"), t, mcp_servers))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let memory = match file.memory.as_deref().map(str::trim) {
            None | Some("channel") => MemoryScope::Channel,
            Some("profile") => MemoryScope::Profile,
            Some(other) => {
                return Err(ConfigError::value(
                    &key("memory"),
                    format!("`{other}` is neither `channel` nor `profile`"),
                ));
            }
        };
        profiles.push(Profile {
            channels,
            instructions: file
                .instructions
                .map(|i| i.trim().to_string())
                .filter(|i| !i.is_empty()),
            model,
            fallback_models,
            tools,
            mcp,
            sandbox: file.sandbox.unwrap_or(true),
            browser: file.browser.unwrap_or(true),
            memory,
            name,
        });
    }
    Ok(profiles)
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn tool_pattern(key: &str, text: &str, mcp_servers: &[String]) -> Result<ToolPattern, ConfigError> {
    let text = text.trim();
    if let Some((server, tool)) = text.split_once("__")
        && mcp_servers.iter().any(|s| s == server)
    {
        let (tool, wildcard) = match tool.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (tool, false),
        };
        if tool.contains('*') || (!wildcard && tool.is_empty()) {
            return Err(ConfigError::value(
                key,
                format!(
                    "`{text}`: only a trailing `*` is allowed (`{server}__*`, `{server}__get_*`)"
                ),
            ));
        }
        return Ok(ToolPattern::Mcp {
            server: server.to_string(),
            tool: tool.to_string(),
            wildcard,
        });
    }
    if builtin_tools().any(|b| b == text) {
        return Ok(ToolPattern::Builtin(text.to_string()));
    }
    let builtin: Vec<&str> = builtin_tools().collect();
    Err(ConfigError::value(
        key,
        format!(
            "unknown tool `{text}` (built-in tools: {}; MCP tools are `<server>__<tool>` or `<server>__*` with a server from [[mcp]]: {})",
            builtin.join(", "),
            names(mcp_servers)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(platform: &str, workspace: &str, channel: &str) -> ConversationRef {
        ConversationRef::new(platform, workspace, channel, None)
    }

    fn file(name: &str, channels: &[&str]) -> ProfileFile {
        ProfileFile {
            name: Some(name.into()),
            channels: Some(channels.iter().map(|c| c.to_string()).collect()),
            ..ProfileFile::default()
        }
    }

    #[test]
    fn patterns_parse_and_match() {
        let c = conv("slack", "T1", "C1");
        for (text, hit, specificity) in [
            ("*", true, 0),
            ("slack:*", true, 1),
            ("slack:T1:*", true, 2),
            ("slack:C1", true, 3),
            ("slack:T1:C1", true, 4),
            ("discord:*", false, 1),
            ("slack:T2:*", false, 2),
            ("slack:C2", false, 3),
        ] {
            let p = ChannelPattern::parse(text).unwrap();
            assert_eq!(p.matches(&c), hit, "{text}");
            assert_eq!(p.specificity(), specificity, "{text}");
        }
        for bad in ["", "C1", "*:C1", "slack:", "slack::C1", "slack:*:C1"] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_specific_profile_wins() {
        let profiles = Profiles::new(
            validate(
                vec![
                    file("all", &["*"]),
                    file("ops", &["slack:C9"]),
                    file("team", &["slack:T1:*"]),
                ],
                &[],
            )
            .unwrap(),
        );
        assert_eq!(
            profiles.for_conversation(&conv("slack", "T1", "C9")).name,
            "ops"
        );
        assert_eq!(
            profiles.for_conversation(&conv("slack", "T1", "C1")).name,
            "team"
        );
        assert_eq!(
            profiles.for_conversation(&conv("web", "local", "x")).name,
            "all"
        );
        assert_eq!(
            Profiles::default()
                .for_conversation(&conv("web", "local", "x"))
                .name,
            DEFAULT_PROFILE
        );
    }

    #[test]
    fn tools_and_servers_are_filtered() {
        let servers = vec!["time".to_string(), "big".to_string()];
        let mut f = file("p", &["*"]);
        f.tools = Some(vec![
            "memory_search".into(),
            "big__tool_1*".into(),
            "big__exact".into(),
        ]);
        f.sandbox = Some(false);
        let p = &validate(vec![f], &servers).unwrap()[0];
        assert!(p.offers_builtin("memory_search"));
        assert!(!p.offers_builtin("memory_save"));
        assert!(!p.offers_builtin("run_command"));
        assert!(p.offers_mcp("big", "big__tool_12"));
        assert!(p.offers_mcp("big", "big__exact"));
        assert!(!p.offers_mcp("big", "big__exact2"));
        assert!(!p.offers_mcp("big", "big__tool_2"));
        assert!(!p.offers_mcp("time", "time__get_current_time"));

        let mut f = file("q", &["*"]);
        f.tools = Some(vec!["memory_search".into()]);
        f.mcp = Some(vec!["time".into()]);
        let q = &validate(vec![f], &servers).unwrap()[0];
        assert!(q.offers_mcp("time", "time__get_current_time"));
        assert!(!q.offers_mcp("big", "big__tool_1"));
        let open = Profile::default_profile();
        assert!(open.offers_mcp("big", "big__x") && open.offers_builtin("run_command"));
    }

    #[test]
    fn mistakes_name_their_key() {
        let servers = vec!["time".to_string()];
        let err = |files: Vec<ProfileFile>| validate(files, &servers).unwrap_err().to_string();
        let mut f = file("p", &["*"]);
        f.tools = Some(vec!["memory_serch".into()]);
        let e = err(vec![f]);
        assert!(
            e.contains("profile.p.tools") && e.contains("memory_serch"),
            "{e}"
        );
        let mut f = file("p", &["*"]);
        f.mcp = Some(vec!["clock".into()]);
        let e = err(vec![f]);
        assert!(e.contains("profile.p.mcp") && e.contains("clock"), "{e}");
        let mut f = file("p", &["*"]);
        f.tools = Some(vec!["clock__*".into()]);
        assert!(err(vec![f]).contains("clock__*"));
        let e = err(vec![
            file("a", &["slack:C1"]),
            file("b", &["web:x", "slack:C1"]),
        ]);
        assert!(
            e.contains("profile.b.channels") && e.contains("profile `a`"),
            "{e}"
        );
        let e = err(vec![file("a", &["C1"])]);
        assert!(e.contains("profile.a.channels"), "{e}");
        let mut f = file("a", &["*"]);
        f.memory = Some("team".into());
        assert!(err(vec![f]).contains("profile.a.memory"));
        let e = err(vec![ProfileFile::default()]);
        assert!(e.contains("profile[0].name"), "{e}");
    }

    #[test]
    fn profile_memory_is_shared_by_its_channels() {
        let mut f = file("support", &["slack:C1", "discord:D1"]);
        f.memory = Some("profile".into());
        let profiles = Profiles::new(validate(vec![f, file("other", &["web:*"])], &[]).unwrap());
        let a = profiles.memory_channel(&conv("slack", "T1", "C1"));
        let b = profiles.memory_channel(&conv("discord", "G1", "D1"));
        assert_eq!(a, b);
        assert_eq!(a.platform, PROFILE_MEMORY_PLATFORM);
        let web = conv("web", "local", "x");
        assert_eq!(profiles.memory_channel(&web), web.channel_ref());
    }
}
