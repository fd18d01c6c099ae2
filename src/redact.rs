//! Keeping secrets out of everything that leaves the process: one [`Redactor`] that knows every
//! configured secret value (model API keys, Slack and Discord tokens and secrets, the admin
//! token, the secret key, the database password, the S3 secret key, MCP servers' env and header
//! values) and masks them, plus the passwords of any URL (`scheme://user:password@host`,
//! `?password=…`), in log lines, chat replies, `ecdysis doctor` and error output.
//!
//! The process has one: [`global`]. `main` and [`crate::server::app::App`] register their
//! configuration's secrets with it ([`Redactor::add_config`]); the log writer
//! ([`MakeRedactingWriter`]), the bus (every reply before the outbox stores it), the model
//! providers (error bodies) and `doctor` run their text through it. Secrets learnt later are
//! added with [`Redactor::add_secret`].
//!
//! Values shorter than [`MIN_SECRET_CHARS`] are too common to mask in free text (a database
//! password `ecdysis` would mask the program's own name); URL passwords are masked whatever
//! their length.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, LazyLock, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use regex::Regex;

use crate::config::{Config, SearchProvider};

/// What a configured secret value becomes in free text.
pub const MASK: &str = "[redacted]";
/// What a URL's password becomes (`postgres://u:***@host/db`, `?password=***`).
pub const URL_MASK: &str = "***";
/// Shorter values are masked only where they stand as URL passwords.
pub const MIN_SECRET_CHARS: usize = 8;

/// Query parameters whose values are secrets (`sslpassword` for Postgres client keys, the rest
/// common names for keys and tokens in URLs).
const SECRET_PARAMS: &str = "password|sslpassword|passwd|pwd|pass|secret|client_secret|token|access_token|refresh_token|api_key|apikey|key";

/// `scheme://user:PASSWORD@` anywhere in a text. (Both patterns are constants; a unit test
/// proves they compile.)
static URL_USERINFO: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"(?i)([a-z][a-z0-9+.\-]*://[^/\s:@'"<>]*:)[^@\s/'"<>]+@"#).ok());

/// `?password=VALUE` (also `&`, `;`) anywhere in a text.
static URL_SECRET_PARAM: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(&format!(r#"(?i)([?&;](?:{SECRET_PARAMS})=)[^&;\s'"<>#]+"#)).ok());

/// The process's redactor.
pub fn global() -> &'static Redactor {
    static GLOBAL: LazyLock<Redactor> = LazyLock::new(Redactor::default);
    &GLOBAL
}

/// Masks secret values in text. Cheap to clone (clones share their secrets).
#[derive(Clone, Default)]
pub struct Redactor {
    matcher: Arc<RwLock<Arc<Matcher>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.current().secrets.len())
            .finish()
    }
}

/// The secrets and an automaton over every form they may take in text.
#[derive(Default)]
struct Matcher {
    secrets: BTreeSet<String>,
    automaton: Option<AhoCorasick>,
}

impl Matcher {
    fn build(secrets: BTreeSet<String>) -> Self {
        let patterns: BTreeSet<String> = secrets.iter().flat_map(|s| forms(s)).collect();
        let automaton = if patterns.is_empty() {
            None
        } else {
            // Longest first, so a secret containing another is masked whole. (No logging here:
            // the log writer reads this matcher.)
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Self { secrets, automaton }
    }
}

/// The ways a secret value shows in text: as is, escaped inside a JSON string (JSON logs),
/// and percent-encoded (inside a URL).
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string()];
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json[1..json.len() - 1].to_string());
    }
    forms.push(
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    );
    forms.sort();
    forms.dedup();
    forms
}

impl Redactor {
    /// A redactor knowing the secrets of `config`.
    pub fn from_config(config: &Config) -> Self {
        let redactor = Self::default();
        redactor.add_config(config);
        redactor
    }

    fn current(&self) -> Arc<Matcher> {
        self.matcher
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Learn every secret value of a configuration.
    pub fn add_config(&self, config: &Config) {
        self.add_secrets(config_secrets(config));
    }

    /// Learn one secret value (ignored when shorter than [`MIN_SECRET_CHARS`]).
    pub fn add_secret(&self, secret: &str) {
        self.add_secrets([secret.to_string()]);
    }

    fn add_secrets(&self, secrets: impl IntoIterator<Item = String>) {
        let new: Vec<String> = secrets
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| s.chars().count() >= MIN_SECRET_CHARS)
            .collect();
        let mut guard = self.matcher.write().unwrap_or_else(|p| p.into_inner());
        if new.iter().all(|s| guard.secrets.contains(s)) {
            return;
        }
        let mut all = guard.secrets.clone();
        all.extend(new);
        *guard = Arc::new(Matcher::build(all));
    }

    /// How many secret values it knows.
    pub fn len(&self) -> usize {
        self.current().secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `text` with every known secret value replaced by [`MASK`] and every URL password by
    /// [`URL_MASK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let matcher = self.current();
        let text = match &matcher.automaton {
            Some(automaton) if automaton.is_match(text) => {
                let masks = vec![MASK; automaton.patterns_len()];
                Cow::Owned(automaton.replace_all(text, &masks))
            }
            _ => Cow::Borrowed(text),
        };
        match mask_urls(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(masked) => Cow::Owned(masked),
        }
    }

    /// [`Redactor::redact`] into an owned string.
    pub fn redact_string(&self, text: &str) -> String {
        self.redact(text).into_owned()
    }

    /// At most `max_chars` of the redacted text (masking first, so a secret cut in half
    /// cannot leave its first half behind), with `…` when cut.
    pub fn snippet(&self, text: &str, max_chars: usize) -> String {
        let redacted = self.redact(text);
        let trimmed = redacted.trim();
        if trimmed.chars().count() <= max_chars {
            return trimmed.to_string();
        }
        let mut cut: String = trimmed.chars().take(max_chars).collect();
        cut.push('…');
        cut
    }
}

/// URL passwords in free text: `scheme://user:***@` and `?password=***`.
fn mask_urls(text: &str) -> Cow<'_, str> {
    // Cheap checks first: most log lines hold no URL and no query string.
    let text = match URL_USERINFO.as_ref() {
        Some(re) if text.contains("://") => {
            re.replace_all(text, format!("${{1}}{URL_MASK}@").as_str())
        }
        _ => Cow::Borrowed(text),
    };
    let Some(re) = URL_SECRET_PARAM
        .as_ref()
        .filter(|_| text.contains(['?', '&', ';']))
    else {
        return text;
    };
    match re.replace_all(&text, format!("${{1}}{URL_MASK}").as_str()) {
        Cow::Borrowed(_) => text,
        Cow::Owned(masked) => Cow::Owned(masked),
    }
}

/// A URL for messages and logs: its password (user info and `?password=`-style query
/// parameters) replaced by `***`. Text that does not parse as a URL still loses anything
/// between `://` and the last `@`.
pub fn url(text: &str) -> String {
    let userinfo_masked = match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some(URL_MASK));
            url.to_string()
        }
        Ok(_) => text.to_string(),
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(start), Some(at)) if at > start + 3 => {
                format!("{}{URL_MASK}{}", &text[..start + 3], &text[at..])
            }
            _ => text.to_string(),
        },
    };
    mask_urls(&userinfo_masked).into_owned()
}

/// Every secret value of a configuration, in the forms it is configured in.
fn config_secrets(config: &Config) -> Vec<String> {
    let mut secrets: Vec<String> = [
        &config.anthropic.api_key,
        &config.openai.api_key,
        &config.slack.bot_token,
        &config.slack.signing_secret,
        &config.slack.app_token,
        &config.slack.client_secret,
        &config.discord.token,
        &config.admin_token,
        &config.secret_key,
        &config.s3.secret_access_key,
        &config.s3.session_token,
        &config.media.transcribe_api_key(),
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    // The OAuth client's HTTP Basic credentials, as an `authorization` header would show them.
    if let (Some(id), Some(secret)) = (&config.slack.client_id, &config.slack.client_secret) {
        secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
    }
    secrets.extend(url_passwords(&config.database_url));
    // MCP servers' env and header values.
    for server in &config.mcp {
        secrets.extend(server.transport.secrets());
    }
    // The web search provider's API key.
    if let Some(search) = &config.web_search {
        match &search.provider {
            SearchProvider::Brave { api_key } | SearchProvider::Tavily { api_key } => {
                secrets.push(api_key.clone());
            }
            SearchProvider::Searxng => {}
        }
    }
    // The embeddings endpoint's key (ECDYSIS_EMBEDDINGS_API_KEY).
    if let Some(crate::embeddings::EmbedderSpec::OpenAi {
        api_key: Some(key), ..
    }) = config.embeddings.as_ref().map(|e| &e.embedder)
    {
        secrets.push(key.clone());
    }
    secrets
}

/// The passwords a database URL carries: in its user info and in `password`-like query
/// parameters, each as written and percent-decoded.
pub fn url_passwords(text: &str) -> Vec<String> {
    let Ok(url) = url::Url::parse(text) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some(password) = url.password() {
        found.push(password.to_string());
        if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
            found.push(decoded.into_owned());
        }
    }
    let names: Vec<&str> = SECRET_PARAMS.split('|').collect();
    for (name, value) in url.query_pairs() {
        if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) && !value.is_empty() {
            found.push(value.into_owned());
        }
    }
    // As written in the query too (query_pairs decodes).
    for pair in url.query().unwrap_or_default().split(['&', ';']) {
        if let Some((name, value)) = pair.split_once('=')
            && names.iter().any(|n| n.eq_ignore_ascii_case(name))
            && !value.is_empty()
        {
            found.push(value.to_string());
        }
    }
    found.sort();
    found.dedup();
    found
}

/// A `tracing_subscriber` writer factory whose writers pass every log line through the
/// [`Redactor`] before it reaches the underlying writer (text and JSON formats alike).
pub struct MakeRedactingWriter<M> {
    inner: M,
    redactor: Redactor,
}

impl<M> MakeRedactingWriter<M> {
    pub fn new(inner: M, redactor: Redactor) -> Self {
        Self { inner, redactor }
    }
}

impl<'a, M> tracing_subscriber::fmt::MakeWriter<'a> for MakeRedactingWriter<M>
where
    M: tracing_subscriber::fmt::MakeWriter<'a>,
{
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            buffer: Vec::new(),
            inner: self.inner.make_writer(),
            redactor: self.redactor.clone(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            buffer: Vec::new(),
            inner: self.inner.make_writer_for(meta),
            redactor: self.redactor.clone(),
        }
    }
}

/// Collects one log record and writes it, redacted, when dropped (the formatter makes one
/// writer per record, so a secret is never split between two writes).
pub struct RedactingWriter<W: Write> {
    buffer: Vec<u8>,
    inner: W,
    redactor: Redactor,
}

impl<W: Write> RedactingWriter<W> {
    fn emit(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let redacted = self.redactor.redact(&text);
        let result = self.inner.write_all(redacted.as_bytes());
        self.buffer.clear();
        result
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Only whole lines: a record is complete once it ends with a newline.
        if self.buffer.ends_with(b"\n") {
            self.emit()?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.emit();
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn config(env: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(None, &|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn masks_every_configured_secret() {
        let config = config(&[
            ("ANTHROPIC_API_KEY", "sk-ant-abcdef123456"),
            ("OPENAI_API_KEY", "sk-openai-987654"),
            ("SLACK_BOT_TOKEN", "xoxb-1111-2222"),
            ("SLACK_SIGNING_SECRET", "signing-secret-1"),
            ("SLACK_APP_TOKEN", "xapp-3333-4444"),
            ("SLACK_CLIENT_ID", "111.222"),
            ("SLACK_CLIENT_SECRET", "client-secret-9"),
            ("DISCORD_TOKEN", "discord.token.value"),
            ("ECDYSIS_ADMIN_TOKEN", "admin-token-0123456789"),
            ("ECDYSIS_SECRET_KEY", "secret-key-abcdef"),
            ("AWS_SECRET_ACCESS_KEY", "aws/secret+\"key=="),
            (
                "DATABASE_URL",
                "postgres://u:db%2Fpass%40word@h/db?sslpassword=keypass99&password=second-pw",
            ),
        ]);
        let r = Redactor::from_config(&config);
        for secret in [
            "sk-ant-abcdef123456",
            "sk-openai-987654",
            "xoxb-1111-2222",
            "signing-secret-1",
            "xapp-3333-4444",
            "client-secret-9",
            "discord.token.value",
            "admin-token-0123456789",
            "secret-key-abcdef",
            "aws/secret+\"key==",
            "db/pass@word",
            "db%2Fpass%40word",
            "keypass99",
            "second-pw",
        ] {
            let text = format!("before {secret} after");
            assert_eq!(r.redact(&text), format!("before {MASK} after"), "{secret}");
        }
        // JSON-escaped and percent-encoded forms, Basic credentials.
        assert_eq!(
            r.redact(r#"{"k":"aws/secret+\"key=="}"#),
            format!(r#"{{"k":"{MASK}"}}"#)
        );
        assert!(!r.redact("aws%2Fsecret%2B%22key%3D%3D").contains("secret"));
        let basic = base64::engine::general_purpose::STANDARD.encode("111.222:client-secret-9");
        assert_eq!(r.redact(&format!("Basic {basic}")), format!("Basic {MASK}"));
        assert_eq!(r.redact("nothing to hide"), "nothing to hide");
        assert!(matches!(r.redact("nothing to hide"), Cow::Borrowed(_)));
    }

    #[test]
    fn short_values_are_masked_only_in_urls() {
        let config = config(&[("DATABASE_URL", "postgres://u:pw@h/db?password=pw2")]);
        let r = Redactor::from_config(&config);
        assert!(r.is_empty());
        assert_eq!(r.redact("a pw b"), "a pw b");
        assert_eq!(
            r.redact("at postgres://u:pw@h/db?password=pw2 now"),
            "at postgres://u:***@h/db?password=*** now"
        );
    }

    #[test]
    fn web_search_keys_are_secrets() {
        for (provider, env, key) in [
            ("brave", "BRAVE_API_KEY", "brave-key-0123456789"),
            ("tavily", "TAVILY_API_KEY", "tvly-key-0123456789"),
        ] {
            let config = config(&[("ECDYSIS_WEB_SEARCH", provider), (env, key)]);
            let r = Redactor::from_config(&config);
            assert_eq!(
                r.redact(&format!("key {key} sent")),
                format!("key {MASK} sent")
            );
        }
    }

    #[test]
    fn url_patterns_compile() {
        assert!(URL_USERINFO.is_some() && URL_SECRET_PARAM.is_some());
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert!(!url("postgres://u:sec ret@h:bad/db").contains("sec"));
        assert_eq!(
            url("postgres://u:pw@h/db?password=pw2"),
            "postgres://u:***@h/db?password=***"
        );
        assert_eq!(
            url("postgres://h/db?sslmode=require&sslpassword=k3y&PASSWORD=x;pwd=y"),
            "postgres://h/db?sslmode=require&sslpassword=***&PASSWORD=***;pwd=***"
        );
        assert_eq!(
            url("sqlite:///data/e.db?mode=rwc&password=hunter2"),
            "sqlite:///data/e.db?mode=rwc&password=***"
        );
        assert_eq!(url("sqlite://./data/e.db"), "sqlite://./data/e.db");
        assert_eq!(
            url("https://example.com/a?b=c"),
            "https://example.com/a?b=c"
        );
        // Not URLs' ports or paths.
        let plain = "connected to ws://127.0.0.1:8080/gateway and http://[::1]:80/x@y";
        assert_eq!(Redactor::default().redact(plain), plain);
    }

    #[test]
    fn snippets_mask_before_cutting() {
        let r = Redactor::default();
        r.add_secret("0123456789abcdef");
        // The cut falls inside the secret: nothing of it may remain.
        let text = format!("{}0123456789abcdef tail", "x".repeat(10));
        let snippet = r.snippet(&text, 15);
        assert!(!snippet.contains("0123"), "{snippet}");
        assert_eq!(r.snippet("  short  ", 15), "short");
        assert_eq!(r.snippet("abcdef", 3), "abc…");
    }

    #[test]
    fn secrets_added_later_are_masked_by_every_clone() {
        let r = Redactor::default();
        let clone = r.clone();
        r.add_secret("late-secret-value");
        r.add_secret("short");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone.redact("x late-secret-value y"), format!("x {MASK} y"));
        // A secret inside a longer one: the longer is masked whole.
        r.add_secret("late-secret-value-and-more");
        assert_eq!(r.redact("late-secret-value-and-more"), MASK);
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_are_redacted_in_text_and_json() {
        let r = Redactor::default();
        r.add_secret("sk-log-secret-42");
        for json in [false, true] {
            let sink = Sink::default();
            let out = sink.clone();
            let writer = MakeRedactingWriter::new(move || out.clone(), r.clone());
            let builder = tracing_subscriber::fmt()
                .with_writer(writer)
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG);
            let dispatch = if json {
                tracing::Dispatch::new(builder.json().finish())
            } else {
                tracing::Dispatch::new(builder.finish())
            };
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::warn!(
                    body = "echo sk-log-secret-42",
                    "model said sk-log-secret-42"
                );
                tracing::debug!(url = "postgres://u:pw@h/db?password=pw2", "connecting");
            });
            let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            assert!(!log.contains("sk-log-secret-42"), "{log}");
            assert!(!log.contains(":pw@") && !log.contains("pw2"), "{log}");
            assert_eq!(log.matches(MASK).count(), 2, "{log}");
            assert_eq!(log.lines().count(), 2, "{log}");
        }
    }
}
