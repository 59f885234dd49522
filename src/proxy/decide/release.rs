//! Which pool a request goes to: versioned assets to a pool serving their hash, otherwise the
//! site's active pool or, during a canary, the visitor's cohort's pool.
//!
//! A pool with no healthy server is still chosen where nothing else can answer: an asset of a
//! hash only it serves may be in the cache (a hit needs no server; a miss gets the 503 page
//! with Retry-After, never a 404 for an asset that exists), and the active pool's own answer
//! for that case is the same page. A canary's visitors are the exception: the stable pool can
//! serve them, so they go there while the canary has no healthy server.

use crate::cache::key;
use crate::config::Site;
use crate::pools::switch::{self, SiteState};
use crate::pools::Registry;
use http::HeaderMap;

/// The pool decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// A page or other request: the pool, and a new cohort bucket to set as a cookie.
    Pool {
        pool: String,
        new_cohort: Option<u8>,
    },
    /// A versioned asset served by this pool.
    Asset { pool: String },
    /// A versioned asset whose hash no pool serves.
    UnknownAsset,
}

/// Decides the pool for a request to `path` on `site` in `state`.
pub fn choose(
    site: &Site,
    pools: &Registry,
    state: &SiteState,
    path: &str,
    headers: &HeaderMap,
    cohort_cookie: &str,
    session_cookie: &str,
) -> Choice {
    if let Some(hash) = site.assets.as_ref().and_then(|a| a.hash_of(path)) {
        // Prefer the active pool, then the canary, then any other pool serving the hash; a
        // healthy one first.
        let order = std::iter::once(state.active.as_str())
            .chain(state.canary.as_ref().map(|c| c.pool.as_str()));
        return pools.with_site(&site.name, |pools| {
            let order = order.chain(pools.list.iter().map(|p| p.name()));
            let mut serving = order
                .filter_map(|name| pools.get(name))
                .filter(|p| p.asset_hash().as_deref() == Some(hash));
            let first = serving.clone().next();
            serving
                .find(|p| p.healthy_servers() > 0)
                .or(first)
                .map_or(Choice::UnknownAsset, |p| Choice::Asset {
                    pool: p.name().to_string(),
                })
        });
    }
    let Some(canary) = &state.canary else {
        return Choice::Pool {
            pool: state.active.clone(),
            new_cohort: None,
        };
    };
    let cookie = |name: &str| {
        key::cookies(headers)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    };
    let (bucket, new_cohort) = match switch::bucket(cookie(cohort_cookie), cookie(session_cookie)) {
        Some(b) => (b, None),
        None => {
            let b = switch::new_bucket();
            (b, Some(b))
        }
    };
    // A visitor who was given a bucket keeps it: the cookie makes the choice sticky.
    let new_cohort = new_cohort.or_else(|| cookie(cohort_cookie).is_none().then_some(bucket));
    let canary_up = pools.with_site(&site.name, |pools| {
        pools
            .get(&canary.pool)
            .is_some_and(|p| p.healthy_servers() > 0)
    });
    let pool = if bucket < canary.percent && canary_up {
        canary.pool.clone()
    } else {
        state.active.clone()
    };
    Choice::Pool { pool, new_cohort }
}
