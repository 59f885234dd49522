//! Hot reload (SIGHUP or the admin API): re-read the config and every rules file, validate
//! everything, and only then swap the running [`Runtime`] in one step. A config with errors is
//! rejected with every error (in the answer, the log and the reload metric) and the old one
//! keeps serving. Requests in flight keep the `Runtime` they started with; the cache, purge
//! index, release state and the pools registry's live state (server health, in-flight counts,
//! announced releases, origin-protection slots) carry over.
//!
//! Listeners, the cache size, threads, the admin listener and the fleet's Redis are fixed at
//! start; a reload that changes them says a restart (or binary upgrade) is needed for those.

use crate::config::{load, Issue, LoadError, Runtime};
use crate::metrics::Metrics;
use crate::pools::switch::Release;
use crate::pools::Registry;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The outcome of an accepted reload.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub sites: usize,
    pub routes: usize,
    /// Settings that changed but only take effect after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Reloads the running config.
pub struct Reloader {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub release: Arc<Release>,
    /// The live pools, rebuilt for each config that is installed.
    pub pools: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

fn fixed_at_start(old: &Runtime, new: &Runtime) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.proxy.listen != new.proxy.listen || old.proxy.h2c != new.proxy.h2c {
        changed.push("proxy.listen/h2c");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        changed.push("admin.listen");
    }
    if old.cache.capacity != new.cache.capacity
        || old.cache.max_object_size != new.cache.max_object_size
        || old.cache.lock_timeout != new.cache.lock_timeout
        || old.cache.tag_headers != new.cache.tag_headers
    {
        changed.push("cache");
    }
    if old.server.threads != new.server.threads {
        changed.push("server.threads");
    }
    if old.server.work_stealing != new.server.work_stealing {
        changed.push("server.work_stealing");
    }
    if old.fleet.redis != new.fleet.redis || old.fleet.node != new.fleet.node {
        changed.push("fleet");
    }
    if old.metrics.statsd != new.metrics.statsd {
        changed.push("metrics.statsd");
    }
    changed
}

impl Reloader {
    pub fn reload(&self) -> Result<Reloaded, Vec<Issue>> {
        let old = self.runtime.load_full();
        match load(&old.source) {
            Ok(new) => {
                self.pools.sync(&new);
                self.release.sync(&new);
                let restart_required = fixed_at_start(&old, &new);
                let report = Reloaded {
                    sites: new.sites.list.len(),
                    routes: new.sites.list.iter().map(|s| s.routes.routes.len()).sum(),
                    restart_required,
                };
                self.runtime.store(Arc::new(new));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::warn!(sites = report.sites, routes = report.routes, restart_required = ?report.restart_required, "config reloaded");
                Ok(report)
            }
            Err(LoadError::Invalid(issues)) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                for issue in &issues {
                    tracing::error!(%issue, "config reload rejected; the running config stays");
                }
                Err(issues)
            }
        }
    }
}

/// Reloads on SIGHUP.
pub struct SighupService(pub Arc<Reloader>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SighupService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload via the admin API only");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = self.0.reload(); }
                _ = shutdown.changed() => return,
            }
        }
    }
}
