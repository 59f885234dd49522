//! Upstream pools: named groups of application servers and the choice of server per request.
//!
//! A site has one or more pools (blue, green, …) and one active pool. Within a pool, servers
//! are used round-robin.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A named group of application servers.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Pool {
    /// `servers` is never empty: validation rejects a pool without servers.
    pub fn new(name: String, servers: Vec<SocketAddr>) -> Self {
        Pool {
            name,
            servers,
            next: AtomicUsize::new(0),
        }
    }

    /// The next server, round-robin.
    pub fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.servers[i % self.servers.len()]
    }
}
