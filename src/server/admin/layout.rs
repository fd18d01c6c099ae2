//! The admin pages' shared layout (navigation, style), small formatters, and the headers every
//! admin answer carries. Pages are maud templates: every interpolated value is HTML-escaped
//! unless a template says otherwise, so a forgotten escape cannot happen.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// Percent-encode a query value.
pub fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Milliseconds since the epoch as `2026-11-26 23:15:53 UTC`.
pub fn time(ms: impl Into<i64>) -> String {
    ecdysis_chat::time::display_utc(ms.into())
}

/// An optional time, or a dash.
pub fn maybe_time<T: Into<i64>>(ms: Option<T>) -> String {
    ms.map(time).unwrap_or_else(|| "—".into())
}

/// Bytes as `12.3 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A hidden CSRF field for a POST form (empty for bearer callers, who need none).
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A table row saying the table is empty.
pub fn empty_row(columns: u32, text: &str) -> Markup {
    html! { tr { td colspan=(columns) class="muted" { (text) } } }
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f6f8}
header{background:#23252b;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}
header a{color:#d7dcff;text-decoration:none}header a:hover{text-decoration:underline}
header strong{margin-right:1em}header form{margin-left:auto}
main{padding:1em 1.4em;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #e3e3e8;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eceef3;font-weight:600}
.msg{background:#fff;border:1px solid #e3e3e8;border-radius:6px;padding:.6em .8em;margin:.6em 0}
.msg .who{font-size:12px;color:#666;margin-bottom:.3em}
.role-user{border-left:4px solid #4a7bd0}.role-assistant{border-left:4px solid #3aa76d}
.role-tool{border-left:4px solid #b0b0b0;font-size:13px}.role-summary{border-left:4px solid #c08a20}
.msg pre,.text{white-space:pre-wrap;word-break:break-word;margin:0;font:inherit}
pre.meta{font:12px ui-monospace,monospace;background:#f3f3f5;padding:.5em;overflow:auto}
img.artifact,video.artifact{max-width:100%;max-height:480px;display:block;margin:.5em 0;border:1px solid #ddd}
.ok{color:#227a45}.bad{color:#b3261e}.muted{color:#777}
textarea{width:100%;min-height:3.5em;font:inherit}
button{font:inherit;padding:.2em .8em;cursor:pointer}
.inline{display:inline}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #e3e3e8;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:20px}
";

/// The navigation: `(path, label)`.
const NAV: [(&str, &str); 8] = [
    ("/admin", "Overview"),
    ("/admin/conversations", "Conversations"),
    ("/admin/memory", "Memory"),
    ("/admin/usage", "Usage"),
    ("/admin/inbox", "Inbox"),
    ("/admin/schedules", "Schedules"),
    ("/admin/workspaces", "Workspaces"),
    ("/admin/installations", "Installations"),
];

/// A full page with the navigation. `csrf` is the logged-in session's token (for the logout
/// form); `None` for the login page.
pub fn page(title: &str, csrf: Option<&str>, body: Markup) -> HtmlPage {
    HtmlPage(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                title { (title) " · ecdysis admin" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "ecdysis admin" }
                    @if let Some(csrf) = csrf {
                        @for (path, label) in NAV { a href=(path) { (label) } }
                        form method="post" action="/admin/logout" {
                            (csrf_field(csrf)) button { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    })
}

/// A rendered page: answered with headers that keep it from being framed, cached or scripted.
pub struct HtmlPage(pub Markup);

impl HtmlPage {
    /// The page with another status (a login form after a wrong token).
    pub fn with_status(self, status: StatusCode) -> Response {
        let mut response = self.into_response();
        *response.status_mut() = status;
        response
    }
}

impl IntoResponse for HtmlPage {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::OK, self.0.into_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        security_headers(headers);
        response
    }
}

/// The headers of every admin answer.
pub fn security_headers(headers: &mut HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with
    // the pages' own form posts, which the cross-origin guard rightly refuses. Other sites still
    // get no referrer.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// A plain-text answer (errors), with the same headers.
pub fn plain_text(status: StatusCode, message: &str) -> Response {
    let mut response = (status, message.to_string()).into_response();
    security_headers(response.headers_mut());
    response
}

/// After a change: back to a page (303, so a reload does not post again).
pub fn see_other(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(to) => (StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response(),
        Err(_) => (StatusCode::SEE_OTHER, [(LOCATION, "/admin")]).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(query_value("web:local:a b/c"), "web%3Alocal%3Aa+b%2Fc");
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(maybe_time(None::<i64>), "—");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MB");
    }

    #[test]
    fn everything_interpolated_is_escaped() {
        let hostile = r#"<img src=x onerror="a('b')">&"#;
        let html = page(hostile, Some(hostile), html! { p { (hostile) } })
            .0
            .into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=&quot;a('b')&quot;&gt;&amp;"));
        // The CSRF value sits inside an attribute: its quotes cannot end it.
        assert!(
            html.contains(r#"value="&lt;img src=x onerror=&quot;"#),
            "{html}"
        );
    }
}
