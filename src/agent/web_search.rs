//! The `web_search` tool: the Brave Search API, Tavily or a SearXNG instance
//! (`ECDYSIS_WEB_SEARCH`), results for the model as title, URL and snippet.
//!
//! `ECDYSIS_WEB_SEARCH_URL` replaces the provider's scheme and host and keeps its paths
//! (`/res/v1/web/search`, `/search`), so a proxy or a test server can stand in for it. A 429
//! with a short `Retry-After` is retried once; other failures (429, 5xx, time-outs, a refused
//! key) are clear tool errors.

use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use ecdysis_chat::request::retry_after_seconds;

use crate::config::{SearchProvider, WebSearchSettings};
use crate::engine::tools::{Tool, ToolContext, ToolError, ToolOutput, arguments, input_schema_of};

/// Results returned when the model does not say how many.
pub const DEFAULT_COUNT: usize = 5;
/// The most results one search returns.
pub const MAX_COUNT: usize = 20;
/// The longest `Retry-After` waited for (once).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest snippet, in characters.
const SNIPPET_CHARS: usize = 400;
/// The largest response read.
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// One result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchResult {
    pub title: String,
    pub url: String,
    pub snippet: String,
}

/// Why a search failed, in words for the model.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(
        "the search provider ({provider}) is rate-limiting us (HTTP 429){after}; try again later"
    )]
    RateLimited {
        provider: &'static str,
        after: String,
    },
    #[error("the search provider ({provider}) failed: HTTP {status}")]
    Server { provider: &'static str, status: u16 },
    #[error("the search provider ({provider}) refused the API key (HTTP {status}); check {env}")]
    Unauthorized {
        provider: &'static str,
        status: u16,
        env: &'static str,
    },
    #[error("the search provider ({provider}) answered HTTP {status}: {body}")]
    Status {
        provider: &'static str,
        status: u16,
        body: String,
    },
    #[error("the search provider ({provider}) did not answer within {seconds} s")]
    Timeout {
        provider: &'static str,
        seconds: u64,
    },
    #[error("could not reach the search provider ({provider}): {reason}")]
    Connect {
        provider: &'static str,
        reason: String,
    },
    #[error("the search provider's answer could not be read: {0}")]
    Malformed(String),
}

/// The configured search API.
#[derive(Clone)]
pub struct WebSearch {
    settings: WebSearchSettings,
    http: reqwest::Client,
}

impl WebSearch {
    pub fn new(settings: WebSearchSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("ecdysis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { settings, http })
    }

    fn provider(&self) -> &'static str {
        match self.settings.provider {
            SearchProvider::Brave { .. } => "Brave",
            SearchProvider::Tavily { .. } => "Tavily",
            SearchProvider::Searxng => "SearXNG",
        }
    }

    /// The provider's path under the configured base (which may carry a path prefix).
    fn endpoint(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.settings.base_url.as_str().trim_end_matches('/')
        )
    }

    fn request(&self, query: &str, count: usize) -> reqwest::RequestBuilder {
        match &self.settings.provider {
            SearchProvider::Brave { api_key } => self
                .http
                .get(self.endpoint("/res/v1/web/search"))
                .query(&[("q", query), ("count", &count.to_string())])
                .header("Accept", "application/json")
                .header("X-Subscription-Token", api_key),
            SearchProvider::Tavily { api_key } => self
                .http
                .post(self.endpoint("/search"))
                .bearer_auth(api_key)
                .json(&json!({ "api_key": api_key, "query": query, "max_results": count })),
            SearchProvider::Searxng => self
                .http
                .get(self.endpoint("/search"))
                .query(&[("q", query), ("format", "json")])
                .header("Accept", "application/json"),
        }
    }

    /// Search, retrying once after a short `Retry-After`.
    pub async fn search(
        &self,
        query: &str,
        count: usize,
    ) -> Result<Vec<SearchResult>, SearchError> {
        let count = count.clamp(1, MAX_COUNT);
        let mut retried = false;
        loop {
            match self.once(query, count).await {
                Err(SearchError::RateLimited { after, .. }) if !retried => {
                    let wait = retry_after_seconds(&after);
                    match wait {
                        Some(wait) if wait <= MAX_RETRY_AFTER => {
                            debug!(
                                seconds = wait.as_secs_f64(),
                                "search rate-limited; retrying once"
                            );
                            retried = true;
                            tokio::time::sleep(wait).await;
                        }
                        _ => {
                            return Err(SearchError::RateLimited {
                                provider: self.provider(),
                                after: describe_after(&after),
                            });
                        }
                    }
                }
                Err(SearchError::RateLimited { after, provider }) => {
                    return Err(SearchError::RateLimited {
                        provider,
                        after: describe_after(&after),
                    });
                }
                other => return other,
            }
        }
    }

    async fn once(&self, query: &str, count: usize) -> Result<Vec<SearchResult>, SearchError> {
        let provider = self.provider();
        let response = self.request(query, count).send().await.map_err(|e| {
            if e.is_timeout() {
                SearchError::Timeout {
                    provider,
                    seconds: self.settings.timeout.as_secs(),
                }
            } else {
                SearchError::Connect {
                    provider,
                    reason: without_url(e),
                }
            }
        })?;
        let status = response.status().as_u16();
        if status == 429 {
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            return Err(SearchError::RateLimited { provider, after });
        }
        if status >= 500 {
            warn!(provider, status, "the search provider failed");
            return Err(SearchError::Server { provider, status });
        }
        if status == 401 || status == 403 {
            let env = match self.settings.provider {
                SearchProvider::Brave { .. } => "BRAVE_API_KEY",
                SearchProvider::Tavily { .. } => "TAVILY_API_KEY",
                SearchProvider::Searxng => {
                    "the SearXNG instance's settings (format=json must be enabled)"
                }
            };
            return Err(SearchError::Unauthorized {
                provider,
                status,
                env,
            });
        }
        let body = read_limited(response).await.map_err(|e| {
            if e.is_timeout() {
                SearchError::Timeout {
                    provider,
                    seconds: self.settings.timeout.as_secs(),
                }
            } else {
                SearchError::Connect {
                    provider,
                    reason: without_url(e),
                }
            }
        })?;
        if !(200..300).contains(&status) {
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(SearchError::Status {
                provider,
                status,
                body: text,
            });
        }
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| SearchError::Malformed(e.to_string()))?;
        let mut results = parse_results(&self.settings.provider, &value)?;
        results.truncate(count);
        Ok(results)
    }
}

/// Read a response body up to [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// A reqwest error without the URL (a gateway may carry a key in its query).
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

fn describe_after(text: &str) -> String {
    match retry_after_seconds(text) {
        Some(wait) => format!(" and asks to wait {} s", wait.as_secs_f64().ceil() as u64),
        None if text.trim().is_empty() => String::new(),
        None => format!(" (Retry-After: {})", text.trim()),
    }
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    title: String,
    #[serde(default)]
    url: String,
    /// Brave.
    #[serde(default)]
    description: String,
    /// Tavily and SearXNG.
    #[serde(default)]
    content: String,
}

/// The results of a provider's JSON answer.
pub fn parse_results(
    provider: &SearchProvider,
    value: &Value,
) -> Result<Vec<SearchResult>, SearchError> {
    let list = match provider {
        SearchProvider::Brave { .. } => value.pointer("/web/results"),
        SearchProvider::Tavily { .. } | SearchProvider::Searxng => value.get("results"),
    };
    let items: Vec<Item> = match list {
        None | Some(Value::Null) => Vec::new(),
        Some(list) => serde_json::from_value(list.clone())
            .map_err(|e| SearchError::Malformed(format!("results: {e}")))?,
    };
    Ok(items
        .into_iter()
        .filter(|i| !i.url.is_empty())
        .map(|i| {
            let snippet = if i.description.is_empty() {
                i.content
            } else {
                i.description
            };
            SearchResult {
                title: clean(&i.title, 200),
                url: i.url,
                snippet: clean(&snippet, SNIPPET_CHARS),
            }
        })
        .collect())
}

/// Plain text of a snippet: the provider's highlight tags (`<strong>`) and entities removed,
/// whitespace collapsed, at most `max` characters.
fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    let words: Vec<&str> = out.split_whitespace().collect();
    let out = words.join(" ");
    if out.chars().count() > max {
        let mut cut: String = out.chars().take(max).collect();
        cut.push('…');
        cut
    } else {
        out
    }
}

/// The results as the model reads them.
pub fn render(query: &str, results: &[SearchResult]) -> String {
    if results.is_empty() {
        return format!("No results for “{query}”.");
    }
    let mut out = format!("Results for “{query}”:\n");
    for (i, r) in results.iter().enumerate() {
        out.push_str(&format!("\n{}. {}\n   {}\n", i + 1, r.title, r.url));
        if !r.snippet.is_empty() {
            out.push_str(&format!("   {}\n", r.snippet));
        }
    }
    out.push_str("\nUse fetch_url (or browser_open) to read a result.");
    out
}

/// `web_search`.
pub struct WebSearchTool {
    search: WebSearch,
}

impl WebSearchTool {
    pub fn new(search: WebSearch) -> Self {
        Self { search }
    }
}

/// What the model passes to `web_search`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WebSearchArgs {
    query: String,
    /// results (default 5)
    #[schemars(range(min = 1, max = MAX_COUNT))]
    count: Option<usize>,
}

#[async_trait]
impl Tool for WebSearchTool {
    fn name(&self) -> &'static str {
        "web_search"
    }

    fn description(&self) -> &'static str {
        "Search the web. Returns titles, URLs and snippets; read a result with fetch_url."
    }

    fn input_schema(&self) -> Value {
        input_schema_of::<WebSearchArgs>()
    }

    async fn call(&self, _context: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let args: WebSearchArgs = arguments(input)?;
        let query = args.query.trim();
        if query.is_empty() {
            return Err(ToolError::InvalidInput("the query is empty".into()));
        }
        let count = args.count.unwrap_or(DEFAULT_COUNT);
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(ToolError::InvalidInput(format!(
                "count must be from 1 to {MAX_COUNT}"
            )));
        }
        let results = self
            .search
            .search(query, count)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(ToolOutput::text(render(query, &results)))
    }
}

/// The `web_search` tool when a provider is configured.
pub fn tool(settings: Option<&WebSearchSettings>) -> Option<WebSearchTool> {
    let settings = settings?;
    match WebSearch::new(settings.clone()) {
        Ok(search) => Some(WebSearchTool::new(search)),
        Err(e) => {
            warn!(error = %e, "web_search is off: its HTTP client could not be built");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brave_results_read_as_title_url_snippet() {
        let value = json!({ "web": { "results": [
            { "title": "Rust &amp; you", "url": "https://rust-lang.org/", "description": "A <strong>language</strong> empowering everyone" },
            { "title": "no url" }
        ] } });
        let results = parse_results(
            &SearchProvider::Brave {
                api_key: "k".into(),
            },
            &value,
        )
        .unwrap();
        assert_eq!(
            results,
            vec![SearchResult {
                title: "Rust & you".into(),
                url: "https://rust-lang.org/".into(),
                snippet: "A language empowering everyone".into(),
            }]
        );
        let none = parse_results(&SearchProvider::Searxng, &json!({ "results": [] })).unwrap();
        assert!(none.is_empty());
        assert!(parse_results(&SearchProvider::Searxng, &json!({ "results": 3 })).is_err());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(retry_after_seconds("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after_seconds(" 0.5 "),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_after_seconds("soon"), None);
        assert_eq!(describe_after("30"), " and asks to wait 30 s");
        assert_eq!(describe_after(""), "");
    }

    #[test]
    fn the_schema_is_what_the_model_read_before() {
        let schema = input_schema_of::<WebSearchArgs>();
        assert_eq!(schema["required"], json!(["query"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["query"]["type"], "string");
        let count = &schema["properties"]["count"];
        assert_eq!(
            (&count["minimum"], &count["maximum"]),
            (&json!(1), &json!(MAX_COUNT))
        );
        assert_eq!(count["description"], "results (default 5)");
        assert!(arguments::<WebSearchArgs>(json!({ "query": "q", "page": 2 })).is_err());
    }

    #[test]
    fn rendering_numbers_the_results() {
        let text = render(
            "rust",
            &[SearchResult {
                title: "Rust".into(),
                url: "https://rust-lang.org/".into(),
                snippet: "fast".into(),
            }],
        );
        assert!(
            text.contains("1. Rust\n   https://rust-lang.org/\n   fast"),
            "{text}"
        );
        assert_eq!(render("x", &[]), "No results for “x”.");
        assert!(clean(&"a ".repeat(500), 10).ends_with('…'));
    }
}
