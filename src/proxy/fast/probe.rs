//! The two transports' readings of one HTTP/1 request head, side by side, for the differential
//! fuzz target (`fuzz/fuzz_targets/transports.rs`): the fast transport's (httparse, the headers
//! it keeps) and pingora's (its request header type, every header, the raw target the
//! connection loop keeps), each put through [`decide::plan`].

use super::{carried, plain_request};
use crate::config::Runtime;
use crate::pools::switch::States;
use crate::pools::Registry;
use crate::proxy::conn::framing;
use crate::proxy::decide::{self, RequestView};

/// The plan the fast transport would carry out for `head`; `None` when it leaves the request to
/// pingora's path (which then decides, and writes any edge answer, itself).
pub fn fast_plan(rt: &Runtime, pools: &Registry, states: &States, head: &[u8]) -> Option<String> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    let (method, target, headers) = plain_request(&mut parsed, head, &rt.proxy.limits)?;
    let view = RequestView {
        method: &method,
        version: http::Version::HTTP_11,
        target: target.as_bytes(),
        authority: None,
        headers: &headers,
        tls: false,
    };
    let plan = decide::plan(rt, pools, states, &view);
    match &plan {
        decide::Plan::Forward(f) if carried(f) => Some(plan.summary()),
        _ => None,
    }
}

/// The plan pingora's path takes for `head`, read as pingora reads a request (its
/// `RequestHeader`, every header) with the raw target the connection loop keeps for it;
/// `None` when pingora would refuse the head before any hook runs.
pub fn pingora_plan(
    rt: &Runtime,
    pools: &Registry,
    states: &States,
    head: &[u8],
) -> Option<String> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut slots);
    if !parsed.parse(head).ok()?.is_complete() {
        return None;
    }
    let version = match parsed.version? {
        0 => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut req = pingora::http::RequestHeader::build(
        parsed.method?,
        parsed.path?.as_bytes(),
        Some(parsed.headers.len()),
    )
    .ok()?;
    req.set_version(version);
    for h in parsed.headers.iter() {
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        req.append_header(h.name.to_string(), value).ok()?;
    }
    let raw = framing::request_target(head)?;
    let view = RequestView {
        method: &req.method,
        version: req.version,
        target: raw,
        authority: req.uri.authority().map(|a| a.as_str()),
        headers: &req.headers,
        tls: false,
    };
    Some(decide::plan(rt, pools, states, &view).summary())
}
