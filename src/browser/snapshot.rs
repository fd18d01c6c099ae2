//! The model's view of a page: a compact text snapshot with numbered references (`[12]`) to the
//! interactive elements (links, buttons, inputs, selects, text areas, ARIA widgets), headings
//! and visible text, cut to a token budget.
//!
//! A DOM walk in the page (open shadow roots included) writes one line per block of text, with
//! the interactive elements inline where they stand: `Signed in as Ann · [7] link "Log out"`.
//! Each interactive element gets a number that is kept while it lives (the page's
//! `window.__ecdysisRefs` maps numbers to elements, and `data-ecdysis-ref` marks them); a new
//! page gets new numbers, never ones used before in the session, so an old reference can only
//! miss, never hit the wrong element.

use serde::Deserialize;

use super::{BrowserError, PageLease};

/// Characters per estimated token (the agent's own estimate).
pub const CHARS_PER_TOKEN: usize = 4;

/// The snapshot script: `(start, maxChars) => { text, next, refs, truncated, lines }`.
const SNAPSHOT_JS: &str = r#"((start, maxChars) => {
  const ATTR = 'data-ecdysis-ref';
  const refs = window.__ecdysisRefs instanceof Map ? window.__ecdysisRefs : (window.__ecdysisRefs = new Map());
  let next = start;
  const SKIP = new Set(['script', 'style', 'noscript', 'template', 'head', 'meta', 'link', 'title', 'svg', 'canvas', 'object', 'embed']);
  const BLOCK = new Set(['address', 'article', 'aside', 'blockquote', 'br', 'dd', 'details', 'dialog', 'div', 'dl', 'dt', 'fieldset', 'figcaption', 'figure', 'footer', 'form', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'header', 'hr', 'li', 'main', 'nav', 'ol', 'p', 'pre', 'section', 'summary', 'table', 'tbody', 'thead', 'tfoot', 'tr', 'td', 'th', 'ul', 'caption', 'legend', 'option', 'body', 'html', 'iframe']);
  const ROLES = new Set(['button', 'link', 'checkbox', 'radio', 'switch', 'tab', 'menuitem', 'menuitemcheckbox', 'menuitemradio', 'option', 'textbox', 'searchbox', 'combobox', 'listbox', 'slider', 'spinbutton', 'treeitem']);
  const TEXTY = new Set(['textbox', 'searchbox', 'password', 'combobox', 'listbox', 'spinbutton', 'slider', 'date', 'time', 'number', 'file']);
  const squash = (s) => (s || '').replace(/\s+/g, ' ').trim();
  const clip = (s, n) => { s = squash(s); return s.length > n ? s.slice(0, Math.max(1, n - 1)) + '…' : s; };
  const quote = (s) => '"' + s.replace(/"/g, "'") + '"';
  const roleOf = (el) => {
    const tag = el.localName;
    const aria = (el.getAttribute('role') || '').trim().split(/\s+/)[0];
    if (tag === 'a' && el.hasAttribute('href')) return aria === 'button' ? 'button' : 'link';
    if (tag === 'button') return 'button';
    if (tag === 'input') {
      const t = (el.getAttribute('type') || 'text').toLowerCase();
      if (t === 'hidden') return null;
      if (['button', 'submit', 'reset', 'image'].includes(t)) return 'button';
      if (t === 'checkbox') return aria === 'switch' ? 'switch' : 'checkbox';
      if (t === 'radio') return 'radio';
      if (t === 'range') return 'slider';
      if (t === 'password') return 'password';
      if (['number', 'date', 'time', 'file'].includes(t)) return t;
      if (['datetime-local', 'month', 'week', 'color'].includes(t)) return t;
      return t === 'search' ? 'searchbox' : 'textbox';
    }
    if (tag === 'select') return el.multiple ? 'listbox' : 'combobox';
    if (tag === 'textarea') return 'textbox';
    if (tag === 'summary') return 'button';
    if (ROLES.has(aria)) return aria;
    if (el.isContentEditable && !(el.parentElement && el.parentElement.isContentEditable)) return 'textbox';
    if (el.hasAttribute('onclick') || (el.hasAttribute('tabindex') && el.tabIndex >= 0 && aria !== 'dialog')) return 'clickable';
    return null;
  };
  const textOf = (el) => squash(el.innerText || el.textContent || '');
  const labelText = (label) => {
    let t = '';
    const visit = (n) => {
      if (n.nodeType === 3) t += n.nodeValue + ' ';
      else if (n.nodeType === 1 && !['input', 'select', 'textarea', 'button', 'script', 'style'].includes(n.localName)) n.childNodes.forEach(visit);
    };
    visit(label);
    return squash(t);
  };
  const nameOf = (el, role) => {
    const label = el.getAttribute('aria-label');
    if (label && label.trim()) return label;
    const by = el.getAttribute('aria-labelledby');
    if (by) {
      const t = by.split(/\s+/).map((id) => document.getElementById(id)).filter(Boolean).map(textOf).join(' ');
      if (t.trim()) return t;
    }
    if (el.labels && el.labels.length) {
      const t = Array.from(el.labels).map(labelText).join(' ');
      if (t.trim()) return t;
    }
    if (el.localName === 'input') {
      const t = (el.getAttribute('type') || '').toLowerCase();
      if (['button', 'submit', 'reset'].includes(t)) return el.value || t;
      if (t === 'image') return el.alt || el.value || 'submit';
    }
    if (TEXTY.has(role) || el.localName === 'input' || el.localName === 'textarea') {
      return el.getAttribute('placeholder') || el.title || el.getAttribute('name') || '';
    }
    const text = textOf(el);
    if (text) return text;
    const img = el.querySelector && el.querySelector('img[alt]');
    if (img && img.alt.trim()) return img.alt;
    return el.title || (role === 'link' ? (el.getAttribute('href') || '') : '');
  };
  const stateOf = (el, role) => {
    const out = [];
    if (el.disabled || el.getAttribute('aria-disabled') === 'true') out.push('disabled');
    if (role === 'checkbox' || role === 'radio' || role === 'switch') {
      const checked = el.localName === 'input' ? el.checked : el.getAttribute('aria-checked') === 'true';
      out.push(checked ? 'checked' : 'unchecked');
    } else if (role === 'password') {
      if (el.value) out.push('filled');
    } else if (el.localName === 'select') {
      const chosen = Array.from(el.selectedOptions || []).map((o) => clip(o.text, 40));
      if (chosen.length) out.push('selected ' + chosen.map(quote).join(', '));
      const options = Array.from(el.options || []).map((o) => clip(o.text, 30)).filter(Boolean);
      if (options.length) out.push('options: ' + options.slice(0, 12).join(' | ') + (options.length > 12 ? ` | … ${options.length - 12} more` : ''));
    } else if (el.localName === 'input' || el.localName === 'textarea') {
      const t = (el.getAttribute('type') || '').toLowerCase();
      if (!['button', 'submit', 'reset', 'image'].includes(t) && el.value) out.push('value ' + quote(clip(el.value, 60)));
    } else if (el.isContentEditable) {
      const v = textOf(el);
      if (v) out.push('value ' + quote(clip(v, 60)));
    }
    if (el.getAttribute('aria-expanded') === 'true') out.push('expanded');
    if (el.getAttribute('aria-selected') === 'true' || el.getAttribute('aria-current')) out.push('current');
    return out.length ? ' (' + out.join('; ') + ')' : '';
  };
  const visible = (el) => {
    if (el.getAttribute('aria-hidden') === 'true') return false;
    if (typeof el.checkVisibility === 'function') {
      if (el.checkVisibility({ visibilityProperty: true })) return true;
      return getComputedStyle(el).display === 'contents';
    }
    const st = getComputedStyle(el);
    return st.display !== 'none' && st.visibility !== 'hidden';
  };
  const refFor = (el) => {
    const old = Number(el.getAttribute(ATTR));
    if (old && refs.get(old) === el) return old;
    const n = next++;
    refs.set(n, el);
    el.setAttribute(ATTR, String(n));
    return n;
  };
  // Blocks: { prefix, parts: [{ text } | { ref }] }.
  const blocks = [];
  let current = null;
  const flush = () => { if (current && current.parts.length) blocks.push(current); current = null; };
  const add = (part, prefix) => { if (!current) current = { prefix: prefix || '', parts: [] }; current.parts.push(part); };
  let count = 0;
  const walk = (node, ctx) => {
    if (node.nodeType === 3) {
      if (ctx.label) return;
      const t = squash(node.nodeValue);
      if (t) add({ text: t }, ctx.prefix);
      return;
    }
    if (node.nodeType !== 1 && node.nodeType !== 11) return;
    if (node.nodeType === 11) { for (const c of node.childNodes) walk(c, ctx); return; }
    const el = node;
    const tag = el.localName;
    if (SKIP.has(tag)) return;
    if (!visible(el)) return;
    const role = roleOf(el);
    if (role) {
      const rect = el.getBoundingClientRect();
      if (rect.width <= 0 && rect.height <= 0 && tag !== 'input') return;
      const n = refFor(el);
      count++;
      let line = `[${n}] ${role}`;
      const name = clip(nameOf(el, role), 80);
      if (name) line += ' ' + quote(name);
      line += stateOf(el, role);
      add({ ref: line }, ctx.prefix);
      return;
    }
    const block = BLOCK.has(tag);
    let prefix = ctx.prefix;
    if (block) {
      flush();
      const h = /^h([1-6])$/.exec(tag);
      if (h) prefix = '#'.repeat(Number(h[1])) + ' ';
      else if (el.getAttribute('role') === 'heading') prefix = '#'.repeat(Number(el.getAttribute('aria-level')) || 2) + ' ';
      else if (tag === 'li') prefix = '- ';
      else if (tag === 'iframe') { add({ text: '[frame ' + clip(el.title || el.src || '', 60) + ']' }, ''); flush(); return; }
    }
    const inner = { prefix, label: ctx.label || (tag === 'label' && !!el.control) };
    if (tag === 'img' && el.alt && el.alt.trim() && !ctx.label) add({ text: '[image ' + clip(el.alt, 60) + ']' }, prefix);
    if (el.shadowRoot) { for (const c of el.shadowRoot.childNodes) walk(c, inner); }
    else if (tag === 'slot') { const assigned = el.assignedNodes({ flatten: true }); for (const c of (assigned.length ? assigned : el.childNodes)) walk(c, inner); }
    else { for (const c of el.childNodes) walk(c, inner); }
    if (block) flush();
  };
  if (document.body) walk(document.body, { prefix: '', label: false });
  flush();
  const render = (limit) => {
    const lines = [];
    let last = '';
    for (const b of blocks) {
      const line = b.prefix + b.parts.map((p) => p.ref !== undefined ? p.ref : clip(p.text, limit)).filter(Boolean).join(' ');
      if (line.trim() && line !== last) lines.push(line);
      last = line;
    }
    return lines;
  };
  let lines = render(300);
  for (const limit of [120, 60, 25]) {
    if (lines.reduce((a, l) => a + l.length + 1, 0) <= maxChars) break;
    lines = render(limit);
  }
  const out = [];
  let used = 0, truncated = 0;
  for (const l of lines) {
    if (used + l.length + 1 > maxChars) { truncated++; continue; }
    out.push(l);
    used += l.length + 1;
  }
  return { text: out.join('\n'), next, refs: count, truncated, lines: lines.length, url: location.href, title: document.title || '' };
})"#;

/// A snapshot as the page produced it.
#[derive(Clone, Debug, Deserialize)]
pub struct Snapshot {
    /// The lines, cut to the budget.
    pub text: String,
    /// The next unused reference number.
    pub next: u64,
    /// Interactive elements with a reference.
    pub refs: usize,
    /// Lines left out for the budget.
    pub truncated: usize,
    /// Lines in all.
    pub lines: usize,
    pub url: String,
    pub title: String,
}

impl Snapshot {
    /// The text the model reads: where the page is, then its lines.
    pub fn render(&self) -> String {
        let mut out = format!("Page: {}\nURL: {}\n", one_line(&self.title), self.url);
        if self.text.is_empty() {
            out.push_str("(the page shows no text and no interactive elements)");
        } else {
            out.push('\n');
            out.push_str(&self.text);
        }
        if self.truncated > 0 {
            out.push_str(&format!(
                "\n… ({} more lines cut to fit the snapshot budget; scroll or use browser_wait/browser_snapshot with a larger max_tokens)",
                self.truncated
            ));
        }
        out
    }

    /// Estimated tokens of [`Snapshot::render`].
    pub fn tokens(&self) -> usize {
        self.render().chars().count().div_ceil(CHARS_PER_TOKEN)
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Take a snapshot, numbering new elements from `start`, at most `max_tokens` long.
pub async fn take(
    lease: &PageLease,
    start: u64,
    max_tokens: usize,
) -> Result<Snapshot, BrowserError> {
    // The header and the cut note take about 60 tokens of the budget.
    let max_chars = max_tokens.saturating_sub(60).max(50) * CHARS_PER_TOKEN;
    let script = format!("{SNAPSHOT_JS}({start}, {max_chars})");
    lease.eval::<Snapshot>(&script).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_names_the_page_and_the_cut() {
        let snapshot = Snapshot {
            text: "# Sign in\n[1] textbox \"Username\"".into(),
            next: 2,
            refs: 1,
            truncated: 3,
            lines: 5,
            url: "http://127.0.0.1/login".into(),
            title: "Log\n in".into(),
        };
        let text = snapshot.render();
        assert!(text.starts_with("Page: Log in\nURL: http://127.0.0.1/login\n\n# Sign in"));
        assert!(text.contains("3 more lines cut"), "{text}");
        assert!(snapshot.tokens() > 10);
    }

    #[test]
    fn the_script_is_one_function_expression() {
        assert!(SNAPSHOT_JS.starts_with("((start, maxChars) =>"));
        assert!(SNAPSHOT_JS.ends_with("})"));
    }
}
