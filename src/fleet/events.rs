//! The release timeline across a fleet: every node publishes its events on
//! `<channel>:events` and keeps the last [`crate::events::CAPACITY`] in the Redis list
//! `<channel>:events-log`, so each node's timeline shows what every node did, and a node that
//! (re)subscribes catches up on what it missed.

use super::redis::{LinkError, RedisLink};
use super::Purger;
use crate::events::{Event, CAPACITY};

impl RedisLink {
    /// Publishes this node's events as they are recorded, until the timeline goes away. An
    /// event that cannot be sent (Redis down) is kept only here: the fleet is told what
    /// happens, not guaranteed it.
    pub(super) async fn publish_events(
        &self,
        mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) {
        while let Some(event) = events.recv().await {
            if let Err(e) = self.send_event(&event).await {
                tracing::debug!(error = %e, "fleet: release event not shared");
            }
        }
    }

    async fn send_event(&self, event: &Event) -> Result<(), LinkError> {
        let json = serde_json::to_string(event).unwrap_or_default();
        self.query::<i64>(redis::cmd("LPUSH").arg(&self.events_key).arg(&json))
            .await?;
        self.query::<()>(
            redis::cmd("LTRIM")
                .arg(&self.events_key)
                .arg(0)
                .arg(CAPACITY - 1),
        )
        .await?;
        self.publish(&self.events_channel, json).await
    }

    /// Reads the fleet's stored events into this node's timeline (on every subscription).
    pub(super) async fn sync_events(&self, purger: &Purger) {
        let stored: Result<Vec<String>, _> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(&self.events_key)
                    .arg(0)
                    .arg(CAPACITY - 1),
            )
            .await;
        match stored {
            Ok(list) => {
                for json in list {
                    if let Ok(event) = serde_json::from_str::<Event>(&json) {
                        purger.metrics.timeline.insert_remote(event);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet: could not read the release timeline"),
        }
    }

    /// An event another node published.
    pub(super) fn on_event(&self, purger: &Purger, payload: &str) {
        match serde_json::from_str::<Event>(payload) {
            Ok(event) => purger.metrics.timeline.insert_remote(event),
            Err(_) => tracing::warn!("fleet: unreadable release event ignored"),
        }
    }
}
