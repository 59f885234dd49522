//! HTTP/2 hits. pingora accepts each HTTP/2 stream (its accept loop: flow control, the bound
//! on malformed streams, idle timeout, graceful shutdown); a stream that is a plain hit is
//! answered here before pingora's proxy sees it, with the same decision, lookup and head as
//! the HTTP/1.1 fast transport ([`super::hit`]), written through pingora's own HTTP/2 session.
//! Every other stream — a miss, a pass, a body, a condition or range, credentials, an edge
//! answer — goes to pingora's proxy untouched (`super::super::conn::Transports`).
//!
//! Why: browsers speak HTTP/2 over TLS, and there pingora's proxy path spent about 30 µs of
//! CPU on a 1 KiB hit (h2load -c64 -m10: 0.59–0.79× nginx's rate). Its HTTP/2 framing is
//! shared with this path; what is skipped is its proxy machinery (the request future, the
//! cache state machine, header maps built and copied), as on HTTP/1.1.

use super::hit::{self, HitAnswer};
use super::{carried, handback, FastPath, NOT_PLAIN};
use crate::cache::body::Body;
use crate::cache::key;
use crate::config::Runtime;
use crate::proxy::decide::{self, headers, Caching, Plan, RequestView};
use http::Method;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use std::borrow::Cow;
use std::time::Instant;

impl FastPath {
    /// Answers `session` when it is a plain hit on a fresh stored object (true); otherwise
    /// leaves it as it was, for pingora (false). Nothing here waits: the head and the body are
    /// queued on the stream (h2 sends the body as the client's flow-control window allows; it
    /// is the stored `Bytes`, shared, not a copy), so the connection's accept loop answers hits
    /// itself (`conn::h2`).
    pub fn answer_h2(&self, session: &mut HttpSession) -> bool {
        // A guard, not a clone: nothing here waits, and a clone is an atomic add on one
        // counter every thread shares.
        let rt = self.runtime.load();
        if !rt.proxy.hit_fast_path {
            return false;
        }
        let start = Instant::now();
        let Some((head, answer)) = self.decide_h2(&rt, session) else {
            return false;
        };
        let body = answer
            .body
            .as_ref()
            .map(Body::bytes)
            .filter(|b| !b.is_empty());
        let sent = body.as_ref().map_or(0, |b| b.len());
        let written = match body {
            None => session.write_response_header(Box::new(head), true).is_ok(),
            Some(body) => {
                session.write_response_header(Box::new(head), false).is_ok()
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
        true
    }

    /// The head and answer when `session` is a plain hit: a GET or HEAD without a body, none
    /// of the headers that make it something else ([`NOT_PLAIN`]), within the limits pingora's
    /// path refuses beyond (`hooks::limits::check_head`), a forward this transport carries,
    /// and a fresh stored object.
    fn decide_h2<'c>(
        &self,
        rt: &'c Runtime,
        session: &HttpSession,
    ) -> Option<(ResponseHeader, HitAnswer<'c>)> {
        let req = session.req_header();
        if !matches!(req.method, Method::GET | Method::HEAD) || !session.is_body_empty() {
            return None;
        }
        let limits = &rt.proxy.limits;
        let target = req.raw_path();
        if target.len() > limits.max_uri || req.headers.len() > limits.max_headers {
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
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let view = RequestView {
            method: &req.method,
            version: req.version,
            target,
            authority: req.uri.authority().map(|a| a.as_str()),
            headers: &req.headers,
            tls,
        };
        let states = self.release.current();
        let Plan::Forward(f) = decide::plan(rt, &self.pools, &states, &view) else {
            return None;
        };
        let Caching::Cacheable { primary, .. } = &f.cache else {
            return None;
        };
        if !carried(&f) {
            return None;
        }
        let (meta, body) = self
            .storage
            .fresh_hit(f.rule, key::hash(primary), |_| Cow::Borrowed(&req.headers))?;
        let request_id = headers::request_id(req.headers.get("x-request-id"));
        let stored = meta.response_header();
        let mut head = ResponseHeader::build_no_case(stored.status, Some(12)).ok()?;
        hit::head(&mut head, rt, &f, &meta, &request_id)?;
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
        let answer = HitAnswer::new(&f, req.method.clone(), (request_id, client), &meta, body);
        Some((head, answer))
    }
}
