//! Counters and histograms that every request records, kept per thread and summed when
//! Prometheus scrapes.
//!
//! A prometheus child is one set of atomics that every serving thread adds to: a histogram's
//! `observe` is three or four read-modify-writes on cache lines all cores share, and a request
//! made about seventeen of them, each moving a line between cores when two threads serve the
//! same route. Here a thread writes cells only it writes (a plain load and store: no locked
//! instruction, no line shared with another writer), and a scrape sums the cells of each label
//! set. A cell is made once per thread and label set (the callers keep them per thread:
//! [`super::Metrics`]'s children cache, or [`CounterFamily::inc`]'s own) and lives as long as
//! its family, as prometheus children do; label values are bounded (see the parent module).

use prometheus::core::{Collector, Desc};
use prometheus::proto;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter written by one thread only; any thread may read it.
#[derive(Default)]
pub struct Cell(AtomicU64);

impl Cell {
    pub fn inc(&self) {
        // One writer: a load and a store cannot lose an increment, and need no lock prefix.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram written by one thread only; any thread may read it.
pub struct Hist {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Self {
        Hist {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        // Prometheus buckets are "less than or equal": the first bound not below v.
        let i = self.bounds.partition_point(|&b| b < v);
        let bump = |a: &AtomicU64| a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        bump(&self.counts[i]);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + v;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
        // The count last, so that a scrape between these stores sees no more observations
        // counted than bucketed (it clamps the buckets to the count).
        bump(&self.count);
    }
}

/// Tells families apart in the per-thread caches (tests make several `Metrics`).
static FAMILIES: AtomicU64 = AtomicU64::new(0);

type Labels = Box<[Box<str>]>;

struct Family<T> {
    id: u64,
    desc: Desc,
    cells: Mutex<Vec<(Labels, Arc<T>)>>,
}

impl<T> Family<T> {
    fn new(name: &str, help: &str, labels: &[&str]) -> Self {
        let names = labels.iter().map(|l| l.to_string()).collect();
        Family {
            id: FAMILIES.fetch_add(1, Ordering::Relaxed),
            desc: Desc::new(name.into(), help.into(), names, HashMap::new()).expect("valid metric"),
            cells: Mutex::new(Vec::new()),
        }
    }

    fn add(&self, labels: &[&str], cell: T) -> Arc<T> {
        assert_eq!(labels.len(), self.desc.variable_labels.len(), "label count");
        let cell = Arc::new(cell);
        let labels = labels.iter().map(|l| Box::from(*l)).collect();
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells.push((labels, cell.clone()));
        cell
    }

    /// Every label set's cells, summed by `sum` (label values in the family's order).
    fn totals<S: Default>(&self, sum: impl Fn(&mut S, &T)) -> Vec<(Labels, S)> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_labels: HashMap<&Labels, S> = HashMap::new();
        for (labels, cell) in cells.iter() {
            sum(by_labels.entry(labels).or_default(), cell);
        }
        by_labels.into_iter().map(|(l, s)| (l.clone(), s)).collect()
    }

    fn family(&self, kind: proto::MetricType, metrics: Vec<proto::Metric>) -> proto::MetricFamily {
        let mut f = proto::MetricFamily::default();
        f.set_name(self.desc.fq_name.clone());
        f.set_help(self.desc.help.clone());
        f.set_field_type(kind);
        f.set_metric(metrics);
        f
    }

    /// A metric with this family's label names and `values`, sorted by name as prometheus's
    /// own children are.
    fn metric(&self, values: &[Box<str>]) -> proto::Metric {
        let mut pairs: Vec<proto::LabelPair> = self
            .desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut p = proto::LabelPair::default();
                p.set_name(name.clone());
                p.set_value(value.to_string());
                p
            })
            .collect();
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut m = proto::Metric::default();
        m.set_label(pairs);
        m
    }
}

/// A hash of label values (FNV-1a, each value ended by a byte no UTF-8 text has), for the
/// per-thread caches: cheaper than building a key, and equal values hash equally.
pub fn label_hash(seed: u64, labels: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for label in labels {
        for b in label.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Keyed by hashes already taken (foldhash, not SipHash, to mix them: one lookup per request).
type CellCache = foldhash::HashMap<(u64, u64), Vec<(Labels, Arc<Cell>)>>;

thread_local! {
    static CELLS: RefCell<CellCache> = RefCell::new(CellCache::default());
}

/// A counter family (`prometheus::IntCounterVec`'s exposition) of per-thread cells.
#[derive(Clone)]
pub struct CounterFamily(Arc<Family<Cell>>);

impl CounterFamily {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> Self {
        CounterFamily(Arc::new(Family::new(name, help, labels)))
    }

    /// A new cell for the calling thread to count `labels` in (keep it: each call adds one).
    pub fn cell(&self, labels: &[&str]) -> Arc<Cell> {
        self.0.add(labels, Cell::default())
    }

    /// Counts one for `labels` in this thread's cell, found in a per-thread cache.
    pub fn inc(&self, labels: &[&str]) {
        let hash = label_hash(0, labels);
        CELLS.with(|cache| {
            let mut cache = cache.borrow_mut();
            let same = cache.entry((self.0.id, hash)).or_default();
            match same
                .iter()
                .find(|(l, _)| l.iter().map(|b| &**b).eq(labels.iter().copied()))
            {
                Some((_, cell)) => cell.inc(),
                None => {
                    let cell = self.cell(labels);
                    cell.inc();
                    same.push((labels.iter().map(|l| Box::from(*l)).collect(), cell));
                }
            }
        })
    }
}

impl Collector for CounterFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let metrics = self
            .0
            .totals(|n: &mut u64, c| *n += c.get())
            .into_iter()
            .map(|(labels, n)| {
                let mut m = self.0.metric(&labels);
                let mut c = proto::Counter::default();
                c.set_value(n as f64);
                m.set_counter(c);
                m
            })
            .collect();
        vec![self.0.family(proto::MetricType::COUNTER, metrics)]
    }
}

/// A histogram family (`prometheus::HistogramVec`'s exposition) of per-thread cells.
#[derive(Clone)]
pub struct HistogramFamily {
    family: Arc<Family<Hist>>,
    bounds: &'static [f64],
}

#[derive(Default)]
struct HistTotal {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl HistogramFamily {
    pub fn new(name: &str, help: &str, labels: &[&str], bounds: &'static [f64]) -> Self {
        HistogramFamily {
            family: Arc::new(Family::new(name, help, labels)),
            bounds,
        }
    }

    /// A new cell for the calling thread to observe `labels` in (keep it).
    pub fn cell(&self, labels: &[&str]) -> Arc<Hist> {
        self.family.add(labels, Hist::new(self.bounds))
    }
}

impl Collector for HistogramFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.family.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let totals = self.family.totals(|t: &mut HistTotal, h| {
            // The count first: an observation under way is then in no total or only in the
            // buckets, which are clamped to the count below.
            t.count += h.count.load(Ordering::Relaxed);
            t.sum += f64::from_bits(h.sum.load(Ordering::Relaxed));
            t.counts.resize(h.counts.len(), 0);
            for (n, c) in t.counts.iter_mut().zip(h.counts.iter()) {
                *n += c.load(Ordering::Relaxed);
            }
        });
        let metrics = totals
            .into_iter()
            .filter(|(_, t)| t.count > 0)
            .map(|(labels, t)| {
                let mut m = self.family.metric(&labels);
                let mut h = proto::Histogram::default();
                h.set_sample_count(t.count);
                h.set_sample_sum(t.sum);
                let mut cumulative = 0;
                let buckets = self
                    .bounds
                    .iter()
                    .zip(&t.counts)
                    .map(|(&bound, &n)| {
                        cumulative += n;
                        let mut b = proto::Bucket::default();
                        b.set_upper_bound(bound);
                        b.set_cumulative_count(cumulative.min(t.count));
                        b
                    })
                    .collect();
                // The `+Inf` bucket is the count; the encoder writes it.
                h.set_bucket(buckets);
                m.set_histogram(h);
                m
            })
            .collect();
        vec![self.family.family(proto::MetricType::HISTOGRAM, metrics)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_of_every_thread_are_summed_by_labels() {
        static BOUNDS: [f64; 2] = [1.0, 10.0];
        let r = prometheus::Registry::new();
        let c = CounterFamily::new("t_total", "t", &["site", "route"]);
        let h = HistogramFamily::new("t_seconds", "t", &["site"], &BOUNDS);
        r.register(Box::new(c.clone())).unwrap();
        r.register(Box::new(h.clone())).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.inc(&["shop", "home"]);
                    }
                    c.inc(&["shop", "list"]);
                    let cell = h.cell(&["shop"]);
                    for v in [0.5, 1.0, 5.0, 50.0] {
                        cell.observe(v);
                    }
                });
            }
        });
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            r#"t_total{route="home",site="shop"} 4000"#,
            r#"t_total{route="list",site="shop"} 4"#,
            r#"t_seconds_bucket{site="shop",le="1"} 8"#,
            r#"t_seconds_bucket{site="shop",le="10"} 12"#,
            r#"t_seconds_bucket{site="shop",le="+Inf"} 16"#,
            r#"t_seconds_sum{site="shop"} 226"#,
            r#"t_seconds_count{site="shop"} 16"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
