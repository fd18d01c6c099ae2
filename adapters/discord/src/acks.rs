//! Interactions whose first response (the "thinking…" deferral) is still on its way. A reply
//! must not edit the original response before Discord has it, so delivery waits here (briefly)
//! for interactions this process is still acknowledging.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone, Default)]
pub(crate) struct Acks {
    pending: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
}

/// Held while an interaction is being acknowledged; dropping it releases waiting deliveries.
pub(crate) struct Pending {
    acks: Acks,
    id: String,
    done: watch::Sender<bool>,
}

impl Acks {
    /// Mark `id` as being acknowledged, before the event is submitted (the core may answer
    /// before the acknowledgement is out).
    pub fn begin(&self, id: &str) -> Pending {
        let (done, receiver) = watch::channel(false);
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id.to_string(), receiver);
        }
        Pending {
            acks: self.clone(),
            id: id.to_string(),
            done,
        }
    }

    /// Wait until `id` is acknowledged (or given up), at most `limit`. Returns at once for
    /// interactions this process is not acknowledging.
    pub async fn wait(&self, id: &str, limit: Duration) {
        let receiver = self.pending.lock().ok().and_then(|p| p.get(id).cloned());
        if let Some(mut receiver) = receiver {
            let _ = tokio::time::timeout(limit, receiver.wait_for(|done| *done)).await;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or_default()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = self.done.send(true);
        if let Ok(mut pending) = self.acks.pending.lock() {
            pending.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn delivery_waits_for_the_acknowledgement() {
        let acks = Acks::default();
        let pending = acks.begin("1");
        let waiter = {
            let acks = acks.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                acks.wait("1", Duration::from_secs(5)).await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(pending);
        let waited = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(40) && waited < Duration::from_secs(2));
        assert_eq!(acks.len(), 0);
        let start = Instant::now();
        acks.wait("2", Duration::from_secs(5)).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
