//! The request decision: one pure function, [`plan`], that both transports call (pingora's
//! `request_filter` and the HTTP/1.1 fast transport). It reads a request as the client sent it
//! ([`RequestView`]) and the running config and release state, does no I/O, and says what the
//! edge does with the request: answer it itself, purge, or forward it (through the cache or
//! around it) to a pool. A transport only reads and writes bytes around this decision; whatever
//! crossfade decides lives here, so the two transports cannot disagree.
//!
//! Order: target form → host → site → PURGE → HTTPS redirect → path normalisation → route →
//! maintenance → release (pool, asset version) → bypass → cache key.

pub mod answer;
pub mod headers;
pub mod path;
pub mod release;
pub mod sanitize;
pub mod target;

use crate::cache::key;
use crate::cache::policy::{self, Bypass};
use crate::config::{Runtime, Site};
use crate::pools::switch::States;
use crate::pools::Registry;
use crate::rules::Rule;
pub use answer::Answer;
use http::{header, HeaderMap, Method};
use release::Choice;
use std::borrow::Cow;
use std::sync::Arc;
use target::{HostSources, Target};

/// A request as the client sent it: what [`plan`] reads.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub version: http::Version,
    /// The request target's raw bytes (HTTP/2: `:path`).
    pub target: &'a [u8],
    /// HTTP/2's `:authority`.
    pub authority: Option<&'a str>,
    /// The request headers. A transport may pass only those the decision reads: `Host`,
    /// `Cookie`, `Authorization`, `Upgrade` (see [`policy::bypass`]).
    pub headers: &'a HeaderMap,
    /// The request came over TLS.
    pub tls: bool,
}

/// What the edge does with a request.
pub enum Plan<'a, 'c> {
    /// The edge answers by itself.
    Answer(Answer),
    /// A `PURGE` request for this (normalised) host; the purge method's own checks follow.
    Purge { host: String },
    /// The request goes to a pool, through the cache or around it.
    Forward(Forward<'a, 'c>),
}

/// A request that goes to a pool: `'a` borrows from the request, `'c` from the config.
pub struct Forward<'a, 'c> {
    /// Borrowed from the running config: a request clones no reference count that every
    /// thread's requests share (a transport that keeps them clones them itself).
    pub site: &'c Arc<Site>,
    pub rule: &'c Arc<Rule>,
    /// The normalised host: the site's, the key's and the one the origin receives.
    pub host: String,
    /// The normalised path.
    pub path: Cow<'a, str>,
    /// The query as the client sent it.
    pub query: Option<&'a str>,
    /// The pool the release state chose.
    pub pool: String,
    /// A cohort bucket to give this visitor (a cookie on the answer).
    pub new_cohort: Option<u8>,
    /// Maintenance with cached copies allowed: serve from the cache, never from the origin.
    pub maintenance_cached: bool,
    pub cache: Caching,
}

/// Whether a forwarded request may use the cache.
pub enum Caching {
    /// It must not, for this reason; the origin gets the request as the client sent it.
    Bypass(Bypass),
    /// It may: its primary key, and the query the key (and the origin) uses.
    Cacheable { primary: Vec<u8>, query: String },
}

impl Plan<'_, '_> {
    /// One line naming the plan: what the edge does, and for a forward the route, host, upstream
    /// target and pool (tests and the differential fuzz target compare these).
    pub fn summary(&self) -> String {
        match self {
            Plan::Answer(a) => format!("answer {} {}", a.status, a.detail),
            Plan::Purge { host } => format!("purge {host}"),
            Plan::Forward(f) => {
                let how = match &f.cache {
                    Caching::Bypass(b) => format!("bypass {}", b.as_str()),
                    Caching::Cacheable { .. } => "cache".to_string(),
                };
                format!(
                    "{how} {} {} {} via {}",
                    f.rule.name,
                    f.host,
                    f.upstream_target(),
                    f.pool
                )
            }
        }
    }
}

impl Forward<'_, '_> {
    /// The target the origin receives: the normalised path, and the keyed query for a
    /// cacheable request (the origin sees exactly what the key says) or the client's for a
    /// bypass.
    pub fn upstream_target(&self) -> Cow<'_, str> {
        let query = match &self.cache {
            Caching::Cacheable { query, .. } => (!query.is_empty()).then_some(query.as_str()),
            Caching::Bypass(_) => self.query,
        };
        match query {
            Some(q) => Cow::Owned(format!("{}?{q}", self.path)),
            None => Cow::Borrowed(&self.path),
        }
    }

    pub fn bypass(&self) -> Option<Bypass> {
        match self.cache {
            Caching::Bypass(b) => Some(b),
            Caching::Cacheable { .. } => None,
        }
    }
}

/// Decides what the edge does with `req` under the running config `rt` and release `states`.
pub fn plan<'a, 'c>(
    rt: &'c Runtime,
    pools: &Registry,
    states: &States,
    req: &RequestView<'a>,
) -> Plan<'a, 'c> {
    let (raw_path, query, target_authority) = match target::parse(req.target, req.method) {
        Err(why) => return Plan::Answer(Answer::bad_request(why)),
        Ok(Target::Asterisk) => return Plan::Answer(Answer::server_options()),
        Ok(Target::Path {
            path,
            query,
            authority,
        }) => (path, query, authority),
    };
    let host = target::host(HostSources {
        target_authority,
        authority: req.authority,
        host_headers: req
            .headers
            .get_all(header::HOST)
            .iter()
            .map(|v| v.as_bytes()),
        host_required: req.version == http::Version::HTTP_11,
    });
    let host = match host {
        Err(why) => return Plan::Answer(Answer::bad_request(why)),
        Ok(host) => host,
    };
    let Some((host, site)) = host.and_then(|h| rt.sites.find(&h).map(|s| (h, s))) else {
        return Plan::Answer(Answer::unknown_host(rt.proxy.unknown_host_status));
    };
    if req.method.as_str() == "PURGE" {
        return Plan::Purge { host };
    }
    if site.https_redirect && !req.tls {
        let target = match query {
            Some(q) => format!("{raw_path}?{q}"),
            None => raw_path.to_string(),
        };
        if let Some(answer) = Answer::https_redirect(rt, &host, &target) {
            return Plan::Answer(answer);
        }
    }
    let path = match path::normalize(raw_path) {
        Err(refused) => return Plan::Answer(Answer::bad_path(refused)),
        Ok(p) => p,
    };
    let rule = site.routes.find(req.method, &path);
    let Some(state) = states.get(&*site.name) else {
        // The release state is installed for every site before traffic; a gap is a bug.
        return Plan::Answer(Answer::text(
            500,
            "no-release-state",
            "crossfade: no release state for this site\n",
        ));
    };
    let mut maintenance_cached = false;
    if state.maintenance.covers(&rule.name) {
        if !state.maintenance.serve_cached || !matches!(*req.method, Method::GET | Method::HEAD) {
            return Plan::Answer(Answer::maintenance(rt).at(&site.name, &rule.name));
        }
        maintenance_cached = true;
    }
    let r = &rt.release;
    let choice = release::choose(
        site,
        pools,
        state,
        &path,
        req.headers,
        &r.cohort_cookie,
        &r.session_cookie,
    );
    let (pool, pool_in_key, new_cohort) = match choice {
        Choice::UnknownAsset => {
            return Plan::Answer(Answer::unknown_asset().at(&site.name, &rule.name))
        }
        Choice::Asset { pool } => (pool, String::new(), None),
        Choice::Pool { pool, new_cohort } => (pool.clone(), pool, new_cohort),
    };
    let cache = match policy::bypass(rule, req.method, req.headers) {
        // Maintenance allows cached copies only: a request that cannot use the cache gets
        // the maintenance page.
        Some(_) if maintenance_cached => {
            return Plan::Answer(Answer::maintenance(rt).at(&site.name, &rule.name))
        }
        Some(b) => Caching::Bypass(b),
        None => {
            let query = key::normalize_query(query, &rule.query, rule.query_sort);
            let primary = key::primary(&site.name, &host, &path, &query, &pool_in_key);
            Caching::Cacheable { primary, query }
        }
    };
    Plan::Forward(Forward {
        site,
        rule,
        host,
        path,
        query,
        pool,
        new_cohort,
        maintenance_cached,
        cache,
    })
}

#[cfg(test)]
mod tests;
