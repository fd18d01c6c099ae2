//! Dispatches the bot uses, in the order they arrive: messages and interactions go to the
//! intake's per-channel lanes; channels, threads and a server's boost tier go to the routing
//! cache. Any other event is skipped without being parsed.

use tracing::warn;

use super::protocol::{Frame, GuildCreate, ThreadListSync};
use crate::adapter::Shared;
use crate::intake::{Inbound, Intake};
use crate::model::Channel;
use crate::model::channel_type;

/// Handle the dispatch `name`. An event that cannot be read is logged and skipped.
pub(crate) fn dispatch(shared: &Shared, intake: &Intake, name: &str, frame: &Frame<'_>) {
    let read = match name {
        "MESSAGE_CREATE" => frame
            .data()
            .map(|message| intake.push(Inbound::Message(Box::new(message)))),
        "INTERACTION_CREATE" => frame
            .data()
            .map(|interaction| intake.push(Inbound::Interaction(Box::new(interaction)))),
        "THREAD_CREATE" | "THREAD_UPDATE" => frame
            .data::<Channel>()
            .map(|thread| note_channels(shared, [thread])),
        "THREAD_LIST_SYNC" => frame
            .data::<ThreadListSync>()
            .map(|sync| note_channels(shared, sync.threads)),
        "GUILD_CREATE" => frame.data::<GuildCreate>().map(|guild| {
            shared.channels.note_upload_limit(
                guild.id.get(),
                crate::channels::upload_limit(guild.premium_tier),
            );
            note_channels(shared, guild.threads);
            note_channels(
                shared,
                guild
                    .channels
                    .into_iter()
                    .filter(|c| c.kind != channel_type::GUILD_CATEGORY),
            );
        }),
        _ => Ok(()),
    };
    if let Err(e) = read {
        warn!(event = name, error = %e, "unreadable Discord gateway event skipped");
    }
}

/// Remember where channels and threads sit (a thread under its parent).
fn note_channels(shared: &Shared, channels: impl IntoIterator<Item = Channel>) {
    for channel in channels {
        shared.channels.note_kind(
            channel.id.get(),
            channel.kind,
            channel.parent_id.map(|p| p.get()),
        );
    }
}
