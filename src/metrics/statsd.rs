//! statsd push: one UDP datagram per finished request, named `<prefix>.<site>.<route>.<what>`
//! (the store's scheme), and the [`Resolver`] that keeps the destination current.
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
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where packets go now; empty: nowhere (no statsd, or not resolved yet).
#[derive(Default)]
pub struct Statsd {
    sink: ArcSwapOption<Sink>,
}

struct Sink {
    socket: UdpSocket,
    prefix: String,
}

impl Statsd {
    /// Sends one request's timers and counters. Never blocks: the socket is non-blocking and
    /// a full buffer or a dead server only drops the packet.
    pub fn request(&self, e: &RequestEvent) {
        let guard = self.sink.load();
        let Some(sink) = guard.as_ref() else {
            return;
        };
        let base = format!("{}.{}.{}", sink.prefix, e.site, e.route);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut lines = vec![
            format!("{base}.requests:1|c"),
            format!("{base}.response_time:{:.3}|ms", ms(e.total)),
            format!("{base}.response_size:{}|ms", e.bytes),
            format!("{base}.{}:1|c", e.cache.replace('-', "_")),
            format!("{base}.status_{}:1|c", status_class(e.status)),
        ];
        if let Some(u) = e.upstream {
            lines.push(format!("{base}.upstream_time:{:.3}|ms", ms(u)));
        }
        // One datagram per request; errors (no listener, full buffer) are deliberately ignored.
        let _ = sink.socket.send(lines.join("\n").as_bytes());
    }

    /// Counts one `<prefix>.<name>` (a release event), never blocking.
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
                // Often enough to pick up a reloaded target promptly; a lookup is made only
                // when one is due.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
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
