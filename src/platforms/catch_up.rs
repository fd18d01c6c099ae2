//! Catch-up after downtime, the core's half: where each Slack or Discord conversation was last
//! heard from, read from the inbox ([`crate::storage::store::Conversations::last_heard`]). The
//! adapters ask their platforms for what came after and submit it like live events.

use std::sync::Arc;

use async_trait::async_trait;
use ecdysis_chat::{BackendError, LastSeen, Seen};

use crate::bus::EventPayload;
use crate::storage::store::{Store, UnixMs};

/// The inbox as the adapters' [`Seen`].
pub struct InboxSeen {
    store: Arc<dyn Store>,
}

impl InboxSeen {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { store })
    }
}

#[async_trait]
impl Seen for InboxSeen {
    async fn last_seen(
        &self,
        platform: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<LastSeen>, BackendError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let heard = self
            .store
            .last_heard(platform, UnixMs(since_ms), limit)
            .await
            .map_err(BackendError::new)?;
        Ok(heard
            .into_iter()
            .map(|h| LastSeen {
                route: serde_json::from_str::<EventPayload>(&h.payload)
                    .map(|p| p.route)
                    .unwrap_or_default(),
                conversation: h.conversation,
                platform_event_id: h.platform_event_id,
                received_ms: h.received_at.0,
            })
            .collect())
    }
}
