//! Upstream pools: named groups of application servers (blue, green, …), their health, and the
//! choice of server per request. Which pool a request goes to is the release state's decision
//! ([`switch`]); health checks run in [`health`].
//!
//! Within a pool, healthy servers are used round-robin. A server is unhealthy when its active
//! check failed `fall` times in a row (until it passes `rise` times), or for `passive_down`
//! after a connection failure or three 5xx answers in a row.

pub mod health;
pub mod judge;
pub mod switch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Consecutive 5xx answers that take a server out of rotation.
const PASSIVE_5XX_LIMIT: u32 = 3;

/// Active health check settings of a pool.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// One application server and what the edge knows about it.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// Relative share of the pool's traffic.
    pub weight: u32,
    /// Active-check verdict (true until a check says otherwise).
    checked_up: AtomicBool,
    /// Consecutive active-check results in the current direction (for rise/fall).
    streak: AtomicU32,
    /// Passively marked down until this time (ms since the Unix epoch).
    down_until_ms: AtomicU64,
    consecutive_5xx: AtomicU32,
    /// Requests being proxied to this server now.
    pub inflight: AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Server {
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Server {
            addr,
            weight: weight.max(1),
            checked_up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            inflight: AtomicUsize::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.checked_up.load(Ordering::Acquire)
            && self.down_until_ms.load(Ordering::Acquire) <= now_ms()
    }

    /// Records an active check result, applying the rise/fall thresholds.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) {
        let up = self.checked_up.load(Ordering::Acquire);
        if ok == up {
            self.streak.store(0, Ordering::Release);
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::AcqRel) + 1;
        if streak >= if up { fall } else { rise } {
            self.checked_up.store(ok, Ordering::Release);
            self.streak.store(0, Ordering::Release);
            tracing::warn!(server = %self.addr, healthy = ok, "health check changed a server's state");
        }
    }

    /// Takes over the health state of the same server in a previous config.
    pub fn inherit(&self, old: &Server) {
        self.checked_up
            .store(old.checked_up.load(Ordering::Acquire), Ordering::Release);
        self.streak
            .store(old.streak.load(Ordering::Acquire), Ordering::Release);
        self.down_until_ms
            .store(old.down_until_ms.load(Ordering::Acquire), Ordering::Release);
    }

    /// A connection to the server failed: out of rotation for `down`.
    pub fn connect_failed(&self, down: Duration) {
        self.down_until_ms
            .store(now_ms() + down.as_millis() as u64, Ordering::Release);
    }

    /// Records the status of an answer; repeated 5xx take the server out for `down`.
    pub fn answered(&self, status: u16, down: Duration) {
        if status >= 500 {
            if self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1 >= PASSIVE_5XX_LIMIT {
                self.consecutive_5xx.store(0, Ordering::Release);
                self.connect_failed(down);
            }
        } else {
            self.consecutive_5xx.store(0, Ordering::Release);
        }
    }
}

/// A named group of application servers serving one release.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub servers: Vec<Server>,
    /// Server indices in weighted, interleaved order (a server of weight 3 appears 3 times).
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// The release this pool runs (config, or the health check's `X-Release` header).
    pub release: RwLock<Option<String>>,
    /// The static-asset hash this pool serves (config, or the health check's `X-Asset-Hash`).
    pub asset_hash: RwLock<Option<String>>,
    pub health: Option<HealthCheck>,
    pub passive_down: Duration,
    /// Speak HTTP/2 (h2c) to the servers.
    pub http2: bool,
    /// Per-pool overrides of `[origin]` timeouts.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
}

impl Pool {
    /// A pool of equally weighted servers.
    pub fn new(name: String, servers: Vec<SocketAddr>) -> Self {
        let weighted = servers.into_iter().map(|a| (a, 1)).collect();
        Self::weighted(name, weighted)
    }

    /// A pool of servers with weights.
    pub fn weighted(name: String, servers: Vec<(SocketAddr, u32)>) -> Self {
        let servers: Vec<Server> = servers
            .into_iter()
            .map(|(a, w)| Server::new(a, w))
            .collect();
        let max = servers.iter().map(|s| s.weight).max().unwrap_or(1);
        let schedule = (1..=max)
            .flat_map(|round| {
                let servers = &servers;
                (0..servers.len()).filter(move |&i| servers[i].weight >= round)
            })
            .collect();
        Pool {
            name,
            servers,
            schedule,
            next: AtomicUsize::new(0),
            release: RwLock::new(None),
            asset_hash: RwLock::new(None),
            health: None,
            passive_down: Duration::from_secs(10),
            http2: false,
            connect_timeout: None,
            read_timeout: None,
        }
    }

    /// The next healthy server, weighted round-robin; `None` when no server is healthy.
    pub fn pick(&self) -> Option<&Server> {
        let n = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.servers[self.schedule[(start + i) % n]])
            .find(|s| s.is_healthy())
    }

    /// Takes over health and announced release/asset hash from the same pool in a previous
    /// config (config values win over announced ones).
    pub fn inherit(&self, old: &Pool) {
        for s in &self.servers {
            if let Some(o) = old.server(s.addr) {
                s.inherit(o);
            }
        }
        let mut release = self.release.write().unwrap_or_else(|e| e.into_inner());
        if release.is_none() {
            *release = old.release();
        }
        let mut hash = self.asset_hash.write().unwrap_or_else(|e| e.into_inner());
        if hash.is_none() {
            *hash = old.asset_hash();
        }
    }

    pub fn healthy_servers(&self) -> usize {
        self.servers.iter().filter(|s| s.is_healthy()).count()
    }

    pub fn server(&self, addr: SocketAddr) -> Option<&Server> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    pub fn asset_hash(&self) -> Option<String> {
        self.asset_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn release(&self) -> Option<String> {
        self.release
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A JSON view for `/pools` and `/status`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "release": self.release(),
            "asset_hash": self.asset_hash(),
            "healthy_servers": self.healthy_servers(),
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
mod tests {
    use super::*;

    #[test]
    fn health_thresholds_and_passive_marks() {
        let pool = Pool::new(
            "blue".into(),
            vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
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
        for _ in 0..3 {
            t.answered(503, Duration::from_secs(60));
        }
        assert!(!t.is_healthy(), "three 5xx in a row");
        s.connect_failed(Duration::from_secs(60));
        assert!(pool.pick().is_none());
        assert_eq!(pool.healthy_servers(), 0);
    }

    #[test]
    fn weights_share_traffic() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let pool = Pool::weighted("blue".into(), vec![(a, 3), (b, 1)]);
        let picks: Vec<u16> = (0..8).map(|_| pool.pick().unwrap().addr.port()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 6);
        assert_eq!(picks.iter().filter(|p| **p == 2).count(), 2);
    }
}
