//! The request target and host as crossfade reads them: one reading, from the raw bytes the
//! client sent, for both transports. A parser's fallback (pingora files a target it cannot
//! classify under `/`) must never be what routing sees while the origin gets the raw bytes.
//!
//! Targets (RFC 9112 §3.2): origin-form (`/path?query`), absolute-form
//! (`http://host/path?query`, whose authority then names the host, §3.2.2) and `OPTIONS *`.
//! Everything else — authority-form, a path without its leading `/`, a target with control
//! characters, spaces, bytes outside visible ASCII or the ones browsers always escape — is refused with 400 before routing, as
//! nginx does. A fragment is not part of a target (§3.2) and is dropped.
//!
//! Host (RFC 9112 §3.2, RFC 9110 §7.2): an absolute-form authority wins over `Host`; HTTP/2's
//! `:authority` comes before `Host`; an HTTP/1.1 request without exactly one valid `Host` is
//! refused with 400. The host is normalised once (case, port, trailing dot): that one form
//! chooses the site, builds the cache key and is the `Host` the origin receives, so a port or a
//! case the key ignores can never shape a page (cache poisoning).

use crate::config::normalize_host;

/// Why a request's target or host was refused (always 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// A target that is not origin-form, absolute-form or `OPTIONS *`.
    TargetForm,
    /// A byte a request target cannot hold (control, space, non-ASCII).
    TargetBytes,
    /// HTTP/1.1 without a `Host`.
    NoHost,
    /// More than one `Host`.
    DuplicateHost,
    /// A `Host` that differs from the target's (or HTTP/2's) authority: which one a server
    /// believes is how one host's page gets stored under another's name.
    HostMismatch,
    /// A `Host` (or authority) that is not a host name, address or `host:port`.
    BadHost,
}

impl BadRequest {
    /// The `Cache-Status` detail and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::TargetForm => "bad-target-form",
            BadRequest::TargetBytes => "bad-target",
            BadRequest::NoHost => "no-host",
            BadRequest::DuplicateHost => "duplicate-host",
            BadRequest::HostMismatch => "host-mismatch",
            BadRequest::BadHost => "bad-host",
        }
    }

    /// The body of the 400 answer.
    pub fn message(self) -> &'static str {
        match self {
            BadRequest::TargetForm => {
                "crossfade: the request target must be a path (/...) or an absolute URL\n"
            }
            BadRequest::TargetBytes => "crossfade: the request target holds invalid bytes\n",
            BadRequest::NoHost => "crossfade: HTTP/1.1 requests need a Host header\n",
            BadRequest::DuplicateHost => "crossfade: more than one Host header\n",
            BadRequest::HostMismatch => {
                "crossfade: the Host header differs from the request target's authority\n"
            }
            BadRequest::BadHost => "crossfade: the Host header is not a host name\n",
        }
    }
}

/// A request target, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `OPTIONS *`: a question about the server, answered by the edge.
    Asterisk,
    /// A path (as sent, not yet normalised), its query, and the authority of an absolute-form
    /// target.
    Path {
        path: &'a str,
        query: Option<&'a str>,
        authority: Option<&'a str>,
    },
}

/// Reads the raw request target of a `method` request.
pub fn parse<'a>(raw: &'a [u8], method: &http::Method) -> Result<Target<'a>, BadRequest> {
    let raw = match memchr::memchr(b'#', raw) {
        Some(i) => &raw[..i],
        None => raw,
    };
    if !raw.iter().all(|&b| target_byte(b)) {
        return Err(BadRequest::TargetBytes);
    }
    // SAFETY: every byte is visible ASCII (checked just above), so the bytes are UTF-8; a second
    // validation cost more than the rest of this function on every request.
    let raw = unsafe { std::str::from_utf8_unchecked(raw) };
    if raw == "*" {
        return match *method {
            http::Method::OPTIONS => Ok(Target::Asterisk),
            _ => Err(BadRequest::TargetForm),
        };
    }
    let (authority, rest) = if raw.starts_with('/') {
        (None, raw)
    } else {
        let scheme_end = raw.find("://").ok_or(BadRequest::TargetForm)?;
        let scheme = &raw[..scheme_end];
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(BadRequest::TargetForm);
        }
        let after = &raw[scheme_end + 3..];
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let authority = &after[..end];
        // No userinfo (RFC 9110 §4.2.4) and a host to name.
        if authority.is_empty() || authority.contains('@') {
            return Err(BadRequest::TargetForm);
        }
        (Some(authority), &after[end..])
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Ok(Target::Path {
        // `http://host?q` has the root as its path (RFC 9112 §3.2.1).
        path: if path.is_empty() { "/" } else { path },
        query,
        authority,
    })
}

/// Where the request names its host, in the order that decides.
pub struct HostSources<'a, I> {
    /// The authority of an absolute-form target.
    pub target_authority: Option<&'a str>,
    /// HTTP/2's `:authority`.
    pub authority: Option<&'a str>,
    /// Every `Host` header value.
    pub host_headers: I,
    /// HTTP/1.1 (or later over HTTP/1): a `Host` is required.
    pub host_required: bool,
}

/// The normalised host the request is for; `None` when it names none (HTTP/1.0 without Host).
pub fn host<'a, I>(sources: HostSources<'a, I>) -> Result<Option<String>, BadRequest>
where
    I: Iterator<Item = &'a [u8]>,
{
    let mut headers = sources.host_headers;
    let first = headers.next();
    if headers.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    let raw = match (sources.target_authority.or(sources.authority), first) {
        // Byte for byte, as pingora's ingress checks it (RFC 9112 §3.2.2 lets a server
        // replace the Host; refusing the conflict is the safer reading).
        (Some(a), Some(h)) if a.as_bytes() != h => return Err(BadRequest::HostMismatch),
        (Some(a), _) => a.as_bytes(),
        (None, Some(h)) => h,
        (None, None) if sources.host_required => return Err(BadRequest::NoHost),
        (None, None) => return Ok(None),
    };
    let raw = raw.trim_ascii();
    if raw.is_empty() || !raw.iter().all(|&b| host_byte(b)) {
        return Err(BadRequest::BadHost);
    }
    // SAFETY: every byte is one of `host_byte`'s, all ASCII (checked just above).
    let raw = unsafe { std::str::from_utf8_unchecked(raw) };
    let host = normalize_host(raw);
    if host.is_empty() {
        return Err(BadRequest::BadHost);
    }
    Ok(Some(host))
}

/// A byte a request target may hold as sent: visible ASCII but the ones every browser
/// percent-encodes (`"`, `<`, `>`, `` ` ``; WHATWG's path and query percent-encode sets). pingora
/// rewrites the first three to escapes and refuses the last before any hook runs, so a target
/// carrying one raw would reach the origin (or be refused) differently on the two transports.
fn target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b'<' | b'>' | b'`')
}

/// A byte of `host[:port]`: a reg-name (unreserved, sub-delims, `%`), an IP literal's
/// brackets and colons (RFC 3986 §3.2.2).
fn host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn origin_absolute_and_asterisk_forms_are_read_and_the_rest_refused() {
        let path = |p, q, a| {
            Ok(Target::Path {
                path: p,
                query: q,
                authority: a,
            })
        };
        let get = Method::GET;
        for (raw, want) in [
            ("/a/b?x=1", path("/a/b", Some("x=1"), None)),
            ("/account/x#frag", path("/account/x", None, None)),
            ("/a?q#f", path("/a", Some("q"), None)),
            (
                "http://www.shop.test/a?b",
                path("/a", Some("b"), Some("www.shop.test")),
            ),
            (
                "HTTPS://www.shop.test:8443",
                path("/", None, Some("www.shop.test:8443")),
            ),
            ("http://h?q=1", path("/", Some("q=1"), Some("h"))),
            ("account/x", Err(BadRequest::TargetForm)),
            ("*", Err(BadRequest::TargetForm)),
            ("www.shop.test:443", Err(BadRequest::TargetForm)),
            ("ftp://h/x", Err(BadRequest::TargetForm)),
            ("http:///x", Err(BadRequest::TargetForm)),
            ("http://user@h/x", Err(BadRequest::TargetForm)),
            ("/a\x01b", Err(BadRequest::TargetBytes)),
            ("/a\x7fb", Err(BadRequest::TargetBytes)),
            ("/a b", Err(BadRequest::TargetBytes)),
            ("/caf\u{e9}", Err(BadRequest::TargetBytes)),
            ("/a`b", Err(BadRequest::TargetBytes)),
            ("/a?q=<script>", Err(BadRequest::TargetBytes)),
            ("/a?q=\"x\"", Err(BadRequest::TargetBytes)),
            (
                "/a{b}|c^[d]?e={}",
                Ok(Target::Path {
                    path: "/a{b}|c^[d]",
                    query: Some("e={}"),
                    authority: None,
                }),
            ),
            ("", Err(BadRequest::TargetForm)),
        ] {
            assert_eq!(parse(raw.as_bytes(), &get), want, "{raw:?}");
        }
        assert_eq!(parse(b"*", &Method::OPTIONS), Ok(Target::Asterisk));
    }

    fn host_of(
        target: Option<&str>,
        authority: Option<&str>,
        hosts: &[&str],
        required: bool,
    ) -> Result<Option<String>, BadRequest> {
        host(HostSources {
            target_authority: target,
            authority,
            host_headers: hosts.iter().map(|h| h.as_bytes()),
            host_required: required,
        })
    }

    #[test]
    fn the_host_is_one_normalised_name_and_ambiguity_is_refused() {
        let some = |h: &str| Ok(Some(h.to_string()));
        assert_eq!(
            host_of(None, None, &["WWW.Shop.test:6666"], true),
            some("www.shop.test")
        );
        assert_eq!(
            host_of(None, None, &["www.shop.test."], true),
            some("www.shop.test")
        );
        assert_eq!(
            host_of(Some("a.test"), None, &["a.test"], true),
            some("a.test")
        );
        assert_eq!(host_of(Some("a.test"), None, &[], true), some("a.test"));
        for (target, host) in [("a.test", "b.test"), ("A.test", "a.test")] {
            assert_eq!(
                host_of(Some(target), None, &[host], true),
                Err(BadRequest::HostMismatch)
            );
        }
        assert_eq!(host_of(None, Some("a.test:443"), &[], true), some("a.test"));
        assert_eq!(host_of(None, None, &["[::1]:80"], true), some("[::1]"));
        assert_eq!(host_of(None, None, &[], true), Err(BadRequest::NoHost));
        assert_eq!(host_of(None, None, &[], false), Ok(None));
        assert_eq!(
            host_of(None, None, &["a.test", "b.test"], true),
            Err(BadRequest::DuplicateHost)
        );
        for bad in ["", "a b", "a/b", "a@b", "\"x\"", ".", ":80"] {
            assert_eq!(
                host_of(None, None, &[bad], true),
                Err(BadRequest::BadHost),
                "{bad:?}"
            );
        }
    }
}
