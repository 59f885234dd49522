//! The relay (`proxy.pass_fast_path`): a GET or HEAD (an HTTP/1 request or an HTTP/2 stream)
//! that [`decide::plan`] sends to the origin uncached — a bypass (a logged-in cookie, a `pass`
//! route) — or whose key the predictor remembers as uncacheable is relayed here with
//! [`super::origin`]'s client instead of pingora's proxy path, which costs about three times
//! nginx's CPU per pass. The client's side of it is a [`Downstream`].
//!
//! [`decide::plan`]: crate::proxy::decide::plan
//!
//! It does what the proxy's hooks do for such a request: the pool and server choice
//! (`Pool::pick`, in-flight counts, passive health), the request headers the origin must not
//! see removed and the forwarding headers set (`sanitize`, pingora's hop-by-hop list), the
//! normalised query and no cookies for cacheable routes, `Cache-Status`, `X-Request-Id`,
//! internal headers removed, `Date` and `Connection` as pingora writes them, 502 on an origin
//! failure, the predictor kept up to date, one access-log event and the same metrics. When
//! nothing has been sent yet and it cannot go on (no healthy server), it hands the request back
//! to pingora, whose answers for that case are the reference.

use super::downstream::Downstream;
use super::origin::{self, BadHead, RelayError};
use super::{as_pingora, wire, FastPath, Outcome};
use crate::cache::policy::{self, Bypass};
use crate::cache::{key, vary};
use crate::config::{Runtime, Site};
use crate::pools::Admission;
use crate::proxy::decide::answer::{self, Answer};
use crate::proxy::decide::headers;
use crate::proxy::decide::sanitize::UNTRUSTED;
use crate::rules::Rule;
use crate::stats::Asked;
use bytes::BytesMut;
use http::Method;
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::ErrorType;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Why the request is relayed uncached.
pub enum Reason {
    /// The request says so (cookie, route); the origin gets it as the client sent it.
    Bypass(Bypass),
    /// A cacheable request whose key the predictor remembers as uncacheable, and why.
    Predicted(CacheKey, NoCacheReason),
}

/// A request the fast transport relays to the origin, as decided from its head.
/// A pass on its way: the config it was planned under is borrowed from the connection's
/// reference to it (no reference count every thread's requests share is touched).
pub struct Relay<'c> {
    pub runtime: &'c Runtime,
    pub site: &'c Site,
    pub rule: &'c Rule,
    pub pool: String,
    pub reason: Reason,
    /// The request head the origin gets.
    pub head: BytesMut,
    pub request_id: String,
    pub method: Method,
    pub path: String,
    pub query: String,
    /// Who asked, for the access log (empty when it is off).
    pub client: crate::telemetry::Client,
}

/// What the relay takes from the client connection besides the plan.
pub struct From<'a, F> {
    /// The client's header fields (name, value), in order and case.
    pub fields: F,
    /// The client's IP address.
    pub client: Option<&'a str>,
    pub tls: bool,
}

impl<'c> Relay<'c> {
    /// The relay of a planned forward: the request head the origin gets (the client's fields
    /// but those it must not see, the plan's target and host, the forwarding headers).
    pub fn new<'f>(
        rt: &'c Runtime,
        f: &crate::proxy::decide::Forward<'_, 'c>,
        reason: Reason,
        request_id: String,
        method: Method,
        from: From<'_, impl Fields<'f>>,
    ) -> Relay<'c> {
        let forwarding = Forwarding {
            target: &f.upstream_target(),
            host: &f.host,
            client: from.client,
            tls: from.tls,
            request_id: &request_id,
            // A cacheable key: the origin gets no cookies (a cookie must not shape a shared page).
            drop_cookies: matches!(reason, Reason::Predicted(..)),
        };
        let head = upstream_head(&method, from.fields, f.rule, &forwarding);
        Relay {
            runtime: rt,
            site: f.site,
            rule: f.rule,
            pool: f.pool.clone(),
            reason,
            head,
            request_id,
            method,
            path: f.path.to_string(),
            query: f.query.unwrap_or("").to_string(),
            client: crate::telemetry::Client::default(),
        }
    }
}

/// What the request head sent upstream holds, besides the client's own headers.
pub struct Forwarding<'a> {
    pub target: &'a str,
    pub host: &'a str,
    pub client: Option<&'a str>,
    pub tls: bool,
    pub request_id: &'a str,
    /// Cacheable route: the origin gets only the route's key cookies (a cookie must not shape
    /// a shared page unless it is part of the key).
    pub drop_cookies: bool,
}

/// A request's header fields as (name, value), in order: an HTTP/1.1 head's as httparse read
/// them, or an HTTP/2 stream's from its header map.
pub trait Fields<'f>: Copy {
    fn iter(self) -> impl Iterator<Item = (&'f str, &'f [u8])>;
}

impl<'f> Fields<'f> for &[httparse::Header<'f>] {
    fn iter(self) -> impl Iterator<Item = (&'f str, &'f [u8])> {
        self.iter().map(|h| (h.name, h.value))
    }
}

impl<'f> Fields<'f> for &'f http::HeaderMap {
    fn iter(self) -> impl Iterator<Item = (&'f str, &'f [u8])> {
        http::HeaderMap::iter(self).map(|(n, v)| (n.as_str(), v.as_bytes()))
    }
}

/// The request head for the origin: the client's headers in their order and case, minus the
/// ones it must not get, plus the forwarding headers (as `upstream_request_filter` sets them).
pub fn upstream_head<'f>(
    method: &Method,
    fields: impl Fields<'f>,
    rule: &Rule,
    f: &Forwarding,
) -> BytesMut {
    let mut out = wire::HeadWriter::request(method, f.target);
    let values = |name: &'static str| {
        fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    // The host the key was built from, never the client's spelling of it.
    out.line(b"Host", f.host.as_bytes());
    // Where the first `Cookie` field's value ends: the client's other cookie fields join it
    // there, `; `-separated (as `headers::joined_cookies`; RFC 9113 §8.2.3), found as they come
    // so that the common single field costs no second look at the head.
    let mut cookie_end = None;
    for (name, value) in fields.iter() {
        let is = |n: &&str| name.eq_ignore_ascii_case(n);
        let cookie = name.eq_ignore_ascii_case("cookie");
        if is(&"host")
            || UNTRUSTED.iter().any(is)
            || as_pingora::HOP_BY_HOP.iter().any(is)
            || rule
                .strip_headers
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            || f.drop_cookies && (cookie || name.eq_ignore_ascii_case("accept-encoding"))
        {
            continue;
        }
        match cookie_end {
            Some(end) if cookie => cookie_end = Some(end + out.join_value_at(end, value)),
            _ => {
                out.line(name.as_bytes(), value);
                if cookie {
                    cookie_end = Some(out.len() - 2);
                }
            }
        }
    }
    if f.drop_cookies {
        // As `upstream_request_filter`: the key cookies, in order, in one field after the
        // client's others, and the one coding the variant is keyed by — read from the raw
        // fields by the same functions (httparse has refused the bytes a value cannot hold).
        if let Some(kept) = key::kept_cookie_values(values("cookie"), rule) {
            out.line(b"Cookie", kept.as_bytes());
        }
        if let Some(coding) = vary::preferred(values("accept-encoding")) {
            out.line(b"Accept-Encoding", coding.as_bytes());
        }
    }
    if let Some(ip) = f.client {
        out.line(b"x-forwarded-for", ip.as_bytes());
    }
    out.line(
        b"x-forwarded-proto",
        if f.tls { &b"https"[..] } else { b"http" },
    );
    out.line(b"x-request-id", f.request_id.as_bytes());
    out.line(b"x-forwarded-host", f.host.as_bytes());
    out.finish()
}

/// What the storage policy says of a predicted-uncacheable key's response.
pub(super) enum Readmitted {
    /// Not stored, for this reason (the `Cache-Status` detail).
    NotStored(&'static str),
    /// Stored once it has reached the client whole.
    Store(Box<CacheMeta>),
}

/// The origin's response head as pingora's path would store it: every field in its order and
/// case, but the framing and hop-by-hop ones (the body is stored decoded).
fn stored_head(head: &origin::ResponseHead) -> ResponseHeader {
    let mut resp = ResponseHeader::build(head.status, Some(head.fields.len()))
        .expect("a status and a capacity build a response head");
    let hop = hop_by_hop(head);
    for (name, value) in head.iter() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") || hop.contains(name) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            std::str::from_utf8(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        // `append_header` with an owned name keeps the origin's case, as pingora's reader does.
        let _ = resp.append_header(name.to_string(), value);
    }
    resp
}

/// The client's request headers, from its raw head (only read when a stored response varies).
pub(super) fn request_headers(request: &[u8]) -> http::HeaderMap {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    let mut map = http::HeaderMap::new();
    if parsed.parse(request).is_ok() {
        for h in parsed.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
    }
    map
}

/// What became of a planned pass.
pub enum Forwarded {
    Done(Outcome),
    /// Nothing was sent anywhere: pingora's path should take the request.
    Fallback,
}

/// Counts a request in flight to a server for as long as it lives.
struct InFlight<'a>(&'a crate::pools::Server);

impl<'a> InFlight<'a> {
    fn new(server: &'a crate::pools::Server) -> Self {
        server.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(server)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an exchange with the origin failed before its response head was read.
struct Failed {
    /// The request may be sent again on a new connection (a reused one was found closed).
    retry: bool,
    error: ErrorType,
}

/// Sends the request head and reads the final response head (body bytes after it stay in
/// `buf`).
async fn exchange(
    up: &mut tokio::net::TcpStream,
    relay: &Relay<'_>,
    buf: &mut BytesMut,
    write_limit: Duration,
    read_limit: &mut origin::ReadLimit<'_>,
) -> Result<origin::ResponseHead, Failed> {
    let fail = |retry, error| Failed { retry, error };
    // A head fits an idle connection's empty send buffer: written at once, without arming a
    // timer; the rest, if any, under the write timeout.
    let written = match up.try_write(&relay.head) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(fail(true, ErrorType::WriteError)),
    };
    if written < relay.head.len() {
        match tokio::time::timeout(write_limit, up.write_all(&relay.head[written..])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(fail(true, ErrorType::WriteError)),
            Err(_) => return Err(fail(false, ErrorType::WriteTimedout)),
        }
    }
    loop {
        // Nothing read yet (the usual first turn): no head to parse.
        if !buf.is_empty() {
            match origin::parse_head(buf, relay.method == Method::HEAD) {
                Ok(head) => return Ok(head),
                Err(BadHead::Invalid(_)) => return Err(fail(false, ErrorType::InvalidHTTPHeader)),
                Err(BadHead::Incomplete) => {}
            }
        }
        match origin::read_more(up, buf, read_limit).await {
            Ok(0) => return Err(fail(buf.is_empty(), ErrorType::ConnectionClosed)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(fail(false, ErrorType::ReadTimedout))
            }
            Err(_) => return Err(fail(buf.is_empty(), ErrorType::ReadError)),
        }
    }
}

/// What the access log and metrics get about a pass.
struct Report<'a> {
    status: u16,
    upstream: Option<std::net::SocketAddr>,
    upstream_time: Option<Duration>,
    ttfb: Option<Duration>,
    /// From the complete request head to the end of the answer.
    total: Duration,
    bytes: usize,
    error: &'a str,
    store: Option<Option<&'static str>>,
    origin: Asked,
}

impl FastPath {
    /// Forwards a planned pass to the origin and its answer to the client; its pool is
    /// borrowed from `sites`, the registry's pools as the caller holds them.
    pub(super) async fn forward(
        &self,
        relay: Relay<'_>,
        client: &mut impl Downstream,
        (clock, sites): (&mut origin::ReadClock, &crate::pools::Sites),
        start: Instant,
    ) -> Forwarded {
        // This origin client speaks HTTP/1.1 only; an h2 pool is pingora's to reach.
        let pool = sites
            .get(&*relay.site.name)
            .and_then(|s| s.get(&relay.pool));
        let Some(pool) = pool.filter(|p| !p.spec.http2) else {
            return Forwarded::Fallback;
        };
        let o = &relay.runtime.origin;
        let connect_limit = pool.spec.connect_timeout.unwrap_or(o.connect_timeout);
        let mut read_limit = clock.limit(pool.spec.read_timeout.unwrap_or(o.read_timeout));
        // Origin protection, as `upstream_peer` does it; a relayed request has no stale copy.
        let labels = [&*relay.site.name, pool.name()];
        let _slot = match pool.admit().await {
            Admission::Unlimited => None,
            Admission::Slot { slot, waited } => {
                if waited {
                    self.metrics.pool_waits.with_label_values(&labels).inc();
                }
                Some(slot)
            }
            Admission::Full => {
                self.metrics.pool_waits.with_label_values(&labels).inc();
                self.metrics.shed(labels[0], labels[1], "unavailable");
                return self.refused(&relay, client, start, Answer::busy()).await;
            }
        };
        let mut buf = origin::SpareBuffer::take();
        let mut fresh_only = false;
        let (server, _inflight, mut up, head, (sent_at, answered)) = loop {
            // No healthy server (or none left after a failed connect): nothing was sent, and
            // pingora's path has the answers for that (its retries, the 503 page).
            let Some(server) = pool.pick() else {
                return Forwarded::Fallback;
            };
            let inflight = InFlight::new(server);
            let sent_at = Instant::now();
            let idle = (!fresh_only)
                .then(|| origin::take_idle(server.addr, o.idle_timeout, sent_at))
                .flatten();
            let reused = idle.is_some();
            let mut up = match idle {
                Some(up) => up,
                None => match origin::connect(server.addr, connect_limit).await {
                    Ok(up) => up,
                    Err(_) => {
                        server.connect_failed(pool.spec.passive_down);
                        return Forwarded::Fallback;
                    }
                },
            };
            match exchange(&mut up, &relay, &mut buf, o.write_timeout, &mut read_limit).await {
                // One clock read for the time the origin took and the time to first byte.
                Ok(head) => break (server, inflight, up, head, (sent_at, Instant::now())),
                // An idle connection the origin closed as we took it: the request (a GET or
                // HEAD without a body) goes again, once, on a new one.
                Err(f) if f.retry && reused => {
                    fresh_only = true;
                    self.metrics
                        .origin_retries
                        .with_label_values(&[&*relay.site.name, pool.name()])
                        .inc();
                }
                Err(f) => {
                    server.exchange_failed(pool.spec.passive_failures, pool.spec.passive_down);
                    let addr = Some(server.addr);
                    return self
                        .origin_failed(&relay, client, start, addr, f.error)
                        .await;
                }
            }
        };
        let status = head.status.as_u16();
        server.answered();
        let readmitted = match &relay.reason {
            Reason::Bypass(_) => None,
            Reason::Predicted(key, was) => Some(self.readmit(&relay, (key, *was), &head, start)),
        };
        let mut capture = match &readmitted {
            Some(Readmitted::Store(meta)) => {
                let length = meta
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                Some(origin::Capture::new(self.max_object_size, length))
            }
            _ => None,
        };
        let relayed = match client.start(&relay, &head, readmitted.as_ref()) {
            Ok(out) => {
                let body = (&mut up, &mut *buf, head.framing);
                origin::relay_body(body, client, out, &mut read_limit, capture.as_mut()).await
            }
            Err(_) => Err(RelayError::Client),
        };
        // The request's end, for the idle pool, the client's next-head clock and the logs.
        let end = Instant::now();
        let (bytes, error, outcome, asked) = match relayed {
            Ok((bytes, clean)) => {
                if clean && head.reusable {
                    origin::put_idle(server.addr, up, o.idle_timeout, end);
                }
                client.finished(&relay, end);
                (bytes, "", Outcome::Served, Asked::Answered(status))
            }
            // The response is cut short: the client must not take it for a whole one.
            Err(RelayError::Origin(e)) => {
                server.exchange_failed(pool.spec.passive_failures, pool.spec.passive_down);
                client.cut_short();
                (0, e, Outcome::Closed, Asked::Failed)
            }
            Err(RelayError::Client) => (
                0,
                as_pingora::error_label(ErrorType::WriteError),
                Outcome::Closed,
                Asked::Answered(status),
            ),
        };
        let store = match (readmitted, capture) {
            (None, _) => None,
            (Some(Readmitted::NotStored(reason)), _) => Some(Some(reason)),
            (Some(Readmitted::Store(meta)), Some(body)) if error.is_empty() && !body.over => {
                let Reason::Predicted(key, _) = &relay.reason else {
                    unreachable!("only a predicted key is readmitted")
                };
                let request = || client.request_headers();
                Some(self.store(&relay, key, *meta, body.body, request).await)
            }
            (Some(Readmitted::Store(_)), _) => Some(Some("incomplete-body")),
        };
        self.report(
            &relay,
            &Report {
                status,
                upstream: Some(server.addr),
                upstream_time: Some(answered - sent_at),
                ttfb: Some(answered - start),
                total: end - start,
                bytes,
                error,
                store,
                origin: asked,
            },
        );
        Forwarded::Done(outcome)
    }

    /// Runs the storage policy on a predicted-uncacheable key's response and tells the
    /// predictor, as pingora's path does for a request it bypassed on a prediction: a GET
    /// answered 200 that has become storable is stored (see [`Self::store`]); another storable
    /// answer is left to the next request ("deferred").
    fn readmit(
        &self,
        relay: &Relay<'_>,
        (key, was): (&CacheKey, NoCacheReason),
        head: &origin::ResponseHead,
        start: Instant,
    ) -> Readmitted {
        // Most such answers plainly say `private` or `no-store`: no header map needed.
        if let Some(reason) = policy::plainly_refused_raw(relay.rule, &relay.path, || head.iter()) {
            let now = NoCacheReason::Custom(reason.as_str());
            if now != was || remark_due() {
                self.predictor.mark_uncacheable(key, now);
            }
            return Readmitted::NotStored(reason.as_str());
        }
        let resp = stored_head(head);
        // Requests with Authorization never take the fast path (see `fast::NOT_PLAIN`).
        let requested = std::time::SystemTime::now() - start.elapsed();
        match policy::admit(relay.rule, &relay.path, &resp, false, requested) {
            Ok(meta) => {
                self.predictor.mark_cacheable(key);
                if relay.method == Method::GET && head.status == http::StatusCode::OK {
                    Readmitted::Store(Box::new(meta))
                } else {
                    Readmitted::NotStored("deferred")
                }
            }
            Err(reason) => {
                self.predictor
                    .mark_uncacheable(key, NoCacheReason::Custom(reason.as_str()));
                Readmitted::NotStored(reason.as_str())
            }
        }
    }

    /// Stores a response that reached the client whole under `key` (with the variance its
    /// `Vary` and the rule give it, read from the client's `request` headers), through the
    /// same storage calls as pingora's cache fill; the `Cache-Status` store outcome.
    async fn store(
        &self,
        relay: &Relay<'_>,
        key: &CacheKey,
        meta: CacheMeta,
        body: BytesMut,
        request: impl FnOnce() -> http::HeaderMap,
    ) -> Option<&'static str> {
        use pingora::cache::storage::Storage;
        let mut key = key.clone();
        if let Some(variance) = key::variance(meta.headers(), relay.rule, &request()) {
            key.set_variance_key(variance);
        }
        let trace = pingora::cache::trace::Span::inactive().handle();
        let filled = async {
            let mut fill = self.storage.get_miss_handler(&key, &meta, &trace).await?;
            fill.write_body(body.freeze(), true).await?;
            fill.finish().await
        };
        match filled.await {
            Ok(_) => None,
            Err(_) => Some("storage-error"),
        }
    }

    /// Answers an origin failure as pingora's path does (502, or 504 for a timeout: crossfade's
    /// page; an HTTP/1.1 connection closes after it).
    async fn origin_failed(
        &self,
        relay: &Relay<'_>,
        client: &mut impl Downstream,
        start: Instant,
        upstream: Option<std::net::SocketAddr>,
        error: ErrorType,
    ) -> Forwarded {
        let answer = Answer::error(answer::origin_failure_status(&error));
        let failed = (upstream, as_pingora::error_label(error), Asked::Failed);
        self.edge_answer(relay, client, start, &answer, failed)
            .await
    }

    /// Answers with the edge's own `answer` before anything was sent to the origin (an HTTP/1.1
    /// connection closes after it).
    async fn refused(
        &self,
        relay: &Relay<'_>,
        client: &mut impl Downstream,
        start: Instant,
        answer: Answer,
    ) -> Forwarded {
        let unasked = (None, answer.detail, Asked::No);
        self.edge_answer(relay, client, start, &answer, unasked)
            .await
    }

    /// Writes `answer` and reports it with (upstream, error label, what the origin did); an
    /// HTTP/1.1 connection closes after it.
    async fn edge_answer(
        &self,
        relay: &Relay<'_>,
        client: &mut impl Downstream,
        start: Instant,
        answer: &Answer,
        (upstream, error, origin): (Option<std::net::SocketAddr>, &str, Asked),
    ) -> Forwarded {
        client.answer(answer, &relay.request_id).await;
        let elapsed = start.elapsed();
        let report = Report {
            status: answer.status,
            upstream,
            upstream_time: None,
            ttfb: Some(elapsed),
            total: elapsed,
            bytes: 0,
            error,
            store: None,
            origin,
        };
        self.report(relay, &report);
        Forwarded::Done(Outcome::Closed)
    }

    fn report(&self, relay: &Relay<'_>, r: &Report) {
        // The labels pingora's path gives the same request (`hooks::status::cache_label`).
        let (cache, bypass) = match (&relay.reason, r.store) {
            (Reason::Bypass(b), _) => ("bypass", Some(b.as_str())),
            (Reason::Predicted(..), Some(None)) => ("miss", None),
            (Reason::Predicted(..), _) => ("uncacheable", None),
        };
        crate::telemetry::finished(
            &self.metrics,
            &crate::telemetry::Finished {
                site: &relay.site.name,
                route: &relay.rule.name,
                pool: &relay.pool,
                method: relay.method.as_str(),
                path: &relay.path,
                query: &relay.query,
                status: r.status,
                cache,
                bypass,
                store: r.store,
                upstream: r.upstream,
                upstream_time: r.upstream_time,
                ttfb: r.ttfb,
                total: r.total,
                bytes: r.bytes,
                error: r.error,
                request_id: &relay.request_id,
                origin: r.origin,
                query_filter: Some(&relay.rule.query),
                client: &relay.client,
                fast: true,
            },
        );
    }
}

/// Whether this pass re-marks a key the predictor already remembers for the same reason.
/// Marking takes the write lock of a shard every thread shares, and the answer would not
/// change; one pass in [`REMARK_EVERY`] on each thread still marks, which keeps a key passed
/// often among the recently used in the predictor's LRU (else it could age out and one
/// request take the cache path to learn it again: slower, not different).
fn remark_due() -> bool {
    thread_local!(static PASSES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    PASSES.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next % REMARK_EVERY == 0
    })
}

/// See [`remark_due`].
const REMARK_EVERY: u32 = 64;

/// [`headers::HopByHop`] of an origin's response head.
pub(super) fn hop_by_hop(head: &origin::ResponseHead) -> headers::HopByHop {
    let connection = head
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .map(|(_, v)| v);
    headers::HopByHop::new(head.status.as_u16(), connection)
}
