//! statsd push, named `<prefix>.<site>.<route>.<what>` (the store's scheme): each finished
//! request's lines go into its serving thread's batch, sent as one UDP datagram when the next
//! request's lines would not fit in [`MAX_PACKET`] bytes, and by the [`Resolver`] every
//! [`FLUSH_EVERY`] (also while a stopping process drains), so a line waits at most that long.
//! Also owns the [`Resolver`] that keeps the destination current.
//!
//! A datagram per request was a `send(2)` per request on one socket all serving threads share
//! (the kernel locks it): a syscall and a shared lock on every hit once statsd was set. A
//! thread's batch is its own (its mutex is taken by another thread only for the periodic
//! flush), and a datagram carries several requests.
//!
//! Metrics never stop the proxy: `metrics.statsd` is a host name or an address, resolved in the
//! background. A name that does not resolve at start is retried (1 s, doubling to 30 s) with a
//! warning, and a name that resolves is resolved again every 30 s, so a statsd that moves is
//! followed. Until the first answer, and while the configured target has changed but not yet
//! resolved, packets are not sent. Target and prefix are read from the running config, so a
//! reload applies them.

use super::{status_class, RequestEvent};
use crate::config::{Runtime, StatsdTarget};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::cell::RefCell;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest datagram a batch grows to: what one Ethernet frame carries (1500 bytes less
/// the IP and UDP headers, the size statsd clients default to), so no datagram is fragmented.
/// One request's lines longer than this (very long site and route names) go alone.
pub const MAX_PACKET: usize = 1432;
/// How often the lines waiting in threads' batches are sent: at most this late in statsd,
/// whose own flush interval is 10 s.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Tells `Statsd` instances apart in the per-thread batch lists (tests make several).
static INSTANCES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's batch of each `Statsd` instance.
    static BATCHES: RefCell<Vec<(u64, Arc<Mutex<Batch>>)>> = const { RefCell::new(Vec::new()) };
}

/// Where packets go now; empty: nowhere (no statsd, or not resolved yet).
pub struct Statsd {
    sink: ArcSwapOption<Sink>,
    instance: u64,
    /// Every thread's batch, for the periodic flush.
    batches: Mutex<Vec<Arc<Mutex<Batch>>>>,
}

impl Default for Statsd {
    fn default() -> Self {
        Statsd {
            sink: ArcSwapOption::empty(),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            batches: Mutex::default(),
        }
    }
}

struct Sink {
    socket: UdpSocket,
    prefix: String,
}

/// One thread's lines not yet sent, and where they go (the sink current when they were
/// written: a new target gets only lines written after it was set).
#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    to: Option<Arc<Sink>>,
}

impl Batch {
    /// Sends the waiting lines as one datagram. Errors (no listener, full buffer) are
    /// deliberately ignored: metrics never stop the proxy.
    fn send(&mut self) {
        if let (false, Some(to)) = (self.lines.is_empty(), &self.to) {
            let _ = to.socket.send(&self.lines);
        }
        self.lines.clear();
    }

    /// Adds one request's lines, sending first what waits when they would not fit in the
    /// same datagram.
    fn add(&mut self, sink: &Arc<Sink>, e: &RequestEvent) {
        if !self.to.as_ref().is_some_and(|to| Arc::ptr_eq(to, sink)) {
            self.send();
            self.to = Some(sink.clone());
        }
        let before = self.lines.len();
        write_request(&mut self.lines, &sink.prefix, e);
        if before > 0 && self.lines.len() > MAX_PACKET {
            // What waited goes alone; this request's lines (after their separating newline)
            // start the next datagram.
            let _ = sink.socket.send(&self.lines[..before]);
            self.lines.drain(..=before);
        }
        if self.lines.len() >= MAX_PACKET {
            self.send();
        }
    }
}

impl Statsd {
    /// Adds one request's timers and counters to this thread's batch. Never blocks: the
    /// socket is non-blocking and a full buffer or a dead server only drops the datagram.
    pub fn request(&self, e: &RequestEvent) {
        let guard = self.sink.load();
        let Some(sink) = guard.as_ref() else {
            return;
        };
        BATCHES.with(|batches| {
            let mut batches = batches.borrow_mut();
            let batch = match batches.iter().find(|(i, _)| *i == self.instance) {
                Some((_, b)) => b,
                None => {
                    let b = Arc::new(Mutex::new(Batch::default()));
                    self.batches
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(b.clone());
                    batches.push((self.instance, b));
                    &batches.last().expect("just pushed").1
                }
            };
            batch.lock().unwrap_or_else(|e| e.into_inner()).add(sink, e);
        });
    }

    /// Sends every thread's waiting lines (the [`Resolver`]'s tick, also while the process
    /// drains).
    pub fn flush(&self) {
        let batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        for b in batches.iter() {
            b.lock().unwrap_or_else(|e| e.into_inner()).send();
        }
    }

    /// Counts one `<prefix>.<name>` (a release event), never blocking: sent at once, not
    /// batched (rare, and the timeline's statsd counter is read beside its annotation).
    pub fn count(&self, name: &str) {
        if let Some(sink) = self.sink.load().as_ref() {
            let _ = sink
                .socket
                .send(format!("{}.{name}:1|c", sink.prefix).as_bytes());
        }
    }

    fn set(&self, to: Option<(SocketAddr, String)>) -> std::io::Result<()> {
        let sink = match to {
            None => None,
            Some((addr, prefix)) => {
                let bind = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(bind)?;
                socket.set_nonblocking(true)?;
                socket.connect(addr)?;
                Some(Arc::new(Sink { socket, prefix }))
            }
        };
        self.sink.store(sink);
        Ok(())
    }
}

/// One request's lines, each after a newline unless `out` is empty: `requests`, the cache
/// outcome, the status class, response time and size, and upstream time when the origin was
/// asked.
fn write_request(out: &mut Vec<u8>, prefix: &str, e: &RequestEvent) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = |what: std::fmt::Arguments| {
        if !out.is_empty() {
            out.push(b'\n');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{prefix}.{}.{}.{what}", e.site, e.route);
    };
    line(format_args!("requests:1|c"));
    line(format_args!("response_time:{:.3}|ms", ms(e.total)));
    line(format_args!("response_size:{}|ms", e.bytes));
    line(format_args!("{}:1|c", Underscored(e.cache)));
    line(format_args!("status_{}:1|c", status_class(e.status)));
    if let Some(u) = e.upstream {
        line(format_args!("upstream_time:{:.3}|ms", ms(u)));
    }
}

/// A label with `-` written as `_` (statsd name segments), without a copy.
struct Underscored<'a>(&'a str);

impl std::fmt::Display for Underscored<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        for (i, part) in self.0.split('-').enumerate() {
            if i > 0 {
                f.write_str("_")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

/// How often a name that resolved is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// The first retry after a failed resolution; doubles up to [`RESOLVE_EVERY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// A resolver that does not answer in this time has failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the resolver knows: the configured target and prefix it last acted on, where they
/// resolved, and when to ask again.
#[derive(Debug, Default)]
struct Tracker {
    target: Option<(StatsdTarget, String)>,
    addr: Option<SocketAddr>,
    due: Option<Instant>,
    retry: Duration,
    warned: bool,
}

/// What to do with the sink after a resolution.
#[derive(Debug, PartialEq)]
enum Change {
    Keep,
    Send(SocketAddr, String),
    Stop,
}

impl Tracker {
    /// Whether `configured` needs a lookup at `now` (a new target or prefix, or time is up).
    fn due(&self, configured: &Option<(StatsdTarget, String)>, now: Instant) -> bool {
        configured.is_some()
            && (self.target != *configured || self.due.is_none_or(|due| now >= due))
    }

    /// Takes the outcome of a lookup of `configured` made at `now`.
    fn resolved(
        &mut self,
        configured: (StatsdTarget, String),
        outcome: Result<SocketAddr, String>,
        now: Instant,
    ) -> Change {
        let changed = self.target.as_ref() != Some(&configured);
        match outcome {
            Ok(addr) => {
                if self.warned {
                    tracing::warn!(statsd = %configured.0, %addr, "statsd resolves again");
                }
                let moved = self.addr != Some(addr);
                self.target = Some(configured.clone());
                self.addr = Some(addr);
                self.due = Some(now + RESOLVE_EVERY);
                self.retry = FIRST_RETRY;
                self.warned = false;
                if changed || moved {
                    tracing::info!(statsd = %configured.0, %addr, "statsd packets go to {addr}");
                    Change::Send(addr, configured.1)
                } else {
                    Change::Keep
                }
            }
            Err(why) => {
                if !self.warned {
                    tracing::warn!(statsd = %configured.0, error = %why, "statsd does not resolve; retrying in the background (requests are served as usual)");
                    self.warned = true;
                }
                self.retry = if self.retry.is_zero() {
                    FIRST_RETRY
                } else {
                    (self.retry * 2).min(RESOLVE_EVERY)
                };
                self.due = Some(now + self.retry);
                if changed {
                    // A new target that does not resolve: nothing goes to the old one.
                    self.target = Some(configured);
                    self.addr = None;
                    Change::Stop
                } else {
                    // The same target, briefly unresolvable: keep sending where it was.
                    Change::Keep
                }
            }
        }
    }

    /// The config has no statsd (any more).
    fn off(&mut self) -> Change {
        if self.target.take().is_some() {
            *self = Tracker::default();
            Change::Stop
        } else {
            Change::Keep
        }
    }
}

/// Background service: resolves `metrics.statsd` of the running config and points
/// [`Statsd`] at it.
pub struct Resolver {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<super::Metrics>,
}

async fn lookup(target: &StatsdTarget) -> Result<SocketAddr, String> {
    let name = target.to_string();
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name)).await {
        Err(_) => Err(format!("no answer in {}s", RESOLVE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| "no address".to_string()),
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Resolver {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tracker = Tracker::default();
        loop {
            let configured = {
                let rt = self.runtime.load();
                let m = &rt.metrics;
                m.statsd.clone().map(|t| (t, m.statsd_prefix.clone()))
            };
            let change = match configured {
                None => tracker.off(),
                Some(c) if tracker.due(&Some(c.clone()), Instant::now()) => {
                    let outcome = lookup(&c.0).await;
                    tracker.resolved(c, outcome, Instant::now())
                }
                Some(_) => Change::Keep,
            };
            let set = match change {
                Change::Keep => Ok(()),
                Change::Send(addr, prefix) => self.metrics.statsd.set(Some((addr, prefix))),
                Change::Stop => self.metrics.statsd.set(None),
            };
            if let Err(e) = set {
                tracing::warn!(error = %e, "cannot open a UDP socket for statsd");
            }
            tokio::select! {
                // Often enough to pick up a reloaded target promptly (a lookup is made only
                // when one is due) and to send the lines threads' batches hold.
                _ = tokio::time::sleep(FLUSH_EVERY) => self.metrics.statsd.flush(),
                _ = shutdown.changed() => break,
            }
        }
        // Shutting down: connections still draining finish requests, whose lines are sent
        // on the same ticks until the process exits (the target no longer changes).
        loop {
            self.metrics.statsd.flush();
            tokio::time::sleep(FLUSH_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> (StatsdTarget, String) {
        (
            StatsdTarget {
                host: host.into(),
                port: 8125,
            },
            "store".into(),
        )
    }

    fn event<'a>(site: &'a str, upstream: Option<Duration>) -> RequestEvent<'a> {
        RequestEvent {
            site,
            route: "all",
            pool: "blue",
            cache: "not-stored",
            status: 200,
            total: Duration::from_micros(1500),
            upstream,
            ttfb: None,
            bytes: 1024,
            bypass: None,
            store: None,
            origin: crate::stats::Asked::No,
            fast: false,
        }
    }

    /// A socket statsd would listen on, and a sink pointed at it.
    fn listener() -> (UdpSocket, Arc<Sink>) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(rx.local_addr().unwrap()).unwrap();
        let sink = Sink {
            socket,
            prefix: "store".into(),
        };
        (rx, Arc::new(sink))
    }

    fn datagrams(rx: &UdpSocket) -> Vec<String> {
        let mut buf = [0u8; 65536];
        std::iter::from_fn(|| {
            let n = rx.recv(&mut buf).ok()?;
            Some(String::from_utf8(buf[..n].to_vec()).unwrap())
        })
        .collect()
    }

    #[test]
    fn a_batch_fills_datagrams_up_to_one_frame_and_sends_an_oversized_request_alone() {
        let (rx, sink) = listener();
        let mut batch = Batch::default();
        let one = {
            let mut out = Vec::new();
            write_request(
                &mut out,
                "store",
                &event("shop", Some(Duration::from_millis(2))),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            one,
            "store.shop.all.requests:1|c\nstore.shop.all.response_time:1.500|ms\n\
             store.shop.all.response_size:1024|ms\nstore.shop.all.not_stored:1|c\n\
             store.shop.all.status_2xx:1|c\nstore.shop.all.upstream_time:2.000|ms"
        );
        for _ in 0..20 {
            batch.add(&sink, &event("shop", Some(Duration::from_millis(2))));
        }
        batch.send();
        let got = datagrams(&rx);
        let per = MAX_PACKET / (one.len() + 1);
        assert_eq!(got.len(), 20_usize.div_ceil(per), "{got:?}");
        assert!(got
            .iter()
            .all(|d| d.len() <= MAX_PACKET && !d.ends_with('\n')));
        assert!(got[..got.len() - 1]
            .iter()
            .all(|d| d.len() + 1 + one.len() > MAX_PACKET));
        assert_eq!(got.join("\n"), vec![one.as_str(); 20].join("\n"));

        // Lines longer than a datagram: what waits goes first, then they go alone.
        let long = "s".repeat(MAX_PACKET / 4);
        batch.add(&sink, &event("shop", None));
        batch.add(&sink, &event(&long, None));
        batch.add(&sink, &event("shop", None));
        batch.send();
        let got = datagrams(&rx);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("store.shop.") && got[2].starts_with("store.shop."));
        assert!(got[1].starts_with(&format!("store.{long}.")) && got[1].len() > MAX_PACKET);
        assert_eq!(got[1].lines().count(), 5);

        // A new target gets only the lines written after it was set.
        let (rx2, sink2) = listener();
        batch.add(&sink, &event("old", None));
        batch.add(&sink2, &event("new", None));
        batch.send();
        assert!(datagrams(&rx).iter().all(|d| d.starts_with("store.old.")));
        assert!(datagrams(&rx2).iter().all(|d| d.starts_with("store.new.")));
    }

    #[test]
    fn a_name_that_fails_is_retried_sooner_and_sooner_no_more_and_followed_when_it_moves() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let stats = target("stats.internal");
        assert!(t.due(&Some(stats.clone()), t0));
        assert!(!t.due(&None, t0), "no statsd: nothing to resolve");
        // Does not resolve at start: nothing is sent, retries back off from 1 s to 30 s.
        assert_eq!(
            t.resolved(stats.clone(), Err("nx".into()), t0),
            Change::Stop
        );
        assert!(!t.due(&Some(stats.clone()), t0 + Duration::from_millis(900)));
        assert!(t.due(&Some(stats.clone()), t0 + FIRST_RETRY));
        let mut at = t0;
        for _ in 0..10 {
            at += RESOLVE_EVERY;
            assert_eq!(
                t.resolved(stats.clone(), Err("nx".into()), at),
                Change::Keep
            );
        }
        assert_eq!(
            t.retry, RESOLVE_EVERY,
            "backs off to the re-resolve interval"
        );
        // Resolves: packets go there; asked again 30 s later.
        let a: SocketAddr = "10.0.0.1:8125".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:8125".parse().unwrap();
        assert_eq!(
            t.resolved(stats.clone(), Ok(a), at),
            Change::Send(a, "store".into())
        );
        assert!(!t.due(&Some(stats.clone()), at + RESOLVE_EVERY / 2));
        assert!(t.due(&Some(stats.clone()), at + RESOLVE_EVERY));
        assert_eq!(t.resolved(stats.clone(), Ok(a), at), Change::Keep);
        // A brief failure keeps the last address; a move is followed.
        assert_eq!(
            t.resolved(stats.clone(), Err("nx".into()), at),
            Change::Keep
        );
        assert_eq!(
            t.resolved(stats.clone(), Ok(b), at),
            Change::Send(b, "store".into())
        );
        // A reload to a new target is looked up at once; if it fails, nothing goes to the old.
        let other = target("other.internal");
        assert!(t.due(&Some(other.clone()), at));
        assert_eq!(t.resolved(other, Err("nx".into()), at), Change::Stop);
        assert_eq!(t.off(), Change::Stop);
        assert_eq!(t.off(), Change::Keep);
    }
}
