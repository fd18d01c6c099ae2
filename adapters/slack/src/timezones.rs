//! Users' time zones from `users.info`, cached for an hour per (team, user), so clock times in
//! `remind` are read in the time zone the user set in Slack. A failed lookup is not cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a looked-up time zone is trusted.
const TTL: Duration = Duration::from_secs(3600);
/// Entries kept before the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// (team, user).
type Key = (String, String);
/// The zone (`None`: Slack has none for the user) and when it was looked up.
type Entry = (Option<String>, Instant);

/// Time zones by (team, user).
#[derive(Default)]
pub(crate) struct Timezones {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Timezones {
    /// The cached answer for a user, if fresh: `Some(None)` means "Slack has none".
    pub(crate) fn get(&self, team: &str, user: &str) -> Option<Option<String>> {
        let entries = self.entries.lock().ok()?;
        let (tz, at) = entries.get(&(team.to_string(), user.to_string()))?;
        (at.elapsed() < TTL).then(|| tz.clone())
    }

    pub(crate) fn put(&self, team: &str, user: &str, tz: Option<String>) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert((team.to_string(), user.to_string()), (tz, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_answers() {
        let cache = Timezones::default();
        assert_eq!(cache.get("T1", "U1"), None);
        cache.put("T1", "U1", Some("Europe/Berlin".into()));
        cache.put("T1", "U2", None);
        assert_eq!(cache.get("T1", "U1"), Some(Some("Europe/Berlin".into())));
        assert_eq!(cache.get("T1", "U2"), Some(None));
        assert_eq!(cache.get("T2", "U1"), None);
    }
}
