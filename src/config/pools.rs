//! Validation of pools (servers, health checks, release and asset hash), the asset path
//! pattern, and `[release]` settings.

use super::file::{PoolFile, ReleaseFile, SiteFile};
use super::units::parse_duration;
use crate::pools::{HealthCheck, Limit, Pool};
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

fn pool(name: &str, p: &PoolFile, key: &str, push: Push) -> Option<Pool> {
    if p.servers.is_empty() {
        push(format!("{key}.servers"), "needs at least one server".into());
    }
    let mut servers = Vec::new();
    for (j, s) in p.servers.iter().enumerate() {
        match s.to_socket_addrs().ok().and_then(|mut a| a.next()) {
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
    let mut pool = Pool::weighted(name.to_string(), servers.into_iter().zip(weights).collect());
    let timeout = |k: &str, v: &Option<String>, push: Push| {
        v.as_ref()
            .map(|_| duration(&format!("{key}.{k}"), v, Duration::from_secs(1), push))
    };
    pool.http2 = p.http2.unwrap_or(false);
    pool.connect_timeout = timeout("connect_timeout", &p.connect_timeout, push);
    pool.read_timeout = timeout("read_timeout", &p.read_timeout, push);
    *pool.release.get_mut().unwrap_or_else(|e| e.into_inner()) = p.release.clone();
    *pool.asset_hash.get_mut().unwrap_or_else(|e| e.into_inner()) = p.asset_hash.clone();
    pool.health = health;
    pool.passive_failures = p.passive_failures.unwrap_or(3);
    let max_wait = duration(
        &format!("{key}.max_wait"),
        &p.max_wait,
        Duration::from_secs(1),
        push,
    );
    match p.max_inflight {
        Some(0) => push(
            format!("{key}.max_inflight"),
            "must be at least 1 (leave it out for no limit)".into(),
        ),
        Some(max) => pool
            .limit
            .store(Some(std::sync::Arc::new(Limit::new(max, max_wait)))),
        None if p.max_wait.is_some() => push(
            format!("{key}.max_wait"),
            "applies only with max_inflight".into(),
        ),
        None => {}
    }
    pool.passive_down = duration(
        &format!("{key}.passive_down"),
        &p.passive_down,
        Duration::from_secs(10),
        push,
    );
    Some(pool)
}

pub(super) fn pools(f: &SiteFile, at: &str, valid_name: fn(&str) -> bool, push: Push) -> Vec<Pool> {
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
