//! The pools registry: the live pools of every site, built from the running config and owned
//! here rather than in config types. A reload rebuilds the pools of the new config from the
//! previous ones by identity (site, pool name, server address), so health, requests in flight,
//! announced releases and origin-protection slots carry over without being copied, and the
//! state of a site, pool or server the new config no longer has is dropped with it.

use super::Pool;
use crate::config::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// foldhash: a pass looks its site up here; SipHash cost more than the lookup.
type HashMap<K, V> = foldhash::HashMap<K, V>;

/// The live pools of one site, in config order.
#[derive(Debug, Default)]
pub struct SitePools {
    pub list: Vec<Arc<Pool>>,
}

impl SitePools {
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.list.iter().find(|p| p.name() == name)
    }
}

/// Every site's live pools, by site name.
pub type Sites = HashMap<Arc<str>, Arc<SitePools>>;

/// Every site's live pools.
#[derive(Default)]
pub struct Registry {
    sites: ArcSwap<Sites>,
}

impl Registry {
    /// The pools of `rt`, with nothing learned yet.
    pub fn new(rt: &Runtime) -> Registry {
        let registry = Registry::default();
        registry.sync(rt);
        registry
    }

    /// Rebuilds the pools for `rt` from the current ones (see the module doc). Called before
    /// the new config is installed: a request still on the old config finds the new pools by
    /// name, and one whose pool is gone gets no server (the 503 page) for that moment.
    pub fn sync(&self, rt: &Runtime) {
        let current = self.sites.load();
        let next = rt
            .sites
            .list
            .iter()
            .map(|site| {
                let previous = current.get(&site.name);
                let list = site
                    .pools
                    .iter()
                    .map(|spec| {
                        let old = previous.and_then(|p| p.get(&spec.name));
                        Arc::new(Pool::build(spec, old.map(|p| &**p)))
                    })
                    .collect();
                (site.name.clone(), Arc::new(SitePools { list }))
            })
            .collect();
        self.sites.store(Arc::new(next));
    }

    /// The live pools of `site` (none for a site the registry does not know).
    pub fn site(&self, site: &str) -> Arc<SitePools> {
        self.sites.load().get(site).cloned().unwrap_or_default()
    }

    /// `f` on the live pools of `site`, without taking a reference to them (the decision
    /// looks here on some requests: no shared counter to bump).
    pub fn with_site<R>(&self, site: &str, f: impl FnOnce(&SitePools) -> R) -> R {
        let sites = self.sites.load();
        match sites.get(site) {
            Some(pools) => f(pools),
            None => f(&SitePools::default()),
        }
    }

    /// The registry's pools as `held` has them, after replacing it if a reload has rebuilt
    /// them since: a connection keeps one reference across its requests and its passes borrow
    /// their pool from it (cloning a pool's `Arc` per pass writes a count every thread's passes
    /// to that pool write).
    pub fn held<'h>(&self, held: &'h mut Option<Arc<Sites>>) -> &'h Sites {
        let current = self.sites.load();
        match held {
            Some(h) if Arc::ptr_eq(h, &current) => {}
            _ => *held = Some(arc_swap::Guard::into_inner(current)),
        }
        held.get_or_insert_with(Default::default)
    }

    pub fn pool(&self, site: &str, pool: &str) -> Option<Arc<Pool>> {
        self.sites.load().get(site)?.get(pool).cloned()
    }

    /// Every site and its pools.
    pub fn all(&self) -> Arc<Sites> {
        self.sites.load_full()
    }
}
