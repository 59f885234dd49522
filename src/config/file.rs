//! The config as written: a serde mirror of `crossfade.toml` and `rules/*.toml`.
//!
//! Every struct denies unknown fields so a typo is an error, never a silently ignored key.
//! Durations and sizes stay strings here; `validate` turns this into the typed [`Runtime`]
//! the proxy runs on and collects every error on the way.
//!
//! [`Runtime`]: super::Runtime

use serde::Deserialize;
use std::collections::BTreeMap;

/// `crossfade.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub origin: OriginFile,
    #[serde(default)]
    pub log: LogFile,
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub fleet: FleetFile,
    #[serde(default)]
    pub release: ReleaseFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub dashboard: DashboardFile,
    #[serde(default)]
    pub sites: Vec<SiteFile>,
}

/// `[dashboard]`: other crossfades shown beside this one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardFile {
    #[serde(default)]
    pub environments: Vec<EnvironmentFile>,
}

/// `[[dashboard.environments]]`: another crossfade (staging, another region) whose summary
/// the dashboard shows beside this edge's, fetched by this admin server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFile {
    pub name: String,
    /// Its admin API: `http://host:port`.
    pub url: String,
    /// A read token of that crossfade, or the environment variable holding it.
    pub token: Option<String>,
    pub token_env: Option<String>,
}

/// `[admin]`: the admin API listener and its tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<String>,
    #[serde(default)]
    pub tokens: Vec<TokenFile>,
}

/// `[[admin.tokens]]`: a bearer token and what it may do. The secret comes from `token` or,
/// better, from the environment variable named by `token_env`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub name: String,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `[fleet]`: this node's name and the Redis that carries purges between nodes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub node: Option<String>,
    pub redis: Option<String>,
    pub channel: Option<String>,
    pub confirm_timeout: Option<String>,
}

/// `[server]`: process-level settings handed to Pingora.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub connection_balance: Option<String>,
    pub grace_period: Option<String>,
    pub graceful_shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
}

/// `[proxy]`: the client-facing listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub listen: Option<Vec<String>>,
    pub h2c: Option<bool>,
    pub hit_fast_path: Option<bool>,
    pub pass_fast_path: Option<bool>,
    pub unknown_host_status: Option<u16>,
    pub purge_from: Option<Vec<String>>,
    pub max_uri: Option<String>,
    pub max_header_bytes: Option<String>,
    pub max_headers: Option<usize>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
}

/// `[cache]`: the shared in-memory cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub capacity: Option<String>,
    pub max_object_size: Option<String>,
    pub lock_timeout: Option<String>,
    pub tag_headers: Option<Vec<String>>,
}

/// `[origin]`: defaults for connections to application servers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginFile {
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

/// `[[sites]]`: a set of host names served by one application.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    pub name: String,
    pub hosts: Vec<String>,
    pub rules: Option<String>,
    #[serde(default)]
    pub default: bool,
    pub active_pool: Option<String>,
    /// Path pattern of versioned static assets, with `{hash}` as one segment.
    pub assets: Option<String>,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolFile>,
}

/// `[sites.pools.<name>]`: a group of application servers (blue, green, …).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub servers: Vec<String>,
    /// Speak HTTP/2 (cleartext, prior knowledge) to these servers.
    pub http2: Option<bool>,
    pub weights: Option<Vec<u32>>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub release: Option<String>,
    pub asset_hash: Option<String>,
    pub health_path: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub passive_down: Option<String>,
    /// Failed exchanges in a row (reset, closed, timed out) that take a server out.
    pub passive_failures: Option<u32>,
    /// Origin protection: requests at the pool's servers at once.
    pub max_inflight: Option<usize>,
    /// How long a request waits for one of the `max_inflight` slots.
    pub max_wait: Option<String>,
}

/// `[tls]`: HTTPS listeners and their certificates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: Vec<String>,
    #[serde(default)]
    pub certs: Vec<CertFile>,
    /// Session tickets, so a returning client resumes instead of a full handshake.
    pub session_tickets: Option<bool>,
}

/// `[[tls.certs]]`: a PEM chain and key, for the hosts listed or those of a site.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: String,
    pub key: String,
    pub hosts: Option<Vec<String>>,
    pub site: Option<String>,
}

/// `[metrics]`: statsd push (Prometheus is always on the admin listener).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    pub statsd: Option<String>,
    pub statsd_prefix: Option<String>,
}

/// `[release]`: blue/green state and the edge's maintenance page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFile {
    pub state_file: Option<String>,
    pub cohort_cookie: Option<String>,
    pub session_cookie: Option<String>,
    pub maintenance_page: Option<String>,
    pub retry_after: Option<String>,
    pub judge: Option<JudgeFile>,
}

/// `[release.judge]`: automatic canary judgement (off when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeFile {
    pub window: Option<String>,
    pub interval: Option<String>,
    pub min_requests: Option<u64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub max_p99_increase: Option<String>,
}

/// `rules/<site>.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub defaults: RouteDefaultsFile,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

/// `[defaults]` in a rules file: what every route of the site inherits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDefaultsFile {
    pub mode: Option<String>,
    pub bypass_cookies: Option<Vec<String>>,
    pub key_cookies: Option<Vec<String>>,
    pub key_headers: Option<Vec<String>>,
    pub strip_headers: Option<Vec<String>>,
    pub max_body: Option<String>,
    pub query_drop: Option<Vec<String>>,
    pub query_keep: Option<Vec<String>>,
    pub query_sort: Option<bool>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    /// RFC 9213 targeted fields crossfade obeys, in order of precedence.
    pub targeted_cache_control: Option<Vec<String>>,
    /// Honour mode: heuristic freshness from Last-Modified (RFC 9111 §4.2.2), on by default.
    pub heuristic_freshness: Option<bool>,
    /// The longest heuristic freshness ("1d" by default).
    pub heuristic_max: Option<String>,
    /// "bypass" (default) or "rfc9111".
    pub authorization: Option<String>,
}

/// `[[routes]]` in a rules file. Exactly one of `path`, `prefix`, `glob`, `regex`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub glob: Option<String>,
    pub regex: Option<String>,
    pub methods: Option<Vec<String>>,
    pub mode: Option<String>,
    pub edge_ttl: Option<String>,
    pub ttl_by_status: Option<BTreeMap<String, String>>,
    pub browser_ttl: Option<String>,
    #[serde(default)]
    pub browser_immutable: bool,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub bypass_cookies: Option<Vec<String>>,
    pub key_cookies: Option<Vec<String>>,
    pub key_headers: Option<Vec<String>>,
    pub strip_headers: Option<Vec<String>>,
    pub max_body: Option<String>,
    pub query_drop: Option<Vec<String>>,
    pub query_keep: Option<Vec<String>>,
    pub query_sort: Option<bool>,
    #[serde(default)]
    pub unsafe_strip_set_cookie: bool,
    pub targeted_cache_control: Option<Vec<String>>,
    pub heuristic_freshness: Option<bool>,
    pub heuristic_max: Option<String>,
    pub authorization: Option<String>,
}
