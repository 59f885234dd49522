//! A plain hit's answer, the one both fast transports send: which stored headers go out and
//! what is added (Age, Accept-Ranges, X-Request-Id, Cache-Status, the browser TTL), in the order
//! pingora's hit path and the response hooks give them, and what the log needs of it. HTTP/1.1
//! writes the head as bytes ([`super::wire::HeadWriter`]); HTTP/2 as the `ResponseHeader`
//! pingora's HTTP/2 writer sends ([`super::h2`]), so the two cannot drift apart.

use super::wire::HeadWriter;
use crate::cache::body::Body;
use crate::cache::storage::FreshHit;
use crate::cache::MetaView;
use crate::config::Runtime;
use crate::proxy::decide::headers::{self, CacheStatus};
use crate::proxy::decide::Forward;
use bytes::{BufMut, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::ResponseHeader;

/// Where a hit's (or a relayed pass's, [`super::downstream`]) response head goes.
pub trait Head {
    /// A stored header, sent as stored (`spelled`: the name's case as the origin wrote it).
    fn stored(&mut self, name: &HeaderName, spelled: &[u8], value: &HeaderValue);
    /// A header this answer sets, whose value `value` writes (no `format!` per request).
    fn set_with(&mut self, name: HeaderName, spelled: &[u8], value: impl FnOnce(&mut BytesMut));

    /// A field of an origin's raw response head (a pass), as the origin spelled it.
    fn raw(&mut self, name: &[u8], value: &[u8]);

    fn set(&mut self, name: HeaderName, spelled: &[u8], value: &[u8]) {
        self.set_with(name, spelled, |out| out.put_slice(value));
    }
}

impl Head for HeadWriter {
    fn stored(&mut self, _name: &HeaderName, spelled: &[u8], value: &HeaderValue) {
        self.line(spelled, value.as_bytes());
    }

    fn raw(&mut self, name: &[u8], value: &[u8]) {
        self.line(name, value);
    }

    fn set_with(&mut self, _name: HeaderName, spelled: &[u8], value: impl FnOnce(&mut BytesMut)) {
        self.line_with(spelled, value);
    }
}

/// The head as pingora's HTTP/2 writer takes it (it adds `Date` itself and drops the hop-by-hop
/// headers HTTP/2 cannot carry).
impl Head for ResponseHeader {
    fn stored(&mut self, name: &HeaderName, _spelled: &[u8], value: &HeaderValue) {
        // A copy of the value, not a clone: a stored object's values share one buffer, whose
        // reference count a clone writes, and every thread serving the object writes it too.
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            let _ = self.append_header(name.clone(), copy);
        }
    }

    fn raw(&mut self, name: &[u8], value: &[u8]) {
        // httparse has taken only token names and field values a header map holds too.
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            let _ = self.append_header(name, value);
        }
    }

    fn set_with(&mut self, name: HeaderName, _spelled: &[u8], value: impl FnOnce(&mut BytesMut)) {
        let mut out = BytesMut::with_capacity(64);
        value(&mut out);
        if let Ok(v) = HeaderValue::from_maybe_shared(out.freeze()) {
            let _ = self.append_header(name, v);
        }
    }
}

/// Names the answers set, made at compile time: `HeaderName::from_static` called at run time
/// checks its argument byte by byte on every request.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Stored response headers a hit replaces (as pingora's path would).
const REPLACED: [&str; 7] = [
    "age",
    "accept-ranges",
    "x-request-id",
    "cache-status",
    "date",
    "connection",
    "transfer-encoding",
];

/// Writes the answer's head for the stored `meta` to `out`: the stored headers but those this
/// answer sets itself and the internal ones, in their stored order and case; then what
/// pingora's hit path (Age, Accept-Ranges from its range filter) and the response hooks would
/// add. `None` (nothing written) for a stored response without a length, which pingora would
/// chunk: that is left to it.
pub fn head(
    out: &mut impl Head,
    rt: &Runtime,
    f: &Forward,
    meta: &MetaView,
    request_id: &str,
) -> Option<()> {
    let stored = meta.response_header();
    let length = stored.headers.get(header::CONTENT_LENGTH)?;
    let browser = headers::browser_cache_control(f.rule);
    let tags = &rt.cache.tag_headers;
    let skip = |name: &[u8]| {
        let lower = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        REPLACED.iter().any(|n| lower(n))
            || headers::is_internal(name, tags)
            || browser.is_some() && (lower("cache-control") || lower("expires"))
    };
    if stored.has_case() {
        // pingora keeps the case map in the header map's order (it asserts as much).
        for ((name, value), (spelled, _)) in stored.headers.iter().zip(stored.case_header_iter()) {
            if !skip(spelled.as_slice()) {
                out.stored(name, spelled.as_slice(), value);
            }
        }
    } else {
        for (name, value) in stored.headers.iter() {
            if !skip(name.as_str().as_bytes()) {
                out.stored(name, name.as_str().as_bytes(), value);
            }
        }
    }
    out.set_with(header::AGE, b"Age", |v| {
        v.put_slice(meta.age().as_secs().to_string().as_bytes())
    });
    if stored.status == StatusCode::OK
        && std::str::from_utf8(length.as_bytes()).is_ok_and(|l| l.parse::<u64>().is_ok())
    {
        out.set(header::ACCEPT_RANGES, b"Accept-Ranges", b"bytes");
    }
    out.set(X_REQUEST_ID, b"x-request-id", request_id.as_bytes());
    let cache_status = CacheStatus {
        hit: true,
        fresh_until: Some(meta.fresh_until()),
        ..Default::default()
    };
    out.set_with(CACHE_STATUS, b"cache-status", |v| cache_status.write(v));
    if let Some(cc) = &browser {
        out.set(header::CACHE_CONTROL, b"Cache-Control", cc.as_bytes());
    }
    Some(())
}

/// A hit ready to write, and what the logs need of it.
/// Its site and route are borrowed from the config the request was planned under.
pub struct HitAnswer<'c> {
    /// The object, held until its body is written (none for HEAD).
    found: Option<FreshHit>,
    pub status: u16,
    pub site: &'c str,
    pub rule: &'c crate::rules::Rule,
    pub pool: String,
    pub request_id: String,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub client: crate::telemetry::Client,
}

impl<'c> HitAnswer<'c> {
    /// The answer to `method` for `f` from the object `found`.
    pub fn new(
        f: &Forward<'_, 'c>,
        method: Method,
        (request_id, client): (String, crate::telemetry::Client),
        found: FreshHit,
    ) -> HitAnswer<'c> {
        HitAnswer {
            status: found.meta().response_header().status.as_u16(),
            found: (method == Method::GET).then_some(found),
            site: &f.site.name,
            rule: f.rule,
            pool: f.pool.clone(),
            request_id,
            method,
            path: f.path.to_string(),
            query: f.query.unwrap_or("").to_string(),
            client,
        }
    }

    /// The body to send (none for HEAD).
    pub fn body(&self) -> Option<&Body> {
        self.found.as_ref().map(FreshHit::body)
    }
}
