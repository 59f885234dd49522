//! Logging: tracing with a bridge for pingora's `log` records, and the access log — one
//! structured event per request on the `crossfade::access` target (stdout; diagnostics go to
//! stderr).

use crate::config::{LogFormat, LogSettings};
use crate::proxy::decide::headers::cache_label;
use crate::proxy::hooks::ctx::RequestCtx;
use pingora::proxy::Session;
use pingora::Error;
use std::io::IsTerminal;
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

/// One finished request, as the access log writes it.
pub struct AccessEvent<'a> {
    pub site: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub status: u16,
    pub cache: &'a str,
    pub pool: &'a str,
    pub upstream: Option<std::net::SocketAddr>,
    pub upstream_ms: f64,
    pub total_ms: f64,
    pub bytes: usize,
    pub error: &'a str,
    pub request_id: &'a str,
}

/// Emits the access-log event for one request that went through pingora's proxy.
pub fn access_log(session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
    let req = session.req_header();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    access(&AccessEvent {
        site: ctx.site.as_ref().map_or("-", |s| &*s.name),
        route: ctx.rule.as_ref().map_or("-", |r| &*r.name),
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query().unwrap_or(""),
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        cache: cache_label(&session.cache, ctx),
        pool: ctx.pool.as_deref().unwrap_or("-"),
        upstream: ctx.upstream_addr,
        upstream_ms: ctx.upstream_time.map_or(0.0, ms),
        total_ms: ms(ctx.start.elapsed()),
        bytes: session.body_bytes_sent(),
        error: error.map(|e| e.etype().as_str()).unwrap_or(""),
        request_id: ctx.request_id.as_str(),
    });
}

/// Emits one access-log event.
pub fn access(e: &AccessEvent) {
    tracing::info!(
        target: ACCESS_TARGET,
        site = e.site,
        route = e.route,
        method = e.method,
        path = e.path,
        query = e.query,
        status = e.status,
        cache = e.cache,
        pool = e.pool,
        upstream = e.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        upstream_ms = e.upstream_ms,
        total_ms = e.total_ms,
        bytes = e.bytes,
        error = e.error,
        request_id = e.request_id,
        "request"
    );
}
