//! pingora's `ProxyHttp` for crossfade: the transport for every request the fast transport does not
//! carry. Each hook is short and delegates:
//! site and route matching to config/rules, cache decisions to `cache::policy`, keys to
//! `cache::key`, response headers to [`headers`].
//!
//! Request path: site by host (unknown hosts are answered here, never forwarded) → route →
//! bypass decision → key → cache lookup (pingora-cache) → on miss/pass the site's active pool →
//! admission → `Cache-Status` and browser TTL → one access-log event.

mod conditional;
pub mod ctx;
pub(crate) mod edge;
mod invalidate;
mod limits;
pub mod status;

use super::conn::headclock;
use super::decide::{self, headers, sanitize, Answer, Plan, RequestView};
use crate::cache::{key, policy, vary, CacheCore};
use crate::config::Runtime;
use crate::fleet::Purger;
use crate::metrics::Metrics;
use crate::pools::switch::Release;
use crate::pools::{Admission, Registry};
use crate::stats::Asked;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use ctx::RequestCtx;
use http::header;
use pingora::cache::key::HashBinary;
use pingora::cache::predictor::CacheablePredictor;
use pingora::cache::ForcedFreshness;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::FailToProxy;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The crossfade proxy service logic.
pub struct EdgeProxy {
    runtime: Arc<ArcSwap<Runtime>>,
    cache: CacheCore,
    purger: Arc<Purger>,
    release: Arc<Release>,
    pools: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Set when the process was told to quit (binary upgrade, SIGTERM): answers then close
    /// their connection, so clients move to fresh connections (the new process) before
    /// pingora drops idle keep-alive connections.
    draining: Arc<AtomicBool>,
}

impl EdgeProxy {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        cache: CacheCore,
        purger: Arc<Purger>,
        release: Arc<Release>,
        pools: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        EdgeProxy {
            runtime,
            cache,
            purger,
            release,
            pools,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag that makes every answer close its connection.
    pub fn draining(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// The cache key of `ctx`'s request: its primary key under its site's namespace, hashed
    /// as the fast transport hashes it.
    fn cache_key(&self, ctx: &RequestCtx) -> CacheKey {
        let site = ctx.site.as_ref().map_or("", |s| &s.name);
        let mut k = CacheKey::new(ctx.primary.clone(), site);
        k.set_primary_bin_override(ctx.primary_hash);
        k
    }

    /// The server this request was sent to, for health bookkeeping.
    fn server<'a>(
        &self,
        ctx: &'a RequestCtx,
    ) -> Option<(&'a crate::pools::Pool, &'a crate::pools::Server)> {
        let pool = ctx.live_pool.as_deref()?;
        Some((pool, pool.server(ctx.upstream_addr?)?))
    }
}

/// Whether `raw` is `path`, or `path?query`, byte for byte.
fn is_target(raw: &[u8], (path, query): (&str, Option<&str>)) -> bool {
    match (raw.strip_prefix(path.as_bytes()), query) {
        (Some(rest), None) => rest.is_empty(),
        (Some(rest), Some(q)) => rest.first() == Some(&b'?') && &rest[1..] == q.as_bytes(),
        (None, _) => false,
    }
}

/// HTTP/1.1 keeps a connection open unless told otherwise, HTTP/1.0 only when asked
/// (pingora keeps both; `Connection: close` it handles itself).
fn wants_keepalive(req: &RequestHeader) -> bool {
    req.version != http::Version::HTTP_10
        || req.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            })
        })
}

/// Answers a refused request and closes its connection (what follows it on the connection
/// cannot be trusted to be framed the way the client meant).
async fn refuse(session: &mut Session, ctx: &mut RequestCtx, r: limits::Refusal) -> Result<bool> {
    ctx.edge_answer = Some(r.detail);
    session.set_keepalive(None);
    edge::send(
        session,
        &Answer::text(r.status, r.detail, r.message),
        &ctx.request_id,
    )
    .await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let rt = self.runtime.load_full();
        if self.draining.load(Ordering::Relaxed) || !wants_keepalive(session.req_header()) {
            session.set_keepalive(None);
        } else {
            // pingora's own is 60 s; carried to the next request on the connection.
            session.set_keepalive(Some(rt.proxy.limits.keepalive_timeout.as_secs().max(1)));
        }
        ctx.request_id = headers::request_id(session.req_header().headers.get("x-request-id"));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let Some(refused) = limits::check_head(session, &rt.proxy.limits) {
            ctx.runtime = Some(rt);
            return refuse(session, ctx, refused).await;
        }
        session.set_read_timeout(Some(rt.proxy.limits.body_timeout));
        let states = self.release.current();
        // pingora's parsed (and even its raw) head escapes bytes it cannot hold and files targets
        // it cannot classify under `/`; the decision must see what the client sent, which the
        // connection loop kept (HTTP/2's `:path` pingora keeps as sent).
        let raw = headclock::raw_target(session);
        let req = session.req_header();
        let view = RequestView {
            method: &req.method,
            version: req.version,
            target: raw.as_deref().unwrap_or(req.raw_path()),
            authority: req.uri.authority().map(|a| a.as_str()),
            headers: &req.headers,
            tls: ctx.tls,
        };
        let forward = match decide::plan(&rt, &self.pools, &states, &view) {
            Plan::Answer(answer) => {
                ctx.edge_answer = Some(answer.detail);
                ctx.edge_at = answer.site.clone().zip(answer.route.clone());
                ctx.runtime = Some(rt);
                edge::send(session, &answer, &ctx.request_id).await?;
                return Ok(true);
            }
            Plan::Purge { host } => {
                ctx.edge_answer = Some("purge");
                ctx.runtime = Some(rt.clone());
                return invalidate::purge_method(&self.purger, &rt, session, &host).await;
            }
            Plan::Forward(f) => f,
        };
        // The routed form is what every later hook, the log and the origin see.
        // Compared piece by piece: most targets need no rewrite, and need no string for it.
        let routed = (&*forward.path, forward.query);
        let rewrite = !is_target(req.raw_path(), routed);
        let routed = rewrite.then(|| match routed {
            (path, Some(q)) => format!("{path}?{q}"),
            (path, None) => path.to_string(),
        });
        ctx.upstream_uri = Some(forward.upstream_target().into_owned());
        ctx.bypass = forward.bypass();
        if let decide::Caching::Cacheable { primary, .. } = forward.cache {
            ctx.primary_hash = key::hash(&primary);
            ctx.primary = primary;
        }
        ctx.pool = Some(forward.pool);
        ctx.new_cohort = forward.new_cohort;
        ctx.maintenance_cached = forward.maintenance_cached;
        ctx.host = forward.host;
        // This path keeps them in its context: its own references.
        let rule = forward.rule.clone();
        ctx.site = Some(forward.site.clone());
        ctx.runtime = Some(rt);
        if let Some(routed) = routed {
            let uri = routed.parse().map_err(|e| {
                Error::because(ErrorType::InternalError, "routed target does not parse", e)
            })?;
            session.req_header_mut().set_uri(uri);
        }
        let max_body = rule.max_body;
        ctx.rule = Some(rule);
        if let Some(refused) = limits::declared_body_over(session, max_body) {
            return refuse(session, ctx, refused).await;
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        match &ctx.rule {
            Some(rule) if ctx.body_bytes > rule.max_body => Error::e_explain(
                ErrorType::HTTPStatus(limits::TOO_LARGE.status),
                "request body over the route's max_body",
            ),
            _ => Ok(()),
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        if ctx.bypass.is_some() || ctx.site.is_none() {
            return Ok(());
        }
        let c = &self.cache;
        // Pingora asks the predictor before it looks in the cache, so a key remembered as
        // uncacheable (another variant of the page was private) would hide a fresh stored
        // variant. Where this request's variant is stored fresh, the lookup runs without the
        // predictor and serves it, as the fast transport does (it looks first).
        let predictor: &'static (dyn CacheablePredictor + Sync) = c.predictor;
        // The predictor reads only the key's hash.
        let mut probe = CacheKey::new("", "");
        probe.set_primary_bin_override(ctx.primary_hash);
        let predictor = match ctx.rule.as_deref() {
            Some(rule) if !c.predictor.cacheable_prediction(&probe) => {
                let stored = c.storage.fresh_hit(rule, ctx.primary_hash, |_| {
                    Cow::Borrowed(&session.req_header().headers)
                });
                stored.is_none().then_some(predictor)
            }
            _ => Some(predictor),
        };
        session
            .cache
            .enable(c.storage, None, predictor, Some(c.lock), None);
        session.cache.set_max_file_size_bytes(c.max_object_size);
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        Ok(self.cache_key(ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let rule = ctx.rule.as_deref()?;
        key::variance(meta.headers(), rule, &req.headers)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        let Some(rule) = &ctx.rule else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        // pingora merges only a few headers of a 304 into the stored ones; RFC 9111 §4.3.4
        // wants all of them (but framing), so the stored object is refreshed completely.
        let merged = ctx
            .not_modified
            .take()
            .map(|fresh| policy::merge_not_modified(resp, &fresh));
        let req = session.req_header();
        let authorized = req.headers.contains_key(header::AUTHORIZATION);
        Ok(
            match policy::admit(
                rule,
                req.uri.path(),
                merged.as_ref().unwrap_or(resp),
                authorized,
                std::time::SystemTime::now() - ctx.start.elapsed(),
            ) {
                Ok(meta) => RespCacheable::Cacheable(meta),
                Err(reason) => RespCacheable::Uncacheable(NoCacheReason::Custom(reason.as_str())),
            },
        )
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let (Some(site), Some(rt)) = (ctx.site.clone(), ctx.runtime.clone()) else {
            return Error::e_explain(ErrorType::InternalError, "no site selected");
        };
        // The live pool, kept for this request's retries and health bookkeeping (a reload
        // meanwhile does not move it to another).
        if ctx.live_pool.is_none() {
            let name = ctx.pool.as_deref().unwrap_or_default();
            ctx.live_pool = self.pools.pool(&site.name, name);
        }
        let Some(pool) = ctx.live_pool.clone() else {
            // A pool a reload removed this instant: no server to send it to.
            ctx.no_server = true;
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some("the pool is gone".into()),
                None,
            ));
        };
        // Origin protection: a slot of the pool's `max_inflight` (kept for a retry).
        if ctx.slot.is_none() {
            let labels = [&*site.name, pool.name()];
            match pool.admit().await {
                Admission::Unlimited => {}
                Admission::Slot { slot, waited } => {
                    if waited {
                        self.metrics.pool_waits.with_label_values(&labels).inc();
                    }
                    ctx.slot = Some(slot);
                }
                Admission::Full => {
                    self.metrics.pool_waits.with_label_values(&labels).inc();
                    ctx.shed = true;
                    // An upstream error: a stale copy is served for it where one may be.
                    return Err(Error::create(
                        ErrorType::Custom("origin-busy"),
                        ErrorSource::Upstream,
                        Some(format!("pool {:?} is at max_inflight", pool.name()).into()),
                        None,
                    ));
                }
            }
        }
        // A retry picks again; release the previous pick first.
        if let Some(prev) = ctx.upstream_addr.take().and_then(|a| pool.server(a)) {
            prev.inflight.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .origin_retries
                .with_label_values(&[&*site.name, pool.name()])
                .inc();
        }
        let Some(server) = pool.pick() else {
            ctx.no_server = true;
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some(format!("pool {:?} has no healthy server", pool.name()).into()),
                None,
            ));
        };
        server.inflight.fetch_add(1, Ordering::Relaxed);
        ctx.tries += 1;
        let mut peer = HttpPeer::new(server.addr, false, String::new());
        let o = &rt.origin;
        peer.options.connection_timeout =
            Some(pool.spec.connect_timeout.unwrap_or(o.connect_timeout));
        peer.options.read_timeout = Some(pool.spec.read_timeout.unwrap_or(o.read_timeout));
        peer.options.write_timeout = Some(o.write_timeout);
        peer.options.idle_timeout = Some(o.idle_timeout);
        if pool.spec.http2 {
            peer.options.set_http_version(2, 2);
        }
        ctx.upstream_addr = Some(server.addr);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent, so another server may take the request: each server once (the
        // failed one is out of rotation now, so the next pick is another).
        let servers = match self.server(ctx) {
            Some((pool, server)) => {
                server.connect_failed(pool.spec.passive_down);
                pool.servers.len()
            }
            None => 1,
        };
        ctx.refused += 1;
        e.set_retry(ctx.refused < servers && ctx.tries < crate::app::MAX_TRIES);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // pingora's policy, once: an idempotent request whose body is still whole, on a reused
        // connection that failed before any answer (`decide_reuse` keeps only the
        // `ReusedOnly` failures of reused connections), and not already sent again.
        let answered = ctx.upstream_status.is_some();
        if ctx.resent
            || answered
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        ctx.resent |= e.retry();
        // A reused connection the origin had closed is a keep-alive race, not a sick server,
        // unless the request sent again fails too; any other failure of the server's transport
        // counts towards a passive mark.
        let transport =
            e.esource() == &ErrorSource::Upstream && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        if transport && !e.retry() {
            if let Some((pool, server)) = self.server(ctx) {
                server.exchange_failed(pool.spec.passive_failures, pool.spec.passive_down);
            }
        }
        e
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        if !ctx.maintenance_cached {
            return Ok(true);
        }
        ctx.edge_answer = Some("maintenance");
        if let Some(rt) = ctx.runtime.clone() {
            edge::send(session, &Answer::maintenance(&rt), &ctx.request_id).await?;
        }
        Ok(false)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<bool> {
        Ok(conditional::not_modified(session.req_header(), resp))
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> pingora::proxy::RangeType {
        conditional::range(session.req_header(), resp)
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut pingora::cache::storage::HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>> {
        // In maintenance with cached copies allowed, a stale copy beats the maintenance page.
        Ok((ctx.maintenance_cached && !is_fresh).then_some(ForcedFreshness::ForceFresh))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ if ctx.no_server || ctx.shed => 503,
            _ => match e.esource() {
                ErrorSource::Upstream => decide::answer::origin_failure_status(e.etype()),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // A body that stopped arriving (proxy.body_timeout).
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // The connection is not reused after a failure: the answer says so (`Connection:
        // close`) rather than promising keep-alive to a client whose next request would fail.
        session.set_keepalive(None);
        // Once an answer has begun, only closing the connection can tell the client.
        let begun = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational() || r.status == 101);
        if !begun && code == 503 && ctx.no_server {
            ctx.edge_answer = Some("no-healthy-server");
            if let Some(rt) = ctx.runtime.clone() {
                let page = Answer::unavailable(
                    "no-healthy-server",
                    &rt.release.maintenance_page,
                    rt.release.retry_after,
                );
                let _ = edge::send(session, &page, &ctx.request_id).await;
            }
        } else if !begun && code == 503 && ctx.shed {
            ctx.edge_answer = Some("origin-busy");
            let _ = edge::send(session, &Answer::busy(), &ctx.request_id).await;
        } else if !begun && code > 0 {
            let _ = edge::send(session, &Answer::error(code), &ctx.request_id).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream_uri {
            upstream.set_uri(uri.parse().map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "upstream target does not parse",
                    e,
                )
            })?);
        }
        if ctx.bypass.is_none() {
            // Cacheable request: the origin sees only the cookies that are part of the key, so
            // nothing unkeyed can shape a response that others will receive, and is asked for
            // the one coding the variant is keyed by (`cache::vary`).
            let kept = ctx
                .rule
                .as_deref()
                .and_then(|rule| key::kept_cookies(&upstream.headers, rule));
            let coding = vary::accept_encoding(&upstream.headers);
            upstream.remove_header(&header::COOKIE);
            upstream.remove_header(&header::ACCEPT_ENCODING);
            if let Some(kept) = kept {
                upstream.insert_header(header::COOKIE, kept)?;
            }
            if let Some(coding) = coding {
                upstream.insert_header(header::ACCEPT_ENCODING, coding)?;
            }
        } else {
            let cookies = upstream.headers.get_all(header::COOKIE);
            if let Some(joined) = headers::joined_cookies(cookies.iter().map(|v| v.as_bytes())) {
                upstream.insert_header(header::COOKIE, joined)?;
            }
        }
        sanitize::sanitize(upstream, ctx.rule.as_deref());
        // The host the key was built from, never the client's spelling of it (port, case,
        // trailing dot): a page built for another Host must not be stored under this one.
        upstream.insert_header(header::HOST, ctx.host.as_str())?;
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            upstream.insert_header("x-forwarded-for", addr.ip().to_string())?;
        }
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        upstream.insert_header("x-forwarded-host", ctx.host.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::NOT_MODIFIED
            && session.cache.phase() == pingora::cache::CachePhase::Stale
        {
            ctx.not_modified = Some(upstream_response.headers.clone());
        }
        // Fields about the origin's connection go neither to the client nor into the cache.
        let status = upstream_response.status.as_u16();
        let connection = upstream_response.headers.get_all(header::CONNECTION);
        let hop = headers::HopByHop::new(status, connection.iter().map(|v| v.as_bytes()));
        let drop: Vec<http::HeaderName> = upstream_response
            .headers
            .keys()
            .filter(|k| hop.contains(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in drop {
            upstream_response.remove_header(&name);
        }
        ctx.upstream_status = Some(status);
        ctx.upstream_time = ctx.upstream_start.map(|s| s.elapsed());
        if let Some((_, server)) = self.server(ctx) {
            server.answered();
        }
        Ok(())
    }

    /// A HEAD answer carries no body. pingora asks the origin with GET when a HEAD misses a
    /// cacheable route (to fill the cache) and its HTTP/1 writer drops that body; its HTTP/2
    /// writer sent it, and the client reset the stream (PROTOCOL_ERROR, RFC 9113 §8.1.1).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        _ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if session.req_header().method == http::Method::HEAD {
            *body = None;
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.ttfb = Some(ctx.start.elapsed());
        if ctx.stale_on_error {
            // pingora ends the client connection after any origin failure, a stale copy
            // served for it included: the answer must say so, not promise keep-alive.
            session.set_keepalive(None);
        }
        ctx.store = status::store_decision(&session.cache, ctx);
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        invalidate::after_unsafe_method(&self.purger, session.req_header(), resp, ctx);
        if let (Some(bucket), Some(rt)) = (ctx.new_cohort, &ctx.runtime) {
            let cookie = format!(
                "{}={bucket}; Path=/; Max-Age=86400; SameSite=Lax",
                rt.release.cohort_cookie
            );
            resp.append_header(header::SET_COOKIE, cookie)?;
        }
        status::finish_response(&session.cache, ctx, resp)
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        match error {
            // stale-while-revalidate: pingora has already checked the object's window.
            None => true,
            Some(e) => {
                let origin_failed = e.esource() == &ErrorSource::Upstream
                    || matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500);
                let stored = session.cache.maybe_cache_meta();
                let serves =
                    stored.is_some_and(|m| policy::serves_for_an_error(m.response_header().status));
                ctx.stale_on_error |= origin_failed && serves;
                origin_failed && serves
            }
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        ctx.slot = None;
        if let (true, Some(site), Some(pool)) = (ctx.shed, &ctx.site, &ctx.pool) {
            let answer = if ctx.stale_on_error {
                "stale"
            } else {
                "unavailable"
            };
            self.metrics.shed(&site.name, pool.as_str(), answer);
        }
        if let Some((_, server)) = self.server(ctx) {
            server.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        let rt = ctx
            .runtime
            .clone()
            .unwrap_or_else(|| self.runtime.load_full());
        let limits = &rt.proxy.limits;
        headclock::rearm(session, limits.header_timeout, limits.keepalive_timeout);
        let req = session.req_header();
        let upstream_failed = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let client_left = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
        let origin = match (ctx.upstream_status, ctx.upstream_addr) {
            (Some(_), _) if upstream_failed => Asked::Failed,
            (Some(status), _) => Asked::Answered(status),
            // A server was tried and gave no answer (an error, or a stale copy served for it).
            (None, Some(_)) if !client_left => Asked::Failed,
            (None, _) => Asked::No,
        };
        let client = if crate::telemetry::access_log_on() {
            crate::telemetry::Client::of_request(req, session.client_addr(), ctx.tls)
        } else {
            crate::telemetry::Client::default()
        };
        crate::telemetry::finished(
            &self.metrics,
            &crate::telemetry::Finished {
                site: ctx
                    .site
                    .as_ref()
                    .map(|s| &*s.name)
                    .or(ctx.edge_at.as_ref().map(|(s, _)| &**s))
                    .unwrap_or("-"),
                route: ctx
                    .rule
                    .as_ref()
                    .map(|r| &*r.name)
                    .or(ctx.edge_at.as_ref().map(|(_, r)| &**r))
                    .unwrap_or("-"),
                pool: ctx.pool.as_deref().unwrap_or("-"),
                method: req.method.as_str(),
                path: req.uri.path(),
                query: req.uri.query().unwrap_or(""),
                status: session.response_written().map_or(0, |r| r.status.as_u16()),
                cache: status::cache_label(&session.cache, ctx),
                bypass: ctx.bypass.map(|b| b.as_str()),
                store: ctx.store,
                upstream: ctx.upstream_addr,
                upstream_time: ctx.upstream_time,
                ttfb: ctx.ttfb,
                total: ctx.start.elapsed(),
                bytes: session.body_bytes_sent(),
                error: e.map_or("", |e| e.etype().as_str()),
                request_id: &ctx.request_id,
                origin,
                query_filter: ctx.rule.as_ref().map(|r| &r.query),
                client: &client,
                fast: false,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_target_is_compared_piece_by_piece() {
        let t = super::is_target;
        assert!(t(b"/a", ("/a", None)));
        assert!(t(b"/a?b=1", ("/a", Some("b=1"))));
        assert!(!t(b"/a?b=1", ("/a", None)));
        assert!(!t(b"/a", ("/a", Some(""))));
        assert!(!t(b"/ab", ("/a", None)));
        assert!(!t(b"http://h/a", ("/a", None)));
        assert!(!t(b"/%61", ("/a", None)));
    }
}
