//! Request headers the origin must never take from a client. Applications trust headers like
//! these to build links, pick a host or override the method or path; a cache in front makes
//! one client's header every visitor's page (web cache poisoning). crossfade drops them on every
//! request and sets `X-Forwarded-For/-Proto/-Host` itself from what it knows. Rules can name
//! more headers to drop (`strip_headers`) or to make part of the cache key (`key_headers`).

use crate::rules::Rule;
use pingora::http::RequestHeader;

/// Dropped from every request before it reaches an origin.
pub const UNTRUSTED: [&str; 22] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-url-scheme",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "front-end-https",
];

/// Removes the untrusted headers and the rule's `strip_headers`.
///
/// One pass over the headers the request has (a handful) rather than a removal per listed
/// name: most requests carry none of them, and this runs on every request that reaches an
/// origin.
pub fn sanitize(req: &mut RequestHeader, rule: Option<&Rule>) {
    let strip = rule.map(|r| r.strip_headers.as_slice()).unwrap_or_default();
    for name in names_in(&req.headers, &UNTRUSTED, strip) {
        req.remove_header(&name);
    }
}

/// The names in `headers` that are in `fixed` or `configured` (lowercase), found in one pass
/// over the headers present (most messages have none of them).
pub fn names_in(
    headers: &http::HeaderMap,
    fixed: &[&str],
    configured: &[String],
) -> Vec<http::HeaderName> {
    headers
        .keys()
        .filter(|k| fixed.contains(&k.as_str()) || configured.iter().any(|s| s == k.as_str()))
        .cloned()
        .collect()
}
