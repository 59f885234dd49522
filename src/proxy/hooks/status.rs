//! `Cache-Status`, the cache label of logs and metrics, and the storage decision, read from
//! pingora's cache state for an answer of pingora's path; the header values come from
//! [`headers`], the one builder both transports use.

use super::ctx::RequestCtx;
use crate::proxy::decide::headers::{self, CacheStatus};
use http::header;
use pingora::cache::{CachePhase, HttpCache, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::Result;

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

/// The RFC 9211 `Cache-Status` value for this response.
pub fn cache_status(cache: &HttpCache, ctx: &RequestCtx) -> String {
    if let Some(bypass) = ctx.bypass {
        return CacheStatus::bypass(bypass).to_value();
    }
    let fresh_until = cache.maybe_cache_meta().map(|m| m.fresh_until());
    let fwd_status = ctx.upstream_status;
    let forward = |fwd: &'static str| CacheStatus {
        fwd: Some(fwd),
        fwd_status,
        ..Default::default()
    };
    let reason;
    let status = match cache.phase() {
        CachePhase::Hit => CacheStatus {
            hit: true,
            fresh_until,
            collapsed: cache.lock_duration().is_some(),
            ..Default::default()
        },
        CachePhase::Stale | CachePhase::StaleUpdating if ctx.stale_on_error => CacheStatus {
            fresh_until,
            detail: Some("stale-if-error"),
            ..forward("stale")
        },
        CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus {
            hit: true,
            fresh_until,
            detail: Some("stale-while-revalidate"),
            ..Default::default()
        },
        CachePhase::Miss => CacheStatus {
            stored: true,
            fresh_until,
            ..forward("miss")
        },
        CachePhase::Expired | CachePhase::Revalidated => CacheStatus {
            stored: true,
            fresh_until,
            ..forward("stale")
        },
        CachePhase::RevalidatedNoCache(r) => {
            reason = reason_str(r);
            CacheStatus {
                detail: Some(&reason),
                ..forward("stale")
            }
        }
        CachePhase::Bypass => CacheStatus {
            detail: Some("predicted-uncacheable"),
            ..forward("miss")
        },
        CachePhase::Disabled(r) => {
            reason = reason_str(r);
            CacheStatus {
                detail: Some(&reason),
                ..forward("miss")
            }
        }
        _ => forward("miss"),
    };
    status.to_value()
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
    // The targeted cache-control fields (RFC 9213) are this edge's, not the client's.
    for name in &rule.targeted {
        resp.remove_header(name.as_str());
    }
    if is_cached_object(cache.phase()) && ctx.bypass.is_none() {
        browser_ttl(rule, resp)?;
    }
    Ok(())
}

/// Removes the origin-to-edge headers ([`headers::is_internal`]).
pub fn remove_internal(resp: &mut ResponseHeader, tags: &[String]) {
    let internal: Vec<http::HeaderName> = resp
        .headers
        .keys()
        .filter(|k| headers::is_internal(k.as_str().as_bytes(), tags))
        .cloned()
        .collect();
    for name in internal {
        resp.remove_header(&name);
    }
}

/// The route's `browser_ttl` rewrite of `Cache-Control` for a response that is a cached object.
pub fn browser_ttl(rule: &crate::rules::Rule, resp: &mut ResponseHeader) -> Result<()> {
    if let Some(value) = headers::browser_cache_control(rule) {
        resp.insert_header(header::CACHE_CONTROL, value)?;
        resp.remove_header(&header::EXPIRES);
    }
    Ok(())
}
