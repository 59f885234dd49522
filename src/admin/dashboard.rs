//! The live dashboard on the admin listener: an HTML page with uPlot (served from here, no
//! CDN) that polls `/dashboard/data`, which summarises the sliding-window statistics per site,
//! pool and route, the recent history per pool for charts, and an optional before/after
//! comparison around a moment.
//!
//! Browsers cannot send a bearer token on navigation, so `/dashboard/login?token=…` checks the
//! token and sets it as an `HttpOnly`, `SameSite=Strict` cookie that read-only (GET) admin
//! endpoints accept.

use crate::config::Runtime;
use crate::pools::switch::Release;
use crate::stats::{Filter, Stats};
use serde_json::{json, Value};
use std::time::Duration;

/// The cookie carrying a dashboard session's token.
pub const COOKIE: &str = "crossfade_admin";

pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
pub const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
pub const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");

/// History shown in the charts: this many seconds, one point per `HISTORY_STEP`.
const HISTORY_SECONDS: u64 = 300;
const HISTORY_STEP: u64 = 10;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `/dashboard/data`: summaries over `window`, and before/after around `compare_at`.
pub fn data(
    rt: &Runtime,
    release: &Release,
    stats: &Stats,
    window: Duration,
    compare_at: Option<u64>,
) -> Value {
    let keys = stats.keys();
    let now = now();
    let mut total = 0;
    let sites: Vec<Value> = rt
        .sites
        .list
        .iter()
        .map(|site| {
            let name: &str = &site.name;
            fn pool_filter<'a>(site: &'a str, pool: &'a str) -> Filter<'a> {
                Filter { site: Some(site), route: None, pool: Some(pool) }
            }
            let pools: Vec<Value> = site
                .pools
                .iter()
                .map(|p| json!({ "pool": p.name, "summary": stats.summary(pool_filter(name, &p.name), window, None) }))
                .collect();
            let routes: Vec<Value> = keys
                .iter()
                .filter(|(s, _, _)| s == name)
                .map(|(_, route, pool)| {
                    let f = Filter { site: Some(name), route: Some(route), pool: Some(pool) };
                    json!({ "route": route, "pool": pool, "summary": stats.summary(f, window, None) })
                })
                .collect();
            let site_total = stats.summary(Filter { site: Some(name), ..Filter::default() }, window, None);
            total += site_total.requests;
            let times: Vec<u64> = (0..HISTORY_SECONDS / HISTORY_STEP).map(|i| now - HISTORY_SECONDS + (i + 1) * HISTORY_STEP).collect();
            let line = |pick: fn(&crate::stats::Summary) -> f64| {
                site.pools
                    .iter()
                    .map(|p| {
                        let values: Vec<f64> = times
                            .iter()
                            .map(|t| pick(&stats.summary(pool_filter(name, &p.name), Duration::from_secs(HISTORY_STEP), Some(*t))))
                            .collect();
                        json!({ "label": p.name, "values": values })
                    })
                    .collect::<Vec<_>>()
            };
            let compare = compare_at.map(|at| {
                let before = Duration::from_secs(window.as_secs().max(1));
                let after = Duration::from_secs(now.saturating_sub(at).clamp(1, window.as_secs().max(1)));
                json!({
                    "at": at,
                    "pools": site.pools.iter().map(|p| json!({
                        "pool": p.name,
                        "before": stats.summary(pool_filter(name, &p.name), before, Some(at)),
                        "after": stats.summary(pool_filter(name, &p.name), after, Some(at + after.as_secs())),
                    })).collect::<Vec<_>>(),
                })
            });
            json!({
                "site": name,
                "state": release.get(name),
                "summary": site_total,
                "pools": pools,
                "routes": routes,
                "history": {
                    "rate": { "times": times, "lines": line(|s| s.rate_per_second) },
                    "p99": { "times": times, "lines": line(|s| s.p99_ms) },
                    "errors": { "times": times, "lines": line(|s| s.error_rate) },
                },
                "compare": compare,
            })
        })
        .collect();
    json!({ "now": now, "window_seconds": window.as_secs(), "total_requests": total, "sites": sites })
}
