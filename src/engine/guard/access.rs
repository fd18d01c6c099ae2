//! Who may talk to the bot where: the allow lists (`ECDYSIS_ALLOW_USERS`,
//! `ECDYSIS_ALLOW_CHANNELS`, a profile's `allow_users`), the DM policy per platform, and
//! admins. Pure decisions; whether a user is paired is asked of the caller.

use ecdysis_chat::{AllowList, ConversationRef};

use super::settings::{AccessSettings, DmPolicy};

/// What the access policy says about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An admin: always let in (and never rate-limited).
    Admin,
    Allowed,
    /// The user is not on the allow list (or the profile's).
    UserRefused,
    /// The channel is not on the allow list.
    ChannelRefused,
    /// DMs are closed on this platform.
    DmClosed,
    /// An unknown user's DM under the pairing policy: they get a code.
    NeedsPairing,
}

impl Verdict {
    /// The label of the refusal metric.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Admin | Self::Allowed => "none",
            Self::UserRefused => "user",
            Self::ChannelRefused => "channel",
            Self::DmClosed => "dm",
            Self::NeedsPairing => "pairing",
        }
    }
}

/// Whether a conversation is a direct message with the bot (Slack `D…` channels, Discord's
/// `dm` workspace, see the adapters).
pub fn is_dm(conversation: &ConversationRef) -> bool {
    match conversation.platform.as_str() {
        "slack" => conversation.channel.starts_with('D'),
        "discord" => conversation.workspace == "dm",
        _ => false,
    }
}

/// Decide for a message from `user_id` in `conversation`. `profile_users` is the allow list of
/// the profile in force there (empty: no extra limit); `paired` says whether an admin paired
/// the user (asked only for DMs under the pairing policy).
pub fn decide(
    settings: &AccessSettings,
    profile_users: &AllowList,
    conversation: &ConversationRef,
    user_id: &str,
    paired: impl FnOnce() -> bool,
) -> Verdict {
    let platform = conversation.platform.as_str();
    if settings.is_admin(platform, user_id) {
        return Verdict::Admin;
    }
    if !profile_users.allows_user(platform, user_id) {
        return Verdict::UserRefused;
    }
    if is_dm(conversation) {
        // DMs follow the DM policy; the channel list does not apply to them.
        return match settings.dm_policy(platform) {
            DmPolicy::Closed => Verdict::DmClosed,
            DmPolicy::Open if settings.allow_users.allows_user(platform, user_id) => {
                Verdict::Allowed
            }
            DmPolicy::Open => Verdict::UserRefused,
            DmPolicy::Pairing => {
                let named = !settings.named_users.is_empty()
                    && settings.named_users.allows_user(platform, user_id);
                if named || paired() {
                    Verdict::Allowed
                } else {
                    Verdict::NeedsPairing
                }
            }
        };
    }
    if !settings.allow_users.allows_user(platform, user_id) {
        return Verdict::UserRefused;
    }
    if !settings.allow_channels.allows_channel(conversation) {
        return Verdict::ChannelRefused;
    }
    Verdict::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(users: &[&str], channels: &[&str], admins: &[&str]) -> AccessSettings {
        AccessSettings {
            allow_users: AllowList::new(users.iter().copied()),
            named_users: AllowList::new(users.iter().copied().filter(|u| *u != "*")),
            allow_channels: AllowList::new(channels.iter().copied()),
            admin_users: AllowList::new(admins.iter().copied()),
            dm_slack: DmPolicy::Open,
            dm_discord: DmPolicy::Pairing,
            pairing_code_ttl: Duration::from_secs(60),
        }
    }

    fn slack(channel: &str) -> ConversationRef {
        ConversationRef::new("slack", "T1", channel, None)
    }

    fn discord_dm() -> ConversationRef {
        ConversationRef::new("discord", "dm", "555", None)
    }

    #[test]
    fn channels_and_users_are_both_checked() {
        let s = settings(&["slack:U1"], &["slack:C1"], &["slack:UADMIN"]);
        let none = AllowList::default();
        assert_eq!(
            decide(&s, &none, &slack("C1"), "U1", || false),
            Verdict::Allowed
        );
        assert_eq!(
            decide(&s, &none, &slack("C1"), "U2", || false),
            Verdict::UserRefused
        );
        assert_eq!(
            decide(&s, &none, &slack("C2"), "U1", || false),
            Verdict::ChannelRefused
        );
        assert_eq!(
            decide(&s, &none, &slack("C2"), "UADMIN", || false),
            Verdict::Admin
        );
        // A profile's own list narrows further.
        let profile = AllowList::new(["slack:U9"]);
        assert_eq!(
            decide(&s, &profile, &slack("C1"), "U1", || false),
            Verdict::UserRefused
        );
    }

    #[test]
    fn dm_policies() {
        let mut s = settings(&[], &["slack:C1"], &[]);
        let none = AllowList::default();
        // Slack DMs are open by default, whatever the channel list says.
        assert_eq!(
            decide(&s, &none, &slack("D1"), "U7", || false),
            Verdict::Allowed
        );
        // Discord DMs need pairing by default.
        assert_eq!(
            decide(&s, &none, &discord_dm(), "42", || false),
            Verdict::NeedsPairing
        );
        assert_eq!(
            decide(&s, &none, &discord_dm(), "42", || true),
            Verdict::Allowed
        );
        s.dm_slack = DmPolicy::Closed;
        assert_eq!(
            decide(&s, &none, &slack("D1"), "U7", || true),
            Verdict::DmClosed
        );
        // A user named on the allow list needs no pairing; `*` names nobody.
        let s = settings(&["discord:42", "*"], &[], &[]);
        assert_eq!(
            decide(&s, &none, &discord_dm(), "42", || false),
            Verdict::Allowed
        );
        assert_eq!(
            decide(&s, &none, &discord_dm(), "43", || false),
            Verdict::NeedsPairing
        );
        // The web chat has no DMs of strangers.
        assert!(!is_dm(&ConversationRef::new("web", "local", "D1", None)));
    }
}
