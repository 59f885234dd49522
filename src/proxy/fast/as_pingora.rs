//! What pingora's proxy path does that the fast transport does again, in one place: the limits,
//! lists and labels a client or an origin could otherwise tell apart between the two transports.
//! Each value names where pingora 0.9.1 keeps it; `tests/transports.rs` runs both transports
//! against the same origin to confirm the behaviour (`CROSSFADE_TEST_TRANSPORT`).

use pingora::ErrorType;

/// Header fields a message head may have (pingora-core `protocols/http/v1/common.rs`
/// `MAX_HEADERS`); more, and an origin's response is a 502.
pub const MAX_HEADERS: usize = 256;

/// Bytes a message head may take (pingora-core `MAX_HEADER_SIZE`); more, and an origin's response
/// is a 502.
pub const MAX_HEAD_BYTES: usize = 1_048_575;

/// Idle upstream connections pingora keeps (its connection pool's default size), here per origin
/// address.
pub const IDLE_CONNECTIONS: usize = 128;

/// The keep-alive timeout pingora's connection loop gives a new connection's first request, in
/// seconds (`request_filter` sets the configured one for the requests after it).
pub const FIRST_KEEPALIVE_SECS: u64 = 60;

/// Request headers pingora removes before a request goes upstream (hop-by-hop, RFC 9110 §7.6.1,
/// and HTTP/2's upgrade settings; pingora-proxy `proxy_common.rs`), besides the untrusted ones
/// `sanitize` drops; `x-request-id` is set again from the request id.
pub const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "x-request-id",
];

/// The access log's `error` label of a failure, as pingora's path logs it.
pub fn error_label(e: ErrorType) -> &'static str {
    e.as_str()
}
