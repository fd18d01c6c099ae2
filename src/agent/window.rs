//! The agent's view of each conversation's recent transcript, kept between turns so a turn
//! reads only the rows added since the last one instead of the whole window.
//!
//! Rows are append-only and, per conversation, their ids follow commit order on both backends;
//! the only change to earlier rows is a compaction, which always adds a summary row after them.
//! So a read of the rows after the last one seen is complete, and a summary row among them
//! (from this process or another instance) means the cached view is stale and is read again.
//! The cache is bounded by conversations and by bytes (least recently used go first).

use std::collections::HashMap;
use std::sync::Mutex;

use ecdysis_chat::ConversationRef;

use crate::storage::store::{ContextMessages, MessageId, Role, Store, StoreError};

/// Conversations kept.
const CAPACITY: usize = 128;
/// Text kept over all conversations.
const MAX_BYTES: usize = 64 * 1024 * 1024;

struct Entry {
    window: ContextMessages,
    last_id: MessageId,
    used: u64,
    bytes: usize,
}

#[derive(Default)]
struct Entries {
    clock: u64,
    bytes: usize,
    map: HashMap<ConversationRef, Entry>,
}

/// The cache.
pub struct Windows {
    rows: i64,
    entries: Mutex<Entries>,
}

/// The text a view holds.
fn size(window: &ContextMessages) -> usize {
    window
        .messages
        .iter()
        .chain(window.summary.as_ref().map(|(m, _)| m))
        .map(|m| m.text.len() + m.meta.as_ref().map_or(0, String::len))
        .sum()
}

impl Windows {
    /// A cache of views of at most `rows` messages.
    pub fn new(rows: i64) -> Self {
        Self {
            rows,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget a conversation (after compacting it).
    pub fn invalidate(&self, conversation: &ConversationRef) {
        let mut entries = self.lock();
        if let Some(old) = entries.map.remove(conversation) {
            entries.bytes = entries.bytes.saturating_sub(old.bytes);
        }
    }

    /// The conversation's latest summary and newest rows, as [`Store::context_messages`] gives.
    pub async fn get(
        &self,
        store: &dyn Store,
        conversation: &ConversationRef,
    ) -> Result<ContextMessages, StoreError> {
        let cached = self
            .lock()
            .map
            .get(conversation)
            .map(|e| (e.last_id, e.window.clone()));
        let window = match cached {
            Some((last_id, mut window)) => {
                let new = store.messages(conversation, last_id, self.rows).await?;
                if new.len() as i64 >= self.rows || new.iter().any(|m| m.role == Role::Summary) {
                    store.context_messages(conversation, self.rows).await?
                } else {
                    window.messages.extend(new);
                    let excess = window.messages.len().saturating_sub(self.rows as usize);
                    window.messages.drain(..excess);
                    window
                }
            }
            None => store.context_messages(conversation, self.rows).await?,
        };
        let last_id = window
            .messages
            .last()
            .map(|m| m.id)
            .into_iter()
            .chain(window.summary.as_ref().map(|(m, _)| m.id))
            .max()
            .unwrap_or_default();
        let bytes = size(&window);
        let mut entries = self.lock();
        entries.clock += 1;
        let used = entries.clock;
        if let Some(old) = entries.map.remove(conversation) {
            entries.bytes = entries.bytes.saturating_sub(old.bytes);
        }
        if bytes <= MAX_BYTES / 8 {
            while !entries.map.is_empty()
                && (entries.map.len() >= CAPACITY || entries.bytes + bytes > MAX_BYTES)
            {
                let oldest = entries
                    .map
                    .iter()
                    .min_by_key(|(_, e)| e.used)
                    .map(|(c, _)| c.clone());
                if let Some(old) = oldest.and_then(|c| entries.map.remove(&c)) {
                    entries.bytes = entries.bytes.saturating_sub(old.bytes);
                }
            }
            entries.bytes += bytes;
            entries.map.insert(
                conversation.clone(),
                Entry {
                    window: window.clone(),
                    last_id,
                    used,
                    bytes,
                },
            );
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::{NewCompaction, NewMessage};

    fn row(role: Role, text: &str) -> NewMessage {
        NewMessage {
            role,
            text: text.into(),
            meta: None,
            attachments: Vec::new(),
        }
    }

    fn texts(window: &ContextMessages) -> Vec<&str> {
        window.messages.iter().map(|m| m.text.as_str()).collect()
    }

    #[tokio::test]
    async fn the_view_follows_new_rows_and_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let c = ConversationRef::new("test", "W", "C", None);
        let windows = Windows::new(3);
        assert!(
            windows
                .get(store.as_ref(), &c)
                .await
                .unwrap()
                .messages
                .is_empty()
        );
        let first = store
            .append_messages(&c, None, &[row(Role::User, "a"), row(Role::Assistant, "b")])
            .await
            .unwrap();
        assert_eq!(
            texts(&windows.get(store.as_ref(), &c).await.unwrap()),
            ["a", "b"]
        );
        store
            .append_messages(&c, None, &[row(Role::User, "c"), row(Role::Assistant, "d")])
            .await
            .unwrap();
        // The newest `rows` only.
        assert_eq!(
            texts(&windows.get(store.as_ref(), &c).await.unwrap()),
            ["b", "c", "d"]
        );
        // A compaction elsewhere shows up through its summary row.
        store
            .compact(
                &c,
                &NewCompaction {
                    event_id: None,
                    first_message_id: first[0],
                    last_message_id: first[1],
                    summary: "a and b".into(),
                    archive_key: "transcripts/x.jsonl".into(),
                },
            )
            .await
            .unwrap();
        let window = windows.get(store.as_ref(), &c).await.unwrap();
        assert_eq!(window.summary.unwrap().0.text, "a and b");
        assert_eq!(
            texts(&windows.get(store.as_ref(), &c).await.unwrap()),
            ["c", "d"]
        );
        windows.invalidate(&c);
        assert_eq!(
            texts(&windows.get(store.as_ref(), &c).await.unwrap()),
            ["c", "d"]
        );
    }
}
