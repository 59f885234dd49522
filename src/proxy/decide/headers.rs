//! The response headers crossfade sets, built once for every transport: `Cache-Status`
//! (RFC 9211) as a value each path fills in and renders the same way, the request id, the
//! browser TTL rewrite, and which origin fields are internal (never sent to clients).

use bytes::BufMut;
use std::time::SystemTime;

/// The name crossfade uses in `Cache-Status`.
pub const CACHE_NAME: &str = "crossfade";

/// Headers the origin sends to the edge only (surrogate keys, edge-only cache control).
pub const INTERNAL_HEADERS: [&str; 3] = ["surrogate-key", "cache-tag", "surrogate-control"];

/// Whether a response field named `name` stays inside the edge: [`INTERNAL_HEADERS`] and the
/// configured surrogate-key headers (`tags`, lowercase).
pub fn is_internal(name: &[u8], tags: &[String]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    INTERNAL_HEADERS.iter().any(|n| is(n)) || tags.iter().any(|n| is(n))
}

/// Response fields that describe one connection, never the response (RFC 9110 §7.6.1, and the
/// `Trailer` announcement): neither forwarded to a client nor stored. `Transfer-Encoding` is
/// framing, which each transport rewrites itself.
const HOP_BY_HOP_RESPONSE: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// A request's `Cookie` fields as one, `; `-separated, when there are several: an HTTP/2
/// client may send each cookie in a field of its own, and they must be joined before the
/// request goes on over HTTP/1.1 (RFC 9113 §8.2.3), where an origin may read only the first.
/// `None` for one field or none (it goes on as it is).
pub fn joined_cookies<'v>(mut values: impl Iterator<Item = &'v [u8]>) -> Option<Vec<u8>> {
    let first = values.next()?;
    let second = values.next()?;
    let mut joined = Vec::with_capacity(first.len() + second.len() + 2);
    joined.extend_from_slice(first);
    for value in std::iter::once(second).chain(values) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value);
    }
    Some(joined)
}

/// The response fields of an origin's answer that stay on the origin's connection: the
/// hop-by-hop set and every field its `Connection` header lists. A `101 Switching Protocols`
/// keeps them: the upgrade is the answer.
pub struct HopByHop {
    upgrade: bool,
    listed: Vec<Vec<u8>>,
}

impl HopByHop {
    /// For an answer with `status` and these raw `Connection` values.
    pub fn new<'a>(status: u16, connection: impl Iterator<Item = &'a [u8]>) -> HopByHop {
        let upgrade = status == 101;
        // Most origins list nothing but `keep-alive` or `close`: no allocation for those.
        let listed = connection
            .filter(|_| !upgrade)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !HOP_BY_HOP_RESPONSE
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_bytes()))
            })
            .map(|t| t.to_ascii_lowercase())
            .collect();
        HopByHop { upgrade, listed }
    }

    /// Whether the field `name` stays on the origin's connection.
    pub fn contains(&self, name: &[u8]) -> bool {
        !self.upgrade
            && (HOP_BY_HOP_RESPONSE
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
                || self.listed.iter().any(|l| name.eq_ignore_ascii_case(l)))
    }
}

/// What the cache did for one answer, as `Cache-Status` says it (RFC 9211): either a hit or a
/// forward, then the parameters in a fixed order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStatus<'a> {
    /// Served from the cache (`hit`).
    pub hit: bool,
    /// Why the request went forward (`miss`, `stale`, `bypass`, `method`).
    pub fwd: Option<&'static str>,
    /// The origin's status for a forwarded request.
    pub fwd_status: Option<u16>,
    /// The answer was stored.
    pub stored: bool,
    /// Until when the object is fresh (`ttl`, negative once stale).
    pub fresh_until: Option<SystemTime>,
    /// The request waited for another one's fill (request coalescing).
    pub collapsed: bool,
    /// A fixed label (a reason not stored, a bypass, an edge answer); never user input.
    pub detail: Option<&'a str>,
}

impl CacheStatus<'_> {
    /// Appends the field value (`crossfade; ...`) to `out`.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_slice(CACHE_NAME.as_bytes());
        if self.hit {
            out.put_slice(b"; hit");
        }
        if let Some(fwd) = self.fwd {
            out.put_slice(b"; fwd=");
            out.put_slice(fwd.as_bytes());
        }
        if let Some(status) = self.fwd_status {
            out.put_slice(b"; fwd-status=");
            put_int(out, i64::from(status));
        }
        if self.stored {
            out.put_slice(b"; stored");
        }
        if let Some(until) = self.fresh_until {
            out.put_slice(b"; ttl=");
            put_int(out, ttl_secs(until, SystemTime::now()));
        }
        if self.collapsed {
            out.put_slice(b"; collapsed");
        }
        if let Some(detail) = self.detail {
            out.put_slice(b"; detail=");
            out.put_slice(detail.as_bytes());
        }
    }

    /// The field value as a string (pingora's header map takes one).
    pub fn to_value(&self) -> String {
        let mut out = Vec::with_capacity(64);
        self.write(&mut out);
        // Only ASCII was written: fixed labels and digits.
        String::from_utf8(out).unwrap_or_default()
    }

    /// A request that bypassed the cache (`fwd=method` for a method the cache does not serve).
    pub fn bypass(why: crate::cache::policy::Bypass) -> CacheStatus<'static> {
        let fwd = if why == crate::cache::policy::Bypass::Method {
            "method"
        } else {
            "bypass"
        };
        CacheStatus {
            fwd: Some(fwd),
            detail: Some(why.as_str()),
            ..Default::default()
        }
    }

    /// An answer the edge gave by itself.
    pub fn edge(detail: &str) -> CacheStatus<'_> {
        CacheStatus {
            detail: Some(detail),
            ..Default::default()
        }
    }
}

/// Whole seconds until `until` from `now`, negative once past (RFC 9211 `ttl`).
fn ttl_secs(until: SystemTime, now: SystemTime) -> i64 {
    match until.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Writes `n` in decimal without an allocation.
fn put_int(out: &mut impl BufMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

/// A well-formed `X-Request-Id` from the client (1–128 of `A-Za-z0-9-_.:`), else a new one.
pub fn request_id(given: Option<&http::HeaderValue>) -> String {
    let valid = |v: &&http::HeaderValue| {
        (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    match given.filter(valid).and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_string(),
        None => new_request_id(),
    }
}

/// 128 random-looking bits as 32 hex digits: a per-thread wyrand stream seeded from the OS's
/// hash keys. Request ids must be unique, not secret; this avoids a fresh `RandomState`, two
/// SipHash runs and `format!` on every request.
fn new_request_id() -> String {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        });
    }
    let next = || {
        STATE.with(|s| {
            let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
            s.set(x);
            let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
            (t as u64) ^ ((t >> 64) as u64)
        })
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (half, word) in digits.chunks_exact_mut(16).zip([next(), next()]) {
        for (i, d) in half.iter_mut().enumerate() {
            *d = HEX[((word >> ((15 - i) * 4)) & 0xf) as usize];
        }
    }
    String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
}

/// The `Cache-Control` a route's `browser_ttl` gives cached objects (and `Expires` goes).
pub fn browser_cache_control(rule: &crate::rules::Rule) -> Option<String> {
    let ttl = rule.browser_ttl?;
    Some(if ttl.is_zero() {
        "no-cache".to_string()
    } else if rule.browser_immutable {
        format!("public, max-age={}, immutable", ttl.as_secs())
    } else {
        format!("public, max-age={}", ttl.as_secs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn generated_request_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64).map(|_| request_id(None)).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Both halves vary: not one word repeated.
        assert!(ids.iter().any(|id| id[..16] != id[16..]));
    }

    #[test]
    fn cache_status_renders_its_parameters_in_one_order() {
        let soon = SystemTime::now() + Duration::from_millis(60_500);
        let cases = [
            (
                CacheStatus {
                    hit: true,
                    fresh_until: Some(soon),
                    collapsed: true,
                    ..Default::default()
                },
                "crossfade; hit; ttl=60; collapsed",
            ),
            (
                CacheStatus {
                    fwd: Some("miss"),
                    fwd_status: Some(200),
                    stored: true,
                    fresh_until: Some(soon),
                    ..Default::default()
                },
                "crossfade; fwd=miss; fwd-status=200; stored; ttl=60",
            ),
            (
                CacheStatus {
                    fwd: Some("stale"),
                    fwd_status: Some(503),
                    fresh_until: Some(SystemTime::now() - Duration::from_millis(4_500)),
                    detail: Some("stale-if-error"),
                    ..Default::default()
                },
                "crossfade; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error",
            ),
            (
                CacheStatus {
                    fwd: Some("bypass"),
                    detail: Some("logged-in"),
                    ..Default::default()
                },
                "crossfade; fwd=bypass; detail=logged-in",
            ),
            (
                CacheStatus::edge("maintenance"),
                "crossfade; detail=maintenance",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(status.to_value(), want);
        }
    }

    #[test]
    fn internal_fields_are_the_fixed_ones_and_the_configured_tags() {
        let tags = ["x-tags".to_string()];
        for name in ["Surrogate-Key", "cache-tag", "SURROGATE-CONTROL", "X-Tags"] {
            assert!(is_internal(name.as_bytes(), &tags), "{name}");
        }
        assert!(!is_internal(b"cache-control", &tags));
    }
}
