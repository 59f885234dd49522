//! The fast transport: an HTTP/1 request that is a plain hit on a fresh stored object is
//! answered here, and one that is a known pass is forwarded by [`relay`], before
//! pingora's proxy sees either; everything else goes to pingora untouched. HTTP/2 hits and
//! passes are handled the same way on pingora's HTTP/2 streams ([`h2`]).
//!
//! pingora-proxy spends most of a hit's CPU on its own machinery (a ~14 KB request future moved
//! per request, header maps built and copied, the cache state machine), about three times what
//! nginx spends on a whole hit. This path reads the request head from the connection, and
//! when every decision the proxy's hooks would take is one it can take the same way — a GET
//! or HEAD over HTTP/1.1 with no body, no conditional or range header, no credentials, a known
//! site whose route caches, no bypass cookie, no maintenance, no new cohort, a normalised path
//! that needs no rewriting, a fresh object stored without variance — it writes the stored
//! response with the headers the proxy would have written (Age, Cache-Status, X-Request-Id, the
//! browser TTL rewrite, internal headers removed, Date, Connection), then logs and counts the
//! request like the proxy does (head and body in one write; a body kept in a memory file goes
//! to a plain-TCP client by `sendfile`, [`sendfile`]). Otherwise the bytes it read are
//! handed back to the connection and pingora reads the request as if nothing had happened.
//! `proxy.hit_fast_path = false` turns it off (`proxy.pass_fast_path = false` the pass half).
//! HTTP/2 streams take the same two paths ([`h2`]); the relay's client side, an HTTP/1.1
//! connection or an HTTP/2 stream, is [`downstream`].

pub mod as_pingora;
mod downstream;
pub mod h2;
mod handback;
mod hit;
pub mod origin;
pub mod probe;
pub mod relay;
mod sendfile;
mod wire;

use super::conn::headclock::TimedHead;
use super::decide::headers;
use super::decide::{self, Caching, Plan, RequestView};
use crate::cache::body::Body;
use crate::cache::key;
use crate::cache::storage::EdgeStorage;
use crate::cache::storage::FreshHit;
use crate::config::Runtime;
use crate::metrics::Metrics;
use crate::pools::switch::Release;
use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use hit::HitAnswer;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use pingora::cache::predictor::{CacheablePredictor, Predictor};
use pingora::cache::CacheKey;
use pingora::protocols::GetSocketDigest;
use relay::{Forwarded, Reason, Relay};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy's hooks share with the fast path.
pub struct FastPath {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub storage: &'static EdgeStorage,
    /// The largest body stored (`cache.max_object_size`).
    pub max_object_size: usize,
    pub predictor: &'static Predictor<32>,
    pub release: Arc<Release>,
    pub pools: Arc<crate::pools::Registry>,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
}

/// What became of the next request on a connection.
pub enum Outcome {
    /// Answered here; the connection can carry the next request.
    Served,
    /// Not the fast transport's: the bytes read were given back for pingora to read.
    ToPingora,
    /// The client went away (or its head timed out and was answered 408).
    Closed,
}

/// What the fast path keeps of a client connection between its requests.
#[derive(Default)]
pub struct Conn {
    /// Bytes read and not yet used (the start of a pipelined request).
    buf: BytesMut,
    /// The client's IP address as `X-Forwarded-For` gives it, once a pass needed it.
    peer: Option<String>,
    /// Waits for room to `sendfile` a large body ([`sendfile`]).
    writable: sendfile::Writable,
    /// The running config as this connection's last request found it: its requests borrow
    /// from this reference instead of each cloning one (a count every thread's requests
    /// would write), and it is replaced when a reload has swapped the config.
    runtime: Option<Arc<Runtime>>,
    /// Times its passes' reads from the origin.
    origin_clock: origin::ReadClock,
    /// The pools its passes borrow theirs from ([`crate::pools::Registry::held`]).
    pools: Option<Arc<crate::pools::Sites>>,
}

/// What the fast path does with a request.
enum Decision<'c> {
    /// A plain hit: the response to write, and what the logs need of it.
    Hit(BytesMut, HitAnswer<'c>),
    /// A request to relay to the origin uncached ([`relay`]).
    Relay(Relay<'c>),
}

/// Bodies up to this size go out in the same write as the head, copied after it: one write,
/// one segment, one wake-up of the client, as pingora does. Larger ones are written from where
/// they are stored.
const APPEND_MAX: usize = 16 << 10;

/// Headers that make a request something other than a plain hit.
const NOT_PLAIN: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "authorization",
    "upgrade",
    "expect",
    "connection",
];

impl FastPath {
    /// Reads the next request head on `stream` (after any bytes left in `conn`) and answers it
    /// when it is a plain hit, or forwards it when it is a known pass.
    pub async fn serve(&self, stream: &mut TimedHead, conn: &mut Conn, shutdown: bool) -> Outcome {
        let Conn {
            buf,
            peer,
            writable,
            runtime,
            origin_clock,
            pools,
        } = conn;
        // A head longer than this is refused by pingora (414/431), so it is not ours.
        let longest = {
            let limits = &self.runtime.load().proxy.limits;
            limits.max_uri + limits.max_header_bytes + 64
        };
        // What arrived while pingora had the previous request comes after what was read before.
        buf.extend_from_slice(&stream.unfence());
        let head_len = loop {
            if let Some(len) = super::conn::framing::head_len(buf) {
                break len;
            }
            if buf.len() > longest {
                return self.to_pingora(stream, buf);
            }
            buf.reserve(4096);
            match stream.read_buf(buf).await {
                // The client left, or its head was cut short or timed out: pingora could only
                // answer that with an error, and the clock has already written its 408.
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            }
        };
        stream.head_complete();
        // The config in force when the head arrived: a reload while this kept-alive
        // connection sat idle applies to its next request. A guard costs no shared write;
        // only a new config is cloned.
        // (A guard is not kept across the awaits below: a thread has few debt slots.)
        let current = self.runtime.load();
        if runtime
            .as_ref()
            .is_none_or(|kept| !Arc::ptr_eq(kept, &current))
        {
            *runtime = Some(arc_swap::Guard::into_inner(current));
        } else {
            drop(current);
        }
        let rt: &Runtime = runtime.as_deref().expect("set just above");
        let limits = &rt.proxy.limits;
        // Timed from a complete head, as pingora's path is (idle keep-alive time is not the
        // request's).
        let start = Instant::now();
        let decision = if shutdown || self.draining.load(Ordering::Relaxed) {
            None
        } else {
            self.decide(rt, &buf[..head_len], stream, peer)
        };
        let (mut head, answer) = match decision {
            Some(Decision::Hit(head, answer)) => (head, answer),
            Some(Decision::Relay(relay)) => {
                let request = buf.split_to(head_len);
                let mut client = downstream::H1 {
                    out: sendfile::ClientOut {
                        stream,
                        waiter: writable,
                    },
                    request: &request,
                };
                let sites = self.pools.held(pools);
                let upstream = (origin_clock, sites);
                let forwarded = self.forward(relay, &mut client, upstream, start).await;
                return match forwarded {
                    Forwarded::Done(outcome) => outcome,
                    Forwarded::Fallback => {
                        keep_raw_target(stream, &request);
                        stream.unread(request);
                        stream.fence();
                        Outcome::ToPingora
                    }
                };
            }
            None => {
                keep_raw_target(stream, &buf[..head_len]);
                if !plain(&buf[..head_len]) {
                    // A body or an upgrade: pingora reads what follows the head itself.
                    return self.to_pingora(stream, buf);
                }
                // pingora reads one request at a time and does not keep what follows it (it has
                // pipelining off), so it gets this head only, fenced; pipelined requests after
                // it stay here for the next turn of the loop.
                stream.unread(buf.split_to(head_len));
                stream.fence();
                return Outcome::ToPingora;
            }
        };
        let _ = buf.split_to(head_len);
        let sent = answer.body().map_or(0, |b| b.len());
        // The client's socket, for sendfile: a plain TCP stream only (TLS encrypts its bytes).
        let socket = stream.tcp_fd();
        let mut out = sendfile::ClientOut {
            stream,
            waiter: writable,
        };
        let written = match (answer.body(), socket) {
            (Some(Body::Heap(body)), _) if body.len() <= APPEND_MAX => {
                head.extend_from_slice(&body[..]);
                out.send(&head).await
            }
            // Large bodies in a memory file go to a plain socket without a copy of ours.
            (Some(Body::File(file)), Some(fd)) => match out.stream.flush().await {
                Ok(()) => sendfile::send(fd, &head, file, out.waiter).await,
                Err(e) => Err(e),
            },
            // Head and body in one vectored write: one segment boundary fewer.
            (Some(body), _) => {
                let body = body.bytes();
                let chained = &mut Buf::chain(&head[..], &body[..]);
                match out.stream.write_all_buf(chained).await {
                    Ok(()) => out.stream.flush().await,
                    Err(e) => Err(e),
                }
            }
            (None, _) => out.send(&head).await,
        };
        if written.is_err() {
            return Outcome::Closed;
        }
        self.log(&answer, start, sent);
        handback::hit_served();
        stream.rearm(limits.header_timeout, limits.keepalive_timeout);
        Outcome::Served
    }

    /// Gives everything read back to the connection, for pingora.
    fn to_pingora(&self, stream: &mut TimedHead, buf: &mut BytesMut) -> Outcome {
        stream.unread(buf.split());
        Outcome::ToPingora
    }

    /// What to do with `head`: answer a plain hit, forward a known pass, or (`None`) leave it
    /// to pingora. The decision is [`decide::plan`]'s; this is only what this transport can
    /// carry (HTTP/1.1 GET or HEAD without a body, conditions, ranges or credentials; no edge
    /// answer, cohort cookie or cached-only maintenance; no keyed cookies or headers).
    fn decide<'c>(
        &self,
        rt: &'c Runtime,
        head: &[u8],
        stream: &TimedHead,
        peer: &mut Option<String>,
    ) -> Option<Decision<'c>> {
        let (hits, passes) = (rt.proxy.hit_fast_path, rt.proxy.pass_fast_path);
        if !hits && !passes {
            return None;
        }
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut slots);
        let (method, target, headers) = plain_request(&mut parsed, head, &rt.proxy.limits)?;
        let tls = stream.is_tls();
        let view = RequestView {
            method: &method,
            version: http::Version::HTTP_11,
            target: target.as_bytes(),
            authority: None,
            headers: &headers,
            tls,
        };
        let states = self.release.current();
        let Plan::Forward(f) = decide::plan(rt, &self.pools, &states, &view) else {
            return None;
        };
        if !carried(&f) {
            return None;
        }
        let request_id = headers::request_id(headers.get("x-request-id"));
        let who = if crate::telemetry::access_log_on() {
            let fields = &parsed.headers;
            crate::telemetry::Client::new(
                client_ip(peer, stream).to_string(),
                http::Version::HTTP_11,
                tls,
                |name| {
                    let found = fields.iter().find(|h| h.name.eq_ignore_ascii_case(name));
                    found.map(|h| h.value)
                },
            )
        } else {
            crate::telemetry::Client::default()
        };
        let reason = match &f.cache {
            Caching::Bypass(b) => Reason::Bypass(*b),
            Caching::Cacheable { primary, .. } => {
                let hash = key::hash(primary);
                if hits {
                    // The headers a variance is computed from: the few kept here when only
                    // cookies are keyed and the object names no `Vary`, else the whole head.
                    let request = |stored: &HeaderMap| {
                        if f.rule.key_headers.is_empty() && !stored.contains_key(header::VARY) {
                            Cow::Borrowed(&headers)
                        } else {
                            Cow::Owned(relay::request_headers(head))
                        }
                    };
                    if let Some(found) = self.storage.fresh_hit(f.rule, hash, request) {
                        return hit(rt, &f, method.clone(), (request_id, who), found);
                    }
                }
                if !passes {
                    return None;
                }
                self.predicted(&f, primary, hash)?
            }
        };
        if !passes {
            return None;
        }
        let client = client_ip(peer, stream);
        let from = relay::From {
            fields: &*parsed.headers,
            client: (!client.is_empty()).then_some(client),
            tls,
        };
        let mut relay = Relay::new(rt, &f, reason, request_id, method.clone(), from);
        relay.client = who;
        Some(Decision::Relay(relay))
    }

    /// A pass for a cacheable request with no fresh object under `primary` (hashed `hash`)
    /// when the predictor remembers its key as uncacheable (and why); else `None`: a miss,
    /// which only pingora's path fills.
    fn predicted(&self, f: &decide::Forward, primary: &[u8], hash: [u8; 16]) -> Option<Reason> {
        let mut k = CacheKey::new(primary.to_vec(), &*f.site.name);
        k.set_primary_bin_override(hash);
        let was = self.predictor.predicted_uncacheable_reason(&k)?;
        Some(Reason::Predicted(k, was))
    }

    fn log(&self, a: &HitAnswer<'_>, start: Instant, bytes: usize) {
        let total = start.elapsed();
        crate::telemetry::finished(
            &self.metrics,
            &crate::telemetry::Finished {
                site: a.site,
                route: &a.rule.name,
                pool: &a.pool,
                method: a.method.as_str(),
                path: &a.path,
                query: &a.query,
                status: a.status,
                cache: "hit",
                bypass: None,
                store: None,
                upstream: None,
                upstream_time: None,
                ttfb: Some(total),
                total,
                bytes,
                error: "",
                request_id: &a.request_id,
                origin: crate::stats::Asked::No,
                query_filter: Some(&a.rule.query),
                client: &a.client,
                fast: true,
            },
        );
    }
}

/// Reads `head` as the fast transport can carry it: a complete HTTP/1.1 GET or HEAD within the
/// limits, none of the [`NOT_PLAIN`] headers, every header name one pingora would parse. The
/// method, the raw target, and the headers the decision reads (Host, Cookie, X-Request-Id).
pub fn plain_request<'h>(
    parsed: &mut httparse::Request<'_, 'h>,
    head: &'h [u8],
    limits: &crate::config::proxy::Limits,
) -> Option<(Method, &'h str, HeaderMap)> {
    if !parsed.parse(head).ok()?.is_complete() || parsed.version != Some(1) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let target = parsed.path?;
    if target.len() > limits.max_uri
        || parsed.headers.len() > limits.max_headers
        || head.len() > limits.max_header_bytes
    {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(4);
    for h in parsed.headers.iter() {
        if NOT_PLAIN.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            return None;
        }
        let name = h.name.as_bytes();
        let kept = if name.eq_ignore_ascii_case(b"host") {
            Some(header::HOST)
        } else if name.eq_ignore_ascii_case(b"cookie") {
            Some(header::COOKIE)
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            Some(hit::X_REQUEST_ID)
        } else {
            // Still a header pingora would have to parse.
            HeaderName::from_bytes(name).ok()?;
            None
        };
        // (httparse already refused the bytes a header value cannot hold.)
        if let Some(name) = kept {
            headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
        }
    }
    Some((method, target, headers))
}

/// The hit answer: the stored response with the headers the proxy path would write
/// ([`hit::head`]), as HTTP/1.1 bytes.
fn hit<'c>(
    rt: &Runtime,
    f: &decide::Forward<'_, 'c>,
    method: Method,
    (request_id, client): (String, crate::telemetry::Client),
    found: FreshHit,
) -> Option<Decision<'c>> {
    let meta = found.meta();
    let stored = meta.response_header();
    // Room for the body only when `serve` appends it to the head; a large body is written
    // from where it is stored, and a 1 MiB buffer per hit would go unused.
    let appended = match found.body() {
        Body::Heap(b) if method == Method::GET && b.len() <= APPEND_MAX => b.len(),
        _ => 0,
    };
    let mut out = wire::HeadWriter::response(stored.status, 512 + appended);
    hit::head(&mut out, rt, f, &meta, &request_id)?;
    let out = out.finish_response(stored.headers.get(header::DATE).map(|d| d.as_bytes()));
    let answer = HitAnswer::new(f, method, (request_id, client), found);
    Some(Decision::Hit(out, answer))
}

/// What this transport carries of a route, for `crossfade check`: one line, and why not where
/// it does not, over HTTP/1.1 and HTTP/2 alike. (Requests it never carries, whatever the route
/// — a body, a range or conditional request, a visitor's first canary answer — are in the
/// README.)
pub fn route_report(rt: &Runtime, site: &crate::config::Site, rule: &crate::rules::Rule) -> String {
    let get = rule
        .methods
        .as_ref()
        .is_none_or(|m| m.iter().any(|m| *m == Method::GET || *m == Method::HEAD));
    if !get {
        return "pingora (only GET and HEAD are carried fast)".into();
    }
    let hits = match (rule.mode, rt.proxy.hit_fast_path) {
        (crate::rules::Mode::Pass, _) => None,
        (_, true) => Some("hits fast"),
        (_, false) => Some("hits through pingora (proxy.hit_fast_path = false)"),
    };
    let h2 = site.pools.iter().find(|p| p.http2).map(|p| p.name.as_str());
    let passes = match (rt.proxy.pass_fast_path, h2) {
        (false, _) => "passes through pingora (proxy.pass_fast_path = false)".to_string(),
        (true, Some(pool)) => format!("passes to pool {pool} through pingora (it speaks HTTP/2)"),
        (true, None) => "passes fast".to_string(),
    };
    hits.map_or(passes.clone(), |h| format!("{h}, {passes}"))
}

/// Whether this transport carries a forward: not one with a cohort cookie to set or cached-only
/// maintenance (pingora's stale handling).
fn carried(f: &decide::Forward) -> bool {
    !f.maintenance_cached && f.new_cohort.is_none()
}

/// The client's IP address for `X-Forwarded-For`, formatted once per connection ("" when the
/// client has none).
fn client_ip<'a>(peer: &'a mut Option<String>, stream: &TimedHead) -> &'a str {
    peer.get_or_insert_with(|| {
        let addr = stream.get_socket_digest();
        let ip = addr.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        ip.map_or(String::new(), |ip| ip.to_string())
    })
}

/// Keeps the raw target of a head handed to pingora, whose parser rewrites a target it cannot
/// hold: the decision reads the bytes the client sent.
fn keep_raw_target(stream: &mut TimedHead, head: &[u8]) {
    let target = super::conn::framing::request_target(head);
    stream.set_raw_target(target.map(bytes::Bytes::copy_from_slice));
}

/// Whether a request head is all of its request: no body announced and no protocol upgrade
/// (otherwise what follows the head belongs to it).
fn plain(head: &[u8]) -> bool {
    !head.split(|&b| b == b'\n').skip(1).any(|line| {
        let name = line
            .split(|&b| b == b':')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
    })
}
