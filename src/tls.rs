//! TLS termination with rustls: certificates chosen by SNI (read and parsed by config
//! validation, `config::tls`), swapped on reload and when the files change, TLS 1.2 and 1.3
//! only, ALPN h2 and http/1.1. Also `crossfade certs dev`: a local CA and certificates for the
//! demo and tests ([`dev`], with the `dev-certs` feature).

use crate::config::Runtime;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(feature = "dev-certs")]
pub mod dev;

fn serves(host: &str, name: &str) -> bool {
    match host.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => host == name,
    }
}

/// Picks the certificate by SNI from the running config (so a reload swaps certificates);
/// the first certificate serves clients without SNI or with an unknown name.
#[derive(Debug)]
pub struct SniResolver {
    pub runtime: Arc<ArcSwap<Runtime>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let rt = self.runtime.load();
        let certs = &rt.tls.as_ref()?.certs;
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        name.and_then(|n| certs.iter().find(|c| c.hosts.iter().any(|h| serves(h, &n))))
            .or_else(|| certs.first())
            .map(|c| c.certified.clone())
    }
}

/// The session ticketer of the HTTPS listeners (`tls.session_tickets`): rustls's, a random key
/// per process, rotated every 6 hours (the previous key still decrypts for as long again).
/// `None` when the system has no randomness to make a key, which is logged.
pub fn ticketer() -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    match rustls::crypto::ring::Ticketer::new() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "TLS session tickets are off: no ticket key");
            None
        }
    }
}

/// Resumption for returning clients: without a ticketer rustls resumes only sessions in a
/// 256-entry cache, which a busy edge cycles in well under a second, so a browser coming back
/// did a full handshake (the costliest part of a new connection). Stateless tickets cost no
/// memory per client; rustls's TLS 1.3 resumption keeps forward secrecy (a fresh key
/// exchange with the ticket, `psk_dhe_ke`), and no 0-RTT data is accepted.
pub fn resumption(
    config: &mut rustls::ServerConfig,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
) {
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer;
    }
}

/// Counts completed handshakes (failed ones never reach a callback in pingora's rustls path;
/// they show up as connections without requests).
pub struct HandshakeCounter(pub Arc<crate::metrics::Metrics>);

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(
        &self,
        _tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0.tls_handshakes.with_label_values(&["ok"]).inc();
        None
    }
}

/// Watches the certificate files of the running config; when one changes, the certificates
/// are reloaded, and only they (`Reloader::reload_certificates`).
pub struct CertWatcher {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub reloader: Arc<crate::reload::Reloader>,
}

fn mtimes(rt: &Runtime) -> Vec<Option<SystemTime>> {
    rt.tls
        .iter()
        .flat_map(|t| t.certs.iter())
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// How often certificate files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut seen = mtimes(&self.runtime.load());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let now = mtimes(&self.runtime.load());
            if now != seen {
                self.reloader.reload_certificates().await;
                seen = mtimes(&self.runtime.load());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serves;

    #[test]
    fn wildcards() {
        assert!(serves("*.store.test", "www.store.test"));
        assert!(!serves("*.store.test", "store.test"));
        assert!(!serves("*.store.test", "a.b.store.test"));
        assert!(serves("store.test", "store.test"));
    }
}
