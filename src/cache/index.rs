//! The purge index: which stored objects belong to a URL (every variant, for URL and prefix
//! purges) and which carry a surrogate key (for tag purges).
//!
//! pingora keys are hashes, so this is our own index. It is kept true by construction: an
//! object is added when it is stored and removed by the storage's eviction listener whenever
//! moka drops it (evicted, replaced, purged). Every stored object has a unique sequence number,
//! and removal only deletes an entry whose sequence matches, so replacing an object with a newer
//! one under the same id never drops the newer one's entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What the index knows about one stored object.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u128,
    pub seq: u64,
    pub site: Arc<str>,
    pub url: Arc<str>,
    pub tags: Box<[Arc<str>]>,
}

/// URL and surrogate-key index over stored objects.
#[derive(Debug, Default)]
pub struct Index {
    /// `host/path?query` → (object id, sequence) for every variant of that URL.
    by_url: BTreeMap<Arc<str>, Vec<(u128, u64)>>,
    /// surrogate key → object id → sequence.
    by_tag: HashMap<Arc<str>, HashMap<u128, u64>>,
    /// site → number of stored objects.
    by_site: HashMap<Arc<str>, usize>,
}

impl Index {
    pub fn add(&mut self, e: &Entry) {
        let variants = self.by_url.entry(e.url.clone()).or_default();
        match variants.iter_mut().find(|(id, _)| *id == e.id) {
            Some(v) => v.1 = e.seq,
            None => {
                variants.push((e.id, e.seq));
                *self.by_site.entry(e.site.clone()).or_default() += 1;
            }
        }
        for tag in e.tags.iter() {
            self.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(e.id, e.seq);
        }
    }

    /// Removes `e`'s entries, unless a newer object (another sequence) has taken them over.
    pub fn remove(&mut self, e: &Entry) {
        if let Some(variants) = self.by_url.get_mut(&e.url) {
            let before = variants.len();
            variants.retain(|&(id, seq)| !(id == e.id && seq == e.seq));
            if variants.len() < before {
                if let Some(n) = self.by_site.get_mut(&e.site) {
                    *n -= 1;
                    if *n == 0 {
                        self.by_site.remove(&e.site);
                    }
                }
            }
            if variants.is_empty() {
                self.by_url.remove(&e.url);
            }
        }
        for tag in e.tags.iter() {
            if let Some(ids) = self.by_tag.get_mut(tag) {
                if ids.get(&e.id) == Some(&e.seq) {
                    ids.remove(&e.id);
                }
                if ids.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
    }

    /// Every stored variant of exactly this URL.
    pub fn url(&self, url: &str) -> Vec<u128> {
        self.by_url
            .get(url)
            .map(|v| v.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }

    /// Every stored object whose URL starts with `prefix`.
    pub fn prefix(&self, prefix: &str) -> Vec<u128> {
        self.by_url
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(url, _)| url.starts_with(prefix))
            .flat_map(|(_, v)| v.iter().map(|(id, _)| *id))
            .collect()
    }

    /// Every stored object tagged with `tag`.
    pub fn tag(&self, tag: &str) -> Vec<u128> {
        self.by_tag
            .get(tag)
            .map(|ids| ids.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Number of stored objects of a site.
    pub fn site_objects(&self, site: &str) -> usize {
        self.by_site.get(site).copied().unwrap_or(0)
    }

    /// (URLs, surrogate keys, tag memberships) — for status and leak checks.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let memberships = self.by_tag.values().map(HashMap::len).sum();
        (self.by_url.len(), self.by_tag.len(), memberships)
    }
}

/// Splits surrogate-key header values: Fastly's `Surrogate-Key` is space-separated,
/// `Cache-Tag` is comma-separated; both forms are accepted in either header.
pub fn split_tags(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u128, seq: u64, url: &str, tags: &[&str]) -> Entry {
        Entry {
            id,
            seq,
            site: "s".into(),
            url: url.into(),
            tags: tags.iter().map(|t| Arc::from(*t)).collect(),
        }
    }

    #[test]
    fn replacement_keeps_the_newer_entries() {
        let mut index = Index::default();
        let old = entry(1, 1, "a.test/x", &["t1", "t2"]);
        let new = entry(1, 2, "a.test/x", &["t2"]);
        index.add(&old);
        index.add(&new);
        index.remove(&old);
        assert_eq!(index.url("a.test/x"), vec![1]);
        assert_eq!(index.tag("t2"), vec![1]);
        assert!(index.tag("t1").is_empty());
        index.remove(&new);
        assert_eq!(index.sizes(), (0, 0, 0));
    }

    #[test]
    fn prefix_and_variants() {
        let mut index = Index::default();
        index.add(&entry(1, 1, "a.test/release/1", &[]));
        index.add(&entry(2, 2, "a.test/release/1", &[]));
        index.add(&entry(3, 3, "a.test/release/2?x=1", &[]));
        index.add(&entry(4, 4, "a.test/releases", &[]));
        index.add(&entry(5, 5, "b.test/release/1", &[]));
        let mut ids = index.prefix("a.test/release/");
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(index.url("a.test/release/1").len(), 2);
        assert_eq!(
            split_tags("a b,c ,  d").collect::<Vec<_>>(),
            vec!["a", "b", "c", "d"]
        );
    }
}
