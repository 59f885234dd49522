//! Response headers the edge writes: `Cache-Status` (RFC 9211), the browser TTL rewrite, and
//! removal of internal headers that must not reach clients.

use crate::proxy::hooks::ctx::RequestCtx;
use http::header;
use pingora::cache::{CachePhase, HttpCache, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::Result;
use std::time::SystemTime;

/// The name crossfade uses in `Cache-Status`.
pub const CACHE_NAME: &str = "crossfade";

/// Headers the origin sends to the edge only (surrogate keys, edge-only cache control).
pub const INTERNAL_HEADERS: [&str; 3] = ["surrogate-key", "cache-tag", "surrogate-control"];

/// A fixed-vocabulary summary of what the cache did, for logs (and later metrics labels).
pub fn cache_label(cache: &HttpCache, ctx: &RequestCtx) -> &'static str {
    if ctx.edge_answer.is_some() {
        return "edge";
    }
    if ctx.bypass.is_some() {
        return "bypass";
    }
    match cache.phase() {
        CachePhase::Hit => "hit",
        CachePhase::Stale | CachePhase::StaleUpdating if ctx.stale_on_error => "stale-if-error",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        CachePhase::Miss => "miss",
        CachePhase::Expired => "expired",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
        CachePhase::Bypass => "predicted-uncacheable",
        _ => "uncacheable",
    }
}

/// The storage decision for a response that came from the origin: `Some(None)` stored,
/// `Some(Some(reason))` not stored, `None` when no decision was made (hit, bypass, edge).
pub fn store_decision(cache: &HttpCache, ctx: &RequestCtx) -> Option<Option<&'static str>> {
    if ctx.bypass.is_some() || ctx.edge_answer.is_some() {
        return None;
    }
    match cache.phase() {
        CachePhase::Miss | CachePhase::Expired | CachePhase::Revalidated => Some(None),
        CachePhase::Disabled(NoCacheReason::NeverEnabled) => None,
        CachePhase::Disabled(reason) | CachePhase::RevalidatedNoCache(reason) => {
            Some(Some(match reason {
                NoCacheReason::Custom(s) => s,
                other => other.as_str(),
            }))
        }
        _ => None,
    }
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
    let mut out = String::with_capacity(32);
    for word in [next(), next()] {
        for i in (0..16).rev() {
            out.push(HEX[((word >> (i * 4)) & 0xf) as usize] as char);
        }
    }
    out
}

/// Whether the response the client gets is (or becomes) a stored object.
fn is_cached_object(phase: CachePhase) -> bool {
    matches!(
        phase,
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Miss
            | CachePhase::Expired
            | CachePhase::Revalidated
    )
}

/// Builds the RFC 9211 `Cache-Status` value for this response.
pub fn cache_status(cache: &HttpCache, ctx: &RequestCtx) -> String {
    let mut v = String::from(CACHE_NAME);
    if let Some(bypass) = ctx.bypass {
        let fwd = if bypass == crate::cache::policy::Bypass::Method {
            "method"
        } else {
            "bypass"
        };
        v.push_str(&format!("; fwd={fwd}; detail={}", bypass.as_str()));
        return v;
    }
    let phase = cache.phase();
    let fwd_status = ctx
        .upstream_status
        .map(|s| format!("; fwd-status={s}"))
        .unwrap_or_default();
    let ttl = || cache.maybe_cache_meta().map(|m| ttl_param(m.fresh_until()));
    match phase {
        CachePhase::Hit => {
            v.push_str("; hit");
            v.push_str(&ttl().unwrap_or_default());
            if cache.lock_duration().is_some() {
                v.push_str("; collapsed");
            }
        }
        CachePhase::Stale | CachePhase::StaleUpdating => {
            if ctx.stale_on_error {
                v.push_str(&format!("; fwd=stale{fwd_status}"));
                v.push_str(&ttl().unwrap_or_default());
                v.push_str("; detail=stale-if-error");
            } else {
                v.push_str("; hit");
                v.push_str(&ttl().unwrap_or_default());
                v.push_str("; detail=stale-while-revalidate");
            }
        }
        CachePhase::Miss => {
            v.push_str(&format!("; fwd=miss{fwd_status}; stored"));
            v.push_str(&ttl().unwrap_or_default());
        }
        CachePhase::Expired => {
            v.push_str(&format!("; fwd=stale{fwd_status}; stored"));
            v.push_str(&ttl().unwrap_or_default());
        }
        CachePhase::Revalidated => {
            v.push_str(&format!("; fwd=stale{fwd_status}; stored"));
            v.push_str(&ttl().unwrap_or_default());
        }
        CachePhase::RevalidatedNoCache(reason) => {
            v.push_str(&format!(
                "; fwd=stale{fwd_status}; detail={}",
                reason_str(reason)
            ));
        }
        CachePhase::Bypass => {
            v.push_str(&format!(
                "; fwd=miss{fwd_status}; detail=predicted-uncacheable"
            ));
        }
        CachePhase::Disabled(reason) => {
            v.push_str(&format!(
                "; fwd=miss{fwd_status}; detail={}",
                reason_str(reason)
            ));
        }
        _ => v.push_str(&format!("; fwd=miss{fwd_status}")),
    }
    v
}

/// pingora's reasons are CamelCase words; ours (in `Custom`) are already tokens.
fn reason_str(reason: NoCacheReason) -> String {
    match reason {
        NoCacheReason::Custom(s) => s.to_string(),
        other => other.as_str().to_ascii_lowercase(),
    }
}

/// Applies the edge's header policy to a response on its way to the client.
pub fn finish_response(
    cache: &HttpCache,
    ctx: &RequestCtx,
    resp: &mut ResponseHeader,
) -> Result<()> {
    let tags = ctx
        .runtime
        .as_ref()
        .map(|rt| rt.cache.tag_headers.as_slice());
    remove_internal(resp, tags.unwrap_or_default());
    if ctx.edge_answer.is_none() {
        resp.insert_header("cache-status", cache_status(cache, ctx))?;
    }
    let Some(rule) = &ctx.rule else { return Ok(()) };
    if is_cached_object(cache.phase()) && ctx.bypass.is_none() {
        browser_ttl(rule, resp)?;
    }
    Ok(())
}

/// Removes the origin-to-edge headers (`INTERNAL_HEADERS` and the configured tag headers).
pub fn remove_internal(resp: &mut ResponseHeader, tags: &[String]) {
    for name in super::sanitize::names_in(&resp.headers, &INTERNAL_HEADERS, tags) {
        resp.remove_header(&name);
    }
}

/// The route's `browser_ttl` rewrite of `Cache-Control` for a response that is a cached object.
pub fn browser_ttl(rule: &crate::rules::Rule, resp: &mut ResponseHeader) -> Result<()> {
    if let Some(value) = browser_cache_control(rule) {
        resp.insert_header(header::CACHE_CONTROL, value)?;
        resp.remove_header(&header::EXPIRES);
    }
    Ok(())
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

/// `; ttl=N` for an object fresh until `until` (negative once stale).
pub fn ttl_param(until: SystemTime) -> String {
    match until.duration_since(SystemTime::now()) {
        Ok(d) => format!("; ttl={}", d.as_secs()),
        Err(e) => format!("; ttl=-{}", e.duration().as_secs()),
    }
}
