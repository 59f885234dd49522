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
/// host (`<host>.pem`, `<host>-key.pem`), for the demo and tests only. Private keys are
/// readable by their owner only (0600); certificates are valid from today for a year.
pub fn make_dev_certs(dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, DevCertError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let write = |name: &str, text: &str| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let private = name.ends_with("-key.pem");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&path)
            .and_then(|mut f| {
                // `mode` applies to new files only: a key left by an older run is narrowed too.
                if private {
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                }
                f.write_all(text.as_bytes())
            });
        written.map_err(|source| DevCertError::Write {
            path: path.clone(),
            source,
        })?;
        Ok::<_, DevCertError>(path)
    };
    let (from, until) = one_year_from(std::time::SystemTime::now());
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.into(),
        source,
    })?;
    // The CA's subject is fixed, so an existing CA is rebuilt from its key and these params.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    ca_params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
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
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        let cert = params.signed_by(&key, &issuer)?;
        written.push(write(&format!("{host}.pem"), &cert.pem())?);
        written.push(write(&format!("{host}-key.pem"), &key.serialize_pem())?);
    }
    Ok(written)
}

/// (year, month, day) of the UTC day of `now`, and of the same day a year later (28 February
/// for 29 February).
fn one_year_from(now: SystemTime) -> ((i32, u8, u8), (i32, u8, u8)) {
    let days = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    let next_day = if (month, day) == (2, 29) { 28 } else { day };
    ((year, month, day), (year + 1, month, next_day))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::load_cert;

    #[test]
    fn a_year_from_a_day() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(one_year_from(at(0)), ((1970, 1, 1), (1971, 1, 1)));
        // 2024-02-29 12:00 UTC.
        assert_eq!(
            one_year_from(at(1_709_208_000)),
            ((2024, 2, 29), (2025, 2, 28))
        );
        // 2026-12-02.
        assert_eq!(
            one_year_from(at(1_796_212_800)),
            ((2026, 12, 2), (2027, 12, 2))
        );
    }

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
