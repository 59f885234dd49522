//! `crossfade certs dev` (the `dev-certs` feature): a local CA and a certificate per host for
//! the demo and tests. Never for production: the CA key sits beside the certificates.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    let (year, month, day) = crate::clock::civil_date(days);
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
    fn dev_certs_load() {
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
