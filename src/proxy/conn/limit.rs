//! Connection limits on the proxy listeners: at most `proxy.max_connections` client
//! connections at once, and at most `proxy.max_connections_per_client` from one IP address
//! (nginx's `limit_conn`), and each request head within `proxy.header_timeout` (`super::headclock`).
//! Together they keep one slow client from holding every connection.
//!
//! It wraps pingora's HTTP proxy app: a connection over a limit is closed at once, before
//! anything is read from it; otherwise the whole connection (every keep-alive request on it)
//! runs inside one call, so it is counted exactly once. Limits are read from the running config
//! at each accept, so a reload changes them.

use super::headclock::TimedHead;
use crate::config::Runtime;
use crate::metrics::Metrics;
use crate::proxy::fast::FastPath;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// `A` (pingora's proxy app) behind the connection limits.
pub struct ConnectionLimit<A> {
    transports: Arc<super::Transports<A>>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    open: Arc<Mutex<Open>>,
    client: Option<IpAddr>,
    /// `crossfade_connections_open`, kept exactly here (every listener, TLS included).
    gauge: prometheus::IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(ip) = self.client {
            if let Some(n) = open.per_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.per_client.remove(&ip);
                }
            }
        }
    }
}

impl<A> ConnectionLimit<A> {
    pub fn new(
        inner: A,
        fast: FastPath,
        runtime: Arc<ArcSwap<Runtime>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ConnectionLimit {
            transports: Arc::new(super::Transports {
                proxy: Arc::new(inner),
                fast,
            }),
            runtime,
            metrics,
            open: Arc::default(),
        }
    }

    fn admit(&self, client: Option<IpAddr>) -> Result<Admitted, &'static str> {
        let limits = &self.runtime.load().proxy.limits;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= limits.max_connections {
            return Err("total");
        }
        if let Some(ip) = client {
            let n = open.per_client.entry(ip).or_default();
            if *n >= limits.max_connections_per_client {
                return Err("per_client");
            }
            *n += 1;
        }
        open.total += 1;
        self.metrics.connections_open.inc();
        Ok(Admitted {
            open: self.open.clone(),
            client,
            gauge: self.metrics.connections_open.clone(),
        })
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = session
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _admitted = match self.admit(client) {
            Ok(a) => a,
            Err(limit) => {
                self.metrics
                    .connections_refused
                    .with_label_values(&[limit])
                    .inc();
                return None;
            }
        };
        let stream = TimedHead::new(session, self.runtime.load().proxy.limits.header_timeout);
        super::serve_connection(&self.transports, stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.transports.proxy.cleanup().await;
    }
}
