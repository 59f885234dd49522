//! Cache policy: whether a request may use the cache, and whether a response may be stored and
//! for how long.
//!
//! Freshness has one owner: pingora-cache's `CacheControl` parser, interpreted here with the
//! route's mode. We use it rather than a second parser (e.g. `http-cache-semantics`) because the
//! cache state machine stores and judges pingora's `CacheMeta`; computing freshness with the same
//! types keeps what we decide and what the state machine enforces from drifting apart.

use super::freshness::{self, heuristically_cacheable, received_age};
use crate::rules::{Authorization, Mode, Rule};
use http::{header, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::CacheMeta;
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Statuses whose caching semantics crossfade implements: `must-understand` (RFC 9111
/// §5.2.2.3) lets a response with one of them be stored despite `no-store`.
const UNDERSTOOD: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Why a request does not use the cache at all: it goes to the origin as it came, and nothing
/// that comes back is stored or served to anyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// The route has `mode = "pass"`.
    RoutePass,
    /// Only GET and HEAD are answered from cache.
    Method,
    /// The request carries `Authorization` (RFC 9111 §3.5).
    Authorization,
    /// The request carries one of the route's `bypass_cookies`: the visitor is logged in.
    LoggedIn,
    /// A protocol upgrade (WebSocket) is a tunnel, not a cacheable exchange.
    Upgrade,
}

impl Bypass {
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::RoutePass => "route-pass",
            Bypass::Method => "method",
            Bypass::Authorization => "authorization",
            Bypass::LoggedIn => "logged-in",
            Bypass::Upgrade => "upgrade",
        }
    }
}

/// Decides whether `req` may be answered from (and fill) the cache under `rule`.
pub fn request_bypass(rule: &Rule, req: &RequestHeader) -> Option<Bypass> {
    bypass(rule, &req.method, &req.headers)
}

/// [`request_bypass`] on a request's parts.
pub fn bypass(rule: &Rule, method: &Method, headers: &http::HeaderMap) -> Option<Bypass> {
    if rule.mode == Mode::Pass {
        return Some(Bypass::RoutePass);
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    if rule.authorization == Authorization::Bypass && headers.contains_key(header::AUTHORIZATION) {
        return Some(Bypass::Authorization);
    }
    if headers.contains_key(header::UPGRADE) {
        return Some(Bypass::Upgrade);
    }
    if !rule.bypass_cookies.is_empty()
        && super::key::cookies(headers).any(|(name, _)| rule.bypass_cookies.contains(name))
    {
        return Some(Bypass::LoggedIn);
    }
    None
}

/// Why a response was not stored. The string forms appear in `Cache-Status` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The response sets a cookie; storing it would hand that cookie to every visitor.
    SetCookie,
    /// `Cache-Control: private`: meant for one user only.
    Private,
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: no-cache` on an honor route (stored responses would need validation on
    /// every use; like Varnish we do not store them).
    NoCache,
    /// `Vary: *` can never be matched by a later request.
    VaryStar,
    /// Honor route, and the origin gave no freshness (max-age, s-maxage, Expires), and no
    /// validator (ETag, Last-Modified) on a heuristically cacheable or `public` response;
    /// RFC 9111 allows no default TTL here.
    NoFreshness,
    /// The status is not stored under this rule (e.g. 5xx on an override route, 206, 304).
    Status,
    /// The path names a static type (`.css`, `.png`, …) that the response is not: a possible
    /// cache deception attempt (see `cache::armor`).
    TypeMismatch,
    /// The request carried `Authorization` (on a route that stores such answers, RFC 9111
    /// §3.5) and the response does not say `public`, `s-maxage` or `must-revalidate`.
    Authorization,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::SetCookie => "set-cookie",
            NotStored::Private => "private",
            NotStored::NoStore => "no-store",
            NotStored::NoCache => "no-cache",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::TypeMismatch => "type-mismatch",
            NotStored::Status => "status",
            NotStored::Authorization => "authorization",
        }
    }
}

/// The response headers [`admit`] reads to decide (the pass fast path builds a map of these
/// only, to ask whether a predicted-uncacheable key has become storable). Keep it in step.
pub const DECIDING_HEADERS: [header::HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::SET_COOKIE,
    header::VARY,
    header::EXPIRES,
    header::DATE,
    header::AGE,
    header::ETAG,
    header::LAST_MODIFIED,
];

/// Decides whether `resp` is stored under `rule`; on success returns the meta to store, with
/// any headers that must not be stored already removed. `authorized`: the request carried
/// `Authorization` (only a route with `authorization = "rfc9111"` gets here with one).
/// `requested`: when the request that brought `resp` started; the meta's creation time, so a
/// purge made while the origin was answering covers what is stored (see `cache::journal`).
pub fn admit(
    rule: &Rule,
    path: &str,
    resp: &ResponseHeader,
    authorized: bool,
    requested: SystemTime,
) -> Result<CacheMeta, NotStored> {
    if super::armor::mismatch(path, resp) {
        return Err(NotStored::TypeMismatch);
    }
    let has_set_cookie = resp.headers.contains_key(header::SET_COOKIE);
    if has_set_cookie && !rule.unsafe_strip_set_cookie {
        return Err(NotStored::SetCookie);
    }
    // RFC 9213: a targeted field for this edge replaces Cache-Control for its decisions (an
    // invalid one is ignored); browsers keep Cache-Control.
    let target = targeted(rule, resp);
    // Parsed after the cheap checks: pingora's parser runs a regex over the value, which
    // most uncacheable answers (`private`, `no-store`) do not need.
    if target.is_none() {
        if let Some(refused) = plainly_refused(resp) {
            return Err(refused);
        }
    }
    let cc = target
        .and_then(|name| CacheControl::from_resp_headers_named(name, resp))
        .or_else(|| CacheControl::from_resp_headers(resp));
    let now = SystemTime::now();
    // How old the response already is (RFC 9111 §4.2.3); an Age that is not a number makes it
    // stale (it cannot be trusted to be young).
    let received_age = received_age(resp);
    let age = received_age.unwrap_or(Duration::ZERO);
    let status = resp.status;
    if let Some(cc) = &cc {
        if cc.private() {
            return Err(NotStored::Private);
        }
        // `must-understand`: store by the status's own rules if it is one crossfade
        // understands (then `no-store` is only for caches that do not), never otherwise.
        if cc.has_key("must-understand") {
            if !UNDERSTOOD.contains(&status.as_u16()) {
                return Err(NotStored::Status);
            }
        } else if cc.no_store() {
            return Err(NotStored::NoStore);
        }
    }
    if authorized
        && !cc
            .as_ref()
            .is_some_and(|c| c.public() || c.has_key("s-maxage") || c.has_key("must-revalidate"))
    {
        return Err(NotStored::Authorization);
    }
    let vary_star = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*");
    if vary_star {
        return Err(NotStored::VaryStar);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }

    let (ttl, swr, sie) = match rule.mode {
        Mode::Pass => return Err(NotStored::Status),
        Mode::Override => {
            let ttl = rule.override_ttl(status).ok_or(NotStored::Status)?;
            (ttl, rule.stale_while_revalidate, rule.stale_if_error)
        }
        Mode::Honor => {
            // Without explicit freshness, RFC 9111 §3 lets a cache store only a status that is
            // heuristically cacheable or a response marked `public`; it is stored stale, to be
            // revalidated on every use. An error page with only an ETag is never stored.
            let storable_stale = has_validator(resp)
                && (heuristically_cacheable(status) || cc.as_ref().is_some_and(|c| c.public()));
            // `no-cache` (RFC 9111 §5.2.2.4): stored and revalidated on every use, when there
            // is something to revalidate with (a 304 costs the origin less than a render);
            // never served stale.
            if cc.as_ref().is_some_and(|cc| cc.no_cache()) {
                if !storable_stale {
                    return Err(NotStored::NoCache);
                }
                (Duration::ZERO, None, None)
            } else {
                // Without explicit freshness, a response with `Last-Modified` is fresh for a
                // tenth of its unchanged time, up to the rule's cap (RFC 9111 §4.2.2).
                let heuristic = || {
                    rule.heuristic_max
                        .and_then(|max| freshness::heuristic_lifetime(resp, now, max))
                };
                let lifetime = match freshness::explicit_lifetime(cc.as_ref(), resp, now) {
                    Some(lifetime) => lifetime,
                    None if storable_stale => heuristic().unwrap_or(Duration::ZERO),
                    None => return Err(NotStored::NoFreshness),
                };
                let ttl = match received_age {
                    Some(age) => lifetime.saturating_sub(age),
                    None => Duration::ZERO,
                };
                let swr = cc
                    .as_ref()
                    .and_then(|c| c.serve_stale_while_revalidate_duration())
                    .or(rule.stale_while_revalidate);
                let sie = cc
                    .as_ref()
                    .and_then(|c| c.serve_stale_if_error_duration())
                    .or(rule.stale_if_error);
                (ttl, swr, sie)
            }
        }
    };

    let mut stored = resp.clone();
    if has_set_cookie {
        stored.remove_header(&header::SET_COOKIE);
    }
    for name in &rule.targeted {
        stored.remove_header(name.as_str());
    }
    // Never sent from the cache (every answer gets its own Connection), so not kept.
    for name in NOT_STORED {
        stored.remove_header(&name);
    }
    // The Date is the one thing telling a client how old a hit is (with Age); a response
    // without one gets the time it was received (RFC 9110 §6.6.1), and keeps it.
    if !stored.headers.contains_key(header::DATE) {
        let _ = stored.insert_header(header::DATE, httpdate::fmt_http_date(now));
    }
    let fresh_until = if ttl.is_zero() {
        // Already stale: every use is revalidated first.
        now - Duration::from_secs(1)
    } else {
        now + ttl
    };
    let mut meta = CacheMeta::new(
        fresh_until,
        requested.min(now),
        secs(swr),
        secs(sie),
        stored,
    );
    // The response was `age` old when it arrived: a hit's Age counts from then (the epoch),
    // so it is the corrected age, the origin's plus the time stored here. `created` stays
    // the request's start: pingora compares it with the primary variant's to tell a current
    // variant from a purged one. (Date is not used to guess an age: an origin whose clock is
    // off would make every page stale.)
    if let Some(epoch) = now.checked_sub(age).filter(|_| !age.is_zero()) {
        meta.set_epoch_override(epoch);
    }
    Ok(meta)
}

/// The first of the rule's targeted cache-control fields (RFC 9213) that `resp` carries.
fn targeted<'r>(rule: &'r Rule, resp: &ResponseHeader) -> Option<&'r str> {
    rule.targeted
        .iter()
        .map(String::as_str)
        .find(|name| resp.headers.contains_key(*name))
}

/// Response fields a stored object does not keep.
const NOT_STORED: [header::HeaderName; 2] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
];

/// Header fields a 304 must not change in the stored response (framing and hop-by-hop).
const NOT_UPDATED_BY_304: [header::HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// The stored header `stored` updated with every field of a 304 (RFC 9111 §4.3.4).
pub fn merge_not_modified(stored: &ResponseHeader, fresh: &http::HeaderMap) -> ResponseHeader {
    let mut merged = stored.clone();
    for name in fresh.keys() {
        if NOT_UPDATED_BY_304.contains(name) {
            continue;
        }
        merged.remove_header(name);
        for value in fresh.get_all(name) {
            // Copying a header that was valid on the wire cannot fail.
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
}

/// `private` or `no-store` (in that order, as below) when `Cache-Control` holds them as plain
/// directives. Values with quotes are left to the full parser (`None`); reading a directive
/// here that the full parser would not see can only refuse to store, never store.
fn plainly_refused(resp: &ResponseHeader) -> Option<NotStored> {
    plainly_refused_by(
        resp.headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// What [`admit`] would refuse a response to `path` for, when that can be told from its raw
/// header fields without building a header map: nothing `admit` checks before Cache-Control
/// applies (the path names no static type; no Set-Cookie) and Cache-Control plainly says
/// `private` or `no-store`. `None`: ask `admit`.
pub fn plainly_refused_raw<'a, I>(
    rule: &Rule,
    path: &str,
    fields: impl Fn() -> I,
) -> Option<NotStored>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    if super::armor::guards(path) {
        return None;
    }
    // One pass over the fields (this runs on every pass of a key known to be uncacheable).
    let mut verdict = Plainly::default();
    for (name, value) in fields() {
        if name.eq_ignore_ascii_case(b"cache-control") {
            verdict.read(value)?;
        } else if name.eq_ignore_ascii_case(b"set-cookie")
            || rule
                .targeted
                .iter()
                .any(|t| name.eq_ignore_ascii_case(t.as_bytes()))
        {
            // A targeted field (RFC 9213) may say otherwise than Cache-Control: `admit` decides.
            return None;
        }
    }
    verdict.end()
}

/// [`plainly_refused`] over the raw `Cache-Control` values of a response.
fn plainly_refused_by<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<NotStored> {
    let mut verdict = Plainly::default();
    for value in values {
        verdict.read(value)?;
    }
    verdict.end()
}

/// What the `Cache-Control` values read so far plainly say.
#[derive(Default)]
struct Plainly {
    private: bool,
    no_store: bool,
    must_understand: bool,
}

impl Plainly {
    /// Reads one value; `None` when it is not plain (a quoted string: `admit` decides).
    fn read(&mut self, value: &[u8]) -> Option<()> {
        if value.contains(&b'"') {
            return None;
        }
        for directive in value.split(|&b| b == b',') {
            let name = directive.split(|&b| b == b'=').next().unwrap_or_default();
            let name = name.trim_ascii();
            self.private |= name.eq_ignore_ascii_case(b"private");
            self.no_store |= name.eq_ignore_ascii_case(b"no-store");
            self.must_understand |= name.eq_ignore_ascii_case(b"must-understand");
        }
        Some(())
    }

    fn end(self) -> Option<NotStored> {
        if self.private {
            return Some(NotStored::Private);
        }
        // `must-understand` can make `no-store` not apply: `admit` decides.
        (self.no_store && !self.must_understand).then_some(NotStored::NoStore)
    }
}

fn secs(d: Option<Duration>) -> u32 {
    d.map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32)
}

/// Whether a stored response with `status` may be served stale when the origin fails
/// (stale-if-error): an error is never the stale copy served for an error.
pub fn serves_for_an_error(status: StatusCode) -> bool {
    !status.is_server_error()
}

fn has_validator(resp: &ResponseHeader) -> bool {
    resp.headers.contains_key(header::ETAG) || resp.headers.contains_key(header::LAST_MODIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deciding_headers_decide_as_all_headers_do() {
        let noise = [
            ("surrogate-control", "max-age=3600"),
            ("pragma", "no-cache"),
            ("x-accel-expires", "0"),
            ("content-length", "10"),
        ];
        let cases: [&[(&str, &str)]; 8] = [
            &[("cache-control", "private")],
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "text/html"),
            ],
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60"), ("vary", "*")],
            &[
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ],
            &[("etag", "\"x\"")],
            &[
                ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("age", "5"),
            ],
        ];
        let rule = crate::rules::honor_rule("honor", None);
        for (i, case) in cases.iter().enumerate() {
            for path in ["/page", "/a.css"] {
                let mut all = ResponseHeader::build(200, None).unwrap();
                let mut deciding = ResponseHeader::build(200, None).unwrap();
                for (n, v) in case.iter().chain(noise.iter()) {
                    all.append_header(*n, *v).unwrap();
                    if DECIDING_HEADERS.iter().any(|h| h == n) {
                        deciding.append_header(*n, *v).unwrap();
                    }
                }
                let decide =
                    |r: &ResponseHeader| admit(&rule, path, r, false, SystemTime::now()).err();
                assert_eq!(decide(&all), decide(&deciding), "case {i} at {path}");
            }
        }
    }

    #[test]
    fn the_quick_directive_scan_refuses_no_less_than_the_full_parser() {
        use NotStored::{NoStore, Private};
        let values = [
            ("private", Some(Private)),
            ("Private, max-age=0", Some(Private)),
            ("no-store", Some(NoStore)),
            ("public, max-age=60", None),
            ("max-age=60, NO-STORE", Some(NoStore)),
            ("no-store, private", Some(Private)),
            // Unquoted argument: pingora's parser drops it; refusing is the safe reading.
            ("max-age=60,private=set-cookie", Some(Private)),
            ("x-private, no-storex, public", None),
            ("no-cache", None),
            // Quoted: left to the full parser.
            ("no-cache=\"set-cookie\", private", None),
        ];
        for (value, expected) in values {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            resp.append_header("cache-control", value).unwrap();
            let full = CacheControl::from_resp_headers(&resp).and_then(|cc| {
                if cc.private() {
                    Some(Private)
                } else if cc.no_store() {
                    Some(NoStore)
                } else {
                    None
                }
            });
            let quick = plainly_refused(&resp);
            assert_eq!(quick, expected, "{value}");
            if !value.contains('"') && full.is_some() {
                assert_eq!(quick, full, "{value}");
            }
        }
    }

    #[test]
    fn raw_fields_refuse_as_admit_does_or_defer_to_it() {
        let rule = crate::rules::honor_rule("honor", None);
        type Fields = &'static [(&'static str, &'static str)];
        let cases: [(&str, Fields, bool); 5] = [
            ("/page", &[("cache-control", "private")], true),
            (
                "/page",
                &[("content-type", "text/html"), ("cache-control", "no-store")],
                true,
            ),
            (
                "/page",
                &[("cache-control", "private"), ("set-cookie", "a=1")],
                false,
            ),
            ("/a.css", &[("cache-control", "private")], false),
            ("/page", &[("cache-control", "max-age=60")], false),
        ];
        for (path, fields, quick) in cases {
            let raw: Vec<(&[u8], &[u8])> = fields
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect();
            let got = plainly_refused_raw(&rule, path, || raw.iter().copied());
            assert_eq!(got.is_some(), quick, "{path} {fields:?}");
            if let Some(reason) = got {
                let mut resp = ResponseHeader::build(200, None).unwrap();
                for (n, v) in fields {
                    resp.append_header(*n, *v).unwrap();
                }
                assert_eq!(
                    admit(&rule, path, &resp, false, SystemTime::now()).err(),
                    Some(reason),
                    "{path}"
                );
            }
        }
    }
}
