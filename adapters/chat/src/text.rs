//! Splitting long replies into pieces a platform accepts, without breaking code blocks.

/// Split `text` into pieces of at most `max_chars` characters. Cuts prefer line ends; a code
/// block (```) that a cut falls inside is closed at the end of the piece and reopened at the
/// start of the next, so every piece renders on its own.
pub fn split_text(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(16);
    if text.chars().count() <= max_chars {
        return vec![text.to_string()];
    }
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_len = 0usize;
    let mut in_code = false;
    // Room kept for a closing fence ("\n```") when a cut lands inside a code block.
    let fence_room = 4;
    for line in text.split_inclusive('\n') {
        let mut line = line.to_string();
        loop {
            let budget = max_chars - fence_room;
            let line_len = line.chars().count();
            if current_len + line_len <= budget {
                current_len += line_len;
                current.push_str(&line);
                break;
            }
            if current_len > 0 {
                pieces.push(close_piece(std::mem::take(&mut current), in_code));
                current_len = 0;
                if in_code {
                    current.push_str("```\n");
                    current_len = 4;
                }
                continue;
            }
            // A single line longer than a whole piece: hard cut at a character boundary.
            let head: String = line.chars().take(budget).collect();
            let rest: String = line.chars().skip(budget).collect();
            pieces.push(close_piece(head, in_code));
            if in_code {
                current.push_str("```\n");
                current_len = 4;
            }
            line = rest;
        }
        if line_toggles_fence(&line) {
            in_code = !in_code;
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current);
    }
    pieces
}

fn line_toggles_fence(line: &str) -> bool {
    line.trim_start().starts_with("```")
}

fn close_piece(mut piece: String, in_code: bool) -> String {
    if in_code {
        if !piece.ends_with('\n') {
            piece.push('\n');
        }
        piece.push_str("```");
    }
    piece
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_text("hello", 100), vec!["hello"]);
    }

    #[test]
    fn pieces_fit_and_keep_all_text() {
        let text: String = (0..200).map(|i| format!("line number {i}\n")).collect();
        let pieces = split_text(&text, 100);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.chars().count() <= 100));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn code_blocks_are_closed_and_reopened() {
        let body: String = (0..50).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("Here:\n```rust\n{body}```\ndone");
        let pieces = split_text(&text, 120);
        assert!(pieces.len() > 2);
        for piece in &pieces {
            assert!(piece.chars().count() <= 120, "{piece}");
            assert_eq!(
                piece.matches("```").count() % 2,
                0,
                "unbalanced fence in {piece:?}"
            );
        }
    }

    #[test]
    fn long_lines_are_cut_on_char_boundaries() {
        let text = "é".repeat(250);
        let pieces = split_text(&text, 100);
        assert!(pieces.iter().all(|p| p.chars().count() <= 100));
        assert_eq!(pieces.concat().chars().count(), 250);
    }
}
