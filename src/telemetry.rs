//! Logging: tracing with a bridge for pingora's `log` records, and the access log — one
//! structured event per request on the `crossfade::access` target (stdout; diagnostics go to
//! stderr), made with the request metrics from one record ([`Finished`]) by every transport.

use crate::config::{LogFormat, LogSettings};
use crate::metrics::{Metrics, RequestEvent};
use std::io::IsTerminal;
use std::time::Duration;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::prelude::*;

/// The target of access-log events.
pub const ACCESS_TARGET: &str = "crossfade::access";

/// Installs the global subscriber. Safe to call once per process.
pub fn init(settings: &LogSettings) {
    // pingora logs through `log`; without a max level every one of its debug! calls on the
    // hot path would be handed to tracing just to be filtered out there.
    let log_level = match std::env::var("RUST_LOG") {
        Ok(_) => tracing_log::log::LevelFilter::Trace,
        Err(_) => settings
            .level
            .parse()
            .unwrap_or(tracing_log::log::LevelFilter::Trace),
    };
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(log_level)
        .init();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},pingora_cache::meta=error", settings.level))
    });
    let access = settings.access_log;
    ACCESS_ON.store(access, std::sync::atomic::Ordering::Relaxed);
    let is_access = |m: &tracing::Metadata<'_>| m.target() == ACCESS_TARGET;
    let registry = tracing_subscriber::registry();
    let ansi_out = std::io::stdout().is_terminal();
    let ansi_err = std::io::stderr().is_terminal();
    match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stdout)
                    .with_filter(filter_fn(move |m| access && is_access(m))),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(filter_fn(move |m| !is_access(m)))
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi_out)
                    .with_writer(std::io::stdout)
                    .with_filter(filter_fn(move |m| access && is_access(m))),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi_err)
                    .with_writer(std::io::stderr)
                    .with_filter(filter_fn(move |m| !is_access(m)))
                    .with_filter(filter),
            )
            .try_init(),
    }
    .ok();
}

/// Whether access-log events are written (what a request must keep for its line, like the
/// client's user agent, is only kept then).
static ACCESS_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn access_log_on() -> bool {
    ACCESS_ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Who asked, for the access log: kept by a transport only when [`access_log_on`].
#[derive(Debug, Default, Clone)]
pub struct Client {
    /// The client's IP address (the TCP peer).
    pub addr: String,
    /// The Host header (or HTTP/2 `:authority`) as sent.
    pub host: String,
    /// `HTTP/1.1`, `HTTP/2`, … and `+tls` over TLS.
    pub protocol: String,
    pub user_agent: String,
    pub referer: String,
}

impl Client {
    /// From a request pingora read, and the client's address; HTTP/2's `:authority` stands in
    /// for a missing Host.
    pub fn of_request(
        req: &pingora::http::RequestHeader,
        addr: Option<&pingora::protocols::l4::socket::SocketAddr>,
        tls: bool,
    ) -> Client {
        let addr = addr.and_then(|a| a.as_inet()).map(|a| a.ip().to_string());
        let mut c = Client::new(addr.unwrap_or_default(), req.version, tls, |name| {
            req.headers.get(name).map(|v| v.as_bytes())
        });
        if c.host.is_empty() {
            c.host = req
                .uri
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
        }
        c
    }

    /// From a request's parts; `header` looks a request header up by lowercase name.
    pub fn new<'h>(
        addr: String,
        version: http::Version,
        tls: bool,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Client {
        let text = |name: &str| {
            header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let version = match version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        Client {
            addr,
            host: text("host"),
            protocol: if tls {
                format!("{version}+tls")
            } else {
                version.to_string()
            },
            user_agent: text("user-agent"),
            referer: text("referer"),
        }
    }
}

/// One finished request, as every transport reports it: the access-log event and the request
/// metrics are both made from this one record, so the two transports cannot log or count a
/// request differently.
pub struct Finished<'a> {
    pub site: &'a str,
    pub route: &'a str,
    pub pool: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub status: u16,
    /// Cache outcome label (`hit`, `miss`, `bypass`, `edge`, …; see `hooks::status::cache_label`).
    pub cache: &'static str,
    /// Why the cache was bypassed, when it was.
    pub bypass: Option<&'static str>,
    /// `Some(None)`: stored; `Some(Some(reason))`: not stored; `None`: no storage decision.
    pub store: Option<Option<&'static str>>,
    pub upstream: Option<std::net::SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub total: Duration,
    pub bytes: usize,
    /// The failure's label (`pingora::ErrorType::as_str`), empty when none.
    pub error: &'a str,
    /// What the pool's server did with the request.
    pub origin: crate::stats::Asked,
    pub request_id: &'a str,
    /// The route's query filter, when there was a route.
    pub query_filter: Option<&'a crate::rules::QueryFilter>,
    /// Who asked (empty when the access log is off).
    pub client: &'a Client,
    /// Answered by the fast transport, over HTTP/1.1 or HTTP/2 (counted in
    /// `crossfade_fast_path_*_total`).
    pub fast: bool,
}

/// Logs and counts one finished request.
pub fn finished(metrics: &Metrics, f: &Finished) {
    // Milliseconds to the microsecond: more digits are noise in a log line.
    let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    // A cacheable request's query lost what the route's `query_keep` does not list: said in
    // the log and counted, so a parameter the application needs is not dropped in silence.
    let dropped = match f.query_filter {
        Some(filter) if f.bypass.is_none() && f.cache != "edge" && !f.query.is_empty() => {
            crate::cache::key::dropped_by_allow_list(f.query, filter)
        }
        _ => Vec::new(),
    };
    if !dropped.is_empty() {
        metrics.query_dropped(f.site, f.route, &dropped);
    }
    access(&AccessEvent {
        site: f.site,
        route: f.route,
        method: f.method,
        path: f.path,
        query: f.query,
        status: f.status,
        cache: f.cache,
        pool: f.pool,
        upstream: f.upstream,
        upstream_ms: f.upstream_time.map_or(0.0, ms),
        total_ms: ms(f.total),
        bytes: f.bytes,
        error: f.error,
        request_id: f.request_id,
        query_dropped: &dropped.join(","),
        client: f.client,
    });
    metrics.request(&RequestEvent {
        site: f.site,
        route: f.route,
        pool: f.pool,
        cache: f.cache,
        status: f.status,
        total: f.total,
        upstream: f.upstream_time,
        ttfb: f.ttfb,
        bytes: f.bytes,
        bypass: f.bypass,
        store: f.store,
        origin: f.origin,
        fast: f.fast,
    });
}

/// The access log's fields.
struct AccessEvent<'a> {
    site: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    status: u16,
    cache: &'a str,
    pool: &'a str,
    upstream: Option<std::net::SocketAddr>,
    upstream_ms: f64,
    total_ms: f64,
    bytes: usize,
    error: &'a str,
    request_id: &'a str,
    /// Parameters `query_keep` dropped, comma-separated.
    query_dropped: &'a str,
    client: &'a Client,
}

/// Emits one access-log event.
fn access(e: &AccessEvent) {
    let c = e.client;
    tracing::info!(
        target: ACCESS_TARGET,
        client = c.addr.as_str(),
        host = c.host.as_str(),
        protocol = c.protocol.as_str(),
        site = e.site,
        route = e.route,
        method = e.method,
        path = e.path,
        query = e.query,
        query_dropped = e.query_dropped,
        status = e.status,
        cache = e.cache,
        pool = e.pool,
        upstream = e.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        upstream_ms = e.upstream_ms,
        total_ms = e.total_ms,
        bytes = e.bytes,
        error = e.error,
        request_id = e.request_id,
        user_agent = c.user_agent.as_str(),
        referer = c.referer.as_str(),
        "request"
    );
}
