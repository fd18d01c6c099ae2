//! What the adapter's integration tests share: a recording sink and an empty installation store.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ecdysis_chat::{Accepted, Event, EventSink, SubmitError};
use ecdysis_slack::{Installation, Installations, Slack, SlackSettings, SocketSettings};
use ecdysis_testkit::slack::FakeSlack;

/// Accepts events (or refuses them as busy while `busy` is set) and records them.
#[derive(Default)]
pub struct Sink {
    pub events: Mutex<Vec<Event>>,
    pub busy: Mutex<bool>,
}

#[async_trait]
impl EventSink for Sink {
    async fn submit(&self, event: Event) -> Result<Accepted, SubmitError> {
        if *self.busy.lock().unwrap() {
            return Err(SubmitError::Busy("test".into()));
        }
        self.events.lock().unwrap().push(event);
        Ok(Accepted {
            event_id: "1".into(),
            duplicate: false,
            ignored: false,
        })
    }
}

pub struct NoInstallations;

#[async_trait]
impl Installations for NoInstallations {
    async fn save(&self, _: &Installation) -> Result<(), ecdysis_chat::BackendError> {
        Ok(())
    }
    async fn get(&self, _: &str) -> Result<Option<Installation>, ecdysis_chat::BackendError> {
        Ok(None)
    }
    async fn remove(&self, _: &str) -> Result<bool, ecdysis_chat::BackendError> {
        Ok(false)
    }
    async fn put_state(&self, _: &str, _: i64) -> Result<(), ecdysis_chat::BackendError> {
        Ok(())
    }
    async fn take_state(&self, _: &str, _: i64) -> Result<bool, ecdysis_chat::BackendError> {
        Ok(false)
    }
}

pub fn slack(fake: &FakeSlack, sink: Arc<Sink>, socket: SocketSettings) -> Slack {
    let settings = SlackSettings {
        bot_token: Some("xoxb-test".into()),
        app_token: Some("xapp-test".into()),
        api_url: fake.api_url(),
        socket,
        ..SlackSettings::default()
    };
    Slack::new(settings, sink, Arc::new(NoInstallations)).unwrap()
}
