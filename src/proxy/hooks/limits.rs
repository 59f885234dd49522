//! What a client may send: unambiguous framing and bounded sizes (issue 8).
//!
//! pingora already refuses most ambiguous framing with 400 and closes the connection:
//! differing or listed `Content-Length`s, a `Transfer-Encoding` whose last coding is not
//! `chunked`, `Transfer-Encoding` on HTTP/1.0, malformed header lines and chunks. A message
//! with both `Content-Length` and `Transfer-Encoding` it reads as chunked (RFC 9112 §6.1
//! allows that) and forwards; crossfade refuses it instead, since no legitimate client sends
//! both and it is the classic smuggling probe. pingora drops the `Content-Length` before any
//! hook runs, so the check reads the raw header bytes.
//!
//! Sizes: the request target (414), the header block (431), the body per route (413, on
//! `Content-Length` before anything is forwarded, and counted while streaming a chunked one).

use crate::config::proxy::Limits;
use http::header;
use pingora::proxy::Session;

/// Why a request is refused before it goes anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Cache-Status detail and log label.
    pub detail: &'static str,
    pub message: &'static str,
}

const CONFLICT: Refusal = Refusal {
    status: 400,
    detail: "conflicting-framing",
    message: "crossfade: Content-Length and Transfer-Encoding together\n",
};

/// Checks the request head against `limits` and the framing rules.
pub fn check_head(session: &Session, limits: &Limits) -> Option<Refusal> {
    let req = session.req_header();
    let target = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.max_uri {
        return Some(Refusal {
            status: 414,
            detail: "uri-too-long",
            message: "crossfade: request target too long\n",
        });
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if req.headers.len() > limits.max_headers || header_bytes > limits.max_header_bytes {
        return Some(Refusal {
            status: 431,
            detail: "headers-too-large",
            message: "crossfade: request header fields too large\n",
        });
    }
    if req.headers.contains_key(header::TRANSFER_ENCODING) && raw_has_content_length(session) {
        return Some(CONFLICT);
    }
    None
}

/// Whether the request as received (HTTP/1) carried a `Content-Length` line.
fn raw_has_content_length(session: &Session) -> bool {
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    let raw = h1.get_headers_raw_bytes();
    raw.split(|b| *b == b'\n').skip(1).any(|line| {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"content-length")
    })
}

/// The declared body length when it is more than `max`.
pub fn declared_body_over(session: &Session, max: u64) -> Option<Refusal> {
    let len = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (len > max).then_some(TOO_LARGE)
}

pub const TOO_LARGE: Refusal = Refusal {
    status: 413,
    detail: "body-too-large",
    message: "crossfade: request body too large\n",
};
