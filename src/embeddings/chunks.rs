//! Cutting a compaction into searchable chunks: its summary (by paragraph) and the archived
//! turns (`user: …` / `assistant: …`), packed into pieces short enough for an embedding model's
//! input (about 200 words) and for a line of `/recall`.

use crate::storage::store::{ChunkKind, CompactionSource, NewChunk};

/// The longest chunk, in characters (all-MiniLM reads 256 tokens, about 1,000 characters).
pub const CHUNK_CHARS: usize = 900;

/// Split `text` at whitespace into pieces of at most `max` characters (a single longer word is
/// cut).
fn split_long(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > max {
            let head: String = word.chars().take(max).collect();
            word = word.chars().skip(max).collect();
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            out.push(head);
        }
        let extra = if current.is_empty() { 0 } else { 1 };
        if current.chars().count() + extra + word.chars().count() > max {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Pack units (paragraphs, turns) into chunks of at most `max` characters, in order.
fn pack(units: impl IntoIterator<Item = String>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for unit in units {
        let unit = unit.trim().to_string();
        if unit.is_empty() {
            continue;
        }
        for piece in if unit.chars().count() > max {
            split_long(&unit, max)
        } else {
            vec![unit]
        } {
            let extra = if current.is_empty() { 0 } else { 1 };
            if !current.is_empty() && current.chars().count() + extra + piece.chars().count() > max
            {
                out.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(&piece);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The chunks of a compaction: the summary's, then the turns'.
pub fn chunk(source: &CompactionSource) -> Vec<NewChunk> {
    let summary = pack(
        source.summary.split("\n\n").map(str::to_string),
        CHUNK_CHARS,
    );
    let turns = pack(
        source
            .turns
            .iter()
            .map(|(role, text)| format!("{role}: {}", text.trim())),
        CHUNK_CHARS,
    );
    let mut chunks: Vec<NewChunk> = summary
        .into_iter()
        .enumerate()
        .map(|(i, text)| NewChunk {
            kind: ChunkKind::Summary,
            seq: i as i64,
            text,
        })
        .collect();
    chunks.extend(turns.into_iter().enumerate().map(|(i, text)| NewChunk {
        kind: ChunkKind::Transcript,
        seq: i as i64,
        text,
    }));
    chunks
}

#[cfg(test)]
mod tests {
    use ecdysis_chat::ChannelRef;

    use super::*;
    use crate::storage::store::{CompactionId, UnixMs};

    #[test]
    fn long_text_is_cut_at_words() {
        let text = "alpha beta gamma delta";
        assert_eq!(split_long(text, 11), vec!["alpha beta", "gamma delta"]);
        assert_eq!(split_long("abcdefgh", 3), vec!["abc", "def", "gh"]);
    }

    #[test]
    fn compaction_becomes_summary_and_turn_chunks() {
        let source = CompactionSource {
            compaction: CompactionId(1),
            channel: ChannelRef {
                platform: "web".into(),
                workspace: "local".into(),
                channel: "c".into(),
            },
            created_at: UnixMs(0),
            summary: "We chose Postgres.\n\nThe release is on Thursday.".into(),
            turns: (0..40)
                .map(|i| {
                    (
                        if i % 2 == 0 { "user" } else { "assistant" }.to_string(),
                        format!("message number {i} about the deploy pipeline and its checks"),
                    )
                })
                .collect(),
        };
        let chunks = chunk(&source);
        let summaries: Vec<_> = chunks
            .iter()
            .filter(|c| c.kind == ChunkKind::Summary)
            .collect();
        assert_eq!(summaries.len(), 1);
        assert!(summaries[0].text.contains("Thursday"));
        let turns: Vec<_> = chunks
            .iter()
            .filter(|c| c.kind == ChunkKind::Transcript)
            .collect();
        assert!(turns.len() > 1);
        assert!(turns.iter().all(|c| c.text.chars().count() <= CHUNK_CHARS));
        assert!(turns[0].text.starts_with("user: message number 0"));
        let all: String = turns.iter().map(|c| c.text.as_str()).collect();
        assert!(all.contains("message number 39"), "nothing is dropped");
    }
}
