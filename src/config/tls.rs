//! Validation of `[tls]`: listener addresses and certificates (read and parsed here, so
//! `crossfade check` and a reload catch a bad certificate before it is used).

use super::file::TlsFile;
use super::{relative_to, Sites};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// HTTPS listeners and the certificates they choose from by SNI.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub certs: Vec<LoadedCert>,
    /// Stateless session tickets (`crate::tls::resumption`).
    pub session_tickets: bool,
}

pub(super) fn tls(
    config: &Path,
    f: Option<TlsFile>,
    sites: &Sites,
    push: &mut dyn FnMut(String, String),
) -> Option<TlsSettings> {
    let f = f?;
    let mut listen = Vec::new();
    for (i, a) in f.listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) => listen.push(addr),
            Err(_) => push(
                format!("tls.listen[{i}]"),
                format!("{a:?} is not an address like \"0.0.0.0:443\""),
            ),
        }
    }
    if f.listen.is_empty() {
        push("tls.listen".into(), "needs at least one address".into());
    }
    if f.certs.is_empty() {
        push("tls.certs".into(), "needs at least one certificate".into());
    }
    let mut certs = Vec::new();
    for (i, c) in f.certs.iter().enumerate() {
        let at = format!("tls.certs[{i}]");
        let hosts: Vec<String> = match (&c.hosts, &c.site) {
            (Some(h), None) => h.iter().map(|h| h.to_ascii_lowercase()).collect(),
            (None, Some(site)) => match sites.list.iter().find(|s| &*s.name == site) {
                Some(s) => s.hosts.clone(),
                None => {
                    push(
                        format!("{at}.site"),
                        format!("{site:?} is not a configured site"),
                    );
                    continue;
                }
            },
            _ => {
                push(at, "needs exactly one of hosts, site".into());
                continue;
            }
        };
        match load_cert(
            &relative_to(config, &c.cert),
            &relative_to(config, &c.key),
            hosts,
        ) {
            Ok(loaded) => certs.push(loaded),
            Err(e) => push(format!("{at}.cert"), e.to_string()),
        }
    }
    Some(TlsSettings {
        listen,
        certs,
        session_tickets: f.session_tickets.unwrap_or(true),
    })
}

/// One certificate and the host names it serves.
#[derive(Clone)]
pub struct LoadedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Lowercase host names; `*.example.test` serves any direct subdomain.
    pub hosts: Vec<String>,
    pub certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert", &self.cert)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCert(PathBuf),
    #[error("{0} holds no PEM private key")]
    NoKey(PathBuf),
    #[error("unusable private key in {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Reads a PEM chain and key into a rustls `CertifiedKey`.
pub fn load_cert(cert: &Path, key: &Path, hosts: Vec<String>) -> Result<LoadedCert, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.into(),
            source,
        })
    };
    let chain: Vec<_> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCert(cert.into()));
    }
    let private = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey(key.into()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|source| {
        CertError::Key {
            path: key.into(),
            source,
        }
    })?;
    Ok(LoadedCert {
        cert: cert.into(),
        key: key.into(),
        hosts,
        certified: Arc::new(CertifiedKey::new(chain, signing)),
    })
}
