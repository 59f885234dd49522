//! Invalidation from the proxy listener: the `PURGE` method (Varnish/Squid style, only from
//! `proxy.purge_from` networks) and RFC 9111 §4.4 invalidation after unsafe methods.

use super::ctx::RequestCtx;
use crate::cache::purge::Purge;
use crate::config::{normalize_host, Runtime};
use crate::fleet::Purger;
use bytes::Bytes;
use http::{header, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use std::sync::Arc;

/// Request header asking a `PURGE` to mark stale instead of remove.
pub const SOFT_PURGE_HEADER: &str = "crossfade-soft-purge";

async fn answer(session: &mut Session, status: u16, body: String) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(true)
}

/// Handles `PURGE <url>`: never forwarded; 405 when the method is off, 403 from a client
/// outside `proxy.purge_from`, else the purge report.
pub async fn purge_method(
    purger: &Purger,
    rt: &Runtime,
    session: &mut Session,
    host: &str,
) -> Result<bool> {
    if rt.proxy.purge_from.is_empty() {
        let body = r#"{"error":"the PURGE method is not enabled (proxy.purge_from)"}"#;
        return answer(session, 405, body.into()).await;
    }
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let allowed = client.is_some_and(|ip| rt.proxy.purge_from.iter().any(|n| n.contains(ip)));
    if !allowed {
        let body = r#"{"error":"PURGE is not allowed from this address"}"#;
        return answer(session, 403, body.into()).await;
    }
    let req = session.req_header();
    let soft = req
        .headers
        .get(SOFT_PURGE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let url = format!(
        "{host}{}",
        req.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    match purger.purge(Purge::Url { url, soft }).await {
        Ok(report) => {
            let by = client.map_or("PURGE".to_string(), |ip| format!("PURGE from {ip}"));
            purger.record(crate::events::of_purge(&report, &by));
            answer(
                session,
                200,
                serde_json::to_string(&report).unwrap_or_default(),
            )
            .await
        }
        Err(e) => {
            answer(
                session,
                400,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            )
            .await
        }
    }
}

/// RFC 9111 §4.4: a non-error response to an unsafe method (any method not known to be safe,
/// RFC 9110 §9.2.1: `M-SEARCH` and `FOO` too) invalidates the target URI and the Location /
/// Content-Location URIs on the same host: here at once, on other nodes shortly.
pub fn after_unsafe_method(
    purger: &Arc<Purger>,
    req: &RequestHeader,
    resp: &ResponseHeader,
    ctx: &RequestCtx,
) {
    let unsafe_method = !matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    let status = resp.status.as_u16();
    if !unsafe_method || !(200..400).contains(&status) || ctx.host.is_empty() {
        return;
    }
    let mut targets = vec![format!(
        "{}{}",
        ctx.host,
        req.uri.path_and_query().map_or("/", |pq| pq.as_str())
    )];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if value.starts_with('/') && !value.starts_with("//") {
            targets.push(format!("{}{value}", ctx.host));
        } else if let Some(rest) = value
            .strip_prefix("http://")
            .or_else(|| value.strip_prefix("https://"))
        {
            let host = rest.split('/').next().unwrap_or_default();
            if normalize_host(host) == ctx.host {
                targets.push(rest.to_string());
            }
        }
    }
    for url in targets {
        let purge = Purge::Url { url, soft: false };
        match purger.apply_local(&purge) {
            Ok(_) => purger.broadcast(purge),
            Err(e) => tracing::debug!(error = %e, "invalidation after unsafe method skipped"),
        }
    }
}
