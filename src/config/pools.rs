//! Pools as configured ([`PoolSpec`]: servers, health checks, release and asset hash, origin
//! protection), the asset path pattern, and `[release]` settings, with their validation.

use super::file::{PoolFile, ReleaseFile, SiteFile};
use super::units::parse_duration;
use std::net::SocketAddr;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

type Push<'a> = &'a mut dyn FnMut(String, String);

/// Where versioned static assets live: `/static/{hash}/…` → prefix `/static/`, then the hash
/// segment, then `after` (usually `/`).
#[derive(Debug, Clone)]
pub struct AssetPattern {
    prefix: String,
    after: String,
}

impl AssetPattern {
    pub fn parse(s: &str) -> Option<AssetPattern> {
        let (prefix, after) = s.split_once("{hash}")?;
        let ok = prefix.starts_with('/') && prefix.ends_with('/') && !after.contains("{hash}");
        ok.then(|| AssetPattern {
            prefix: prefix.into(),
            after: after.into(),
        })
    }

    /// The hash in `path`, when `path` is a versioned asset.
    pub fn hash_of<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        let end = rest.find('/').unwrap_or(rest.len());
        let (hash, tail) = rest.split_at(end);
        let valid = !hash.is_empty()
            && hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (valid && tail.starts_with(self.after.as_str())).then_some(hash)
    }
}

/// A pool as configured (`[sites.pools.<name>]`): what its servers are and how they are
/// treated. What the edge learns of them while running (health, in-flight requests, announced
/// release and asset hash) is the pools registry's (`crate::pools::Registry`), not config.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    /// Each server and its weight (its relative share of the pool's traffic).
    pub servers: Vec<(SocketAddr, u32)>,
    /// The release this pool runs, as configured (else its health check's `X-Release`).
    pub release: Option<String>,
    /// The static-asset hash it serves, as configured (else its health check's `X-Asset-Hash`).
    pub asset_hash: Option<String>,
    pub health: Option<HealthCheck>,
    /// How long a passive mark keeps a server out.
    pub passive_down: Duration,
    /// Failed exchanges in a row that take a server out (0: never).
    pub passive_failures: u32,
    /// Speak HTTP/2 (h2c) to the servers.
    pub http2: bool,
    /// Per-pool overrides of `[origin]` timeouts.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    /// Origin protection: requests at the pool's servers at once (`None`: no limit) …
    pub max_inflight: Option<usize>,
    /// … and how long a request waits for a slot.
    pub max_wait: Duration,
}

/// Active health check settings of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Validated `[release]`.
#[derive(Debug, Clone)]
pub struct ReleaseSettings {
    pub state_file: Option<PathBuf>,
    pub cohort_cookie: String,
    pub session_cookie: String,
    /// The maintenance page's HTML.
    pub maintenance_page: String,
    pub retry_after: Duration,
    pub judge: Option<JudgeSettings>,
}

/// When a canary is judged worse than the stable pool and rolled back.
#[derive(Debug, Clone)]
pub struct JudgeSettings {
    /// The sliding window compared.
    pub window: Duration,
    /// How often the comparison runs.
    pub interval: Duration,
    /// Canary requests needed in the window before judging.
    pub min_requests: u64,
    /// Roll back when the canary's 5xx rate exceeds the stable pool's by more than this.
    pub max_error_rate_increase: f64,
    /// Roll back when the canary's p99 exceeds the stable pool's times this …
    pub max_p99_ratio: f64,
    /// … and by more than this (at millisecond latencies one slow request moves p99 past any
    /// ratio; that is noise, not a bad release).
    pub max_p99_increase: Duration,
}

const DEFAULT_MAINTENANCE_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\">\
<title>Back soon</title></head><body style=\"font-family:sans-serif;text-align:center;margin-top:15%\">\
<h1>We'll be right back</h1><p>The store is being updated. Please try again in a few minutes.</p>\
</body></html>\n";

fn duration(key: &str, v: &Option<String>, default: Duration, push: Push) -> Duration {
    match v {
        None => default,
        Some(s) => parse_duration(s)
            .filter(|d| !d.is_zero())
            .unwrap_or_else(|| {
                push(
                    key.into(),
                    format!("{s:?} is not a duration above 0s (use e.g. \"2s\")"),
                );
                default
            }),
    }
}

pub(super) fn release(config: &Path, f: ReleaseFile, push: Push) -> ReleaseSettings {
    let state_file = match f.state_file.as_deref() {
        Some("") => None,
        Some(p) => Some(super::relative_to(config, p)),
        None => Some(super::relative_to(config, "crossfade-state.json")),
    };
    let maintenance_page = match &f.maintenance_page {
        Some(p) => std::fs::read_to_string(super::relative_to(config, p)).unwrap_or_else(|e| {
            push(
                "release.maintenance_page".into(),
                format!("cannot read {p:?}: {e}"),
            );
            String::new()
        }),
        None => DEFAULT_MAINTENANCE_PAGE.into(),
    };
    ReleaseSettings {
        state_file,
        cohort_cookie: f.cohort_cookie.unwrap_or_else(|| "cf_cohort".into()),
        session_cookie: f.session_cookie.unwrap_or_else(|| "session".into()),
        maintenance_page,
        retry_after: duration(
            "release.retry_after",
            &f.retry_after,
            Duration::from_secs(120),
            push,
        ),
        judge: f.judge.map(|j| judge(j, push)),
    }
}

fn judge(j: super::file::JudgeFile, push: Push) -> JudgeSettings {
    let err = j.max_error_rate_increase.unwrap_or(0.05);
    if !(0.0..=1.0).contains(&err) {
        push(
            "release.judge.max_error_rate_increase".into(),
            format!("{err} is not between 0 and 1"),
        );
    }
    let ratio = j.max_p99_ratio.unwrap_or(2.0);
    if ratio < 1.0 {
        push(
            "release.judge.max_p99_ratio".into(),
            format!("{ratio} is below 1"),
        );
    }
    JudgeSettings {
        window: duration(
            "release.judge.window",
            &j.window,
            Duration::from_secs(60),
            push,
        ),
        interval: duration(
            "release.judge.interval",
            &j.interval,
            Duration::from_secs(5),
            push,
        ),
        min_requests: j.min_requests.unwrap_or(50),
        max_error_rate_increase: err,
        max_p99_ratio: ratio,
        max_p99_increase: duration(
            "release.judge.max_p99_increase",
            &j.max_p99_increase,
            Duration::from_millis(50),
            push,
        ),
    }
}

fn pool(name: &str, p: &PoolFile, key: &str, push: Push) -> Option<PoolSpec> {
    if p.servers.is_empty() {
        push(format!("{key}.servers"), "needs at least one server".into());
    }
    let mut servers = Vec::new();
    for (j, s) in p.servers.iter().enumerate() {
        match s.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(addr) if servers.contains(&addr) => push(
                format!("{key}.servers[{j}]"),
                format!("{s:?} is listed twice (give it a weight instead)"),
            ),
            Some(addr) => servers.push(addr),
            None => push(
                format!("{key}.servers[{j}]"),
                format!("{s:?} is not a host:port that resolves"),
            ),
        }
    }
    let health = p.health_path.as_ref().map(|path| {
        if !path.starts_with('/') {
            push(
                format!("{key}.health_path"),
                format!("{path:?} must start with '/'"),
            );
        }
        let (rise, fall) = (p.rise.unwrap_or(2), p.fall.unwrap_or(2));
        if rise == 0 || fall == 0 {
            push(
                format!("{key}.rise"),
                "rise and fall must be at least 1".into(),
            );
        }
        HealthCheck {
            path: path.clone(),
            interval: duration(
                &format!("{key}.health_interval"),
                &p.health_interval,
                Duration::from_secs(2),
                push,
            ),
            timeout: duration(
                &format!("{key}.health_timeout"),
                &p.health_timeout,
                Duration::from_secs(1),
                push,
            ),
            rise: rise.max(1),
            fall: fall.max(1),
        }
    });
    if health.is_none() && (p.health_interval.is_some() || p.rise.is_some() || p.fall.is_some()) {
        push(
            format!("{key}.health_path"),
            "health check settings need a health_path".into(),
        );
        // Their values are still checked: both mistakes are reported at once.
        for (setting, value) in [
            ("health_interval", &p.health_interval),
            ("health_timeout", &p.health_timeout),
        ] {
            duration(&format!("{key}.{setting}"), value, Duration::ZERO, push);
        }
    }
    if servers.is_empty() {
        return None;
    }
    let weights = match &p.weights {
        None => vec![1; servers.len()],
        Some(w) if w.len() == p.servers.len() && w.iter().all(|w| *w >= 1) => w.clone(),
        Some(_) => {
            push(
                format!("{key}.weights"),
                "needs one weight of at least 1 per server".into(),
            );
            vec![1; servers.len()]
        }
    };
    let timeout = |k: &str, v: &Option<String>, push: Push| {
        v.as_ref()
            .map(|_| duration(&format!("{key}.{k}"), v, Duration::from_secs(1), push))
    };
    let max_wait = duration(
        &format!("{key}.max_wait"),
        &p.max_wait,
        Duration::from_secs(1),
        push,
    );
    let max_inflight = match p.max_inflight {
        Some(0) => {
            push(
                format!("{key}.max_inflight"),
                "must be at least 1 (leave it out for no limit)".into(),
            );
            None
        }
        None if p.max_wait.is_some() => {
            push(
                format!("{key}.max_wait"),
                "applies only with max_inflight".into(),
            );
            None
        }
        max => max,
    };
    Some(PoolSpec {
        name: name.to_string(),
        servers: servers.into_iter().zip(weights).collect(),
        release: p.release.clone(),
        asset_hash: p.asset_hash.clone(),
        health,
        passive_down: duration(
            &format!("{key}.passive_down"),
            &p.passive_down,
            Duration::from_secs(10),
            push,
        ),
        passive_failures: p.passive_failures.unwrap_or(3),
        http2: p.http2.unwrap_or(false),
        connect_timeout: timeout("connect_timeout", &p.connect_timeout, push),
        read_timeout: timeout("read_timeout", &p.read_timeout, push),
        max_inflight,
        max_wait,
    })
}

pub(super) fn pools(
    f: &SiteFile,
    at: &str,
    valid_name: fn(&str) -> bool,
    push: Push,
) -> Vec<PoolSpec> {
    if f.pools.is_empty() {
        push(
            format!("{at}.pools"),
            "needs at least one pool, e.g. [sites.pools.blue] servers = [\"127.0.0.1:9000\"]"
                .into(),
        );
    }
    let mut out = Vec::new();
    for (name, p) in &f.pools {
        let key = format!("{at}.pools.{name}");
        if !valid_name(name) {
            push(key.clone(), "pool names must be a-z, 0-9, _ or -".into());
        }
        out.extend(pool(name, p, &key, push));
    }
    out
}

pub(super) fn assets(f: &SiteFile, at: &str, push: Push) -> Option<AssetPattern> {
    let raw = f.assets.as_ref()?;
    let pattern = AssetPattern::parse(raw);
    if pattern.is_none() {
        push(
            format!("{at}.assets"),
            format!("{raw:?} must look like \"/static/{{hash}}/\""),
        );
    }
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_patterns() {
        let p = AssetPattern::parse("/static/{hash}/").unwrap();
        assert_eq!(p.hash_of("/static/ab12/app.js"), Some("ab12"));
        assert_eq!(p.hash_of("/static/ab12"), None);
        assert_eq!(p.hash_of("/static//app.js"), None);
        assert_eq!(p.hash_of("/static/a%2e/x"), None);
        assert_eq!(p.hash_of("/other/ab12/app.js"), None);
        assert!(AssetPattern::parse("static/{hash}/").is_none());
        assert!(AssetPattern::parse("/static/").is_none());
    }
}
