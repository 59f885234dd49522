//! Purge requests: what ops ask for (by URL, prefix, surrogate key, everything; soft or hard),
//! how a request is resolved against the running config, and how it is applied to this
//! node's storage. The admin API, the `PURGE` method and the fleet all go through here.

use super::key;
use super::storage::{EdgeStorage, PurgeCount};
use crate::config::{normalize_host, Runtime};
use serde::{Deserialize, Serialize};

/// One purge, as sent to the admin API and over the fleet channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Purge {
    /// Every stored variant (Vary, key cookies; GET and HEAD share entries) of one URL.
    Url {
        url: String,
        #[serde(default)]
        soft: bool,
    },
    /// Every object whose URL (`host/path…`) starts with the prefix.
    Prefix {
        prefix: String,
        #[serde(default)]
        soft: bool,
    },
    /// Every object tagged with a surrogate key, optionally only of one site.
    Key {
        key: String,
        #[serde(default)]
        site: Option<String>,
        #[serde(default)]
        soft: bool,
    },
    /// Everything, or everything of one site.
    All {
        #[serde(default)]
        site: Option<String>,
        #[serde(default)]
        soft: bool,
    },
}

/// Why a purge request cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0:?} is not a URL like \"www.example.test/path?query\"")]
    BadUrl(String),
    #[error("no site is configured for host {0:?}")]
    UnknownHost(String),
    #[error("no site is named {0:?}")]
    UnknownSite(String),
    #[error("the surrogate key is empty")]
    EmptyKey,
}

/// Splits `http://Host:port/path?query` or `host/path?query` into (host, path, query).
fn split_url(raw: &str) -> Result<(String, &str, Option<&str>), PurgeError> {
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .unwrap_or(raw);
    let slash = rest
        .find('/')
        .ok_or_else(|| PurgeError::BadUrl(raw.into()))?;
    let (host, path_query) = rest.split_at(slash);
    let host = normalize_host(host);
    if host.is_empty() || path_query.contains(['#', ' ']) {
        return Err(PurgeError::BadUrl(raw.into()));
    }
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    Ok((host, path, query))
}

/// The index form of a URL: the host normalised and the query normalised by the rule that
/// serves that path, exactly as the cache key was built.
pub fn index_url(rt: &Runtime, raw: &str) -> Result<String, PurgeError> {
    let (host, path, query) = split_url(raw)?;
    let site = rt
        .sites
        .find(&host)
        .ok_or_else(|| PurgeError::UnknownHost(host.clone()))?;
    let rule = site.routes.find(&http::Method::GET, path);
    let query = key::normalize_query(query, &rule.query, rule.query_sort);
    Ok(key::url(&host, path, &query))
}

impl Purge {
    /// The kind as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Purge::Url { .. } => "url",
            Purge::Prefix { .. } => "prefix",
            Purge::Key { .. } => "key",
            Purge::All { .. } => "all",
        }
    }

    pub fn soft(&self) -> bool {
        match self {
            Purge::Url { soft, .. }
            | Purge::Prefix { soft, .. }
            | Purge::Key { soft, .. }
            | Purge::All { soft, .. } => *soft,
        }
    }

    /// Checks the request against the running config without applying it.
    pub fn validate(&self, rt: &Runtime) -> Result<(), PurgeError> {
        match self {
            Purge::Url { url, .. } => index_url(rt, url).map(|_| ()),
            Purge::Prefix { prefix, .. } => split_url(prefix).map(|_| ()),
            Purge::Key { key, site, .. } => {
                if key.trim().is_empty() {
                    return Err(PurgeError::EmptyKey);
                }
                check_site(rt, site.as_deref())
            }
            Purge::All { site, .. } => check_site(rt, site.as_deref()),
        }
    }

    /// Applies the purge to this node's storage.
    pub fn apply(&self, rt: &Runtime, storage: &EdgeStorage) -> Result<PurgeCount, PurgeError> {
        self.validate(rt)?;
        let soft = self.soft();
        Ok(match self {
            Purge::Url { url, .. } => storage.purge_url(&index_url(rt, url)?, soft),
            Purge::Prefix { prefix, .. } => {
                let (host, path, query) = split_url(prefix)?;
                let prefix = match query {
                    Some(q) => format!("{host}{path}?{q}"),
                    None => format!("{host}{path}"),
                };
                storage.purge_prefix(&prefix, soft)
            }
            Purge::Key { key, site, .. } => storage.purge_tag(key.trim(), site.as_deref(), soft),
            Purge::All { site, .. } => storage.purge_all(site.as_deref(), soft),
        })
    }
}

fn check_site(rt: &Runtime, site: Option<&str>) -> Result<(), PurgeError> {
    match site {
        Some(s) if !rt.sites.list.iter().any(|x| &*x.name == s) => {
            Err(PurgeError::UnknownSite(s.to_string()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let (h, p, q) = split_url("http://WWW.Store.test:8080/a/b?x=1").unwrap();
        assert_eq!((h.as_str(), p, q), ("www.store.test", "/a/b", Some("x=1")));
        let (h, p, q) = split_url("store.test/").unwrap();
        assert_eq!((h.as_str(), p, q), ("store.test", "/", None));
        assert!(split_url("no-path").is_err());
        assert!(split_url("/only-path").is_err());
    }

    #[test]
    fn requests_parse_strictly() {
        let p: Purge = serde_json::from_str(r#"{"kind":"key","key":"t1","soft":true}"#).unwrap();
        assert_eq!(
            p,
            Purge::Key {
                key: "t1".into(),
                site: None,
                soft: true
            }
        );
        assert!(serde_json::from_str::<Purge>(r#"{"kind":"url","url":"a/b","x":1}"#).is_err());
        assert!(serde_json::from_str::<Purge>(r#"{"kind":"nope"}"#).is_err());
    }
}
