//! HTTP/2 hits and passes. pingora accepts each HTTP/2 stream (its accept loop: flow control,
//! the bound on malformed streams, idle timeout, graceful shutdown); a stream that is a plain
//! hit is answered here before pingora's proxy sees it, with the same decision, lookup and head
//! as the HTTP/1.1 fast transport ([`super::hit`]), written through pingora's own HTTP/2
//! session. A stream that is a pass the HTTP/1.1 relay would carry (a bypass, or a key the
//! predictor knows as uncacheable) is relayed by it, in the stream's task, with the same
//! origin client, request head and response fields ([`super::relay`], [`super::downstream`]).
//! Every other stream — a miss, a body, a condition or range, credentials, an edge answer —
//! goes to pingora's proxy untouched (`super::super::conn::Transports`).
//!
//! Why: browsers speak HTTP/2 over TLS, and there pingora's proxy path spent about 30 µs of
//! CPU on a 1 KiB hit or pass (h2load -c64 -m10: hits at 0.59–0.79× nginx's rate, passes at
//! 0.89×). Its HTTP/2 framing is shared with this path; what is skipped is its proxy machinery
//! (the request future, the cache state machine, header maps built and copied), as on
//! HTTP/1.1.

use super::hit::{self, HitAnswer};
use super::relay::{self, Forwarded, Reason, Relay};
use super::{carried, downstream, handback, origin, FastPath, NOT_PLAIN};
use crate::cache::body::Body;
use crate::cache::key;
use crate::config::Runtime;
use crate::proxy::decide::{self, headers, Caching, Plan, RequestView};
use http::Method;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use std::borrow::Cow;
use std::time::Instant;

/// What the connection's loop does with an HTTP/2 stream ([`FastPath::answer_h2`]).
#[derive(Clone, Copy)]
pub enum H2Stream {
    /// Answered (a plain hit).
    Served,
    /// A forward the relay may carry: [`FastPath::pass_h2`], in the stream's own task.
    MayPass,
    /// pingora's proxy's.
    Pingora,
}

impl FastPath {
    /// Answers `session` when it is a plain hit on a fresh stored object; otherwise leaves it
    /// as it was, saying whether it may be a pass the relay carries. Nothing here waits: the
    /// head and the body are queued on the stream (h2 sends the body as the client's
    /// flow-control window allows; it is the stored `Bytes`, shared, not a copy), so the
    /// connection's accept loop answers hits itself (`conn::h2`).
    pub fn answer_h2(&self, session: &mut HttpSession) -> H2Stream {
        // A guard, not a clone: nothing here waits, and a clone is an atomic add on one
        // counter every thread shares.
        let rt = self.runtime.load();
        if !rt.proxy.hit_fast_path && !rt.proxy.pass_fast_path {
            return H2Stream::Pingora;
        }
        let start = Instant::now();
        let (head, answer) = match self.decide_h2(&rt, session) {
            Ok(hit) => hit,
            Err(other) => return other,
        };
        let body = answer.body().map(Body::bytes).filter(|b| !b.is_empty());
        let sent = body.as_ref().map_or(0, |b| b.len());
        let written = match body {
            None => session.write_response_header(head, true).is_ok(),
            Some(body) => {
                session.write_response_header(head, false).is_ok()
                    && session
                        .take_response_body_writer()
                        .is_some_and(|mut w| w.send_data(body, true).is_ok())
            }
        };
        // A stream the client reset is not logged, as on HTTP/1.1 when the client goes away.
        if written {
            self.log(&answer, start, sent);
            handback::hit_served();
        }
        H2Stream::Served
    }

    /// Relays `session` to the origin when it is a pass this transport carries (true: answered,
    /// whatever the origin did); false when it is not, or when nothing could be sent (no
    /// healthy server): the stream is then untouched, for pingora's proxy. The same decision
    /// and relay as an HTTP/1.1 pass ([`super::relay`]); only the client differs
    /// ([`super::downstream::H2`]).
    ///
    /// Why: a logged-in visitor's browser asks for every page this way, and pingora's proxy
    /// spent about 30 µs of CPU on such a pass against nginx's 8 (`loadtest/cpu.py --h2`).
    pub async fn pass_h2(&self, session: &mut HttpSession) -> bool {
        // Owned: the relay waits for the origin, and a guard must not be held across that.
        let rt = self.runtime.load_full();
        let start = Instant::now();
        let Some(relay) = self.relay_h2(&rt, session) else {
            return false;
        };
        let mut clock = origin::ReadClock::default();
        let sites = self.pools.all();
        let mut client = downstream::H2::new(session);
        let forwarded = self
            .forward(relay, &mut client, (&mut clock, &sites), start)
            .await;
        matches!(forwarded, Forwarded::Done(_))
    }

    /// The relay of `session` when it is a pass: planned as the connection's loop planned it,
    /// and a bypass, or a cacheable request whose key the predictor remembers as uncacheable.
    fn relay_h2<'c>(&self, rt: &'c Runtime, session: &HttpSession) -> Option<Relay<'c>> {
        if !rt.proxy.pass_fast_path {
            return None;
        }
        let req = session.req_header();
        let tls = plain_h2(rt, session)?;
        let view = view(req, tls);
        let states = self.release.current();
        let Plan::Forward(f) = decide::plan(rt, &self.pools, &states, &view) else {
            return None;
        };
        if !carried(&f) {
            return None;
        }
        let reason = match &f.cache {
            Caching::Bypass(b) => Reason::Bypass(*b),
            Caching::Cacheable { primary, .. } => {
                self.predicted(&f, primary, key::hash(primary))?
            }
        };
        let request_id = headers::request_id(req.headers.get("x-request-id"));
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        let from = relay::From {
            fields: &req.headers,
            client: ip.as_deref(),
            tls,
        };
        let mut relay = Relay::new(rt, &f, reason, request_id, req.method.clone(), from);
        if crate::telemetry::access_log_on() {
            relay.client = crate::telemetry::Client::of_request(req, session.client_addr(), tls);
        }
        Some(relay)
    }

    /// What the connection's loop does with `session`: the head and answer when it is a plain
    /// hit on a fresh stored object; else `MayPass` when it is a forward that is not, and
    /// `Pingora` when it is something else: not a GET or HEAD without a body, one of the
    /// headers that make it something else ([`NOT_PLAIN`]), beyond the limits pingora's path
    /// refuses (`hooks::limits::check_head`), or a forward this transport does not carry.
    fn decide_h2<'c>(
        &self,
        rt: &'c Runtime,
        session: &HttpSession,
    ) -> Result<(Box<ResponseHeader>, HitAnswer<'c>), H2Stream> {
        let pingora = H2Stream::Pingora;
        let req = session.req_header();
        let tls = plain_h2(rt, session).ok_or(pingora)?;
        let view = view(req, tls);
        let states = self.release.current();
        let Plan::Forward(f) = decide::plan(rt, &self.pools, &states, &view) else {
            return Err(H2Stream::Pingora);
        };
        if !carried(&f) {
            return Err(H2Stream::Pingora);
        }
        let not_hit = if rt.proxy.pass_fast_path {
            H2Stream::MayPass
        } else {
            H2Stream::Pingora
        };
        let primary = match &f.cache {
            Caching::Cacheable { primary, .. } if rt.proxy.hit_fast_path => primary,
            _ => return Err(not_hit),
        };
        // A miss, or a pass the predictor knows (the stream's task asks it).
        let found = self
            .storage
            .fresh_hit(f.rule, key::hash(primary), |_| Cow::Borrowed(&req.headers))
            .ok_or(not_hit)?;
        let meta = found.meta();
        let request_id = headers::request_id(req.headers.get("x-request-id"));
        let stored = meta.response_header();
        let mut head = ResponseHeader::build_no_case(stored.status, Some(12))
            .map_err(|_| H2Stream::Pingora)?;
        hit::head(&mut head, rt, &f, &meta, &request_id).ok_or(H2Stream::Pingora)?;
        // The stored Date, which a cache must not change (RFC 9111 §4); pingora's writer adds
        // the current one to a response without (vendor/pingora-core.patch).
        if let Some(date) = stored.headers.get(http::header::DATE) {
            let _ = head.append_header(http::header::DATE, date.clone());
        }
        let client = if crate::telemetry::access_log_on() {
            crate::telemetry::Client::of_request(req, session.client_addr(), tls)
        } else {
            crate::telemetry::Client::default()
        };
        let answer = HitAnswer::new(&f, req.method.clone(), (request_id, client), found);
        // (Boxed here: the stream's writer takes it boxed.)
        Ok((Box::new(head), answer))
    }
}

/// Whether the stream is one this transport carries: a GET or HEAD without a body, none of
/// the [`NOT_PLAIN`] headers, within the limits; then whether it came over TLS.
fn plain_h2(rt: &Runtime, session: &HttpSession) -> Option<bool> {
    let req = session.req_header();
    if !matches!(req.method, Method::GET | Method::HEAD) || !session.is_body_empty() {
        return None;
    }
    let limits = &rt.proxy.limits;
    if req.raw_path().len() > limits.max_uri || req.headers.len() > limits.max_headers {
        return None;
    }
    let mut header_bytes = 0;
    for (name, value) in req.headers.iter() {
        if NOT_PLAIN.contains(&name.as_str()) {
            return None;
        }
        header_bytes += name.as_str().len() + value.len() + 4;
    }
    if header_bytes > limits.max_header_bytes {
        return None;
    }
    Some(session.digest().is_some_and(|d| d.ssl_digest.is_some()))
}

/// The decision's view of an HTTP/2 request.
fn view(req: &pingora::http::RequestHeader, tls: bool) -> RequestView<'_> {
    RequestView {
        method: &req.method,
        version: req.version,
        target: req.raw_path(),
        authority: req.uri.authority().map(|a| a.as_str()),
        headers: &req.headers,
        tls,
    }
}
