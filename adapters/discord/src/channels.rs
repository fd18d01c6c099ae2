//! Which channels are threads, and of which parent: a message in a thread belongs to the
//! parent channel's memory. Learnt from the threads the bot starts, thread events and
//! interactions, else asked once over REST (`GET /channels/{id}`); bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::model::channel_type;
use crate::rest::Rest;

/// Channels remembered before the map is emptied and learnt again.
const MAX_KNOWN: usize = 50_000;

/// Where a guild channel sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A text channel (or anything that is not a thread).
    Channel,
    /// A thread of this parent channel.
    Thread { parent: u64 },
}

pub(crate) struct Channels {
    rest: Arc<Rest>,
    known: Mutex<HashMap<u64, Place>>,
    /// Upload limits of guilds, from their boost tier (GUILD_CREATE).
    upload_limits: Mutex<HashMap<u64, u64>>,
}

/// The upload limit of a guild by its boost tier (10, 10, 50, 100 MiB).
pub(crate) fn upload_limit(premium_tier: u8) -> u64 {
    match premium_tier {
        2 => 50 * 1024 * 1024,
        3.. => 100 * 1024 * 1024,
        _ => crate::DEFAULT_MAX_FILE_BYTES,
    }
}

impl Channels {
    pub fn new(rest: Arc<Rest>) -> Self {
        Self {
            rest,
            known: Mutex::new(HashMap::new()),
            upload_limits: Mutex::new(HashMap::new()),
        }
    }

    pub fn note(&self, channel: u64, place: Place) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(channel, place);
        }
    }

    /// Note a channel from its type and parent, as events and interactions describe it.
    pub fn note_kind(&self, channel: u64, kind: u8, parent: Option<u64>) {
        match parent {
            Some(parent) if channel_type::is_thread(kind) => {
                self.note(channel, Place::Thread { parent })
            }
            _ => self.note(channel, Place::Channel),
        }
    }

    pub fn note_upload_limit(&self, guild: u64, bytes: u64) {
        if let Ok(mut limits) = self.upload_limits.lock() {
            if limits.len() >= MAX_KNOWN {
                limits.clear();
            }
            limits.insert(guild, bytes);
        }
    }

    /// The upload limit Discord reported for a guild, if it did.
    pub fn upload_limit(&self, guild: u64) -> Option<u64> {
        self.upload_limits.lock().ok()?.get(&guild).copied()
    }

    fn cached(&self, channel: u64) -> Option<Place> {
        self.known.lock().ok()?.get(&channel).copied()
    }

    /// Where a guild channel sits; asks Discord once when unknown. When Discord cannot say,
    /// the channel is taken for a plain channel (and asked again next time).
    pub async fn place(&self, channel: u64) -> Place {
        if let Some(place) = self.cached(channel) {
            return place;
        }
        match self.rest.channel(channel).await {
            Ok(found) => {
                self.note_kind(channel, found.kind, found.parent_id.map(|p| p.get()));
                self.cached(channel).unwrap_or(Place::Channel)
            }
            Err(e) => {
                warn!(channel, error = %e, "cannot look up a channel; taking it for a plain channel");
                Place::Channel
            }
        }
    }
}
