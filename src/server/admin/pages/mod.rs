//! The admin pages and form actions, one module per section of the navigation.

use ecdysis_chat::ChannelRef;
use maud::{Markup, html};

use super::layout::query_value;

pub mod access;
pub mod conversations;
pub mod inbox;
pub mod login;
pub mod memory;
pub mod overview;
pub mod schedules;
pub mod stored;
pub mod usage;

/// Rows shown in the longer lists.
pub(super) const LIST_LIMIT: i64 = 300;

/// `platform:workspace:channel` (the channel part may itself hold `:`).
pub fn parse_channel(text: &str) -> Option<ChannelRef> {
    let mut parts = text.splitn(3, ':');
    let (platform, workspace, channel) = (parts.next()?, parts.next()?, parts.next()?);
    if platform.is_empty() || channel.is_empty() {
        return None;
    }
    Some(ChannelRef {
        platform: platform.into(),
        workspace: workspace.into(),
        channel: channel.into(),
    })
}

fn channel_text(c: &ChannelRef) -> String {
    format!("{}:{}:{}", c.platform, c.workspace, c.channel)
}

/// The page of a channel's memory notes.
fn notes_url(c: &ChannelRef) -> String {
    format!(
        "/admin/memory/notes?channel={}",
        query_value(&channel_text(c))
    )
}

/// A link to a channel's memory notes, named by the channel.
fn notes_link(c: &ChannelRef) -> Markup {
    html! { a href=(notes_url(c)) { (channel_text(c)) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse() {
        let c = parse_channel("web:local:team:a").unwrap();
        assert_eq!(
            (
                c.platform.as_str(),
                c.workspace.as_str(),
                c.channel.as_str()
            ),
            ("web", "local", "team:a")
        );
        assert!(parse_channel("web:local").is_none());
        assert!(parse_channel(":x:y").is_none());
        assert_eq!(channel_text(&c), "web:local:team:a");
        assert_eq!(
            notes_link(&c).into_string(),
            r#"<a href="/admin/memory/notes?channel=web%3Alocal%3Ateam%3Aa">web:local:team:a</a>"#
        );
    }
}
