//! The agent's view of each conversation's recent transcript, kept between turns so a turn
//! reads only the rows added since the last one instead of the whole window.
//!
//! Rows are append-only and, per conversation, their ids follow commit order on both backends;
//! the only change to earlier rows is a compaction, which always adds a summary row after them.
//! So a read of the rows after the last one seen is complete, and a summary row among them
//! (from this process or another instance) means the cached view is stale and is read again.
//! The cache holds a bounded number of conversations (least recently used go first).

use std::collections::HashMap;
use std::sync::Mutex;

use ecdysis_chat::ConversationRef;

use crate::store::{ContextMessages, Role, Store, StoreError};

/// Conversations kept (each at most `rows` messages, which the token budget keeps small).
const CAPACITY: usize = 128;

struct Entry {
    window: ContextMessages,
    last_id: i64,
    used: u64,
}

/// The cache.
pub struct Windows {
    rows: i64,
    entries: Mutex<(u64, HashMap<ConversationRef, Entry>)>,
}

impl Windows {
    /// A cache of views of at most `rows` messages.
    pub fn new(rows: i64) -> Self {
        Self {
            rows,
            entries: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<ConversationRef, Entry>)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget a conversation (after compacting it).
    pub fn invalidate(&self, conversation: &ConversationRef) {
        self.lock().1.remove(conversation);
    }

    /// The conversation's latest summary and newest rows, as [`Store::context_messages`] gives.
    pub async fn get(
        &self,
        store: &dyn Store,
        conversation: &ConversationRef,
    ) -> Result<ContextMessages, StoreError> {
        let cached = self
            .lock()
            .1
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
            .unwrap_or(0);
        let mut guard = self.lock();
        let (clock, entries) = &mut *guard;
        *clock += 1;
        if entries.len() >= CAPACITY && !entries.contains_key(conversation) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(c, _)| c.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            conversation.clone(),
            Entry {
                window: window.clone(),
                last_id,
                used: *clock,
            },
        );
        Ok(window)
    }
}
