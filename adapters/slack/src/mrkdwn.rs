//! Markdown (as models write it) to Slack's mrkdwn: `**bold**` → `*bold*`, `*it*` → `_it_`,
//! `~~x~~` → `~x~`, `[text](url)` → `<url|text>`, headings → bold lines, `-` lists → `•`,
//! fenced code kept (language tags dropped), and `&`, `<`, `>` escaped everywhere else.

/// Convert a Markdown text to mrkdwn.
pub fn from_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut in_code = false;
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            // Opening fences lose their language tag; text after a closing fence stays.
            if in_code {
                out.push_str("```");
                out.push_str(&escape(trimmed.trim_start_matches('`')));
            } else {
                out.push_str("```");
            }
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&escape(line));
            continue;
        }
        out.push_str(&convert_line(line));
    }
    out
}

fn convert_line(line: &str) -> String {
    let indent_len = line.len() - line.trim_start().len();
    let (indent, rest) = line.split_at(indent_len);
    // Headings become bold lines.
    let hashes = rest.chars().take_while(|c| *c == '#').count();
    if (1..=6).contains(&hashes) && rest[hashes..].starts_with(' ') {
        let title = rest[hashes..].trim().trim_end_matches('#').trim();
        let title = strip_bold_markers(title);
        return format!("{indent}*{}*", inline(&title));
    }
    // Horizontal rules.
    let compact: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.len() >= 3
        && (compact.chars().all(|c| c == '-')
            || compact.chars().all(|c| c == '*')
            || compact.chars().all(|c| c == '_'))
    {
        return "──────────".to_string();
    }
    // Bullets.
    for marker in ["- ", "* ", "+ "] {
        if let Some(item) = rest.strip_prefix(marker) {
            let item = task_box(item);
            return format!("{indent}• {}", inline(&item));
        }
    }
    // Quotes keep Slack's own `>`.
    if let Some(quoted) = rest.strip_prefix('>') {
        return format!("{indent}>{}", inline(quoted));
    }
    format!("{indent}{}", inline(rest))
}

fn task_box(item: &str) -> String {
    if let Some(rest) = item.strip_prefix("[ ] ") {
        format!("☐ {rest}")
    } else if let Some(rest) = item
        .strip_prefix("[x] ")
        .or_else(|| item.strip_prefix("[X] "))
    {
        format!("☑ {rest}")
    } else {
        item.to_string()
    }
}

fn strip_bold_markers(text: &str) -> String {
    let t = text.trim();
    for marker in ["**", "__"] {
        if let Some(inner) = t.strip_prefix(marker).and_then(|r| r.strip_suffix(marker)) {
            return inner.to_string();
        }
    }
    t.to_string()
}

/// Escape what mrkdwn treats as markup.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Inline spans: code, links, emphasis, strike-through, autolinks.
fn inline(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev_is_word = i > 0 && chars[i - 1].is_alphanumeric();
        match c {
            '`' => {
                if let Some(end) = find(&chars, i + 1, &['`']) {
                    let code: String = chars[i + 1..end].iter().collect();
                    out.push('`');
                    out.push_str(&escape(&code));
                    out.push('`');
                    i = end + 1;
                    continue;
                }
            }
            '!' if chars.get(i + 1) == Some(&'[') => {
                if let Some((label, url, next)) = link(&chars, i + 1) {
                    out.push_str(&format!("<{}|{}>", url, escape_label(&label)));
                    i = next;
                    continue;
                }
            }
            '[' => {
                if let Some((label, url, next)) = link(&chars, i) {
                    out.push_str(&format!("<{}|{}>", url, escape_label(&label)));
                    i = next;
                    continue;
                }
            }
            '*' | '_' if chars.get(i + 1) == Some(&c) && !prev_is_word => {
                if let Some(end) = find_pair(&chars, i + 2, c)
                    && end > i + 2
                {
                    let inner: String = chars[i + 2..end].iter().collect();
                    out.push('*');
                    out.push_str(&inline(&inner));
                    out.push('*');
                    i = end + 2;
                    continue;
                }
            }
            '~' if chars.get(i + 1) == Some(&'~') => {
                if let Some(end) = find_pair(&chars, i + 2, '~')
                    && end > i + 2
                {
                    let inner: String = chars[i + 2..end].iter().collect();
                    out.push('~');
                    out.push_str(&inline(&inner));
                    out.push('~');
                    i = end + 2;
                    continue;
                }
            }
            '*' | '_'
                if !prev_is_word
                    && chars
                        .get(i + 1)
                        .is_some_and(|n| !n.is_whitespace() && *n != c) =>
            {
                if let Some(end) = find_single(&chars, i + 1, c) {
                    let inner: String = chars[i + 1..end].iter().collect();
                    out.push('_');
                    out.push_str(&inline(&inner));
                    out.push('_');
                    i = end + 1;
                    continue;
                }
            }
            '<' => {
                if let Some(end) = find(&chars, i + 1, &['>']) {
                    let inner: String = chars[i + 1..end].iter().collect();
                    if is_url(&inner) && !inner.contains(char::is_whitespace) {
                        out.push_str(&format!("<{inner}>"));
                        i = end + 1;
                        continue;
                    }
                }
            }
            _ => {}
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://") || text.starts_with("mailto:")
}

fn escape_label(label: &str) -> String {
    escape(label).replace('|', "¦")
}

fn find(chars: &[char], from: usize, any: &[char]) -> Option<usize> {
    (from..chars.len()).find(|&j| any.contains(&chars[j]))
}

/// The start of the closing `cc` for a `cc` opened before `from`.
fn find_pair(chars: &[char], from: usize, c: char) -> Option<usize> {
    (from..chars.len().saturating_sub(1)).find(|&j| chars[j] == c && chars[j + 1] == c)
}

/// A closing single `c` that is not doubled, follows a non-space and is not inside a word.
fn find_single(chars: &[char], from: usize, c: char) -> Option<usize> {
    (from..chars.len()).find(|&j| {
        chars[j] == c
            && !chars[j - 1].is_whitespace()
            && chars.get(j + 1) != Some(&c)
            && !chars.get(j + 1).is_some_and(|n| n.is_alphanumeric())
    })
}

/// `[label](url)` starting at `start` (the `[`): the label, the URL and the index after it.
fn link(chars: &[char], start: usize) -> Option<(String, String, usize)> {
    let close = find(chars, start + 1, &[']'])?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = find(chars, close + 2, &[')'])?;
    let label: String = chars[start + 1..close].iter().collect();
    let url: String = chars[close + 2..end].iter().collect();
    let url = url.split_whitespace().next()?.to_string();
    if !is_url(&url) {
        return None;
    }
    let label = if label.trim().is_empty() {
        url.clone()
    } else {
        label
    };
    Some((label, url, end + 1))
}

#[cfg(test)]
mod tests {
    use super::from_markdown as md;

    #[test]
    fn emphasis() {
        assert_eq!(
            md("**bold** and *it* and _it_ and ~~no~~"),
            "*bold* and _it_ and _it_ and ~no~"
        );
        assert_eq!(md("__bold__"), "*bold*");
        assert_eq!(md("snake_case_name and 2*3*4"), "snake_case_name and 2*3*4");
        assert_eq!(md("**bold with *it* inside**"), "*bold with _it_ inside*");
    }

    #[test]
    fn links_and_escapes() {
        assert_eq!(
            md("see [the docs](https://a.b/c?x=1&y=2) & <https://x.y>"),
            "see <https://a.b/c?x=1&y=2|the docs> &amp; <https://x.y>"
        );
        assert_eq!(md("a < b > c"), "a &lt; b &gt; c");
        assert_eq!(md("[not a link](ftp)"), "[not a link](ftp)");
        assert_eq!(md("![plot](https://x/p.png)"), "<https://x/p.png|plot>");
    }

    #[test]
    fn blocks() {
        assert_eq!(md("# Title\n## **Sub**"), "*Title*\n*Sub*");
        assert_eq!(md("- one\n  * two\n+ [x] done"), "• one\n  • two\n• ☑ done");
        assert_eq!(md("> quoted *it*"), "> quoted _it_");
        assert_eq!(md("---"), "──────────");
    }

    #[test]
    fn code_is_kept() {
        assert_eq!(
            md("```rust\nlet a = b && c < d;\n**not bold**\n```\nafter **x**"),
            "```\nlet a = b &amp;&amp; c &lt; d;\n**not bold**\n```\nafter *x*"
        );
        assert_eq!(md("use `a<b>` here"), "use `a&lt;b&gt;` here");
    }
}
