//! Per-request state carried through the proxy hooks.

use crate::cache::policy::Bypass;
use crate::config::{Runtime, Site};
use crate::rules::Rule;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the edge decided and saw for one request.
pub struct RequestCtx {
    pub start: Instant,
    /// The config this request started with; a reload mid-request does not change it.
    pub runtime: Option<Arc<Runtime>>,
    pub site: Option<Arc<Site>>,
    pub rule: Option<Arc<Rule>>,
    /// Normalised host (lowercase, no port).
    pub host: String,
    /// Set when the request must not use the cache.
    pub bypass: Option<Bypass>,
    /// The primary cache key, for cacheable requests.
    pub primary: Vec<u8>,
    /// Its hash (`cache::key::hash`), taken once for the predictor, the lookup and the key.
    pub primary_hash: [u8; 16],
    /// Path and normalised query sent upstream on cacheable requests.
    pub upstream_uri: Option<String>,
    /// Set when the edge answered by itself (unknown host, …); a label, never user input.
    pub edge_answer: Option<&'static str>,
    /// The site and route of an edge answer the decision attributed to them (no `site` and
    /// `rule` are set for an answer).
    pub edge_at: Option<(Arc<str>, Arc<str>)>,
    pub pool: Option<String>,
    /// The live pool the request was sent to (see `upstream_peer`).
    pub live_pool: Option<Arc<crate::pools::Pool>>,
    pub upstream_addr: Option<SocketAddr>,
    /// Attempts at the origin so far (see `app::MAX_TRIES`).
    pub tries: usize,
    /// The request was sent to the origin again after a failed exchange (only once).
    pub resent: bool,
    /// Connects that failed (each server of the pool is tried once).
    pub refused: usize,
    pub upstream_start: Option<Instant>,
    pub upstream_time: Option<Duration>,
    pub upstream_status: Option<u16>,
    /// A stale copy was served because the origin failed.
    pub stale_on_error: bool,
    /// Headers of a 304 answering our revalidation, merged into the stored headers.
    pub not_modified: Option<http::HeaderMap>,
    /// A cohort bucket assigned to this visitor, to be set as a cookie.
    pub new_cohort: Option<u8>,
    /// Maintenance with cached copies allowed: serve from cache, never go to the origin.
    pub maintenance_cached: bool,
    /// The chosen pool had no healthy server.
    pub no_server: bool,
    /// A slot of the pool's `max_inflight`, held until the request ends.
    pub slot: Option<crate::pools::Slot>,
    /// The pool was at `max_inflight` for longer than `max_wait`.
    pub shed: bool,
    /// The request came over TLS.
    pub tls: bool,
    /// The request id: the client's `X-Request-Id` when well-formed, else generated.
    pub request_id: String,
    /// Request body bytes read so far (the route's `max_body` applies to chunked bodies too).
    pub body_bytes: u64,
    /// When the response header went to the client.
    pub ttfb: Option<Duration>,
    /// The storage decision: `Some(None)` stored, `Some(Some(reason))` not stored.
    pub store: Option<Option<&'static str>>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            runtime: None,
            site: None,
            rule: None,
            host: String::new(),
            bypass: None,
            primary: Vec::new(),
            primary_hash: [0; 16],
            upstream_uri: None,
            edge_answer: None,
            edge_at: None,
            pool: None,
            live_pool: None,
            upstream_addr: None,
            tries: 0,
            resent: false,
            refused: 0,
            upstream_start: None,
            upstream_time: None,
            upstream_status: None,
            stale_on_error: false,
            not_modified: None,
            new_cohort: None,
            maintenance_cached: false,
            no_server: false,
            slot: None,
            shed: false,
            tls: false,
            request_id: String::new(),
            body_bytes: 0,
            ttfb: None,
            store: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
