//! `[proxy]`: listeners, unknown hosts, who may send PURGE, and the request limits.

use super::file::ProxyFile;
use super::validate::Issues;
use super::ProxySettings;
use std::net::SocketAddr;
use std::time::Duration;

/// Limits on what a client may send (issue 8). Defaults follow nginx's: an 8 KiB request line
/// (`large_client_header_buffers 4 8k`), 32 KiB of headers; at most 100 header lines (Apache's
/// `LimitRequestFields`); a request head must arrive within 10 s (nginx's `client_header_timeout`
/// is 60 s; 10 s is what Apache's `mod_reqtimeout` allows a head with a slow start, and no real
/// browser needs more); a request body may pause at most 60 s at a time (`client_body_timeout`); an idle
/// kept-alive connection is closed after 75 s (nginx's `keepalive_timeout`; pingora's own is
/// unlimited); 20,000 connections, 512 from one address (browsers open six per
/// host; the margin is for many visitors behind one carrier NAT). Behind a load balancer that
/// does not pass client addresses at the TCP level, raise the per-client limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request target (path and query) bytes; longer: 414.
    pub max_uri: usize,
    /// Bytes of all header lines together; more: 431.
    pub max_header_bytes: usize,
    /// Header lines; more: 431.
    pub max_headers: usize,
    /// Time for a whole request head to arrive; slower: 408 and close.
    pub header_timeout: Duration,
    /// Time for a request body to make progress (each read); slower: 408 and close.
    pub body_timeout: Duration,
    /// Time a kept-alive client connection may sit idle between requests; then it is closed.
    pub keepalive_timeout: Duration,
    /// Client connections open at once on the proxy listeners; more are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_client: usize,
}

pub(super) fn settings(f: ProxyFile, issues: &mut Issues) -> ProxySettings {
    let limits = limits(&f, issues);
    let raw = f.listen.unwrap_or_else(|| vec!["0.0.0.0:8080".into()]);
    if raw.is_empty() {
        issues.push("proxy.listen", "needs at least one address");
    }
    let mut listen = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => issues.push(
                format!("proxy.listen[{i}]"),
                format!("{a:?} is not an address like \"0.0.0.0:8080\""),
            ),
        }
    }
    let unknown_host_status = f.unknown_host_status.unwrap_or(421);
    if !matches!(unknown_host_status, 404 | 421) {
        issues.push(
            "proxy.unknown_host_status",
            format!("{unknown_host_status} is not 404 or 421"),
        );
    }
    let mut purge_from = Vec::new();
    for (i, net) in f.purge_from.iter().flatten().enumerate() {
        match super::admin::Cidr::parse(net) {
            Some(c) => purge_from.push(c),
            None => issues.push(
                format!("proxy.purge_from[{i}]"),
                format!("{net:?} is not a network like \"10.0.0.0/8\""),
            ),
        }
    }
    ProxySettings {
        listen,
        h2c: f.h2c.unwrap_or(false),
        hit_fast_path: f.hit_fast_path.unwrap_or(true),
        pass_fast_path: f.pass_fast_path.unwrap_or(true),
        unknown_host_status,
        purge_from,
        limits,
    }
}

fn limits(f: &ProxyFile, issues: &mut Issues) -> Limits {
    let size = |issues: &mut Issues, key: &str, v: &Option<String>, default: u64, floor: u64| {
        let n = issues.size(&format!("proxy.{key}"), v, default);
        if n < floor {
            issues.push(
                format!("proxy.{key}"),
                format!("must be at least {floor} bytes"),
            );
        }
        n as usize
    };
    let max_uri = size(issues, "max_uri", &f.max_uri, 8 << 10, 256);
    let max_header_bytes = size(
        issues,
        "max_header_bytes",
        &f.max_header_bytes,
        32 << 10,
        1024,
    );
    let max_headers = f.max_headers.unwrap_or(100);
    if !(10..=256).contains(&max_headers) {
        // pingora parses at most 256 header lines.
        issues.push("proxy.max_headers", "must be between 10 and 256");
    }
    let secs = Duration::from_secs;
    let header_timeout =
        issues.positive_duration("proxy.header_timeout", &f.header_timeout, secs(10));
    let body_timeout = issues.positive_duration("proxy.body_timeout", &f.body_timeout, secs(60));
    let keepalive_timeout =
        issues.duration("proxy.keepalive_timeout", &f.keepalive_timeout, secs(75));
    if keepalive_timeout < secs(1) {
        // pingora keeps connections alive in whole seconds.
        issues.push("proxy.keepalive_timeout", "must be at least 1s");
    }
    let max_connections = f.max_connections.unwrap_or(20_000);
    let max_connections_per_client = f.max_connections_per_client.unwrap_or(512);
    if max_connections == 0 {
        issues.push("proxy.max_connections", "must be at least 1");
    }
    if max_connections_per_client == 0 {
        issues.push("proxy.max_connections_per_client", "must be at least 1");
    }
    Limits {
        max_uri,
        max_header_bytes,
        max_headers,
        header_timeout,
        body_timeout,
        keepalive_timeout,
        max_connections,
        max_connections_per_client,
    }
}
