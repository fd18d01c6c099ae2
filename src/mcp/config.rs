//! The `[[mcp]]` entries of `ecdysis.toml`: one MCP server each, spoken to over stdio (a child
//! process: `command`, `args`, `env`) or streamable HTTP (`url`, `headers`).
//!
//! Env values and header values are secrets: they are registered with [`crate::redact`] and
//! never printed (the `Debug` of [`McpServerConfig`] shows their names only).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::ConfigError;
use crate::engine::profile::{ChannelPattern, channel_patterns};

/// How long one tool call may take unless `timeout_seconds` says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The most output one tool call may return unless `max_output_bytes` says otherwise.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// One `[[mcp]]` as written in the file.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpFile {
    pub name: Option<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub channels: Option<Vec<String>>,
    pub sandbox: Option<bool>,
    #[serde(default)]
    pub mounts: Vec<String>,
    pub approval: Option<ApprovalFile>,
    pub timeout_seconds: Option<i64>,
    pub max_output_bytes: Option<i64>,
}

impl std::fmt::Debug for McpFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpFile")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .finish_non_exhaustive()
    }
}

/// `approval = true` (every tool) or `approval = ["tool", …]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ApprovalFile {
    All(bool),
    Tools(Vec<String>),
}

/// Which of a server's tools wait for a human's approval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Approval {
    #[default]
    None,
    All,
    /// Tool names as the server lists them (or as the model sees them, `<server>__<tool>`).
    Tools(Vec<String>),
}

impl Approval {
    /// Whether calling `tool` (the server's own name) or `exposed` (the model's name) needs one.
    pub fn needed(&self, tool: &str, exposed: &str) -> bool {
        match self {
            Approval::None => false,
            Approval::All => true,
            Approval::Tools(list) => list.iter().any(|t| t == tool || t == exposed),
        }
    }

    pub fn any(&self) -> bool {
        !matches!(self, Approval::None)
    }
}

/// How ecdysis reaches a server.
#[derive(Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking MCP on stdin/stdout, started with only `env` (and `PATH`).
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// Streamable HTTP.
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

impl Transport {
    /// `stdio` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Stdio { .. } => "stdio",
            Transport::Http { .. } => "http",
        }
    }

    /// What runs or where it is, without secrets.
    pub fn describe(&self) -> String {
        match self {
            Transport::Stdio { command, .. } => format!("stdio `{command}`"),
            Transport::Http { url, .. } => format!("http {}", crate::redact::url(url)),
        }
    }

    /// The secret values of the configuration (env values, header values).
    pub fn secrets(&self) -> Vec<String> {
        match self {
            Transport::Stdio { env, .. } => env.values().cloned().collect(),
            Transport::Http { url, headers } => {
                let mut secrets: Vec<String> = headers.values().cloned().collect();
                // `Bearer xyz`: the token alone may show up too.
                secrets.extend(
                    headers
                        .values()
                        .filter_map(|v| v.split_once(' ').map(|(_, t)| t.trim().to_string())),
                );
                secrets.extend(crate::redact::url_passwords(url));
                secrets
            }
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Stdio { command, args, env } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &env.keys().collect::<Vec<_>>())
                .finish(),
            Transport::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", &crate::redact::url(url))
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A validated `[[mcp]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpServerConfig {
    /// `[A-Za-z0-9_-]`, no `__`: the prefix of its tools' names.
    pub name: String,
    pub transport: Transport,
    /// Where its tools are offered.
    pub channels: Vec<ChannelPattern>,
    pub approval: Approval,
    /// The longest one tool call may take.
    pub call_timeout: Duration,
    /// The most output (text, images, resources) one call may return.
    pub max_output_bytes: usize,
    /// A stdio server that runs in the sandbox of the channel that calls it (one process per
    /// channel, `/workspace` its working directory), not on the host.
    pub sandbox: bool,
    /// Host directories shown read-only inside that sandbox (e.g. the Python installation the
    /// server lives in, when it is outside `/usr`).
    pub mounts: Vec<std::path::PathBuf>,
}

/// Validate the `[[mcp]]` entries.
pub fn validate(files: Vec<McpFile>) -> Result<Vec<McpServerConfig>, ConfigError> {
    let mut servers: Vec<McpServerConfig> = Vec::with_capacity(files.len());
    for (index, file) in files.into_iter().enumerate() {
        let name = file
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ConfigError::value(&format!("mcp[{index}].name"), "every [[mcp]] needs a name")
            })?
            .to_string();
        let key = |field: &str| format!("mcp.{name}.{field}");
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || name.contains("__")
        {
            return Err(ConfigError::value(
                &key("name"),
                format!(
                    "`{name}` may hold only letters, digits, `-` and single `_` (its tools are `{name}__<tool>`)"
                ),
            ));
        }
        if servers.iter().any(|s| s.name == name) {
            return Err(ConfigError::value(
                &key("name"),
                format!("two [[mcp]] servers are named `{name}`"),
            ));
        }
        let command = file.command.filter(|c| !c.trim().is_empty());
        let url = file.url.filter(|u| !u.trim().is_empty());
        let transport = match (command, url) {
            (Some(command), None) => {
                if !file.headers.is_empty() {
                    return Err(ConfigError::value(
                        &key("headers"),
                        "headers are for `url` servers; a `command` server takes `env`",
                    ));
                }
                for var in file.env.keys() {
                    if var.is_empty() || var.contains('=') || var.contains('\0') {
                        return Err(ConfigError::value(
                            &key("env"),
                            format!("`{var}` is not an environment variable name"),
                        ));
                    }
                }
                Transport::Stdio {
                    command,
                    args: file.args,
                    env: file.env,
                }
            }
            (None, Some(url)) => {
                let parsed = Url::parse(&url).map_err(|e| {
                    ConfigError::value(
                        &key("url"),
                        format!("`{}` is not a URL ({e})", crate::redact::url(&url)),
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError::value(
                        &key("url"),
                        "must be an http:// or https:// URL (streamable HTTP)",
                    ));
                }
                if !file.args.is_empty() || !file.env.is_empty() {
                    return Err(ConfigError::value(
                        &key("args"),
                        "`args` and `env` are for `command` servers; a `url` server takes `headers`",
                    ));
                }
                for (header, value) in &file.headers {
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(ConfigError::value(
                            &key("headers"),
                            format!("`{header}` is not an HTTP header name"),
                        ));
                    }
                    if http::HeaderValue::from_str(value).is_err() {
                        return Err(ConfigError::value(
                            &key("headers"),
                            format!("the value of `{header}` is not a valid header value"),
                        ));
                    }
                }
                Transport::Http {
                    url,
                    headers: file.headers,
                }
            }
            (None, None) => {
                return Err(ConfigError::value(
                    &format!("mcp.{name}"),
                    "needs `command` (a stdio server) or `url` (a streamable HTTP server)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::value(
                    &format!("mcp.{name}"),
                    "has both `command` and `url`; set one (stdio or streamable HTTP)",
                ));
            }
        };
        let sandbox = file.sandbox == Some(true);
        if sandbox && matches!(transport, Transport::Http { .. }) {
            return Err(ConfigError::value(
                &key("sandbox"),
                "only `command` (stdio) servers run in the sandbox; a `url` server runs elsewhere",
            ));
        }
        if !sandbox && !file.mounts.is_empty() {
            return Err(ConfigError::value(
                &key("mounts"),
                "`mounts` are for servers with `sandbox = true`",
            ));
        }
        let mounts = file
            .mounts
            .iter()
            .map(|m| sandbox_mount(&key("mounts"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let channels = channel_patterns(
            &key("channels"),
            &file.channels.unwrap_or_else(|| vec!["*".into()]),
        )?;
        let approval = match file.approval {
            None | Some(ApprovalFile::All(false)) => Approval::None,
            Some(ApprovalFile::All(true)) => Approval::All,
            Some(ApprovalFile::Tools(list)) => Approval::Tools(
                list.into_iter()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
            ),
        };
        let call_timeout = match file.timeout_seconds {
            None => DEFAULT_CALL_TIMEOUT,
            Some(s) if (1..=3600).contains(&s) => Duration::from_secs(s as u64),
            Some(s) => {
                return Err(ConfigError::value(
                    &key("timeout_seconds"),
                    format!("{s} must be between 1 and 3600"),
                ));
            }
        };
        let max_output_bytes = match file.max_output_bytes {
            None => DEFAULT_MAX_OUTPUT_BYTES,
            Some(b) if (1024..=64 * 1024 * 1024).contains(&b) => b as usize,
            Some(b) => {
                return Err(ConfigError::value(
                    &key("max_output_bytes"),
                    format!("{b} must be between 1024 and 67108864"),
                ));
            }
        };
        servers.push(McpServerConfig {
            name,
            transport,
            channels,
            approval,
            call_timeout,
            max_output_bytes,
            sandbox,
            mounts,
        });
    }
    Ok(servers)
}

/// One `mounts` entry: an absolute host directory that exists, outside what the sandbox
/// provides itself.
fn sandbox_mount(key: &str, mount: &str) -> Result<std::path::PathBuf, ConfigError> {
    let path = std::path::Path::new(mount.trim());
    if !path.is_absolute() {
        return Err(ConfigError::value(
            key,
            format!("`{mount}` is not an absolute path"),
        ));
    }
    let own = ["/workspace", "/tmp", "/proc", "/dev", "/sys"];
    if path.parent().is_none() || own.iter().any(|o| path.starts_with(o)) {
        return Err(ConfigError::value(
            key,
            format!("`{mount}` is part of the sandbox itself and cannot be mounted from the host"),
        ));
    }
    if !path.is_dir() {
        return Err(ConfigError::value(
            key,
            format!("`{mount}` is not a directory on this machine"),
        ));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio(name: &str) -> McpFile {
        McpFile {
            name: Some(name.into()),
            command: Some("mcp-server-time".into()),
            ..McpFile::default()
        }
    }

    #[test]
    fn transports_and_defaults() {
        let mut http = McpFile {
            name: Some("docs".into()),
            url: Some("http://127.0.0.1:9/mcp".into()),
            ..McpFile::default()
        };
        http.headers
            .insert("Authorization".into(), "Bearer s3cr3t-token".into());
        http.approval = Some(ApprovalFile::Tools(vec!["delete".into()]));
        let servers = validate(vec![stdio("time"), http]).unwrap();
        assert_eq!(servers[0].transport.kind(), "stdio");
        assert_eq!(servers[0].call_timeout, DEFAULT_CALL_TIMEOUT);
        assert_eq!(servers[0].channels[0].as_str(), "*");
        assert!(!servers[0].approval.any());
        assert!(servers[1].approval.needed("delete", "docs__delete"));
        assert!(!servers[1].approval.needed("read", "docs__read"));
        assert!(
            servers[1]
                .transport
                .secrets()
                .contains(&"s3cr3t-token".to_string())
        );
        let debug = format!("{:?}", servers[1]);
        assert!(
            !debug.contains("s3cr3t") && debug.contains("Authorization"),
            "{debug}"
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        let err = |f: McpFile| validate(vec![f]).unwrap_err().to_string();
        let e = err(McpFile {
            name: Some("x".into()),
            ..McpFile::default()
        });
        assert!(
            e.contains("`mcp.x`") && e.contains("command") && e.contains("url"),
            "{e}"
        );
        let mut both = stdio("x");
        both.url = Some("http://h/mcp".into());
        assert!(err(both).contains("both"));
        assert!(err(stdio("a__b")).contains("mcp.a__b.name"));
        assert!(err(stdio("a b")).contains("mcp.a b.name"));
        let e = validate(vec![stdio("t"), stdio("t")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mcp.t.name"), "{e}");
        let mut t = stdio("t");
        t.timeout_seconds = Some(0);
        assert!(err(t).contains("mcp.t.timeout_seconds"));
        let mut t = stdio("t");
        t.channels = Some(vec!["C1".into()]);
        assert!(err(t).contains("mcp.t.channels"));
        let e = err(McpFile {
            name: Some("h".into()),
            url: Some("ftp://h/mcp".into()),
            ..McpFile::default()
        });
        assert!(e.contains("mcp.h.url"), "{e}");
        let e = validate(vec![McpFile::default()]).unwrap_err().to_string();
        assert!(e.contains("mcp[0].name"), "{e}");
    }

    #[test]
    fn sandboxed_servers_and_their_mounts() {
        // A directory outside /tmp (which the sandbox has its own of).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut t = stdio("t");
        t.sandbox = Some(true);
        t.mounts = vec![dir.display().to_string()];
        let servers = validate(vec![t]).unwrap();
        assert!(servers[0].sandbox);
        assert_eq!(servers[0].mounts, vec![dir.clone()]);
        assert!(!validate(vec![stdio("u")]).unwrap()[0].sandbox);

        let err = |f: McpFile| validate(vec![f]).unwrap_err().to_string();
        let http = McpFile {
            name: Some("h".into()),
            url: Some("http://127.0.0.1:9/mcp".into()),
            sandbox: Some(true),
            ..McpFile::default()
        };
        let e = err(http);
        assert!(e.contains("mcp.h.sandbox") && e.contains("stdio"), "{e}");
        let mut t = stdio("t");
        t.mounts = vec![dir.display().to_string()];
        let e = err(t);
        assert!(
            e.contains("mcp.t.mounts") && e.contains("sandbox = true"),
            "{e}"
        );
        for (mount, says) in [
            ("relative/dir", "absolute"),
            ("/", "part of the sandbox"),
            ("/tmp/x", "part of the sandbox"),
            ("/workspace", "part of the sandbox"),
            ("/nonexistent/python", "not a directory"),
        ] {
            let mut t = stdio("t");
            t.sandbox = Some(true);
            t.mounts = vec![mount.into()];
            let e = err(t);
            assert!(
                e.contains("mcp.t.mounts") && e.contains(says),
                "{mount}: {e}"
            );
        }
    }
}
