//! TLS termination with rustls: certificates chosen by SNI (read and parsed by config
//! validation, `config::tls`), swapped on reload and when the files change, TLS 1.2 and 1.3
//! only, ALPN h2 and http/1.1. Also `crossfade certs dev`: a local CA and certificates for the
//! demo and tests.

use crate::config::Runtime;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// Watches the certificate files of the running config; when one changes, the config is
/// reloaded (which re-reads and validates every certificate).
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
                tracing::warn!("certificate files changed; reloading");
                let _ = self.reloader.reload();
                seen = mtimes(&self.runtime.load());
            }
        }
    }
}

/// Why dev certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `crossfade certs dev`: a local CA in `dir` (reused when present) and one certificate per
/// host (`<host>.pem`, `<host>-key.pem`), for the demo and tests only.
pub fn make_dev_certs(dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, DevCertError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| DevCertError::Write {
            path: path.clone(),
            source,
        })?;
        Ok::<_, DevCertError>(path)
    };
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.into(),
        source,
    })?;
    // The CA's subject is fixed, so an existing CA is rebuilt from its key and these params.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "crossfade dev CA");
    let ca_key = match (
        dir.join("ca.pem").exists(),
        std::fs::read_to_string(dir.join("ca-key.pem")),
    ) {
        (true, Ok(key)) => KeyPair::from_pem(&key)?,
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params.self_signed(&key)?;
            write("ca.pem", &cert.pem())?;
            write("ca-key.pem", &key.serialize_pem())?;
            key
        }
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let mut written = vec![dir.join("ca.pem")];
    for host in hosts {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.clone()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        let cert = params.signed_by(&key, &issuer)?;
        written.push(write(&format!("{host}.pem"), &cert.pem())?);
        written.push(write(&format!("{host}-key.pem"), &key.serialize_pem())?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::load_cert;

    #[test]
    fn wildcards_and_dev_certs() {
        assert!(serves("*.store.test", "www.store.test"));
        assert!(!serves("*.store.test", "store.test"));
        assert!(!serves("*.store.test", "a.b.store.test"));
        assert!(serves("store.test", "store.test"));
        let dir = tempfile::tempdir().unwrap();
        make_dev_certs(dir.path(), &["a.test".into()]).unwrap();
        let c = load_cert(
            &dir.path().join("a.test.pem"),
            &dir.path().join("a.test-key.pem"),
            vec!["a.test".into()],
        )
        .unwrap();
        assert_eq!(c.hosts, vec!["a.test"]);
        assert!(load_cert(
            &dir.path().join("a.test-key.pem"),
            &dir.path().join("a.test-key.pem"),
            vec![]
        )
        .is_err());
    }
}
