//! Metrics: one [`Metrics`] struct registered on an explicit Prometheus registry (exposed on
//! the admin listener's `/metrics`), and a statsd sink with the store's naming scheme
//! (`<prefix>.<site>.<route>.<metric>`, [`statsd`]).
//!
//! Label values come only from config (site, route and pool names, server addresses) or from
//! fixed sets (cache outcome, status class, bypass and not-stored reasons), never from a
//! client's request, so cardinality is bounded whatever clients send. Requests for unknown
//! hosts are counted under site `-`.

mod local;
pub mod statsd;

use local::{Cell, CounterFamily, Hist, HistogramFamily};
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Response-time buckets (seconds): 1 ms to 10 s.
static TIME_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Response-size buckets (bytes): 256 B to 16 MiB.
static SIZE_BUCKETS: [f64; 9] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// One finished request, as metrics see it. Every string is a bounded label value.
pub struct RequestEvent<'a> {
    pub site: &'a str,
    pub route: &'a str,
    pub pool: &'a str,
    /// Cache outcome label (`hit`, `miss`, `stale`, `bypass`, `edge`, …).
    pub cache: &'static str,
    pub status: u16,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub bytes: usize,
    /// Why the cache was bypassed, when it was.
    pub bypass: Option<&'static str>,
    /// `Some(None)`: stored; `Some(Some(reason))`: not stored; `None`: no storage decision.
    pub store: Option<Option<&'static str>>,
    /// What the pool's server did with the request.
    pub origin: crate::stats::Asked,
    /// Answered by the HTTP/1.1 fast transport: a hit (`cache` is `hit`) or a pass.
    pub fast: bool,
}

/// The per-request metric cells of one label set, as a thread keeps them (its own: see
/// [`local`]). `ttfb` and `upstream` are made on first use, so a label set that never has
/// them (an edge answer, a hit) does not show an empty series.
struct Children {
    requests: Arc<Cell>,
    response: Arc<Hist>,
    ttfb: std::cell::OnceCell<Arc<Hist>>,
    upstream: std::cell::OnceCell<Arc<Hist>>,
    bytes: Arc<Hist>,
    /// `crossfade_cache_store_total` of this site and route, by not-stored reason ("" for
    /// stored).
    store: std::cell::RefCell<Vec<(Box<str>, Arc<Cell>)>>,
    /// `crossfade_fast_path_hits_total` or `…_passes_total` of this site (by the cache label).
    fast: std::cell::OnceCell<Arc<Cell>>,
}

/// Keyed by a hash already taken (`local::label_hash`): foldhash mixes it in a few
/// instructions where SipHash took ~140 per request.
type ChildCache = foldhash::HashMap<u64, Vec<(u64, [Box<str>; 5], Children)>>;

thread_local! {
    static CHILDREN: std::cell::RefCell<ChildCache> = std::cell::RefCell::new(ChildCache::default());
}

/// Tells `Metrics` instances apart in the per-thread child caches (tests make several).
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Every crossfade metric.
pub struct Metrics {
    pub registry: Registry,
    instance: u64,
    requests: CounterFamily,
    bypass: CounterFamily,
    store: CounterFamily,
    response_seconds: HistogramFamily,
    upstream_seconds: HistogramFamily,
    ttfb_seconds: HistogramFamily,
    response_bytes: HistogramFamily,
    pub purges: IntCounterVec,
    pub release_changes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub canary_rollbacks: IntCounterVec,
    pub cache_objects: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_evictions: IntCounter,
    pub surrogate_keys: IntGauge,
    pub surrogate_key_memberships: IntGauge,
    pub server_healthy: IntGaugeVec,
    pub server_weight: IntGaugeVec,
    pub pool_inflight: IntGaugeVec,
    pub pool_active: IntGaugeVec,
    pub pool_canary_percent: IntGaugeVec,
    pub connections_open: IntGauge,
    pub tls_handshakes: IntCounterVec,
    pub connections_refused: IntCounterVec,
    /// Hits answered by the fast path (`proxy::fast`), a subset of the `hit` requests.
    pub fast_hits: CounterFamily,
    /// Passes forwarded by the pass fast path (`proxy::fast::relay`).
    pub fast_passes: CounterFamily,
    /// Requests sent to the origin a second time after a failure (at most once each).
    pub origin_retries: IntCounterVec,
    /// Requests that waited for one of a pool's `max_inflight` slots.
    pub pool_waits: IntCounterVec,
    /// Requests a full pool did not take (`answer`: `stale` or `unavailable`); see [`Metrics::shed`].
    pool_shed: IntCounterVec,
    /// When each (site, pool) last shed a request (Unix seconds): a shed after a quiet minute
    /// starts an episode, which is a timeline event.
    last_shed: std::sync::Mutex<HashMap<(String, String), u64>>,
    /// Query parameters a route's `query_keep` removed from cacheable requests, by name.
    query_dropped: IntCounterVec,
    /// The parameter names given their own label, per site and route (the rest: `other`).
    dropped_names: std::sync::Mutex<DroppedNames>,
    /// The process's memory, CPU, file descriptors and build.
    pub process: crate::process::ProcessMetrics,
    /// The release timeline (its counters are in this registry).
    pub timeline: crate::events::Timeline,
    /// Sliding-window statistics for the dashboard and the canary judge.
    pub stats: crate::stats::Stats,
    /// Where statsd packets go; the address is set and kept current by [`statsd::Resolver`].
    pub statsd: statsd::Statsd,
}

/// (site, route) → the dropped parameter names that have a label of their own.
type DroppedNames = HashMap<(Box<str>, Box<str>), Vec<Box<str>>>;

/// Names of dropped parameters a route gets a label of its own for; later ones are `other`.
const DROPPED_NAMES_PER_ROUTE: usize = 20;

impl Metrics {
    /// Counts the query parameters `query_keep` dropped on `site`/`route`, and says the first
    /// time each name is dropped there (a warning: an allow-list that misses a parameter the
    /// application reads serves every visitor the same page whatever its value).
    pub fn query_dropped(&self, site: &str, route: &str, names: &[String]) {
        let mut known = self.dropped_names.lock().unwrap_or_else(|e| e.into_inner());
        let listed = known.entry((site.into(), route.into())).or_default();
        for name in names {
            let seen = listed.iter().any(|n| **n == **name);
            let label = if seen {
                name.as_str()
            } else if listed.len() < DROPPED_NAMES_PER_ROUTE && plain_label(name) {
                listed.push(name.as_str().into());
                tracing::warn!(site, route, param = ?name, "query_keep drops this parameter from the cache key and the origin request: every value gets the same cached page (list it in query_keep if the application reads it)");
                name.as_str()
            } else {
                "other"
            };
            self.query_dropped
                .with_label_values(&[site, route, label])
                .inc();
        }
    }
}

/// Whether a name from a request may be a label value as it is (short, plain characters).
fn plain_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b))
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &'static [f64],
) -> HistogramFamily {
    let h = HistogramFamily::new(name, help, labels, buckets);
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// A counter family of per-thread cells ([`local`]), for what requests count.
fn local_counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterFamily {
    let c = CounterFamily::new(name, help, labels);
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// `2xx`, `4xx`, … (`0xx` when nothing was sent).
impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "0xx",
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let page = ["site", "route", "pool"];
        Metrics {
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            requests: local_counter(
                &r,
                "crossfade_requests_total",
                "Requests by site, route, pool, cache outcome and status class.",
                &["site", "route", "pool", "cache", "status_class"],
            ),
            bypass: local_counter(
                &r,
                "crossfade_cache_bypass_total",
                "Requests that did not use the cache, by reason.",
                &["site", "route", "reason"],
            ),
            store: local_counter(
                &r,
                "crossfade_cache_store_total",
                "Storage decisions for origin responses: stored, or not stored with the reason.",
                &["site", "route", "outcome", "reason"],
            ),
            response_seconds: histogram(
                &r,
                "crossfade_response_seconds",
                "Total time from request to last byte.",
                &["site", "route", "pool", "cache"],
                &TIME_BUCKETS,
            ),
            upstream_seconds: histogram(
                &r,
                "crossfade_upstream_seconds",
                "Time from choosing an origin server to its response header.",
                &page,
                &TIME_BUCKETS,
            ),
            ttfb_seconds: histogram(
                &r,
                "crossfade_ttfb_seconds",
                "Time from request to the response header sent to the client.",
                &["site", "route", "pool", "cache"],
                &TIME_BUCKETS,
            ),
            response_bytes: histogram(
                &r,
                "crossfade_response_bytes",
                "Response body bytes sent to clients.",
                &page,
                &SIZE_BUCKETS,
            ),
            purges: counter(
                &r,
                "crossfade_purges_total",
                "Purges applied on this node, by kind and mode.",
                &["kind", "mode"],
            ),
            release_changes: counter(
                &r,
                "crossfade_release_changes_total",
                "Release changes (flip, canary, rollback, maintenance) by site and action.",
                &["site", "action"],
            ),
            config_reloads: counter(
                &r,
                "crossfade_config_reloads_total",
                "Config reloads by result: ok, rejected, certificates (a certificate file changed: certificates only), certificates-partly (some did not load and kept their running one).",
                &["result"],
            ),
            canary_rollbacks: counter(
                &r,
                "crossfade_canary_rollbacks_total",
                "Automatic canary rollbacks by site and reason.",
                &["site", "reason"],
            ),
            cache_objects: gauge(
                &r,
                "crossfade_cache_objects",
                "Objects stored in the cache.",
            ),
            cache_bytes: gauge(
                &r,
                "crossfade_cache_bytes",
                "Bytes stored in the cache (as weighed for the capacity).",
            ),
            cache_evictions: {
                let c = IntCounter::new(
                    "crossfade_cache_evictions_total",
                    "Objects evicted to stay within the capacity.",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            surrogate_keys: gauge(
                &r,
                "crossfade_surrogate_keys",
                "Distinct surrogate keys in the purge index.",
            ),
            surrogate_key_memberships: gauge(
                &r,
                "crossfade_surrogate_key_memberships",
                "Object-to-key links in the purge index.",
            ),
            server_healthy: gauge_vec(
                &r,
                "crossfade_pool_server_healthy",
                "1 when an origin server is in rotation.",
                &["site", "pool", "server"],
            ),
            server_weight: gauge_vec(
                &r,
                "crossfade_pool_server_weight",
                "Configured weight of an origin server.",
                &["site", "pool", "server"],
            ),
            pool_inflight: gauge_vec(
                &r,
                "crossfade_pool_inflight",
                "Requests in flight to a pool.",
                &["site", "pool"],
            ),
            pool_active: gauge_vec(
                &r,
                "crossfade_pool_active",
                "1 for the active pool of a site.",
                &["site", "pool"],
            ),
            pool_canary_percent: gauge_vec(
                &r,
                "crossfade_pool_canary_percent",
                "Share of visitors sent to a canary pool.",
                &["site", "pool"],
            ),
            connections_open: gauge(&r, "crossfade_connections_open", "Client connections open on the proxy listeners, TLS included (counted as they are accepted and closed)."),
            tls_handshakes: counter(&r, "crossfade_tls_handshakes_total", "TLS handshakes on the proxy listeners by result.", &["result"]),
            connections_refused: counter(&r, "crossfade_connections_refused_total", "Client connections closed at accept because a connection limit was reached (limit: total or per_client).", &["limit"]),
            fast_hits: local_counter(&r, "crossfade_fast_path_hits_total", "Cache hits answered before pingora's proxy path (a subset of cache=\"hit\" requests).", &["site"]),
            fast_passes: local_counter(&r, "crossfade_fast_path_passes_total", "Passes (bypass or predicted uncacheable) forwarded by crossfade's own HTTP/1 client instead of pingora's proxy path.", &["site"]),
            origin_retries: counter(&r, "crossfade_origin_retries_total", "Requests sent to an origin a second time after the first attempt failed before any answer (at most one retry, idempotent requests only).", &["site", "pool"]),
            pool_waits: counter(&r, "crossfade_pool_waits_total", "Requests that waited for a free slot of a pool's max_inflight.", &["site", "pool"]),
            pool_shed: counter(&r, "crossfade_pool_shed_total", "Requests a pool at max_inflight did not take within max_wait, by what the client got instead (stale or unavailable).", &["site", "pool", "answer"]),
            query_dropped: counter(&r, "crossfade_query_params_dropped_total", "Query parameters a route's query_keep removed from the cache key and the origin request, by name (the first 20 names of a route; later ones as other).", &["site", "route", "param"]),
            dropped_names: Default::default(),
            last_shed: Default::default(),
            process: crate::process::ProcessMetrics::new(&r),
            timeline: crate::events::Timeline::new(
                counter(&r, "crossfade_events_total", "Release timeline events (flips, canaries, rollbacks, maintenance, purges, reloads, starts, upgrades, health changes, shedding) by kind; see GET /events.", &["kind"]),
                gauge_vec(&r, "crossfade_event_last_timestamp_seconds", "Unix time of the last event of each kind (for Grafana annotations).", &["kind"]),
            ),
            registry: r,
            stats: crate::stats::Stats::default(),
            statsd: statsd::Statsd::default(),
        }
    }

    /// A request a full pool did not take (`answer`: `stale` or `unavailable`): counted, and
    /// the first after a quiet minute is a timeline event (origin protection started shedding).
    pub fn shed(&self, site: &str, pool: &str, answer: &str) {
        self.pool_shed
            .with_label_values(&[site, pool, answer])
            .inc();
        let now = crate::stats::now_secs();
        let starts = {
            let mut last = self.last_shed.lock().unwrap_or_else(|e| e.into_inner());
            let before = last.insert((site.to_string(), pool.to_string()), now);
            before.is_none_or(|t| now.saturating_sub(t) > 60)
        };
        if starts {
            let what = format!(
                "pool {pool} is at max_inflight: origin protection turns requests away ({answer})"
            );
            self.event(
                crate::events::Event::new(crate::events::Kind::Shedding, "crossfade", what)
                    .site(site)
                    .pool(pool),
            );
        }
    }

    /// Records a release timeline event (its ring, log, file, fleet and Prometheus; statsd
    /// `<prefix>.events.<kind>`).
    pub fn event(&self, event: crate::events::Event) {
        self.statsd
            .count(&format!("events.{}", event.kind.as_str()));
        self.timeline.record(event);
    }

    /// Records one finished request (Prometheus and statsd).
    pub fn request(&self, e: &RequestEvent) {
        let class = status_class(e.status);
        self.with_children([e.site, e.route, e.pool, e.cache, class], |c| {
            c.requests.inc();
            c.response.observe(e.total.as_secs_f64());
            if let Some(t) = e.ttfb {
                c.ttfb
                    .get_or_init(|| self.ttfb_seconds.cell(&[e.site, e.route, e.pool, e.cache]))
                    .observe(t.as_secs_f64());
            }
            if let Some(u) = e.upstream {
                c.upstream
                    .get_or_init(|| self.upstream_seconds.cell(&[e.site, e.route, e.pool]))
                    .observe(u.as_secs_f64());
            }
            c.bytes.observe(e.bytes as f64);
            if e.fast {
                let family = match e.cache {
                    "hit" => &self.fast_hits,
                    _ => &self.fast_passes,
                };
                c.fast.get_or_init(|| family.cell(&[e.site])).inc();
            }
            if let Some(reason) = e.store {
                let reason = reason.unwrap_or("");
                let mut store = c.store.borrow_mut();
                match store.iter().find(|(r, _)| &**r == reason) {
                    Some((_, counter)) => counter.inc(),
                    None => {
                        let outcome = if reason.is_empty() {
                            "stored"
                        } else {
                            "not_stored"
                        };
                        let counter = self.store.cell(&[e.site, e.route, outcome, reason]);
                        counter.inc();
                        store.push((reason.into(), counter));
                    }
                }
            }
        });
        if let Some(reason) = e.bypass {
            self.bypass.inc(&[e.site, e.route, reason]);
        }
        let sample = crate::stats::Sample {
            error: e.status >= 500 || e.status == 0,
            hit: matches!(e.cache, "hit" | "stale"),
            total: e.total,
            upstream: e.upstream,
            origin: e.origin,
        };
        self.stats.record((e.site, e.route, e.pool), &sample);
        self.statsd.request(e);
    }

    /// Runs `f` on this thread's per-request metric cells of one label set (site, route,
    /// pool, cache, status class). Finding a child by its label values once per metric was
    /// five hashes and five lookups under a lock all threads share per request; each thread
    /// keeps the cells it has made, found by one hash of the five labels, and writes only
    /// them ([`local`]). Label values are bounded (see the module doc), so is this.
    fn with_children<R>(&self, labels: [&str; 5], f: impl FnOnce(&Children) -> R) -> R {
        let hash = local::label_hash(self.instance, &labels);
        CHILDREN.with(|cache| {
            let mut cache = cache.borrow_mut();
            let same = cache.entry(hash).or_default();
            let found = same.iter().position(|(instance, l, _)| {
                *instance == self.instance && l.iter().map(|b| &**b).eq(labels)
            });
            let i = found.unwrap_or_else(|| {
                let [site, route, pool, outcome, _] = labels;
                let children = Children {
                    requests: self.requests.cell(&labels),
                    response: self.response_seconds.cell(&[site, route, pool, outcome]),
                    ttfb: std::cell::OnceCell::new(),
                    upstream: std::cell::OnceCell::new(),
                    bytes: self.response_bytes.cell(&[site, route, pool]),
                    store: Default::default(),
                    fast: std::cell::OnceCell::new(),
                };
                same.push((self.instance, labels.map(Box::from), children));
                same.len() - 1
            });
            f(&same[i].2)
        })
    }

    /// The names of every metric family (also those with no sample yet).
    pub fn families(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 30] = [
            &self.connections_open,
            &self.fast_hits,
            &self.fast_passes,
            &self.origin_retries,
            &self.pool_waits,
            &self.pool_shed,
            &self.tls_handshakes,
            &self.connections_refused,
            &self.requests,
            &self.bypass,
            &self.store,
            &self.response_seconds,
            &self.upstream_seconds,
            &self.ttfb_seconds,
            &self.response_bytes,
            &self.purges,
            &self.release_changes,
            &self.config_reloads,
            &self.canary_rollbacks,
            &self.cache_objects,
            &self.cache_bytes,
            &self.cache_evictions,
            &self.surrogate_keys,
            &self.surrogate_key_memberships,
            &self.server_healthy,
            &self.server_weight,
            &self.pool_inflight,
            &self.pool_active,
            &self.pool_canary_percent,
            &self.query_dropped,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_and_rendered() {
        let m = Metrics::new();
        m.request(&RequestEvent {
            site: "shop",
            route: "home",
            pool: "blue",
            cache: "hit",
            status: 200,
            total: Duration::from_millis(3),
            upstream: None,
            ttfb: Some(Duration::from_millis(1)),
            bytes: 1234,
            bypass: None,
            store: None,
            origin: crate::stats::Asked::No,
            fast: true,
        });
        let text = m.render();
        assert!(
            text.contains(r#"crossfade_fast_path_hits_total{site="shop"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"crossfade_fast_path_passes_total{site="shop"}"#),
            "{text}"
        );
        assert!(text.contains(r#"crossfade_requests_total{cache="hit",pool="blue",route="home",site="shop",status_class="2xx"} 1"#), "{text}");
        assert!(text.contains("crossfade_response_seconds_bucket"));
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn each_instance_counts_its_own_requests_through_the_thread_cache() {
        let event = |route, upstream: Option<u64>| RequestEvent {
            site: "shop",
            route,
            pool: "blue",
            cache: "miss",
            status: 200,
            total: Duration::from_millis(3),
            upstream: upstream.map(Duration::from_millis),
            ttfb: None,
            bytes: 10,
            fast: false,
            bypass: None,
            store: None,
            origin: crate::stats::Asked::No,
        };
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.request(&event("home", None));
        }
        a.request(&event("home", Some(2)));
        b.request(&event("home", None));
        a.request(&event("list", None));
        let count = |m: &Metrics, route: &str| {
            let line = format!(
                r#"crossfade_requests_total{{cache="miss",pool="blue",route="{route}",site="shop",status_class="2xx"}} "#
            );
            let text = m.render();
            let found = text.lines().find_map(|l| l.strip_prefix(line.as_str()));
            found.map(|n| n.to_string())
        };
        assert_eq!(count(&a, "home").as_deref(), Some("4"));
        assert_eq!(count(&a, "list").as_deref(), Some("1"));
        assert_eq!(count(&b, "home").as_deref(), Some("1"));
        let text = b.render();
        // No upstream time and no time to first byte were seen by `b`: no empty series.
        assert!(!text.contains("crossfade_upstream_seconds_count"), "{text}");
        assert!(!text.contains("crossfade_ttfb_seconds_count"), "{text}");
        assert!(a.render().contains(
            r#"crossfade_upstream_seconds_count{pool="blue",route="home",site="shop"} 1"#
        ));
    }
}
