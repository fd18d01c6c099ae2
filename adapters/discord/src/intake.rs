//! Inbound messages and interactions → events for the core, in arrival order per channel.
//!
//! The gateway reads events in the order Discord sent them and pushes each here; every channel
//! gets a lane that submits its events one after the other, while channels run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ecdysis_chat::{Addressed, Command, CommandName, Event, EventKind, SubmitError};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::adapter::Shared;
use crate::channels::Place;
use crate::interactions::Target;
use crate::model::{Interaction, Message, interaction_type};
use crate::rest::MessageBody;
use crate::route::Route;
use crate::translate;

/// How long a message waits for READY to say who the bot is.
const BOT_ID_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An inbound item.
pub(crate) enum Inbound {
    Message(Box<Message>),
    Interaction(Box<Interaction>),
}

impl Inbound {
    fn channel(&self) -> u64 {
        match self {
            Inbound::Message(m) => m.channel_id.get(),
            Inbound::Interaction(i) => i.channel().unwrap_or(0),
        }
    }
}

/// The ordered path from the gateway to the core.
pub(crate) struct Intake {
    shared: Arc<Shared>,
    lanes: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Inbound>>>>,
}

impl Intake {
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            shared,
            lanes: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Called by the gateway, in order, without blocking: the item joins its channel's lane.
    pub fn push(&self, item: Inbound) {
        let channel = item.channel();
        let Ok(mut lanes) = self.lanes.lock() else {
            return;
        };
        let item = match lanes.get(&channel) {
            Some(lane) => match lane.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => item,
            },
            None => item,
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        if sender.send(item).is_ok() {
            lanes.insert(channel, sender);
            tokio::spawn(run_lane(
                self.shared.clone(),
                self.lanes.clone(),
                channel,
                receiver,
            ));
        }
    }
}

/// Process one channel's events in order; the lane ends when it is empty (checked under the
/// lanes lock, so nothing is sent into a lane that is ending).
async fn run_lane(
    shared: Arc<Shared>,
    lanes: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Inbound>>>>,
    channel: u64,
    mut receiver: mpsc::UnboundedReceiver<Inbound>,
) {
    loop {
        let next = match receiver.try_recv() {
            Ok(item) => Some(item),
            Err(_) => {
                let Ok(mut lanes) = lanes.lock() else { return };
                match receiver.try_recv() {
                    Ok(item) => Some(item),
                    Err(_) => {
                        lanes.remove(&channel);
                        None
                    }
                }
            }
        };
        match next {
            Some(item) => process(&shared, item).await,
            None => return,
        }
    }
}

/// Translate and submit one inbound item.
async fn process(shared: &Arc<Shared>, item: Inbound) {
    match item {
        Inbound::Message(message) => process_message(shared, &message).await,
        Inbound::Interaction(interaction) => process_interaction(shared, &interaction).await,
    }
}

async fn process_message(shared: &Shared, message: &Message) {
    let Some(event) = message_event(shared, message).await else {
        return;
    };
    let addressed = event.addressed;
    let route = event.route.clone();
    match shared.sink.submit(event).await {
        Ok(accepted) => debug!(
            message = message.id.get(),
            duplicate = accepted.duplicate,
            ignored = accepted.ignored,
            "message submitted"
        ),
        Err(e) => {
            warn!(message = message.id.get(), error = %e, "message not taken");
            if matches!(addressed, Addressed::Direct | Addressed::Mention)
                && !matches!(e, SubmitError::Internal(_))
            {
                tell(shared, &route, &format!("Sorry, I cannot take that: {e}")).await;
            }
        }
    }
}

/// A user's message as the event the core gets (live or caught up), or `None` for what is not
/// user input (the bot's own, other bots', system messages).
pub(crate) async fn message_event(shared: &Shared, message: &Message) -> Option<Event> {
    let bot = match shared.health.bot_user_id() {
        Some(bot) => Some(bot),
        None => shared.health.wait_bot_user_id(BOT_ID_WAIT).await,
    };
    if !translate::is_user_input(message, bot) {
        return None;
    }
    let place = match message.guild_id {
        Some(_) => Some(shared.channels.place(message.channel_id.get()).await),
        None => None,
    };
    let limit = message
        .guild_id
        .and_then(|g| shared.channels.upload_limit(g.get()));
    let mut event = translate::message_event(message, bot, place, limit);
    let wanted = !matches!(event.addressed, Addressed::Ambient);
    if wanted {
        // Only references here: the core fetches the bytes after the event is stored.
        event.remote_files = crate::attachments::remote_files(&message.attachments);
    }
    if wanted
        && matches!(event.kind, EventKind::Message)
        && event.text.trim().is_empty()
        && event.remote_files.is_empty()
    {
        // A bare mention: say what the bot can do.
        event.kind = EventKind::Command(Command {
            name: CommandName::Help,
            args: String::new(),
        });
    }
    Some(event)
}

/// A short answer outside the bus (the event was not stored, so there is nothing to retry).
async fn tell(shared: &Shared, route: &serde_json::Value, text: &str) {
    let Some(channel) = Route::from_value(route).and_then(|r| r.channel_id.parse::<u64>().ok())
    else {
        return;
    };
    if let Err(e) = shared
        .rest
        .post_message(channel, &MessageBody::text(text))
        .await
    {
        warn!(error = %e, "cannot tell the user their message was not taken");
    }
}

async fn process_interaction(shared: &Arc<Shared>, interaction: &Interaction) {
    let place = interaction_place(shared, interaction).await;
    let Some(event) = translate::interaction_event(interaction, place) else {
        return;
    };
    let target = Target {
        id: interaction.id.get(),
        token: interaction.token.clone(),
    };
    match interaction.kind {
        interaction_type::APPLICATION_COMMAND => {
            crate::interactions::handle_command(shared, event, target).await;
        }
        interaction_type::MESSAGE_COMPONENT => {
            crate::interactions::handle_component(shared.clone(), event, target).await;
        }
        _ => {}
    }
}

/// Where an interaction's channel sits: from the channel the interaction describes, else
/// looked up. `None` in a DM (and for interactions that are not events).
pub(crate) async fn interaction_place(shared: &Shared, interaction: &Interaction) -> Option<Place> {
    if !matches!(
        interaction.kind,
        interaction_type::APPLICATION_COMMAND | interaction_type::MESSAGE_COMPONENT
    ) {
        return None;
    }
    interaction.guild_id?;
    if let Some(channel) = &interaction.channel {
        shared.channels.note_kind(
            channel.id.get(),
            channel.kind,
            channel.parent_id.map(|p| p.get()),
        );
    }
    Some(shared.channels.place(interaction.channel()?).await)
}
