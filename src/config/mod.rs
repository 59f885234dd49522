//! Configuration: the file mirror ([`file`]), human units ([`units`]), and validation
//! ([`validate`]) into the typed [`Runtime`] the proxy runs on.
//!
//! Loading never half-succeeds: either every file validates and a complete `Runtime` comes back,
//! or the caller gets every problem found, each with its file and key path.

pub mod admin;
pub mod file;
mod lines;
pub mod pools;
pub mod proxy;
mod routes;
pub mod tls;
pub mod units;
pub mod validate;

use crate::config::pools::PoolSpec;
use crate::rules::RouteTable;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use validate::load;

/// One problem in a config or rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub file: PathBuf,
    /// The line the key is on (or, for a missing key, the table it belongs in), as editors
    /// and compilers say `file:line`.
    pub line: Option<usize>,
    /// Dotted key path inside the file (`routes[3].edge_ttl`); empty for whole-file problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), list(.0))]
    Invalid(Vec<Issue>),
}

fn list(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The validated configuration the proxy runs on. Cloning is cheap (sites are shared).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub source: PathBuf,
    pub server: ServerSettings,
    pub proxy: ProxySettings,
    pub cache: CacheSettings,
    pub origin: OriginSettings,
    pub log: LogSettings,
    /// `None`: no admin listener (no `[admin]` section).
    pub admin: Option<admin::AdminSettings>,
    pub fleet: admin::FleetSettings,
    pub release: pools::ReleaseSettings,
    pub metrics: MetricsSettings,
    /// HTTPS listeners and certificates; `None` without a `[tls]` section.
    pub tls: Option<tls::TlsSettings>,
    pub dashboard: DashboardSettings,
    pub sites: Sites,
}

/// `server.connection_balance`: how a new connection picks its thread (work stealing off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionBalance {
    /// The thread serving the fewest connections (ties: the next in turn), as Envoy's exact
    /// balance and HAProxy's per-thread accept queues do: pingora's random pick left one of two
    /// threads with half again as many connections as the other, and on this box passes and
    /// hits ran 14% faster balanced (`loadtest/cpu.py --variant server.connection_balance=…`).
    Fewest,
    /// A thread at random, each time (pingora's own placement).
    Random,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    /// Whether a connection may move between worker threads (tokio's work stealing). Off (the
    /// default), each thread is its own runtime with its own reactor and runs the connections
    /// it is handed like an nginx worker: no task moves between cores; in one interleaved A/B
    /// passes ran 10% faster and hits 7% (`loadtest/cpu.py --variant server.work_stealing=…`).
    pub work_stealing: bool,
    /// Which thread a new connection is handed to when work stealing is off.
    pub connection_balance: ConnectionBalance,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: Vec<SocketAddr>,
    pub h2c: bool,
    /// Serve plain HTTP/1 hits before pingora's proxy path (`proxy::fast`).
    pub hit_fast_path: bool,
    /// Forward known passes with crossfade's own HTTP/1 client (`proxy::fast::relay`).
    pub pass_fast_path: bool,
    /// 421 (Misdirected Request) or 404 for hosts no site claims.
    pub unknown_host_status: u16,
    /// Client networks allowed to send `PURGE`; empty: the method is not special.
    pub purge_from: Vec<admin::Cidr>,
    pub limits: proxy::Limits,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub capacity: u64,
    pub max_object_size: usize,
    /// How long coalesced requests wait for the one request that is fetching the object.
    pub lock_timeout: Duration,
    /// Response headers carrying surrogate keys (lowercase); never sent to clients.
    pub tag_headers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct OriginSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

/// `[dashboard]`: other crossfades shown beside this one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DashboardSettings {
    pub environments: Vec<Environment>,
}

/// Another crossfade's admin API, read with a read token by this admin server (never by a
/// browser: the token stays here).
#[derive(Clone, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    /// `host:port` of its admin listener.
    pub addr: String,
    pub token: String,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Where to push statsd metrics; `None`: no statsd. Resolved in the background
    /// (`metrics::statsd`), never at load: a name that does not resolve is not a config error.
    pub statsd: Option<StatsdTarget>,
    pub statsd_prefix: String,
}

/// `metrics.statsd`: a host name or IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsdTarget {
    /// A name, an IPv4 address, or an IPv6 address in brackets (`[::1]`).
    pub host: String,
    pub port: u16,
}

impl StatsdTarget {
    /// `host:port`; `None` when it is not one.
    pub fn parse(s: &str) -> Option<StatsdTarget> {
        let (host, port) = s.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        let name_ok = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => name_ok(host),
        };
        ok.then(|| StatsdTarget {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for StatsdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

/// A set of host names served by one application, with its rules and pools.
#[derive(Debug)]
pub struct Site {
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub routes: RouteTable,
    pub pools: Vec<PoolSpec>,
    /// The configured active pool (the release state may have moved on since).
    pub active_pool: usize,
    pub assets: Option<pools::AssetPattern>,
    pub https_redirect: bool,
}

impl Site {
    pub fn active_pool(&self) -> &PoolSpec {
        &self.pools[self.active_pool]
    }

    pub fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// All sites, indexed by host name.
#[derive(Debug, Default, Clone)]
pub struct Sites {
    pub list: Vec<Arc<Site>>,
    /// foldhash (seeded per process): every request looks its host up here, and SipHash
    /// cost more than the lookup itself.
    by_host: foldhash::HashMap<String, Arc<Site>>,
    /// `*.example.com` entries, stored as `.example.com`.
    wildcards: Vec<(String, Arc<Site>)>,
    default: Option<Arc<Site>>,
}

impl Sites {
    /// The site for a normalised host (lowercase, no port), else the declared default site.
    pub fn find(&self, host: &str) -> Option<&Arc<Site>> {
        self.by_host
            .get(host)
            .or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| host.ends_with(suffix.as_str()))
                    .map(|(_, s)| s)
            })
            .or(self.default.as_ref())
    }
}

/// Lowercases a host and strips a port and a trailing dot, so `WWW.Store.test.:8080` and
/// `www.store.test` name the same site and the same cache entries.
pub fn normalize_host(raw: &str) -> String {
    // Byte searches (every byte looked for is ASCII, so each cut is a char boundary): this
    // runs for every request.
    let raw = raw.trim();
    let bytes = raw.as_bytes();
    let without_port = if bytes.first() == Some(&b'[') {
        // IPv6 literal: keep the brackets, drop what follows them.
        match bytes.iter().position(|&b| b == b']') {
            Some(end) => &raw[..end + 1],
            None => raw,
        }
    } else {
        match bytes.iter().rposition(|&b| b == b':') {
            Some(i) if bytes[i + 1..].iter().all(u8::is_ascii_digit) => &raw[..i],
            _ => raw,
        }
    };
    let end = without_port
        .bytes()
        .rposition(|b| b != b'.')
        .map_or(0, |i| i + 1);
    without_port[..end].to_ascii_lowercase()
}

/// Resolves `path` against the directory of the file that named it.
pub fn relative_to(base_file: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn statsd_targets_are_names_or_addresses_with_a_port() {
        use super::StatsdTarget;
        let t = StatsdTarget::parse("stats.internal:8125").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("stats.internal", 8125));
        assert_eq!(
            StatsdTarget::parse("[::1]:8125").unwrap().to_string(),
            "[::1]:8125"
        );
        assert!(StatsdTarget::parse("10.0.0.1:8125").is_some());
        for bad in [
            "stats",
            "stats:",
            ":8125",
            "stats:0",
            "stats:99999",
            "a b:1",
            "[x]:1",
        ] {
            assert!(StatsdTarget::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("WWW.Store.test.:8080"), "www.store.test");
        assert_eq!(normalize_host("store.test"), "store.test");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host(" [::1] "), "[::1]");
        assert_eq!(normalize_host("[::1"), "[::1");
        assert_eq!(normalize_host("Store.test:"), "store.test");
        assert_eq!(normalize_host("store.test:80a"), "store.test:80a");
        assert_eq!(normalize_host("store.test..."), "store.test");
        assert_eq!(normalize_host("..."), "");
        assert_eq!(normalize_host("Bücher.test.:8080"), "bücher.test");
    }
}
