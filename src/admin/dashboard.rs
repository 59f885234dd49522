//! The live dashboard on the admin listener: an HTML page with uPlot (served from here, no
//! CDN) that polls `/dashboard/data`. This module owns that answer: per site, each pool side
//! by side (its rates, release, asset hash and servers' health), the routes that had traffic,
//! charts over the chosen window with the release timeline's events as markers, the cache,
//! the purges, an optional before/after comparison around a moment, and an optional focus
//! (one route and/or pool of a site, for the moment a table cell or chart point was clicked).
//!
//! Everything is measured from when the process started: a 5-minute window of a process that
//! has run 90 s is 90 s long, and charts begin at the start. Errors are told apart: the
//! pool's (`origin_error_rate`: 5xx or no answer from its servers) and the edge's own
//! (`edge_error_rate`: maintenance pages, no healthy server, origin protection).
//!
//! With `[fleet]`, every node's last minute and the fleet's total (`fleet::summary`); with
//! `[[dashboard.environments]]`, the other crossfades' summaries beside this one (`remote`).
//!
//! Logging in: `session` (a form, never a token in a URL or cookie).

use crate::config::Runtime;
use crate::events::{Event, Kind};
use crate::pools::switch::Release;
use crate::pools::Registry;
use crate::stats::{Filter, Stats, Summary};
use serde_json::{json, Value};
use std::time::Duration;

pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
pub const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
pub const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");

/// Points per chart.
const POINTS: u64 = 30;

/// What `/dashboard/data` was asked.
#[derive(Debug, Default)]
pub struct Ask {
    pub window: Duration,
    pub compare_at: Option<u64>,
    /// Focus: a site, and optionally one route and/or pool of it.
    pub site: Option<String>,
    pub route: Option<String>,
    pub pool: Option<String>,
}

/// What the dashboard reads, besides the config.
pub struct Sources<'a> {
    pub release: &'a Release,
    pub pools: &'a Registry,
    pub stats: &'a Stats,
    pub events: Vec<Event>,
    /// Cache objects, bytes, capacity, evictions.
    pub cache: (u64, u64, u64, u64),
    /// With `[fleet]`: every node's last minute and the total (`Purger::fleet_view`).
    pub fleet: Option<Value>,
    /// The other environments' summaries (`remote`).
    pub environments: Vec<Value>,
}

/// The chart times over `window` up to now, never before `started`.
fn times(now: u64, started: u64, window: u64) -> (Vec<u64>, u64) {
    let from = now.saturating_sub(window).max(started);
    let step = ((now - from) / POINTS).max(1);
    // The last point ends before the current second, which is still filling: it would dip.
    let mut t: Vec<u64> = (1..=POINTS)
        .map(|i| from + i * step)
        .filter(|t| *t <= now)
        .collect();
    t.dedup();
    (t, step)
}

/// Lines of `pick` over `times` for each filter.
fn lines(
    stats: &Stats,
    times: &[u64],
    step: u64,
    series: &[(String, Filter)],
    pick: fn(&Summary) -> f64,
) -> Value {
    let lines: Vec<Value> = series
        .iter()
        .map(|(label, f)| {
            let values: Vec<f64> = times
                .iter()
                .map(|t| pick(&stats.summary(*f, Duration::from_secs(step), Some(*t))))
                .collect();
            json!({ "label": label, "values": values })
        })
        .collect();
    json!({ "times": times, "lines": lines })
}

/// The charts of `series`: request rate, hit ratio (%), p99 (ms), the pool's errors (%); and
/// of `whole` (the edge's own answers belong to no pool) the edge's 5xx (%).
fn history(
    stats: &Stats,
    times: &[u64],
    step: u64,
    series: &[(String, Filter)],
    whole: &(String, Filter),
) -> Value {
    json!({
        "rate": lines(stats, times, step, series, |s| s.rate_per_second),
        "hit": lines(stats, times, step, series, |s| s.hit_ratio * 100.0),
        "p99": lines(stats, times, step, series, |s| s.p99_ms),
        "errors": lines(stats, times, step, series, |s| s.origin_error_rate * 100.0),
        "edge": lines(stats, times, step, std::slice::from_ref(whole), |s| s.edge_error_rate * 100.0),
    })
}

/// `/dashboard/data`.
pub fn data(rt: &Runtime, src: Sources, ask: &Ask) -> Value {
    let stats = src.stats;
    let window = ask.window;
    let now = crate::stats::now_secs();
    let started = stats.started();
    let (times, step) = times(now, started, window.as_secs());
    let keys = stats.keys();
    let mut total = 0;
    let sites: Vec<Value> = rt
        .sites
        .list
        .iter()
        .map(|site| {
            let name: &str = &site.name;
            let state = src.release.get(name);
            let live = src.pools.site(name);
            fn pool_filter<'a>(site: &'a str, pool: &'a str) -> Filter<'a> {
                Filter {
                    site: Some(site),
                    route: None,
                    pool: Some(pool),
                }
            }
            let pools: Vec<Value> = live
                .list
                .iter()
                .map(|p| {
                    let role = match &state {
                        Some(s) if s.active == p.name() => "active".to_string(),
                        Some(s) => s
                            .canary
                            .as_ref()
                            .filter(|c| c.pool == p.name())
                            .map_or("-".into(), |c| format!("canary {}%", c.percent)),
                        None => "-".into(),
                    };
                    let mut described = p.describe();
                    described["pool"] = json!(p.name());
                    described["role"] = json!(role);
                    described["summary"] = json!(stats.summary(pool_filter(name, p.name()), window, None));
                    described
                })
                .collect();
            let routes: Vec<Value> = keys
                .iter()
                .filter(|(s, _, _)| s == name)
                .filter_map(|(_, route, pool)| {
                    let f = Filter {
                        site: Some(name),
                        route: Some(route),
                        pool: Some(pool),
                    };
                    let summary = stats.summary(f, window, None);
                    // A route without traffic in the window is clutter, not information.
                    (summary.requests > 0)
                        .then(|| json!({ "route": route, "pool": pool, "summary": summary }))
                })
                .collect();
            let site_total = stats.summary(
                Filter {
                    site: Some(name),
                    ..Filter::default()
                },
                window,
                None,
            );
            total += site_total.requests;
            let series: Vec<(String, Filter)> = site
                .pools
                .iter()
                .map(|p| (p.name.clone(), pool_filter(name, &p.name)))
                .collect();
            let whole = (
                "all".to_string(),
                Filter {
                    site: Some(name),
                    ..Filter::default()
                },
            );
            let compare = ask.compare_at.map(|at| {
                let after = Duration::from_secs(now.saturating_sub(at).clamp(1, window.as_secs().max(1)));
                json!({
                    "at": at,
                    "pools": site.pools.iter().map(|p| json!({
                        "pool": p.name,
                        "before": stats.summary(pool_filter(name, &p.name), window, Some(at)),
                        "after": stats.summary(pool_filter(name, &p.name), after, Some(at + after.as_secs())),
                    })).collect::<Vec<_>>(),
                })
            });
            let focus = (ask.site.as_deref() == Some(name)).then(|| {
                let f = Filter {
                    site: Some(name),
                    route: ask.route.as_deref(),
                    pool: ask.pool.as_deref(),
                };
                let label = [ask.route.as_deref(), ask.pool.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" · ");
                let label = if label.is_empty() { name.to_string() } else { label };
                json!({
                    "route": ask.route, "pool": ask.pool, "label": label,
                    "summary": stats.summary(f, window, None),
                    "history": history(stats, &times, step, &[(label.clone(), f)], &(label.clone(), f)),
                })
            });
            json!({
                "site": name,
                "state": state,
                "summary": site_total,
                "pools": pools,
                "routes": routes,
                "history": history(stats, &times, step, &series, &whole),
                "compare": compare,
                "focus": focus,
            })
        })
        .collect();
    let from_ms = times.first().map_or(0, |t| t.saturating_sub(step) * 1000);
    let events: Vec<&Event> = src.events.iter().filter(|e| e.at_ms >= from_ms).collect();
    let purges: Vec<&Event> = src
        .events
        .iter()
        .rev()
        .filter(|e| e.kind == Kind::Purge)
        .take(10)
        .collect();
    let (objects, bytes, capacity, evictions) = src.cache;
    json!({
        "now": now,
        "started": started,
        "started_ms": stats.started_ms(),
        "window_seconds": window.as_secs(),
        "span_seconds": now.saturating_sub(now.saturating_sub(window.as_secs()).max(started)),
        "total_requests": total,
        "sites": sites,
        "events": events,
        "purges": purges,
        "cache": { "objects": objects, "bytes": bytes, "capacity": capacity, "evictions": evictions },
        "fleet": src.fleet,
        "environments": src.environments,
    })
}

#[cfg(test)]
mod tests {
    use super::times;

    #[test]
    fn charts_start_when_the_process_started() {
        let (t, step) = times(1000, 910, 300);
        assert_eq!(step, 3);
        assert_eq!((t[0], *t.last().unwrap()), (913, 1000));
        let (t, step) = times(1000, 0, 300);
        assert_eq!((step, t[0], t.len()), (10, 710, 30));
    }
}
