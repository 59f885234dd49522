//! Live statistics over a sliding window, per site, route and pool: request rate, hit ratio,
//! error rate, response-time percentiles and origin time. The dashboard and the canary judge
//! read them; Prometheus keeps the long-term view.
//!
//! Each series keeps one bucket per second for [`KEEP_SECONDS`], each with a fixed log-scale
//! latency histogram, so memory per series is bounded and percentiles are approximate (the
//! upper edge of a bucket, within about 19%). Series are keyed by config names only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much history is kept (seconds).
pub const KEEP_SECONDS: u64 = 900;
/// Latency histogram: bucket i holds durations up to `0.1 ms * 1.2^i`.
const LATENCY_BUCKETS: usize = 64;

/// The first bucket whose upper bound is not below `d` (the last holds everything above).
/// A search of the bounds: a logarithm per request cost more.
fn latency_bucket(d: Duration) -> usize {
    static UPPER_MS: std::sync::LazyLock<[f64; LATENCY_BUCKETS]> =
        std::sync::LazyLock::new(|| std::array::from_fn(bucket_upper_ms));
    let ms = d.as_secs_f64() * 1000.0;
    UPPER_MS
        .partition_point(|&upper| upper < ms)
        .min(LATENCY_BUCKETS - 1)
}

fn bucket_upper_ms(i: usize) -> f64 {
    0.1 * 1.2f64.powi(i as i32)
}

/// What a request's pool did with it: the canary judge compares pools on this, not on what
/// the client got (a hit or an edge answer says nothing of the pool behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The request never reached a server (a hit, an edge answer, no healthy server).
    No,
    /// A server answered with this status.
    Answered(u16),
    /// The exchange with the server failed (refused, reset, timed out, cut short).
    Failed,
}

impl Asked {
    /// A failure of the pool: a 5xx answer or no answer.
    fn failed(self) -> bool {
        match self {
            Asked::No => false,
            Asked::Answered(status) => status >= 500,
            Asked::Failed => true,
        }
    }
}

/// One request, as the statistics see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// A 5xx (or no answer) to the client.
    pub error: bool,
    pub hit: bool,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub origin: Asked,
}

#[derive(Clone)]
struct Second {
    at: u64,
    requests: u64,
    hits: u64,
    errors: u64,
    origin_requests: u64,
    origin_errors: u64,
    edge_errors: u64,
    upstream_count: u64,
    upstream_ms: f64,
    latency: [u32; LATENCY_BUCKETS],
}

impl Second {
    fn new(at: u64) -> Self {
        Second {
            at,
            requests: 0,
            hits: 0,
            errors: 0,
            origin_requests: 0,
            origin_errors: 0,
            edge_errors: 0,
            upstream_count: 0,
            upstream_ms: 0.0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

/// A summary of a window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub requests: u64,
    pub rate_per_second: f64,
    pub hit_ratio: f64,
    /// 5xx answers to clients, edge answers included.
    pub error_rate: f64,
    /// Requests a server of the pool was asked.
    pub origin_requests: u64,
    /// Of those, the share the pool failed (5xx or no answer).
    pub origin_error_rate: f64,
    /// 5xx the edge answered itself, without asking a server (maintenance, no healthy
    /// server, origin protection): the edge's, not the pool's.
    pub edge_error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub origin_ms: f64,
}

type Key = (Arc<str>, Arc<str>, Arc<str>);

/// Shards of the series: each thread records into its own (given round-robin on first use),
/// so requests on different threads never wait for each other's lock (one process-wide
/// mutex was taken on every request, hits included); a summary merges every shard.
use crate::shard::{Padded, SHARDS};

/// One shard's series, found by a hash of (site, route, pool) without building a key: the
/// lookup used to compare every series' key in turn; foldhash mixes that hash (SipHash took
/// ~140 instructions per request).
type Shard = foldhash::HashMap<u64, Vec<(Key, VecDeque<Second>)>>;

/// All series.
pub struct Stats {
    shards: [Padded<Mutex<Shard>>; SHARDS],
    /// When these statistics started (Unix ms): no window reaches before it, so a rate over
    /// 5 minutes of a process that has run 90 s is divided by 90 s, not 300.
    started_ms: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            shards: std::array::from_fn(|_| Padded(Mutex::new(Shard::default()))),
            started_ms: now_ms(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key_hash(key: (&str, &str, &str)) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(key)
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which series a summary covers; `None` matches any.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter<'a> {
    pub site: Option<&'a str>,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
}

impl Stats {
    /// Records one request.
    pub fn record(&self, key: (&str, &str, &str), sample: &Sample) {
        let Sample {
            error,
            hit,
            total,
            upstream,
            origin,
        } = *sample;
        let now = now_secs();
        let shard = crate::shard::index();
        let mut all = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let bucket = all.entry(key_hash(key)).or_default();
        let at = match bucket
            .iter()
            .position(|(k, _)| (&*k.0, &*k.1, &*k.2) == key)
        {
            Some(i) => i,
            None => {
                let k = (key.0.into(), key.1.into(), key.2.into());
                bucket.push((k, VecDeque::new()));
                bucket.len() - 1
            }
        };
        let series = &mut bucket[at].1;
        if series.back().is_none_or(|s| s.at != now) {
            series.push_back(Second::new(now));
        }
        while series.front().is_some_and(|s| s.at + KEEP_SECONDS < now) {
            series.pop_front();
        }
        let s = series.back_mut().expect("pushed above");
        s.requests += 1;
        s.hits += hit as u64;
        s.errors += error as u64;
        s.origin_requests += (origin != Asked::No) as u64;
        s.origin_errors += origin.failed() as u64;
        s.edge_errors += (error && origin == Asked::No) as u64;
        if let Some(u) = upstream {
            s.upstream_count += 1;
            s.upstream_ms += u.as_secs_f64() * 1000.0;
        }
        s.latency[latency_bucket(total)] += 1;
    }

    /// When the statistics started (Unix seconds).
    pub fn started(&self) -> u64 {
        self.started_ms / 1000
    }

    /// When the statistics started (Unix milliseconds).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Summarises the matching series over `[until - window, until)` (`until` in Unix seconds;
    /// `None`: now), never reaching before the statistics started: rates are per second of
    /// that span, not of a window the process was not running for.
    pub fn summary(&self, filter: Filter, window: Duration, until: Option<u64>) -> Summary {
        let window_ms = window.as_millis().max(1000) as u64;
        let end_ms = until.map_or_else(now_ms, |u| u * 1000);
        let start_ms = end_ms.saturating_sub(window_ms).max(self.started_ms);
        let span = end_ms.saturating_sub(start_ms) as f64 / 1000.0;
        // Whole-second buckets: the one the start falls in, up to the one before `until` (or
        // the current one).
        let start = start_ms / 1000;
        let end = until.unwrap_or(end_ms / 1000 + 1);
        let mut total = Second::new(0);
        for shard in &self.shards {
            let all = shard.lock().unwrap_or_else(|e| e.into_inner());
            for ((site, route, pool), series) in all.values().flatten() {
                let matches = filter.site.is_none_or(|s| s == &**site)
                    && filter.route.is_none_or(|r| r == &**route)
                    && filter.pool.is_none_or(|p| p == &**pool);
                if !matches {
                    continue;
                }
                for s in series.iter().filter(|s| s.at >= start && s.at < end) {
                    total.requests += s.requests;
                    total.hits += s.hits;
                    total.errors += s.errors;
                    total.origin_requests += s.origin_requests;
                    total.origin_errors += s.origin_errors;
                    total.edge_errors += s.edge_errors;
                    total.upstream_count += s.upstream_count;
                    total.upstream_ms += s.upstream_ms;
                    for (t, x) in total.latency.iter_mut().zip(s.latency.iter()) {
                        *t += x;
                    }
                }
            }
        }
        let n = total.requests;
        let pct = |p: f64| {
            let target = (n as f64 * p).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (i, c) in total.latency.iter().enumerate() {
                seen += *c as u64;
                if seen >= target {
                    return bucket_upper_ms(i);
                }
            }
            0.0
        };
        let ratio = |a: u64| if n == 0 { 0.0 } else { a as f64 / n as f64 };
        Summary {
            requests: n,
            rate_per_second: if span > 0.0 { n as f64 / span } else { 0.0 },
            hit_ratio: ratio(total.hits),
            error_rate: ratio(total.errors),
            origin_requests: total.origin_requests,
            edge_error_rate: ratio(total.edge_errors),
            origin_error_rate: if total.origin_requests == 0 {
                0.0
            } else {
                total.origin_errors as f64 / total.origin_requests as f64
            },
            p50_ms: if n == 0 { 0.0 } else { pct(0.50) },
            p95_ms: if n == 0 { 0.0 } else { pct(0.95) },
            p99_ms: if n == 0 { 0.0 } else { pct(0.99) },
            origin_ms: if total.upstream_count == 0 {
                0.0
            } else {
                total.upstream_ms / total.upstream_count as f64
            },
        }
    }

    /// Keeps only the series `keep(site, route, pool)` says still exist (after a reload that
    /// removed sites, routes or pools, whose series would otherwise stay in memory and on
    /// the dashboard for as long as the process runs).
    pub fn retain(&self, keep: impl Fn(&str, &str, &str) -> bool) {
        for shard in &self.shards {
            let mut all = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|_, bucket| {
                bucket.retain(|(k, _)| keep(&k.0, &k.1, &k.2));
                !bucket.is_empty()
            });
        }
    }

    /// The (site, route, pool) series that exist.
    pub fn keys(&self) -> Vec<(String, String, String)> {
        let mut keys: Vec<_> = Vec::new();
        for shard in &self.shards {
            let all = shard.lock().unwrap_or_else(|e| e.into_inner());
            keys.extend(
                all.values()
                    .flatten()
                    .map(|((s, r, p), _)| (s.to_string(), r.to_string(), p.to_string())),
            );
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_falls_in_the_first_bucket_that_holds_it() {
        assert_eq!(latency_bucket(Duration::ZERO), 0);
        assert_eq!(latency_bucket(Duration::from_micros(100)), 0);
        assert_eq!(
            latency_bucket(Duration::from_secs(3600)),
            LATENCY_BUCKETS - 1
        );
        for us in [101, 150, 730, 1_000, 4_321, 55_555, 1_234_567, 60_000_000] {
            let d = Duration::from_micros(us);
            let ms = us as f64 / 1000.0;
            let i = latency_bucket(d);
            assert!(
                bucket_upper_ms(i) >= ms || i == LATENCY_BUCKETS - 1,
                "{us} µs in {i}"
            );
            assert!(i == 0 || bucket_upper_ms(i - 1) < ms, "{us} µs in {i}");
        }
    }

    #[test]
    fn summaries() {
        let stats = Stats::default();
        for i in 0..100 {
            let d = Duration::from_millis(if i < 98 { 10 } else { 500 });
            // Half are hits; of the 50 the pool answered, every fifth failed.
            let origin = match i % 2 {
                0 => Asked::No,
                _ if i % 10 == 1 => Asked::Answered(503),
                _ => Asked::Answered(200),
            };
            let sample = Sample {
                error: i % 10 == 0,
                hit: i % 2 == 0,
                total: d,
                upstream: Some(Duration::from_millis(4)),
                origin,
            };
            stats.record(("shop", "home", "blue"), &sample);
        }
        let edge = Sample {
            error: true,
            hit: false,
            total: Duration::from_millis(1),
            upstream: None,
            origin: Asked::No,
        };
        stats.record(("shop", "home", "green"), &edge);
        let blue = stats.summary(
            Filter {
                site: Some("shop"),
                pool: Some("blue"),
                route: None,
            },
            Duration::from_secs(60),
            None,
        );
        assert_eq!(blue.requests, 100);
        assert!((blue.error_rate - 0.1).abs() < 1e-9 && (blue.hit_ratio - 0.5).abs() < 1e-9);
        assert!(blue.p50_ms >= 10.0 && blue.p50_ms < 12.5, "{blue:?}");
        assert!(blue.p99_ms >= 500.0 && blue.p99_ms < 620.0, "{blue:?}");
        assert!((blue.origin_ms - 4.0).abs() < 1e-9);
        assert_eq!(blue.origin_requests, 50);
        assert!((blue.origin_error_rate - 0.2).abs() < 1e-9, "{blue:?}");
        let all = stats.summary(Filter::default(), Duration::from_secs(60), None);
        assert_eq!(all.requests, 101);
        let before = stats.summary(
            Filter::default(),
            Duration::from_secs(60),
            Some(now_secs() - 5),
        );
        assert_eq!(
            before.requests, 0,
            "a window that ends before the traffic is empty"
        );
    }

    #[test]
    fn rates_count_only_the_time_the_process_ran_and_edge_errors_are_apart() {
        let stats = Stats {
            started_ms: now_ms() - 10_000,
            ..Stats::default()
        };
        let ok = Sample {
            error: false,
            hit: false,
            total: Duration::from_millis(1),
            upstream: Some(Duration::from_millis(1)),
            origin: Asked::Answered(200),
        };
        let maintenance = Sample {
            error: true,
            upstream: None,
            origin: Asked::No,
            ..ok
        };
        for i in 0..50 {
            stats.record(
                ("shop", "home", "blue"),
                if i < 40 { &ok } else { &maintenance },
            );
        }
        let s = stats.summary(Filter::default(), Duration::from_secs(300), None);
        assert!(
            (s.rate_per_second - 5.0).abs() < 0.1,
            "50 requests in the 10 s the process ran, not in 300 s: {s:?}"
        );
        assert_eq!((s.origin_requests, s.origin_error_rate), (40, 0.0));
        assert!((s.edge_error_rate - 0.2).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn threads_record_apart_and_summaries_see_them_all() {
        let stats = std::sync::Arc::new(Stats::default());
        let sample = Sample {
            error: false,
            hit: true,
            total: Duration::from_millis(1),
            upstream: None,
            origin: Asked::No,
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        stats.record(("shop", "home", "blue"), &sample);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = stats.summary(Filter::default(), Duration::from_secs(60), None);
        assert_eq!(all.requests, 400);
        assert_eq!(
            stats.keys().len(),
            1,
            "one series, whichever shards hold it"
        );
    }
}
