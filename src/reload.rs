//! Hot reload (SIGHUP, the admin API, `crossfade reload`): re-read the config and every rules
//! file, validate everything, and only then swap the running [`Runtime`] in one step. A config
//! with errors is rejected with every error (in the answer, the log and the reload metric) and
//! the old one keeps serving. Requests in flight keep the `Runtime` they started with; the
//! cache, purge index, release state and the pools registry's live state (server health,
//! in-flight counts, announced releases, origin-protection slots) carry over, and what belonged
//! only to removed sites, routes, pools and servers (dashboard series, idle origin connections)
//! is dropped.
//!
//! Which settings a reload applies and which need a restart is [`settings`]'s; every answer
//! and log line of a reload says both. A certificate file that changes on disk reloads the
//! certificates only ([`Reloader::reload_certificates`]): a renewed certificate must not also
//! apply a half-edited rules file. File reads, PEM and regex parsing run on a blocking thread,
//! never on a thread that serves requests.

pub mod settings;

use crate::config::tls::{load_cert, TlsSettings};
use crate::config::{load, Issue, LoadError, Runtime};
use crate::events::{Event, Kind};
use crate::metrics::Metrics;
use crate::pools::switch::Release;
use crate::pools::Registry;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

/// The outcome of an accepted reload.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub sites: usize,
    pub routes: usize,
    /// Changed settings now in effect (config keys; `sites[NAME]` for a site's hosts, rules
    /// or pools).
    pub applied: Vec<String>,
    /// Settings that changed but only take effect after a restart or binary upgrade.
    pub restart_required: Vec<String>,
}

/// Reloads the running config.
pub struct Reloader {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub release: Arc<Release>,
    /// The live pools, rebuilt for each config that is installed.
    pub pools: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// One reload at a time: a certificate reload racing a full one must not install a
    /// runtime built from the older of the two.
    pub busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        release: Arc<Release>,
        pools: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            runtime,
            release,
            pools,
            metrics,
            busy: Mutex::new(()),
        }
    }

    /// Reloads the config and every file it names, off the serving threads.
    /// Reloads config and rules; `by` (a token's name, `SIGHUP`) goes into the timeline.
    pub async fn reload(self: &Arc<Self>, by: &str) -> Result<Reloaded, Vec<Issue>> {
        let this = self.clone();
        let by = by.to_string();
        blocking(move || this.reload_now(&by)).await
    }

    /// What a reload would change now, without installing anything (`crossfade reload --check`).
    pub async fn check(self: &Arc<Self>) -> Result<settings::Changes, Vec<Issue>> {
        let this = self.clone();
        blocking(move || {
            let old = this.runtime.load_full();
            match load(&old.source) {
                Ok(mut new) => Ok(settings::changes(&old, &mut new)),
                Err(LoadError::Invalid(issues)) => Err(issues),
            }
        })
        .await
    }

    fn reload_now(&self, by: &str) -> Result<Reloaded, Vec<Issue>> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        match load(&old.source) {
            Ok(mut new) => {
                let changes = settings::changes(&old, &mut new);
                self.pools.sync(&new);
                self.release.sync(&new);
                let report = Reloaded {
                    sites: new.sites.list.len(),
                    routes: new.sites.list.iter().map(|s| s.routes.routes.len()).sum(),
                    applied: changes.applied,
                    restart_required: changes.restart_required,
                };
                forget_removed(&new, &self.metrics);
                self.runtime.store(Arc::new(new));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::warn!(sites = report.sites, routes = report.routes, applied = ?report.applied, restart_required = ?report.restart_required, "config reloaded");
                if !report.restart_required.is_empty() {
                    tracing::warn!(settings = ?report.restart_required, "these settings changed but keep their running values until crossfade is restarted or upgraded");
                }
                let mut what = if report.applied.is_empty() {
                    "config reloaded: no setting changed".to_string()
                } else {
                    format!("config reloaded: {}", report.applied.join(", "))
                };
                if !report.restart_required.is_empty() {
                    what += &format!("; needs a restart: {}", report.restart_required.join(", "));
                }
                self.metrics.event(
                    Event::new(Kind::Reload, by, what).detail(serde_json::json!({
                        "applied": report.applied,
                        "restart_required": report.restart_required,
                    })),
                );
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
                let first = issues.first().map(|i| i.to_string()).unwrap_or_default();
                let what = format!(
                    "config reload rejected ({} problem{}): {first}",
                    issues.len(),
                    if issues.len() == 1 { "" } else { "s" }
                );
                let all: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
                self.metrics.event(
                    Event::new(Kind::ReloadRejected, by, what)
                        .detail(serde_json::json!({ "issues": all })),
                );
                Err(issues)
            }
        }
    }

    /// Re-reads the certificate and key files the running config names, and nothing else.
    /// A pair that no longer loads keeps its running certificate (and is logged), so a
    /// renewal caught half-written is retried on the next change instead of breaking TLS.
    pub async fn reload_certificates(self: &Arc<Self>) {
        let this = self.clone();
        blocking(move || this.reload_certificates_now()).await
    }

    fn reload_certificates_now(&self) {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        let Some(tls) = &old.tls else {
            return;
        };
        let mut failed = 0;
        let certs = tls
            .certs
            .iter()
            .map(|c| match load_cert(&c.cert, &c.key, c.hosts.clone()) {
                Ok(fresh) => fresh,
                Err(e) => {
                    failed += 1;
                    tracing::error!(error = %e, cert = %c.cert.display(), "certificate not reloaded; the running one stays");
                    c.clone()
                }
            })
            .collect();
        let new = Runtime {
            tls: Some(TlsSettings {
                listen: tls.listen.clone(),
                certs,
                session_tickets: tls.session_tickets,
            }),
            ..(*old).clone()
        };
        self.runtime.store(Arc::new(new));
        let result = if failed == 0 {
            "certificates"
        } else {
            "certificates-partly"
        };
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        tracing::warn!(
            certificates = tls.certs.len(),
            failed,
            "certificate files changed; certificates reloaded (config and rules files are not re-read)"
        );
    }
}

/// Runs `f` on tokio's blocking pool (the caller's thread when there is no runtime).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Drops what belonged only to sites, routes, pools and servers that `new` no longer has.
fn forget_removed(new: &Runtime, metrics: &Metrics) {
    let sites = &new.sites.list;
    metrics.stats.retain(|site, route, pool| {
        if site == "-" {
            return true;
        }
        let Some(s) = sites.iter().find(|s| &*s.name == site) else {
            return false;
        };
        let table = &s.routes;
        let route_ok = route == "-"
            || table
                .routes
                .iter()
                .chain([&table.fallback])
                .any(|r| &*r.name == route);
        route_ok && (pool == "-" || s.pool(pool).is_some())
    });
    let servers = sites
        .iter()
        .flat_map(|s| s.pools.iter())
        .flat_map(|p| p.servers.iter().map(|(addr, _)| *addr))
        .collect();
    crate::proxy::fast::origin::forget_idle_except(&servers);
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
                _ = hup.recv() => { let _ = self.0.reload("SIGHUP").await; }
                _ = shutdown.changed() => return,
            }
        }
    }
}
