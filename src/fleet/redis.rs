//! The Redis link of a fleet: purges published on `<channel>:purge`, confirmations on
//! `<channel>:ack`, a heartbeat hash `<channel>:nodes` (node → last seen, ms) that tells a
//! node which peers should confirm, and release state: changes published on
//! `<channel>:release` and kept in the hash `<channel>:release-state` (site → state), which a
//! node reads whenever it (re)subscribes, so every node runs the same pools.
//!
//! A node that loses Redis keeps serving: it logs loudly, shows the state in `/status`, and
//! reconnects with backoff. Purges published while its subscription was down are lost to it,
//! so on re-subscribing it soft-purges its whole cache (objects are refreshed on next use,
//! within their stale windows where they have one) rather than risk serving purged content.
//!
//! A hung Redis (stopped, or a network that drops packets) keeps its sockets open and says
//! nothing, so silence is watched too: every node publishes a beat on `<channel>:members`
//! each second, its own included, and a subscription that hears nothing for
//! [`SUBSCRIPTION_DEADLINE`] is dropped and made again, with the same catch-up; every command
//! has a deadline of its own.
//!
//! Who must confirm a purge is this node's own memory of the fleet: every instance it has
//! seen (in the heartbeat hash, a beat, a purge or a confirmation) and not seen leave, kept
//! until it has been unseen for [`PEER_TTL_MS`] of healthy link — so a Redis that restarts
//! empty, or refuses connections, cannot make a purge report complete without the nodes it
//! forgot. A node that stops says so on `<channel>:members` and leaves the hash.
//!
//! `fleet.redis` names one server or, with `redis+sentinel://…/<primary>`, the Redis Sentinels
//! of a replicated one: every connection asks them for the current primary, so after a
//! failover the link's next reconnection follows the promoted replica.

use super::{NodeResult, Purger};
use crate::cache::purge::Purge;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How often a node announces itself.
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// A subscription that hears nothing (not even this node's own beat) for this long is dead.
const SUBSCRIPTION_DEADLINE: Duration = Duration::from_secs(3);
/// The longest one Redis command, connection or subscription may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leaving node still confirms purges after it has said it leaves: peers that
/// counted on it just before hearing so get their confirmation.
const LEAVE_GRACE: Duration = Duration::from_millis(300);
/// A peer not heard from for this long is not expected to confirm purges.
const PEER_TTL_MS: u64 = 5000;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PurgeMsg {
    pub id: u64,
    pub from: String,
    pub purge: Purge,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AckMsg {
    pub id: u64,
    pub to: String,
    pub node: String,
    pub removed: u64,
    pub stale: u64,
    pub error: Option<String>,
}

/// A member's beat (every heartbeat) or goodbye.
#[derive(Debug, Serialize, Deserialize)]
struct MemberMsg {
    from: String,
    left: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ReleaseMsg {
    pub from: String,
    pub site: String,
    pub state: crate::pools::switch::SiteState,
}

#[derive(Debug, Default, Clone)]
struct LinkState {
    subscribed: bool,
    last_error: Option<String>,
    peers: Vec<String>,
    /// This node's memory of the fleet: instance → when it was last seen here (ms). Not
    /// forgotten while the link is down, or in the first `PEER_TTL_MS` after it came back.
    fleet: HashMap<String, u64>,
    /// Instances that said they left: never expected again (an instance id is one process).
    departed: std::collections::HashSet<String>,
    /// Since when the subscription has been live (ms); `None` while it is not.
    healthy_since: Option<u64>,
    resubscriptions: u64,
    /// Other live instances that run under this node's name.
    name_clash: Vec<String>,
}

impl LinkState {
    /// Instances this node expects to confirm a purge, as of `now`.
    fn expected(&mut self, now: u64) -> Vec<String> {
        let settled = self
            .healthy_since
            .is_some_and(|since| now.saturating_sub(since) >= PEER_TTL_MS);
        if settled {
            self.fleet
                .retain(|_, seen| now.saturating_sub(*seen) < PEER_TTL_MS);
        }
        let mut ids: Vec<String> = self.fleet.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Why talking to Redis failed (kept as text for the status endpoint and reports).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct LinkError(#[from] redis::RedisError);

/// Where the link connects: one server, or the primary Redis Sentinel names (asked on every
/// connection, so after a failover the link follows the new primary).
enum Source {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

impl Source {
    fn new(url: &str) -> Result<Source, LinkError> {
        use crate::config::admin::RedisTarget;
        let target = crate::config::admin::redis_target(url).map_err(|why| {
            LinkError(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "bad fleet.redis",
                why,
            )))
        })?;
        Ok(match target {
            RedisTarget::Direct(url) => Source::Direct(redis::Client::open(url)?),
            RedisTarget::Sentinel { sentinels, primary } => Source::Sentinel(
                tokio::sync::Mutex::new(redis::sentinel::SentinelClient::build(
                    sentinels,
                    primary,
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )?),
            ),
        })
    }

    /// A client for the server to use now.
    async fn client(&self) -> Result<redis::Client, LinkError> {
        match self {
            Source::Direct(c) => Ok(c.clone()),
            Source::Sentinel(s) => within(async { s.lock().await.async_get_client().await }).await,
        }
    }
}

/// Connection state and pending confirmations of one node's Redis link.
pub struct RedisLink {
    source: Source,
    node: String,
    /// This process in the fleet: the node's name and a per-process instance
    /// (`store-1#5f3a9c01`), so two processes given one name (two instances on a host, a
    /// container image with a fixed hostname) never take each other's purges for their own.
    pub(super) id: String,
    /// When this process joined (ms): an instance of its name last seen before then is its
    /// predecessor (a restart), not a clash, and is not waited for.
    started_ms: u64,
    purge_channel: String,
    ack_channel: String,
    nodes_key: String,
    members_channel: String,
    release_channel: String,
    release_key: String,
    pub(super) events_channel: String,
    pub(super) events_key: String,
    pub(super) summary_channel: String,
    /// Other instances' latest summaries and when they came (ms): the fleet view.
    pub(super) summaries: Mutex<HashMap<String, (serde_json::Value, u64)>>,
    pub(super) confirm_timeout: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Set when the process is shutting down: it no longer announces itself.
    leaving: std::sync::atomic::AtomicBool,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<AckMsg>>>,
    state: Mutex<LinkState>,
}

/// The node name of an instance id (`store-1#5f3a9c01` → `store-1`).
pub(super) fn name_of(id: &str) -> &str {
    id.split_once('#').map_or(id, |(name, _)| name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisLink {
    pub fn new(
        url: &str,
        node: &str,
        channel: &str,
        confirm_timeout: Duration,
    ) -> Result<Self, LinkError> {
        let started_ms = now_ms();
        let instance = (started_ms as u32) ^ std::process::id().rotate_left(16);
        Ok(RedisLink {
            source: Source::new(url)?,
            node: node.to_string(),
            id: format!("{node}#{instance:08x}"),
            started_ms,
            purge_channel: format!("{channel}:purge"),
            ack_channel: format!("{channel}:ack"),
            nodes_key: format!("{channel}:nodes"),
            members_channel: format!("{channel}:members"),
            release_channel: format!("{channel}:release"),
            release_key: format!("{channel}:release-state"),
            events_channel: format!("{channel}:events"),
            events_key: format!("{channel}:events-log"),
            summary_channel: format!("{channel}:summary"),
            summaries: Mutex::new(HashMap::new()),
            confirm_timeout,
            conn: tokio::sync::Mutex::new(None),
            leaving: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            state: Mutex::new(LinkState::default()),
        })
    }

    /// A command connection, (re)connected on demand.
    async fn conn(&self) -> Result<MultiplexedConnection, LinkError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = self.source.client().await?;
        let c = within(client.get_multiplexed_async_connection()).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn forget_conn(&self) {
        *self.conn.lock().await = None;
    }

    /// Runs one command; a failure on a connection made before Redis restarted is retried once
    /// on a fresh connection.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, LinkError> {
        let mut c = self.conn().await?;
        match within(cmd.query_async(&mut c)).await {
            Ok(v) => Ok(v),
            Err(_) => {
                self.forget_conn().await;
                let mut c = self.conn().await?;
                within(cmd.query_async(&mut c)).await
            }
        }
    }

    /// Notes that instance `id` was seen (unless it is this one).
    fn observe(&self, id: &str) {
        // A predecessor of this process sends nothing: whoever sends is alive, unless it said
        // it is leaving (it still confirms purges for a moment after).
        let mut s = lock(&self.state);
        if id != self.id && !s.departed.contains(id) {
            s.fleet.insert(id.to_string(), now_ms());
        }
    }

    /// Forgets instance `id`, which said it left.
    fn departed(&self, id: &str) {
        let mut s = lock(&self.state);
        s.fleet.remove(id);
        if s.departed.len() >= 1024 {
            s.departed.clear();
        }
        s.departed.insert(id.to_string());
    }

    /// Whether instance `id` said it left (a purge sent before this node heard so no longer
    /// waits for it: it either confirmed in its last moments or is gone).
    pub(super) fn has_left(&self, id: &str) -> bool {
        lock(&self.state).departed.contains(id)
    }

    /// The instances this node expects to confirm a purge (its memory of the fleet).
    pub(super) fn expected(&self) -> Vec<String> {
        lock(&self.state).expected(now_ms())
    }

    /// Whether this node hears purges now.
    pub(super) fn subscribed(&self) -> (bool, Option<String>) {
        let s = lock(&self.state);
        (s.subscribed, s.last_error.clone())
    }

    pub(super) async fn publish(&self, channel: &str, payload: String) -> Result<(), LinkError> {
        self.query::<i64>(redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await
            .map(|_| ())
    }

    /// Peers heard from recently (instances, not this one; not a predecessor of this one).
    pub(super) async fn peers(&self) -> Result<Vec<String>, LinkError> {
        let all: HashMap<String, u64> = self
            .query(redis::cmd("HGETALL").arg(&self.nodes_key))
            .await?;
        let now = now_ms();
        let mut peers: Vec<String> = all
            .into_iter()
            .filter(|(id, seen)| {
                let predecessor = name_of(id) == self.node && *seen < self.started_ms;
                *id != self.id && !predecessor && now.saturating_sub(*seen) < PEER_TTL_MS
            })
            .map(|(id, _)| id)
            .collect();
        peers.sort();
        let clash: Vec<String> = peers
            .iter()
            .filter(|id| name_of(id) == self.node)
            .cloned()
            .collect();
        let mut state = lock(&self.state);
        if clash.iter().any(|c| !state.name_clash.contains(c)) {
            tracing::error!(node = %self.node, instance = %self.id, others = ?clash, "fleet: another live process uses this node's name; give each node its own [fleet] node");
        }
        state.name_clash = clash;
        let seen = now_ms();
        for id in &peers {
            if !state.departed.contains(id) {
                state.fleet.insert(id.clone(), seen);
            }
        }
        Ok(peers)
    }

    async fn heartbeat(&self) -> Result<(), LinkError> {
        if self.leaving.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        self.query::<i64>(
            redis::cmd("HSET")
                .arg(&self.nodes_key)
                .arg(&self.id)
                .arg(now_ms()),
        )
        .await?;
        let beat = MemberMsg {
            from: self.id.clone(),
            left: false,
        };
        let payload = serde_json::to_string(&beat).unwrap_or_default();
        self.publish(&self.members_channel, payload).await?;
        let peers = self.peers().await?;
        lock(&self.state).peers = peers;
        Ok(())
    }

    /// Leaves the fleet (the process is shutting down, SIGTERM or the SIGQUIT of a binary
    /// upgrade): stops announcing itself and removes its entry, so the other nodes stop
    /// waiting for its confirmations at once instead of for `PEER_TTL_MS` after its last
    /// heartbeat (each purge in that window waited the whole confirm timeout).
    pub(super) async fn leave(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
        let goodbye = MemberMsg {
            from: self.id.clone(),
            left: true,
        };
        let payload = serde_json::to_string(&goodbye).unwrap_or_default();
        let said = self.publish(&self.members_channel, payload).await;
        let left = match said {
            Ok(()) => {
                self.query::<i64>(redis::cmd("HDEL").arg(&self.nodes_key).arg(&self.id))
                    .await
            }
            Err(e) => Err(e),
        };
        match left {
            Ok(_) => tracing::info!(node = %self.node, instance = %self.id, "fleet: left"),
            Err(e) => tracing::warn!(error = %e, "fleet: could not announce leaving"),
        }
    }

    /// Publishes a purge; confirmations arrive on the returned channel.
    pub(super) async fn send_purge(
        &self,
        id: u64,
        purge: &Purge,
    ) -> Result<mpsc::UnboundedReceiver<AckMsg>, LinkError> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id, tx);
        let msg = PurgeMsg {
            id,
            from: self.id.clone(),
            purge: purge.clone(),
        };
        let payload = serde_json::to_string(&msg).unwrap_or_default();
        if let Err(e) = self.publish(&self.purge_channel, payload).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        Ok(rx)
    }

    /// Stores and publishes a site's release state.
    pub(super) async fn send_release(
        &self,
        site: &str,
        state: &crate::pools::switch::SiteState,
    ) -> Result<(), LinkError> {
        let msg = ReleaseMsg {
            from: self.id.clone(),
            site: site.to_string(),
            state: state.clone(),
        };
        let payload = serde_json::to_string(&msg).unwrap_or_default();
        let json = serde_json::to_string(state).unwrap_or_default();
        self.query::<i64>(
            redis::cmd("HSET")
                .arg(&self.release_key)
                .arg(site)
                .arg(json),
        )
        .await?;
        self.publish(&self.release_channel, payload).await
    }

    /// Installs the fleet's stored release state (on every (re)subscription).
    async fn sync_release(&self, purger: &Purger) {
        let stored: Result<HashMap<String, String>, _> = self
            .query(redis::cmd("HGETALL").arg(&self.release_key))
            .await;
        match stored {
            Ok(states) => {
                for (site, json) in states {
                    if let Ok(state) = serde_json::from_str(&json) {
                        purger.install_release(&site, state);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "fleet: could not read the release state"),
        }
    }

    pub(super) fn done(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    pub(super) fn status(&self) -> serde_json::Value {
        let s = lock(&self.state).clone();
        let expected: Vec<&str> = s.fleet.keys().map(|id| name_of(id)).collect();
        serde_json::json!({
            "expected": expected,
            "mode": "redis",
            "node": self.node,
            "instance": self.id,
            "name_clash": s.name_clash,
            "subscribed": s.subscribed,
            "last_error": s.last_error,
            "peers": s.peers,
            "resubscriptions": s.resubscriptions,
        })
    }

    fn set_error(&self, e: impl std::fmt::Display) {
        let mut s = lock(&self.state);
        let message = e.to_string();
        if s.subscribed || s.last_error.as_deref() != Some(&message) {
            tracing::error!(node = %self.node, error = %message, "fleet: Redis unavailable; serving on, purges from other nodes are not received");
        }
        s.subscribed = false;
        s.healthy_since = None;
        s.last_error = Some(message);
    }

    /// Handles one message from the subscription.
    async fn on_message(&self, purger: &Purger, channel: &str, payload: &str) {
        if channel == self.members_channel {
            match serde_json::from_str::<MemberMsg>(payload) {
                Ok(m) if m.left => self.departed(&m.from),
                Ok(m) => self.observe(&m.from),
                Err(_) => tracing::warn!("fleet: unreadable member message ignored"),
            }
        } else if channel == self.summary_channel {
            self.on_summary(payload);
        } else if channel == self.events_channel {
            self.on_event(purger, payload);
        } else if channel == self.release_channel {
            match serde_json::from_str::<ReleaseMsg>(payload) {
                Ok(msg) if msg.from != self.id => {
                    tracing::warn!(site = %msg.site, from = %msg.from, "fleet: release state changed by another node");
                    purger.install_release(&msg.site, msg.state);
                }
                Ok(_) => {}
                Err(_) => tracing::warn!("fleet: unreadable release message ignored"),
            }
        } else if channel == self.purge_channel {
            let Ok(msg) = serde_json::from_str::<PurgeMsg>(payload) else {
                tracing::warn!("fleet: unreadable purge message ignored");
                return;
            };
            if msg.from == self.id {
                return;
            }
            self.observe(&msg.from);
            let (result, error) = match purger.apply_local(&msg.purge) {
                Ok(r) => (r, None),
                Err(e) => (
                    NodeResult {
                        node: self.node.clone(),
                        removed: 0,
                        stale: 0,
                    },
                    Some(e.to_string()),
                ),
            };
            let ack = AckMsg {
                id: msg.id,
                to: msg.from,
                node: self.id.clone(),
                removed: result.removed,
                stale: result.stale,
                error,
            };
            if let Err(e) = self
                .publish(
                    &self.ack_channel,
                    serde_json::to_string(&ack).unwrap_or_default(),
                )
                .await
            {
                tracing::warn!(error = %e, "fleet: could not confirm a purge");
            }
        } else if let Ok(ack) = serde_json::from_str::<AckMsg>(payload) {
            if ack.to == self.id {
                self.observe(&ack.node);
                if let Some(tx) = lock(&self.pending).get(&ack.id) {
                    let _ = tx.send(ack);
                }
            }
        }
    }

    /// Runs the subscription and heartbeat until the process ends. Holds the purger weakly so
    /// that it does not keep the proxy alive.
    pub async fn run(self: Arc<Self>, purger: Weak<Purger>) {
        let heartbeat = {
            let link = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = link.heartbeat().await {
                        tracing::debug!(error = %e, "fleet heartbeat failed");
                        // Peers seen before Redis went away are not known to be there now;
                        // the status must not claim a fleet it cannot see (the memory of the
                        // fleet keeps them for purge reports).
                        lock(&link.state).peers.clear();
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
            })
        };
        let mut backoff = BACKOFF_MIN;
        let mut ever_subscribed = false;
        loop {
            match self.subscribe().await {
                Ok(mut pubsub) => {
                    backoff = BACKOFF_MIN;
                    // Announce this node as soon as it can hear purges (not up to a heartbeat
                    // later, so peers wait for its confirmation) and refresh the peer list
                    // before the status says "subscribed".
                    if let Err(e) = self.heartbeat().await {
                        tracing::debug!(error = %e, "fleet heartbeat failed");
                    }
                    {
                        let mut s = lock(&self.state);
                        s.subscribed = true;
                        s.healthy_since = Some(now_ms());
                        s.last_error = None;
                        if ever_subscribed {
                            s.resubscriptions += 1;
                        }
                    }
                    tracing::info!(node = %self.node, "fleet: subscribed to purges");
                    if let Some(p) = purger.upgrade() {
                        self.sync_release(&p).await;
                        self.sync_events(&p).await;
                    }
                    if ever_subscribed {
                        if let Some(p) = purger.upgrade() {
                            tracing::warn!("fleet: purges may have been missed while disconnected; marking the cache stale");
                            let _ = p.apply_local(&Purge::All {
                                site: None,
                                soft: true,
                            });
                        }
                    }
                    ever_subscribed = true;
                    let mut stream = pubsub.on_message();
                    let ended = loop {
                        // Silence longer than the deadline: Redis is hung or unreachable, and
                        // what it may have sent meanwhile is lost to this node.
                        let next = tokio::time::timeout(SUBSCRIPTION_DEADLINE, stream.next());
                        let msg = match next.await {
                            Ok(Some(msg)) => msg,
                            Ok(None) => break "subscription closed".to_string(),
                            Err(_) => {
                                break format!(
                                    "Redis sent nothing for {} s (hung or unreachable)",
                                    SUBSCRIPTION_DEADLINE.as_secs()
                                )
                            }
                        };
                        let Some(p) = purger.upgrade() else {
                            break "stopping".to_string();
                        };
                        let channel = msg.get_channel_name().to_string();
                        let payload: String = msg.get_payload().unwrap_or_default();
                        self.on_message(&p, &channel, &payload).await;
                    };
                    self.set_error(ended);
                    lock(&self.state).peers.clear();
                }
                Err(e) => self.set_error(e),
            }
            if purger.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        heartbeat.abort();
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, LinkError> {
        let client = self.source.client().await?;
        let mut pubsub = within(client.get_async_pubsub()).await?;
        for channel in [
            &self.purge_channel,
            &self.ack_channel,
            &self.members_channel,
            &self.release_channel,
            &self.events_channel,
            &self.summary_channel,
        ] {
            within(pubsub.subscribe(channel)).await?;
        }
        Ok(pubsub)
    }

    /// How long a leaving node keeps confirming purges after it said it leaves.
    pub(super) fn leave_grace(&self) -> Duration {
        LEAVE_GRACE
    }
}

/// `op` within [`COMMAND_TIMEOUT`]: a hung Redis is an error, not a wait.
async fn within<T>(
    op: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, op).await {
        Ok(r) => r.map_err(LinkError::from),
        Err(_) => Err(LinkError::from(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer from Redis within the command timeout",
        )))),
    }
}
