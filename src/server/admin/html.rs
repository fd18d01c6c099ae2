//! The admin pages' HTML: escaping, the shared layout and small formatters. Server-rendered,
//! no scripts, a little inline CSS.

use std::fmt::Write;

/// Escape text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a query value.
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Milliseconds since the epoch as `2026-11-26 23:15:53 UTC`.
pub fn time(ms: impl Into<i64>) -> String {
    let text = ecdysis_web::rfc3339_utc(ms.into());
    format!("{} UTC", text.get(..19).unwrap_or(&text).replace('T', " "))
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
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
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

/// A full page with the navigation. `csrf` is the logged-in session's token (for the logout
/// form); `None` for the login page.
pub fn page(title: &str, csrf: Option<&str>, body: &str) -> String {
    let nav = match csrf {
        Some(csrf) => format!(
            r#"<a href="/admin">Overview</a><a href="/admin/conversations">Conversations</a><a href="/admin/memory">Memory</a><a href="/admin/usage">Usage</a><a href="/admin/inbox">Inbox</a><a href="/admin/schedules">Schedules</a><a href="/admin/workspaces">Workspaces</a><a href="/admin/installations">Installations</a><form method="post" action="/admin/logout">{}<button>Log out</button></form>"#,
            csrf_field(csrf)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title} · ecdysis admin</title><style>{STYLE}</style></head>
<body><header><strong>ecdysis admin</strong>{nav}</header><main><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(query_value("web:local:a b/c"), "web%3Alocal%3Aa%20b%2Fc");
    }

    #[test]
    fn formats() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MB");
        assert!(page("T<", Some("c"), "").contains("T&lt;"));
    }
}
