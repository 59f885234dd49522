//! Purges across the fleet: apply on this node, then (with Redis configured) publish to every
//! other node and collect their confirmations into one report.
//!
//! Without `[fleet] redis` a node works alone and reports only itself.

mod events;
mod redis;
mod summary;

use crate::cache::purge::{Purge, PurgeError};
use crate::cache::storage::EdgeStorage;
use crate::config::Runtime;
use crate::pools::switch::Release;
use arc_swap::ArcSwap;
use redis::RedisLink;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a purge waiting for confirmations looks whether a node it waits for has left.
const LEFT_CHECK: Duration = Duration::from_millis(100);

/// What one node did for a purge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeResult {
    pub node: String,
    pub removed: u64,
    pub stale: u64,
}

/// The answer to a purge: which nodes applied it, which did not confirm in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeReport {
    pub purge: Purge,
    pub nodes: Vec<NodeResult>,
    /// Nodes known to the fleet that did not confirm within the timeout.
    pub unconfirmed: Vec<String>,
    /// True when every known node confirmed.
    pub complete: bool,
    /// Why the fleet could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_error: Option<String>,
}

/// Applies purges on this node and, in a fleet, on every node.
pub struct Purger {
    runtime: Arc<ArcSwap<Runtime>>,
    storage: &'static EdgeStorage,
    node: String,
    link: Option<Arc<RedisLink>>,
    next_id: AtomicU64,
    release: Arc<Release>,
    metrics: Arc<crate::metrics::Metrics>,
    /// This node's release events on their way to the fleet (taken by the fleet service).
    events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::events::Event>>>,
}

impl Purger {
    /// A purger for this node; with `[fleet] redis`, also the link to the other nodes (its
    /// background task is started by [`FleetService`]).
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        storage: &'static EdgeStorage,
        release: Arc<Release>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let fleet = runtime.load().fleet.clone();
        let link = fleet.redis.as_deref().and_then(|url| {
            RedisLink::new(url, &fleet.node, &fleet.channel, fleet.confirm_timeout)
                .map_err(|e| tracing::error!(error = %e, "fleet: bad Redis URL; running alone"))
                .ok()
                .map(Arc::new)
        });
        // Ids only need to be unique among in-flight purges of this node.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let events = link.as_ref().map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            metrics.timeline.set_outbox(tx);
            rx
        });
        Purger {
            runtime,
            storage,
            node: fleet.node,
            link,
            next_id: AtomicU64::new(seed),
            release,
            metrics,
            events: std::sync::Mutex::new(events),
        }
    }

    /// The background task that keeps the Redis link up, if this node is in a fleet.
    pub fn service(self: &Arc<Self>) -> Option<FleetService> {
        self.link.as_ref().map(|link| FleetService {
            link: link.clone(),
            purger: Arc::downgrade(self),
        })
    }

    /// Records a release timeline event (for callers that hold the purger, not the metrics).
    pub fn record(&self, event: crate::events::Event) {
        self.metrics.event(event);
    }

    /// Fleet state for the status endpoint.
    pub fn status(&self) -> serde_json::Value {
        match &self.link {
            Some(link) => link.status(),
            None => serde_json::json!({ "mode": "single", "node": self.node }),
        }
    }

    /// Applies `purge` here only.
    pub fn apply_local(&self, purge: &Purge) -> Result<NodeResult, PurgeError> {
        let count = purge.apply(&self.runtime.load(), self.storage)?;
        let mode = if purge.soft() { "soft" } else { "hard" };
        self.metrics
            .purges
            .with_label_values(&[purge.kind(), mode])
            .inc();
        tracing::info!(node = %self.node, ?purge, removed = count.removed, stale = count.stale, "purge applied");
        Ok(NodeResult {
            node: self.node.clone(),
            removed: count.removed,
            stale: count.stale,
        })
    }

    /// Applies `purge` here, then on every other node of the fleet, and reports which nodes
    /// confirmed within `fleet.confirm_timeout`.
    pub async fn purge(&self, purge: Purge) -> Result<PurgeReport, PurgeError> {
        let local = self.apply_local(&purge)?;
        let mut report = PurgeReport {
            purge,
            nodes: vec![local],
            unconfirmed: vec![],
            complete: true,
            fleet_error: None,
        };
        let Some(link) = &self.link else {
            return Ok(report);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let names = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .map(|id| redis::name_of(id).to_string())
                .collect()
        };
        // Without its own subscription this node cannot hear confirmations (nor purges from
        // others): the purge is still sent, and the report says nobody could confirm it.
        let (subscribed, why) = link.subscribed();
        if !subscribed {
            if link.send_purge(id, &report.purge).await.is_ok() {
                link.done(id);
            }
            report.unconfirmed = names(&link.expected());
            report.complete = false;
            report.fleet_error = Some(format!(
                "this node is not subscribed to the fleet: {}",
                why.as_deref().unwrap_or("connecting")
            ));
            return Ok(report);
        }
        // Who must confirm: the fleet as this node remembers it, refreshed from the heartbeat
        // hash (which a Redis restarted empty has forgotten).
        let sent = match link.peers().await {
            Ok(_) => link
                .send_purge(id, &report.purge)
                .await
                .map(|rx| (link.expected(), rx)),
            Err(e) => Err(e),
        };
        let (mut waiting, mut acks) = match sent {
            Ok(sent) => sent,
            Err(e) => {
                report.unconfirmed = names(&link.expected());
                report.complete = false;
                report.fleet_error = Some(e.to_string());
                return Ok(report);
            }
        };
        let deadline = Instant::now() + link.confirm_timeout;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A node stopping while the purge was on its way (a rolling restart) says so on
            // the members channel and stops confirming a moment later: one this node heard
            // leave is not waited for, nor reported unconfirmed.
            match tokio::time::timeout(left.min(LEFT_CHECK), acks.recv()).await {
                Err(_) => {
                    waiting.retain(|id| !link.has_left(id));
                    continue;
                }
                Ok(Some(ack)) => {
                    waiting.retain(|n| *n != ack.node);
                    let node = redis::name_of(&ack.node).to_string();
                    if let Some(e) = ack.error {
                        report.fleet_error = Some(format!("{node}: {e}"));
                        report.complete = false;
                    }
                    report.nodes.push(NodeResult {
                        node,
                        removed: ack.removed,
                        stale: ack.stale,
                    });
                }
                _ => break,
            }
        }
        link.done(id);
        waiting.retain(|id| !link.has_left(id));
        report.complete &= waiting.is_empty();
        report.unconfirmed = waiting
            .iter()
            .map(|id| redis::name_of(id).to_string())
            .collect();
        report.nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(report)
    }

    /// Installs a release state that another node decided.
    pub fn install_release(&self, site: &str, state: crate::pools::switch::SiteState) {
        let rt = self.runtime.load();
        let known = rt.sites.list.iter().find(|s| &*s.name == site);
        if known.is_some_and(|s| s.pool(&state.active).is_some()) {
            self.release.install(site, state);
        } else {
            tracing::warn!(
                site,
                "fleet: release state for an unknown site or pool ignored"
            );
        }
    }

    /// Shares a site's new release state with the other nodes; returns what to report.
    pub async fn share_release(
        &self,
        site: &str,
        state: &crate::pools::switch::SiteState,
    ) -> serde_json::Value {
        match &self.link {
            None => serde_json::json!({ "mode": "single" }),
            Some(link) => match link.send_release(site, state).await {
                Ok(()) => serde_json::json!({ "mode": "redis", "published": true }),
                Err(e) => {
                    serde_json::json!({ "mode": "redis", "published": false, "error": e.to_string() })
                }
            },
        }
    }

    /// Sends `purge` to the other nodes without waiting for them (invalidations after unsafe
    /// methods, which were already applied here).
    pub fn broadcast(self: &Arc<Self>, purge: Purge) {
        if self.link.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(link) = &me.link {
                let id = me.next_id.fetch_add(1, Ordering::Relaxed);
                match link.send_purge(id, &purge).await {
                    Ok(_) => link.done(id),
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet: invalidation not sent to other nodes")
                    }
                }
            }
        });
    }
}

/// The pingora background service that runs the Redis link.
pub struct FleetService {
    link: Arc<RedisLink>,
    purger: std::sync::Weak<Purger>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for FleetService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let events = self
            .purger
            .upgrade()
            .and_then(|p| p.events.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(events) = events {
            let link = self.link.clone();
            tokio::spawn(async move { link.publish_events(events).await });
        }
        {
            let (link, purger) = (self.link.clone(), self.purger.clone());
            tokio::spawn(async move { link.publish_summaries(purger).await });
        }
        let run = self.link.clone().run(self.purger.clone());
        tokio::pin!(run);
        // `run` ends only when the purger is gone, which happens when the process stops (the
        // proxy service drops it, sometimes before this task sees the shutdown signal): that
        // is leaving too, and the goodbye must still be said, else the others wait for this
        // node's confirmations until its heartbeat is old.
        let ended = tokio::select! {
            _ = &mut run => true,
            _ = shutdown.changed() => false,
        };
        // Leaving: still confirming purges (the subscription keeps running while it can) until
        // the others have heard it and a little after, so a purge that counted on this node
        // gets its confirmation instead of waiting out the timeout.
        let grace = self.link.leave_grace();
        let confirming = async {
            if !ended {
                (&mut run).await;
            }
            // The subscription has ended: the goodbye below is still said.
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = confirming => {}
            _ = async {
                self.link.leave().await;
                tokio::time::sleep(grace).await;
            } => {}
        }
    }
}
