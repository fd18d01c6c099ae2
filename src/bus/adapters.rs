//! The chat adapters of this process, by platform: where replies go, and what the platforms
//! can say about their users and places. The bus delivers through it; the scheduler asks it
//! for time zones and later routes without holding the bus.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ecdysis_chat::ChatAdapter;

/// The registered adapters. Cheap to clone; clones share one registry.
#[derive(Clone, Default)]
pub struct Adapters {
    by_platform: Arc<RwLock<HashMap<String, Arc<dyn ChatAdapter>>>>,
}

impl Adapters {
    /// Route `adapter.platform()` to this adapter (replacing an earlier one).
    pub fn register(&self, adapter: Arc<dyn ChatAdapter>) {
        let platform = adapter.platform().to_string();
        if let Ok(mut adapters) = self.by_platform.write() {
            adapters.insert(platform, adapter);
        }
    }

    /// The adapter of `platform`, if one runs here.
    pub fn get(&self, platform: &str) -> Option<Arc<dyn ChatAdapter>> {
        self.by_platform
            .read()
            .ok()
            .and_then(|a| a.get(platform).cloned())
    }

    /// The route for posting into the place of `route` later, unprompted (a reminder); see
    /// [`ChatAdapter::later_route`]. Unchanged when no adapter of `platform` runs here.
    pub fn later_route(
        &self,
        platform: &str,
        route: &serde_json::Value,
        now_ms: i64,
    ) -> serde_json::Value {
        match self.get(platform) {
            Some(adapter) => adapter.later_route(route, now_ms),
            None => route.clone(),
        }
    }

    /// A user's time zone as their platform reports it (see [`ChatAdapter::user_timezone`]).
    pub async fn user_timezone(
        &self,
        platform: &str,
        user_id: &str,
        route: &serde_json::Value,
    ) -> Option<String> {
        self.get(platform)?.user_timezone(user_id, route).await
    }

    /// The state of every adapter that reports one, by platform.
    pub fn health(&self) -> serde_json::Map<String, serde_json::Value> {
        let adapters = match self.by_platform.read() {
            Ok(adapters) => adapters.clone(),
            Err(_) => return serde_json::Map::new(),
        };
        adapters
            .iter()
            .filter_map(|(platform, adapter)| Some((platform.clone(), adapter.health()?)))
            .collect()
    }
}
