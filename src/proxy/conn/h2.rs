//! An HTTP/2 client connection: pingora 0.9.1's accept loop
//! (`protocols::http::v2::server::accept_downstream_sessions`, crate-private there) with one
//! change: a stream that is a plain hit is answered inside the loop by the fast transport
//! ([`crate::proxy::fast::h2`]) instead of in a task of its own; every other stream gets its
//! task, where a pass the fast transport carries is relayed by it and the rest go to pingora's
//! proxy, as in pingora.
//!
//! Why in the loop: h2 writes what its streams queued only when it has read every frame that
//! arrived. A hit answered in its own task wakes the connection task, which tokio runs next
//! (its LIFO slot), and which then sends that one answer: one `send` and one TLS record per
//! hit. Answered in the loop, the hits of every request that arrived together go out in one
//! write, as nginx's HTTP/2 does, with no task spawned for them.
//!
//! What is kept as pingora has it: the handshake with the app's `H2Options`, a shutdown signal
//! answered with a graceful GOAWAY while streams already started still complete, the idle
//! timeout (`h2_idle_timeout`, counted only while no stream is in flight), and the bound on
//! malformed streams (a connection that sent [`MAX_MALFORMED_STREAMS`] is torn down).

use super::headclock::TimedHead;
use super::Transports;
use crate::proxy::fast::h2::H2Stream;
use futures_util::FutureExt;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Ssl};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Malformed streams (a forbidden byte in `:path`, conflicting lengths, a bad authority) after
/// which the connection is torn down: pingora's `MAX_MALFORMED_STREAMS_PER_CONN`.
pub const MAX_MALFORMED_STREAMS: usize = 32;

/// Serves one HTTP/2 connection until it ends.
pub async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    transports: &Arc<Transports<A>>,
    mut stream: Box<TimedHead>,
    shutdown: &ShutdownWatch,
) {
    stream.cork_writes();
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match server::handshake(stream, transports.proxy.h2_options()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("HTTP/2 handshake failed: {e}");
            return;
        }
    };
    let idle_timeout = transports
        .proxy
        .server_options()
        .and_then(|o| o.h2_idle_timeout);
    let active = Arc::new(Active::default());
    let mut signal = shutdown.clone();
    let mut draining = false;
    let mut malformed = 0;
    let mut arrived = Vec::new();
    loop {
        let accepted = if draining {
            HttpSession::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                // The signal first, so one that arrived with a stream is seen at once.
                biased;
                _ = signal.changed() => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                accepted = HttpSession::from_h2_conn(&mut conn, digest.clone()) => accepted,
                // Idle with nothing in flight: close now, without a GOAWAY a dead peer would
                // never read.
                _ = active.idle_for(idle_timeout.unwrap_or_default()), if idle_timeout.is_some() => return,
            }
        };
        // Every stream that has arrived already is taken before any is answered: h2 writes
        // what is queued each time it is asked for a stream, so answers queued together leave
        // in one write.
        arrived.push(accepted);
        while let Some(more) = HttpSession::from_h2_conn(&mut conn, digest.clone()).now_or_never() {
            let last = !matches!(more, Ok(Some(H2Accept::Session(_))));
            arrived.push(more);
            if last {
                break;
            }
        }
        for accepted in arrived.drain(..) {
            let mut session = match accepted {
                // A client that closes its TCP connection without a GOAWAY is common: no log.
                Err(_) | Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= MAX_MALFORMED_STREAMS {
                        tracing::warn!(
                            "closing an HTTP/2 connection after {malformed} malformed requests"
                        );
                        return;
                    }
                    continue;
                }
                Ok(Some(H2Accept::Session(session))) => session,
            };
            let pass = match transports.fast.answer_h2(&mut session) {
                H2Stream::Served => continue,
                H2Stream::MayPass => true,
                H2Stream::Pingora => false,
            };
            let guard = active.start();
            let transports = transports.clone();
            let shutdown = shutdown.clone();
            // On this thread's runtime (pingora picks a random thread's when work stealing is
            // off, which sends the stream's every wake-up across threads).
            tokio::spawn(async move {
                // Held for the stream's life, so the idle timeout sees the connection busy.
                let _guard = guard;
                if pass && transports.fast.pass_h2(&mut session).await {
                    return;
                }
                transports
                    .proxy
                    .process_new_http(ServerSession::new_http2(session), &shutdown)
                    .await;
            });
        }
    }
}

/// Streams in flight on a connection, for its idle timeout.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// One stream in flight; counted out when dropped.
struct Guard(Arc<Active>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> Guard {
        self.count.fetch_add(1, Ordering::Relaxed);
        Guard(self.clone())
    }

    /// Returns once no stream has been in flight for `timeout`.
    async fn idle_for(&self, timeout: std::time::Duration) {
        while self.count.load(Ordering::Relaxed) != 0 {
            self.idle.notified().await;
        }
        if !timeout.is_zero() {
            tokio::time::sleep(timeout).await;
        }
    }
}
