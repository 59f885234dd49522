//! Validation of `[tls]`: listener addresses and certificates (read and parsed here, so
//! `crossfade check` and a reload catch a bad certificate before it is used).

use super::file::TlsFile;
use super::{relative_to, Sites};
use crate::tls::{load_cert, LoadedCert};
use std::net::SocketAddr;
use std::path::Path;

/// HTTPS listeners and the certificates they choose from by SNI.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub certs: Vec<LoadedCert>,
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
    Some(TlsSettings { listen, certs })
}
