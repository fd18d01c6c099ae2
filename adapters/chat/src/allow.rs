//! Allow lists of users and channels (`sandbox.allow_users`, `sandbox.allow_channels`, the
//! approvers), matched against identities whose platform part comes from the adapter that
//! received the event, never from text a client sent.
//!
//! An entry is `platform:id` (`slack:U012AB`, `web:alice`), for channels also
//! `platform:workspace:channel` (`slack:T012AB:C345CD`); `*` is everyone, `platform:*` everyone
//! on that platform, and for channels `platform:workspace:*` every channel of a workspace. The event's identity is built as
//! `<conversation.platform>:<user id>`, so a web user who calls themselves `slack:U012AB` is
//! `web:slack:U012AB` and matches no Slack entry. A bare entry without a platform (`U012AB`,
//! `C345CD`) matches that id on the platforms whose ids the platform itself vouches for; it never
//! matches a web chat identity, whose names are whatever the browser sends.

/// The platform of the web chat, whose user and conversation names are chosen by the client.
const SELF_NAMED_PLATFORM: &str = "web";

/// A list of `platform:id` entries; empty allows everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<String>,
}

impl AllowList {
    pub fn new(entries: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(Into::into)
                .map(|e: String| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    /// The entries, as configured.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// True when no entry is configured (everyone is allowed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the user `user_id`, as seen on `platform` (the receiving adapter's platform, the
    /// `platform` of the event's conversation), is on the list.
    pub fn allows_user(&self, platform: &str, user_id: &str) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let scoped = format!("{platform}:{user_id}");
        let whole_platform = format!("{platform}:*");
        self.entries.iter().any(|entry| {
            entry == "*"
                || *entry == whole_platform
                || *entry == scoped
                || (bare(entry) && platform != SELF_NAMED_PLATFORM && entry == user_id)
        })
    }

    /// Whether the channel of `conversation` is on the list: as `platform:channel`,
    /// `platform:workspace:channel`, or (not for the web chat) the bare channel id.
    pub fn allows_channel(&self, conversation: &crate::ConversationRef) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let platform = &conversation.platform;
        let channel = &conversation.channel;
        let full = format!("{platform}:{}:{channel}", conversation.workspace);
        // The short form only for channel ids without `:`, so that no channel name can spell
        // another channel's full form.
        let short = bare(channel).then(|| format!("{platform}:{channel}"));
        let whole_platform = format!("{platform}:*");
        let whole_workspace = format!("{platform}:{}:*", conversation.workspace);
        self.entries.iter().any(|entry| {
            entry == "*"
                || *entry == whole_platform
                || *entry == whole_workspace
                || *entry == full
                || short.as_ref() == Some(entry)
                || (bare(entry) && platform != SELF_NAMED_PLATFORM && entry == channel)
        })
    }
}

fn bare(id: &str) -> bool {
    !id.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConversationRef;

    #[test]
    fn web_clients_cannot_claim_platform_identities() {
        let users = AllowList::new(["slack:U012ADMIN"]);
        assert!(users.allows_user("slack", "U012ADMIN"));
        // The finding's attack: the web `user` field names a Slack user.
        assert!(!users.allows_user("web", "slack:U012ADMIN"));
        assert!(!users.allows_user("discord", "slack:U012ADMIN"));
        let channels = AllowList::new(["slack:T012AB:C345CD"]);
        assert!(channels.allows_channel(&ConversationRef::new("slack", "T012AB", "C345CD", None)));
        // A web conversation named like a Slack channel.
        let web = ConversationRef::new("web", "local", "slack:T012AB:C345CD", None);
        assert!(!channels.allows_channel(&web));
        let web = ConversationRef::new("web", "T012AB", "C345CD", None);
        assert!(!channels.allows_channel(&web));
    }

    #[test]
    fn bare_entries_never_match_web_names() {
        let users = AllowList::new(["U1"]);
        assert!(users.allows_user("slack", "U1"));
        assert!(users.allows_user("discord", "U1"));
        assert!(!users.allows_user("web", "U1"));
        let channels = AllowList::new(["C1"]);
        assert!(channels.allows_channel(&ConversationRef::new("slack", "T1", "C1", None)));
        assert!(!channels.allows_channel(&ConversationRef::new("web", "local", "C1", None)));
    }

    #[test]
    fn web_entries_match_web_names_only_exactly() {
        let users = AllowList::new(["web:alice"]);
        assert!(users.allows_user("web", "alice"));
        assert!(!users.allows_user("web", "alice2"));
        assert!(!users.allows_user("slack", "alice"));
        let channels = AllowList::new(["web:general", "web:local:ops"]);
        let web = |name: &str| ConversationRef::new("web", "local", name, None);
        assert!(channels.allows_channel(&web("general")));
        assert!(channels.allows_channel(&web("ops")));
        // `local:ops` would spell `web:local:ops` in the short form: not accepted.
        assert!(!channels.allows_channel(&web("local:ops")));
        assert!(!channels.allows_channel(&web("general:x")));
    }

    #[test]
    fn platform_and_workspace_wildcards() {
        let users = AllowList::new(["slack:*", "discord:42"]);
        assert!(users.allows_user("slack", "U9"));
        assert!(users.allows_user("discord", "42"));
        assert!(!users.allows_user("discord", "43"));
        assert!(!users.allows_user("web", "slack:*"));
        let channels = AllowList::new(["slack:T1:*", "discord:*"]);
        assert!(channels.allows_channel(&ConversationRef::new("slack", "T1", "C1", None)));
        assert!(!channels.allows_channel(&ConversationRef::new("slack", "T2", "C1", None)));
        assert!(channels.allows_channel(&ConversationRef::new("discord", "g", "1", None)));
        // A web conversation cannot name itself into a Slack workspace.
        assert!(!channels.allows_channel(&ConversationRef::new(
            "web",
            "local",
            "slack:T1:*",
            None
        )));
    }

    #[test]
    fn empty_and_star_allow_everyone() {
        assert!(AllowList::new(Vec::<String>::new()).allows_user("web", "x"));
        assert!(AllowList::new(["*"]).allows_user("web", "x"));
        let web = ConversationRef::new("web", "local", "x", None);
        assert!(AllowList::new(["*"]).allows_channel(&web));
        assert!(AllowList::new([" "]).is_empty());
    }
}
