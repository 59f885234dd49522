//! Upstream pools as the edge runs them: named groups of application servers (blue, green, …),
//! their live state (health, requests in flight, announced release and asset hash, origin
//! protection), and the choice of server per request. The config says what a pool is
//! (`config::pools::PoolSpec`); the [`registry`] builds the live pools from it and keeps their
//! state across reloads. Which pool a request goes to is the release state's decision
//! ([`switch`]); health checks run in [`health`].
//!
//! Within a pool, healthy servers are used round-robin. A server is unhealthy when its active
//! check failed `fall` times in a row (until it passes `rise` times), or for `passive_down`
//! after a failed connect or `passive_failures` failed exchanges in a row (reset, closed or
//! timed out before its answer was read). An answer, whatever its status, is the
//! application's: a 500 is passed through and counted, never a reason to eject (one broken
//! endpoint must not take a site down). Passive marks are the edge's guess, so they never
//! empty a pool: when every server that passes its active check is passively marked, all of
//! them are used (Envoy's "panic" mode, at a threshold of zero).

pub mod health;
pub mod judge;
pub mod registry;
pub mod switch;

use crate::config::pools::PoolSpec;
use crate::shard::{Padded, SHARDS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use registry::{Registry, SitePools, Sites};

/// One application server of a pool: its address and weight (config) and what the edge knows
/// about it (live, shared by every config that has the same server in the same pool).
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// Relative share of the pool's traffic.
    pub weight: u32,
    state: Arc<ServerState>,
}

impl std::ops::Deref for Server {
    type Target = ServerState;
    fn deref(&self) -> &ServerState {
        &self.state
    }
}

/// What the edge knows about a server: health and requests in flight.
#[derive(Debug)]
pub struct ServerState {
    /// Active-check verdict (true until a check says otherwise).
    checked_up: AtomicBool,
    /// Consecutive active-check results in the current direction (for rise/fall).
    streak: AtomicU32,
    /// Passively marked down until this time (ms since the Unix epoch).
    down_until_ms: AtomicU64,
    /// Failed exchanges in a row (see [`Server::exchange_failed`]).
    failures: AtomicU32,
    /// Requests being proxied to this server now.
    pub inflight: AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            checked_up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            inflight: AtomicUsize::new(0),
        }
    }
}

impl ServerState {
    pub fn is_healthy(&self) -> bool {
        // A server never marked down (the usual case) needs no clock read.
        let down_until = self.down_until_ms.load(Ordering::Acquire);
        self.checked_up.load(Ordering::Acquire) && (down_until == 0 || down_until <= now_ms())
    }

    /// Passes its active check (passive marks aside).
    fn checked_up(&self) -> bool {
        self.checked_up.load(Ordering::Acquire)
    }

    /// Records an active check result, applying the rise/fall thresholds; the new state when
    /// this result changed it.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let up = self.checked_up.load(Ordering::Acquire);
        if ok == up {
            self.streak.store(0, Ordering::Release);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::AcqRel) + 1;
        if streak >= if up { fall } else { rise } {
            self.checked_up.store(ok, Ordering::Release);
            self.streak.store(0, Ordering::Release);
            return Some(ok);
        }
        None
    }

    /// A connection to the server could not be made (refused, unreachable, timed out): nothing
    /// is listening there, and the next request would fail the same way, so the server is out
    /// of rotation for `down` at once.
    pub fn connect_failed(&self, down: Duration) {
        self.down_until_ms
            .store(now_ms() + down.as_millis() as u64, Ordering::Release);
    }

    /// An exchange on an open connection failed before or while its answer was read (reset,
    /// closed, timed out): `limit` of them in a row take the server out for `down` (0: never).
    pub fn exchange_failed(&self, limit: u32, down: Duration) {
        if limit > 0 && self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= limit {
            self.failures.store(0, Ordering::Release);
            self.connect_failed(down);
        }
    }

    /// The server answered (any status: a 5xx is the application's answer, not a failure of
    /// the server's transport).
    pub fn answered(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Release);
        }
    }
}

/// A pool's origin protection (`max_inflight`, `max_wait`): at most `max` requests at its
/// servers at once; a request waits up to `wait` for a slot, then is shed (a stale copy, or
/// 503 with Retry-After). Cache hits never ask for a slot.
#[derive(Debug)]
pub struct Limit {
    pub max: usize,
    pub wait: Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

/// A held slot of a pool's [`Limit`]; freed when dropped.
pub type Slot = tokio::sync::OwnedSemaphorePermit;

/// What asking a pool for a slot gave.
pub enum Admission {
    /// The pool has no limit.
    Unlimited,
    /// A slot; `waited` when none was free at once.
    Slot { slot: Slot, waited: bool },
    /// No slot came free within the wait.
    Full,
}

impl Limit {
    pub fn new(max: usize, wait: Duration) -> Limit {
        Limit {
            max,
            wait,
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }

    /// A slot, waiting up to `wait` for one.
    pub async fn admit(&self) -> Admission {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Admission::Slot {
                slot,
                waited: false,
            };
        }
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Admission::Slot { slot, waited: true },
            _ => Admission::Full,
        }
    }

    /// Requests holding a slot now.
    pub fn inflight(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// What a pool's health checks announced (`X-Release`, `X-Asset-Hash`); kept across reloads.
#[derive(Debug, Default)]
pub struct Announced {
    pub release: RwLock<Option<String>>,
    pub asset_hash: RwLock<Option<String>>,
}

/// A pool as the edge runs it: its [`PoolSpec`] and the live state of its servers, announced
/// release and origin protection, built by the [`Registry`] from the config.
#[derive(Debug)]
pub struct Pool {
    pub spec: PoolSpec,
    pub servers: Vec<Server>,
    /// Server indices in weighted, interleaved order (a server of weight 3 appears 3 times).
    schedule: Vec<usize>,
    /// Where each thread's next pick starts in `schedule`: a cursor per thread shard (each
    /// thread goes round the schedule on its own, the shards starting spread over it), so that
    /// passes on different threads do not all write one counter.
    next: Box<[Padded<AtomicUsize>; SHARDS]>,
    pub announced: Arc<Announced>,
    /// Origin protection (`max_inflight`), when configured.
    pub limit: Option<Arc<Limit>>,
}

impl Pool {
    /// The live pool for `spec`, taking over the state `previous` (the same pool in the
    /// running config) holds: its servers' health and in-flight counts, what its health
    /// checks announced, and its origin protection's slots when the limit is unchanged.
    pub fn build(spec: &PoolSpec, previous: Option<&Pool>) -> Pool {
        let servers: Vec<Server> = spec
            .servers
            .iter()
            .map(|&(addr, weight)| Server {
                addr,
                weight: weight.max(1),
                state: previous
                    .and_then(|p| p.server(addr))
                    .map_or_else(Arc::default, |s| s.state.clone()),
            })
            .collect();
        let max = servers.iter().map(|s| s.weight).max().unwrap_or(1);
        let schedule = (1..=max)
            .flat_map(|round| {
                let servers = &servers;
                (0..servers.len()).filter(move |&i| servers[i].weight >= round)
            })
            .collect();
        let limit = spec.max_inflight.map(|max| {
            previous
                .and_then(|p| p.limit.clone())
                .filter(|l| (l.max, l.wait) == (max, spec.max_wait))
                .unwrap_or_else(|| Arc::new(Limit::new(max, spec.max_wait)))
        });
        Pool {
            spec: spec.clone(),
            servers,
            schedule,
            next: Box::new(std::array::from_fn(|i| Padded(AtomicUsize::new(i)))),
            announced: previous.map_or_else(Arc::default, |p| p.announced.clone()),
            limit,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The next healthy server, weighted round-robin. When passive marks have taken out every
    /// server the active checks pass, those servers are used anyway (see the module doc);
    /// `None` only when no server passes its active check.
    pub fn pick(&self) -> Option<&Server> {
        let n = self.schedule.len();
        let start = self.next[crate::shard::index()].fetch_add(1, Ordering::Relaxed);
        let mut order = (0..n).map(|i| &self.servers[self.schedule[(start + i) % n]]);
        order
            .clone()
            .find(|s| s.is_healthy())
            .or_else(|| order.find(|s| s.checked_up()))
    }

    /// Every server is out of rotation by passive marks and [`Pool::pick`] uses them anyway.
    pub fn panicking(&self) -> bool {
        self.healthy_servers() == 0 && self.servers.iter().any(|s| s.checked_up())
    }

    /// A slot of the pool's origin protection, if it has one.
    pub async fn admit(&self) -> Admission {
        match &self.limit {
            None => Admission::Unlimited,
            Some(limit) => limit.admit().await,
        }
    }

    pub fn healthy_servers(&self) -> usize {
        self.servers.iter().filter(|s| s.is_healthy()).count()
    }

    pub fn server(&self, addr: SocketAddr) -> Option<&Server> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// The asset hash it serves: configured, else announced by its health check.
    pub fn asset_hash(&self) -> Option<String> {
        let announced = || self.announced.asset_hash.read().ok()?.clone();
        self.spec.asset_hash.clone().or_else(announced)
    }

    /// The release it runs: configured, else announced by its health check.
    pub fn release(&self) -> Option<String> {
        let announced = || self.announced.release.read().ok()?.clone();
        self.spec.release.clone().or_else(announced)
    }

    /// A JSON view for `/pools` and `/status`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.spec.name,
            "release": self.release(),
            "asset_hash": self.asset_hash(),
            "healthy_servers": self.healthy_servers(),
            "panic": self.panicking(),
            "max_inflight": self.limit.as_ref().map(|l| l.max),
            "slots_in_use": self.limit.as_ref().map(|l| l.inflight()),
            "servers": self.servers.iter().map(|s| serde_json::json!({
                "addr": s.addr.to_string(),
                "weight": s.weight,
                "healthy": s.is_healthy(),
                "inflight": s.inflight.load(Ordering::Relaxed),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pool spec of `servers` (address, weight) with the defaults of the config.
    pub(crate) fn spec(name: &str, servers: &[(&str, u32)]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            servers: servers
                .iter()
                .map(|(a, w)| (a.parse().unwrap(), *w))
                .collect(),
            release: None,
            asset_hash: None,
            health: None,
            passive_down: Duration::from_secs(10),
            passive_failures: 3,
            http2: false,
            connect_timeout: None,
            read_timeout: None,
            max_inflight: None,
            max_wait: Duration::from_secs(1),
        }
    }

    #[test]
    fn health_thresholds_and_passive_marks() {
        let pool = Pool::build(
            &spec("blue", &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]),
            None,
        );
        let s = &pool.servers[0];
        s.record_check(false, 2, 2);
        assert!(s.is_healthy(), "one failure is below fall=2");
        s.record_check(false, 2, 2);
        assert!(!s.is_healthy());
        assert_eq!(
            pool.pick().unwrap().addr.port(),
            2,
            "only healthy servers are picked"
        );
        s.record_check(true, 2, 2);
        s.record_check(true, 2, 2);
        assert!(s.is_healthy());
        let t = &pool.servers[1];
        for _ in 0..2 {
            t.exchange_failed(3, Duration::from_secs(60));
        }
        t.answered();
        t.exchange_failed(3, Duration::from_secs(60));
        assert!(t.is_healthy(), "an answer ends a streak of failures");
        t.exchange_failed(3, Duration::from_secs(60));
        t.exchange_failed(3, Duration::from_secs(60));
        assert!(!t.is_healthy(), "three failures in a row");
        assert_eq!(pool.pick().unwrap().addr.port(), 1);
        s.connect_failed(Duration::from_secs(60));
        assert!(pool.panicking());
        assert!(pool.pick().is_some(), "passive marks never empty the pool");
        t.record_check(false, 1, 1);
        assert_eq!(pool.pick().unwrap().addr.port(), 1);
        s.record_check(false, 1, 1);
        assert!(pool.pick().is_none(), "no server passes its active check");
        assert!(!pool.panicking());
        assert_eq!(pool.healthy_servers(), 0);
    }

    #[test]
    fn weights_share_traffic() {
        let pool = Pool::build(
            &spec("blue", &[("127.0.0.1:1", 3), ("127.0.0.1:2", 1)]),
            None,
        );
        let picks: Vec<u16> = (0..8).map(|_| pool.pick().unwrap().addr.port()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 6);
        assert_eq!(picks.iter().filter(|p| **p == 2).count(), 2);
    }

    #[test]
    fn a_rebuilt_pool_shares_what_the_edge_learned() {
        let mut old_spec = spec("blue", &[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]);
        old_spec.max_inflight = Some(4);
        let old = Pool::build(&old_spec, None);
        old.servers[1].connect_failed(Duration::from_secs(60));
        *old.announced.release.write().unwrap() = Some("r2".into());
        let mut new_spec = spec("blue", &[("127.0.0.1:2", 5), ("127.0.0.1:3", 1)]);
        new_spec.max_inflight = Some(4);
        let new = Pool::build(&new_spec, Some(&old));
        assert!(
            !new.servers[0].is_healthy(),
            "the same server, the same health"
        );
        assert_eq!(new.servers[0].weight, 5, "with its new weight");
        assert!(new.servers[1].is_healthy());
        assert_eq!(new.release().as_deref(), Some("r2"));
        assert!(Arc::ptr_eq(
            new.limit.as_ref().unwrap(),
            old.limit.as_ref().unwrap()
        ));
        new_spec.max_inflight = Some(8);
        let changed = Pool::build(&new_spec, Some(&old));
        assert_eq!(changed.limit.as_ref().unwrap().max, 8);
    }
}
