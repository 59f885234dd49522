//! The admin API: its own listener (loopback by default), JSON in and out, every call
//! authenticated with a bearer token from config (`[[admin.tokens]]`), checked per scope.
//!
//! Endpoints:
//!
//! | method | path      | scope | body → answer |
//! | ------ | --------- | ----- | ------------- |
//! | GET    | `/healthz` | none | → `{"ok":true}`: the process is up (container HEALTHCHECK, systemd) |
//! | GET    | `/status` | any   | → node, cache objects/bytes, purge index sizes, fleet |
//! | POST   | `/reload` | admin | → reload config and rules: `{"reloaded":true,"report":{…, "applied":[…], "restart_required":[…]}}`, or 422 with every issue (the running config is kept) |
//! | POST   | `/reload?check` | admin | → what a reload would apply and what would need a restart, installing nothing: `{"valid":true,"applied":[…],"restart_required":[…]}`, or 422 with every issue |
//! | GET    | `/metrics` | any  | → Prometheus text exposition of every metric |
//! | GET    | `/events?since=2h` | any | → the release timeline (`since`: Unix seconds or a duration ago; default a day) |
//! | POST   | `/dashboard/login` | none | form field `token` → a session cookie (read only); 401 for a wrong token |
//! | POST   | `/dashboard/logout` | none | ends the session |
//! | GET    | `/dashboard` (+ `/app.js`, `/uplot.js`, `/uplot.css`) | none | the live dashboard page (its login form until there is a session) |
//! | GET    | `/dashboard/data?window=300&compare_at=UNIX` | any | → per site: pools, routes, history, before/after |
//! | GET    | `/pools`  | any   | → per site: release state (active, canary, maintenance) and pools (servers, health, in-flight, release, asset hash) |
//! | POST   | `/pools/flip` | release | `{"site":"store","pool":"green"}` → site state |
//! | POST   | `/pools/canary` | release | `{"site":"store","pool":"green","percent":10}` (0 ends the canary) → site state |
//! | POST   | `/pools/rollback` | release | `{"site":"store"}` → site state |
//! | POST   | `/maintenance` | release | `{"site":"store","route":"checkout","on":true,"serve_cached":false}` (no route: whole site) → site state |
//! | POST   | `/purge`  | purge | `{"kind":"url","url":"www.store.test/track/1","soft":false}`, `{"kind":"prefix","prefix":"www.store.test/release/"}`, `{"kind":"key","key":"track-1","site":"store"}`, `{"kind":"all","site":"store"}` → purge report |
//!
//! Errors: 401 without a valid token, 403 when the token lacks the scope, 400 for a body that
//! is not valid JSON of the right shape (unknown fields included) or names an unknown
//! host/site/route, 409 for a release change that cannot apply (unknown pool, no healthy
//! server, nothing to roll back), 404/405 for unknown paths/methods, 413 for bodies over 64 KiB. Every error is
//! `{"error": "…"}`. Tokens are never logged.

pub mod auth;
pub mod client;
pub mod dashboard;
pub mod human;
pub mod remote;
pub mod session;

use crate::cache::purge::Purge;
use crate::cache::storage::EdgeStorage;
use crate::config::admin::Scope;
use crate::config::Runtime;
use crate::fleet::Purger;
use crate::metrics::Metrics;
use crate::pools::judge::Verdicts;
use crate::pools::switch::{Change, ChangeError, Release, Save};
use crate::reload::Reloader;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use auth::{authorize, Denied};
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Admin request bodies are small JSON documents; anything larger is refused.
const MAX_BODY: usize = 64 * 1024;

/// The admin API application.
pub struct AdminApp {
    runtime: Arc<ArcSwap<Runtime>>,
    storage: &'static EdgeStorage,
    purger: Arc<Purger>,
    release: Arc<Release>,
    metrics: Arc<Metrics>,
    verdicts: Arc<Verdicts>,
    reloader: Arc<Reloader>,
    started: Instant,
    sessions: session::Sessions,
}

impl AdminApp {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        storage: &'static EdgeStorage,
        purger: Arc<Purger>,
        release: Arc<Release>,
        metrics: Arc<Metrics>,
        verdicts: Arc<Verdicts>,
        reloader: Arc<Reloader>,
    ) -> Self {
        AdminApp {
            runtime,
            storage,
            purger,
            release,
            metrics,
            verdicts,
            reloader,
            started: Instant::now(),
            sessions: session::Sessions::default(),
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .header("cache-control", "no-store")
        .body(bytes)
        .unwrap_or_default()
}

/// Whether the browser reached this listener over TLS (a TLS-terminating proxy in front of it
/// says so with `X-Forwarded-Proto: https`): the session cookie is then `Secure`.
fn over_tls(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn req_query(session: &ServerSession) -> Option<String> {
    session.req_header().uri.query().map(str::to_string)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    json_response(status, json!({ "error": message.to_string() }))
}

/// Reads the whole request body, refusing more than [`MAX_BODY`].
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body larger than 64 KiB",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read body: {e}"),
                ))
            }
        }
    }
}

impl AdminApp {
    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.runtime.load_full();
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let scope = match (method.clone(), path.as_str()) {
            (Method::GET, "/status" | "/pools" | "/metrics" | "/events") => Scope::Read,
            // The page and its scripts hold no data: served to anyone, they show the login
            // form until a session (or a token) lets `/dashboard/data` answer.
            (
                Method::GET,
                "/dashboard"
                | "/dashboard/"
                | "/dashboard/app.js"
                | "/dashboard/uplot.js"
                | "/dashboard/uplot.css",
            ) => return self.dashboard(&rt, &path, None).await,
            (Method::POST, "/dashboard/login") => return self.login(&rt, session).await,
            (Method::POST, "/dashboard/logout") => return self.logout(session),
            (Method::GET, "/dashboard/login") => {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "log in with the form on /dashboard (a token never goes in a URL)",
                )
            }
            // Liveness for container and service-manager checks: no token (a HEALTHCHECK has
            // none) and nothing in the answer but that this process serves its admin listener.
            (Method::GET | Method::HEAD, "/healthz") => {
                return json_response(StatusCode::OK, json!({ "ok": true }))
            }
            (Method::GET, p) if p == "/dashboard" || p.starts_with("/dashboard/") => Scope::Read,
            (Method::POST, "/purge") => Scope::Purge,
            (Method::POST, "/reload") => Scope::Admin,
            (
                Method::POST,
                "/pools/flip" | "/pools/canary" | "/pools/rollback" | "/maintenance",
            ) => Scope::Release,
            (
                _,
                "/status" | "/metrics" | "/events" | "/purge" | "/reload" | "/pools"
                | "/pools/flip" | "/pools/canary" | "/pools/rollback" | "/maintenance",
            ) => {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed on {path}"),
                )
            }
            _ => return error(StatusCode::NOT_FOUND, format!("no endpoint {path}")),
        };
        let tokens = rt
            .admin
            .as_ref()
            .map(|a| a.tokens.as_slice())
            .unwrap_or_default();
        // GET endpoints also accept a dashboard session (a browser cannot send a bearer token
        // on navigation), for reading only; changes need the header, which a cross-site page
        // cannot add. The session names its token; the token itself stays here.
        let cookie_auth = (method == Method::GET && scope == Scope::Read)
            .then(|| {
                let id = crate::cache::key::cookies(&req.headers)
                    .find(|(n, _)| *n == session::COOKIE)
                    .map(|(_, v)| v.to_string())?;
                let name = self.sessions.token_of(&id)?;
                let token = tokens.iter().find(|t| t.name == name)?;
                Some(format!("Bearer {}", token.secret))
            })
            .flatten();
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .or(cookie_auth.as_deref().map(str::as_bytes));
        let token = match authorize(tokens, authorization, scope) {
            Ok(t) => t.name.clone(),
            Err(Denied::Unauthenticated) => {
                return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
            }
            Err(Denied::Forbidden(s)) => {
                return error(
                    StatusCode::FORBIDDEN,
                    format!("this token lacks the {:?} scope", s.as_str()),
                )
            }
        };
        match scope {
            Scope::Purge => {
                let body = match read_body(session).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let purge: Purge = match serde_json::from_slice(&body) {
                    Ok(p) => p,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("invalid purge request: {e}"),
                        )
                    }
                };
                tracing::info!(token = %token, ?purge, "admin purge");
                match self.purger.purge(purge).await {
                    Ok(report) => {
                        self.metrics.event(crate::events::of_purge(&report, &token));
                        json_response(
                            StatusCode::OK,
                            serde_json::to_value(report).unwrap_or_default(),
                        )
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                }
            }
            Scope::Release => {
                let body = match read_body(session).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                self.change(&rt, &path, &body, &token).await
            }
            Scope::Admin
                if req_query(session).is_some_and(|q| q.split('&').any(|p| p == "check")) =>
            {
                match self.reloader.check().await {
                    Ok(changes) => json_response(
                        StatusCode::OK,
                        json!({ "valid": true, "applied": changes.applied, "restart_required": changes.restart_required }),
                    ),
                    Err(issues) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({
                            "valid": false,
                            "error": "the config on disk has errors; a reload would keep the running config",
                            "issues": issues.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                        }),
                    ),
                }
            }
            Scope::Admin => match self.reloader.reload(&token).await {
                Ok(report) => json_response(
                    StatusCode::OK,
                    json!({ "reloaded": true, "report": report }),
                ),
                Err(issues) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({
                        "reloaded": false,
                        "error": "the new config has errors; the running config is kept",
                        "issues": issues.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    }),
                ),
            },
            _ if path == "/pools" => self.pools(&rt),
            _ if path == "/events" => self.events(req_query(session)),
            _ if path.starts_with("/dashboard") => {
                self.dashboard(&rt, &path, req_query(session)).await
            }
            _ if path == "/metrics" => self.metrics(&rt),
            _ => self.status(&rt),
        }
    }

    /// Applies a release change named by the endpoint (`/pools/flip` → `flip`).
    async fn change(
        &self,
        rt: &Arc<Runtime>,
        path: &str,
        body: &[u8],
        token: &str,
    ) -> Response<Vec<u8>> {
        let action = path.rsplit('/').next().unwrap_or_default();
        let mut value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
        };
        if value.get("action").is_some() {
            return error(StatusCode::BAD_REQUEST, "unknown field `action`");
        }
        value["action"] = json!(action);
        let change: Change = match serde_json::from_value(value) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid {action} request: {e}"),
                )
            }
        };
        let before = self.release.get(change.site());
        // Applying saves the state file (write, fsync, rename): blocking work, done on tokio's
        // blocking pool rather than on a thread that serves requests.
        let applied = {
            let (release, pools) = (self.release.clone(), self.reloader.pools.clone());
            let (rt, change) = (rt.clone(), change.clone());
            tokio::task::spawn_blocking(move || release.apply(&rt, &pools, &change, Save::Required))
                .await
        };
        let applied = match applied {
            Ok(result) => result,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("not applied: {e}"),
                )
            }
        };
        match applied {
            Ok(state) => {
                tracing::warn!(token = %token, ?change, "release change applied");
                self.metrics.event(crate::events::of_change(
                    &change,
                    before.as_ref(),
                    &state,
                    token,
                ));
                self.metrics
                    .release_changes
                    .with_label_values(&[change.site(), action])
                    .inc();
                let fleet = self.purger.share_release(change.site(), &state).await;
                json_response(
                    StatusCode::OK,
                    json!({ "site": change.site(), "state": state, "fleet": fleet }),
                )
            }
            Err(e) if e.is_conflict() => error(StatusCode::CONFLICT, e),
            Err(e @ ChangeError::NotSaved { .. }) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        }
    }

    /// `/events?since=…` (Unix seconds, or a duration ago like `2h`; default: the last day):
    /// the release timeline, oldest first.
    fn events(&self, query: Option<String>) -> Response<Vec<u8>> {
        let since = query.as_deref().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "since")
                .map(|(_, v)| v.into_owned())
        });
        let since_ms = match since.as_deref().map(crate::events::parse_since) {
            Some(Some(ms)) => ms,
            Some(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "since must be Unix seconds or a duration like 2h",
                )
            }
            None => crate::events::parse_since("1day").unwrap_or_default(),
        };
        let events = self.metrics.timeline.since(since_ms);
        json_response(
            StatusCode::OK,
            json!({ "since_ms": since_ms, "events": events }),
        )
    }

    /// `POST /dashboard/login` (form field `token`): a valid token starts a session, whose
    /// random id is the cookie. A wrong token gets 401 and no cookie.
    async fn login(&self, rt: &Runtime, session: &mut ServerSession) -> Response<Vec<u8>> {
        let secure = over_tls(session);
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let token = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let tokens = rt
            .admin
            .as_ref()
            .map(|a| a.tokens.as_slice())
            .unwrap_or_default();
        let header = format!("Bearer {token}");
        let Ok(found) = authorize(tokens, Some(header.as_bytes()), Scope::Read) else {
            tracing::warn!("dashboard login with a wrong token");
            return error(StatusCode::UNAUTHORIZED, "wrong token");
        };
        let id = match self.sessions.create(&found.name) {
            Ok(id) => id,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("no session: {e}"),
                )
            }
        };
        tracing::info!(token = %found.name, "dashboard login");
        let mut resp = json_response(StatusCode::OK, json!({ "ok": true, "token": found.name }));
        if let Ok(v) = http::HeaderValue::from_str(&session::cookie(Some(&id), secure)) {
            resp.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        resp
    }

    /// `POST /dashboard/logout`: ends the session and clears its cookie.
    fn logout(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if let Some((_, id)) =
            crate::cache::key::cookies(&req.headers).find(|(n, _)| *n == session::COOKIE)
        {
            self.sessions.end(id);
        }
        let mut resp = json_response(StatusCode::OK, json!({ "ok": true }));
        if let Ok(v) = http::HeaderValue::from_str(&session::cookie(None, over_tls(session))) {
            resp.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        resp
    }

    async fn dashboard(
        &self,
        rt: &Runtime,
        path: &str,
        query: Option<String>,
    ) -> Response<Vec<u8>> {
        let asset = |ctype: &str, body: &str| {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", ctype)
                .header("content-length", body.len())
                .header("cache-control", "no-store")
                .body(body.as_bytes().to_vec())
                .unwrap_or_default()
        };
        match path {
            "/dashboard" | "/dashboard/" => {
                asset("text/html; charset=utf-8", dashboard::INDEX_HTML)
            }
            "/dashboard/app.js" => asset("application/javascript", dashboard::APP_JS),
            "/dashboard/uplot.js" => asset("application/javascript", dashboard::UPLOT_JS),
            "/dashboard/uplot.css" => asset("text/css", dashboard::UPLOT_CSS),
            "/dashboard/data" => {
                let text = |name: &str| {
                    query.as_deref().and_then(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.into_owned())
                            .filter(|v| !v.is_empty())
                    })
                };
                let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
                let ask = dashboard::Ask {
                    window: std::time::Duration::from_secs(
                        number("window")
                            .unwrap_or(300)
                            .clamp(1, crate::stats::KEEP_SECONDS),
                    ),
                    compare_at: number("compare_at"),
                    site: text("site"),
                    route: text("route"),
                    pool: text("pool"),
                };
                let sources = dashboard::Sources {
                    release: &self.release,
                    pools: &self.reloader.pools,
                    stats: &self.metrics.stats,
                    events: self.metrics.timeline.since(
                        crate::stats::now_secs().saturating_sub(crate::stats::KEEP_SECONDS) * 1000,
                    ),
                    cache: (
                        self.storage.object_count(),
                        self.storage.weighted_bytes(),
                        rt.cache.capacity,
                        self.storage.evictions(),
                    ),
                    fleet: self.purger.fleet_view(),
                    environments: remote::environments(&rt.dashboard.environments, ask.window)
                        .await,
                };
                json_response(StatusCode::OK, dashboard::data(rt, sources, &ask))
            }
            _ => error(StatusCode::NOT_FOUND, format!("no endpoint {path}")),
        }
    }

    /// Refreshes the gauges that mirror state, then renders every metric.
    fn metrics(&self, rt: &Runtime) -> Response<Vec<u8>> {
        let m = &self.metrics;
        m.process.refresh();
        m.cache_objects.set(self.storage.object_count() as i64);
        m.cache_bytes.set(self.storage.weighted_bytes() as i64);
        let evicted = self.storage.evictions();
        m.cache_evictions
            .inc_by(evicted.saturating_sub(m.cache_evictions.get()));
        let (_, keys, memberships) = self.storage.index_sizes();
        m.surrogate_keys.set(keys as i64);
        m.surrogate_key_memberships.set(memberships as i64);
        let states = self.release.all();
        for site in &rt.sites.list {
            let state = states.get(&*site.name);
            for pool in &self.reloader.pools.site(&site.name).list {
                let labels = [&*site.name, pool.name()];
                let inflight: usize = pool
                    .servers
                    .iter()
                    .map(|s| s.inflight.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                m.pool_inflight
                    .with_label_values(&labels)
                    .set(inflight as i64);
                m.pool_active
                    .with_label_values(&labels)
                    .set(state.is_some_and(|s| s.active == pool.name()) as i64);
                let canary = state
                    .and_then(|s| s.canary.as_ref())
                    .filter(|c| c.pool == pool.name());
                m.pool_canary_percent
                    .with_label_values(&labels)
                    .set(canary.map_or(0, |c| c.percent as i64));
                for server in &pool.servers {
                    let addr = server.addr.to_string();
                    let labels = [&*site.name, pool.name(), addr.as_str()];
                    m.server_healthy
                        .with_label_values(&labels)
                        .set(server.is_healthy() as i64);
                    m.server_weight
                        .with_label_values(&labels)
                        .set(server.weight as i64);
                }
            }
        }
        let body = m.render().into_bytes();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body)
            .unwrap_or_default()
    }

    fn pools(&self, rt: &Runtime) -> Response<Vec<u8>> {
        let states = self.release.all();
        let sites: Vec<_> = rt
            .sites
            .list
            .iter()
            .map(|s| {
                json!({
                    "site": &*s.name,
                    "state": states.get(&*s.name),
                    "canary_judgement": self.verdicts.get(&s.name),
                    "pools": self.reloader.pools.site(&s.name).list.iter().map(|p| p.describe()).collect::<Vec<_>>(),
                })
            })
            .collect();
        json_response(StatusCode::OK, json!({ "sites": sites }))
    }

    fn status(&self, rt: &Runtime) -> Response<Vec<u8>> {
        let (urls, keys, memberships) = self.storage.index_sizes();
        json_response(
            StatusCode::OK,
            json!({
                "node": rt.fleet.node,
                "uptime_seconds": self.started.elapsed().as_secs(),
                "config": rt.source.display().to_string(),
                "cache": {
                    "objects": self.storage.object_count(),
                    "bytes": self.storage.weighted_bytes(),
                    "capacity": rt.cache.capacity,
                    "index": { "urls": urls, "surrogate_keys": keys, "tag_memberships": memberships },
                },
                "sites": rt.sites.list.iter().map(|s| json!({
                    "name": &*s.name,
                    "hosts": s.hosts,
                    "active_pool": self.release.get(&s.name).map(|st| st.active),
                })).collect::<Vec<_>>(),
                "fleet": self.purger.status(),
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.route(session).await
    }
}
