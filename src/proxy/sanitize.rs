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
pub fn sanitize(req: &mut RequestHeader, rule: Option<&Rule>) {
    for name in UNTRUSTED {
        req.remove_header(name);
    }
    for name in rule.map(|r| r.strip_headers.as_slice()).unwrap_or_default() {
        req.remove_header(name.as_str());
    }
}
