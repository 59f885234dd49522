//! The purge index: which stored objects belong to a URL (every variant, for URL and prefix
//! purges) and which carry a surrogate key (for tag purges).
//!
//! pingora keys are hashes, so this is our own index. Each stored version of an object has
//! one shared [`Entry`]; the index holds the entries, so a purge marks objects dead or stale
//! through them without touching the cache itself (no lookups, no LRU noise). An entry is
//! added when its object is stored and removed (by identity, so a newer version under the same
//! id is never dropped by mistake) when the object leaves the map — evicted, replaced or
//! purged; a hard purge marks its entries dead at once and leaves their removal to the
//! reclaim, so it holds the index only as long as marking takes.
//!
//! The index also counts the live objects of each site (what status and purge reports say)
//! and keeps the [`Journal`] of recent purges, which a fill checks before it is stored: a
//! response the origin was asked for before a purge that covers it must not be served as if
//! the purge had come first.
//!
//! It is kept in [`SHARDS`] shards by URL (every variant of a URL in one), each under its own
//! lock, so that fills of different URLs do not wait for one lock; a purge by URL takes one
//! shard, by prefix or key each shard in turn. The journal has its own lock, which a fill takes
//! only when a purge was recorded after its origin was asked (one atomic read says so). Why no
//! purge can slip past a fill: a purge records itself in the journal before it picks from any
//! shard, and a fill holds its shard from its journal check to its insertion; so either the
//! purge picks the shard after the fill is in it, or the fill's check comes after the record
//! (the shard's lock orders the two) and applies the purge itself.

use super::journal::{self, Cover, Journal, Target};
use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One stored version of an object, as the index and purges see it.
#[derive(Debug)]
pub struct Entry {
    pub id: u128,
    pub site: Arc<str>,
    pub url: Arc<str>,
    pub tags: Box<[Arc<str>]>,
    /// When the origin was asked for this content (ns since the Unix epoch): a purge after
    /// this covers it, even when the answer arrived after the purge.
    pub born: u64,
    /// Hard-purged: invisible from now on.
    dead: AtomicBool,
    /// Soft-purged at this time (ms since the Unix epoch; 0 = not).
    stale_since_ms: AtomicU64,
}

impl Entry {
    pub fn new(id: u128, site: Arc<str>, url: Arc<str>, tags: Box<[Arc<str>]>, born: u64) -> Self {
        Entry {
            id,
            site,
            url,
            tags,
            born,
            dead: AtomicBool::new(false),
            stale_since_ms: AtomicU64::new(0),
        }
    }

    /// A new version of the same object (after a 304 to a request made at `born`): same URL
    /// and keys, no purge marks.
    pub fn renewed(&self, born: u64) -> Self {
        Entry::new(
            self.id,
            self.site.clone(),
            self.url.clone(),
            self.tags.clone(),
            born,
        )
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Marks dead; false when it already was.
    pub fn kill(&self) -> bool {
        !self.dead.swap(true, Ordering::AcqRel)
    }

    /// Marks stale as of `at_ms`, keeping an earlier mark: re-purging must not reopen the
    /// stale window.
    pub fn mark_stale(&self, at_ms: u64) {
        let _ = self.stale_since_ms.compare_exchange(
            0,
            at_ms.max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub fn stale_since(&self) -> Option<SystemTime> {
        match self.stale_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// Shards of the index: enough that fills on 64 cores rarely share one; few enough that a
/// prefix purge's walk over all of them costs nothing next to its matches.
pub const SHARDS: usize = 64;

/// The purge index: [`SHARDS`] shards by URL, the journal of recent purges, and the time of the
/// newest purge recorded in it.
pub struct Index {
    shards: Box<[Mutex<Shard>]>,
    journal: Mutex<Journal>,
    /// When the newest purge in the journal was made (cache clock; 0: none yet): a fill whose
    /// origin was asked after it has no purge to check.
    newest_ns: AtomicU64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            journal: Mutex::default(),
            newest_ns: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard leaves maps that are still whole: usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Index {
    /// Which shard holds `url`'s entries.
    pub fn shard_of(&self, url: &str) -> usize {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(0).hash_one(url) as usize % SHARDS
    }

    /// The shard holding `url`'s entries, locked.
    pub fn shard(&self, url: &str) -> MutexGuard<'_, Shard> {
        self.shard_number(self.shard_of(url))
    }

    /// Shard `i`, locked.
    pub fn shard_number(&self, i: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[i])
    }

    /// Every shard, locked, in order (a purge of everything: nothing changes while it counts).
    pub fn all_shards(&self) -> Vec<MutexGuard<'_, Shard>> {
        self.shards.iter().map(lock).collect()
    }

    /// What `pick` takes from `url`'s shard (`Some`), or from every shard in turn.
    pub fn pick<P: IntoIterator<Item = Arc<Entry>>>(
        &self,
        url: Option<&str>,
        mut pick: impl FnMut(&mut Shard) -> P,
    ) -> Vec<Arc<Entry>> {
        match url {
            Some(url) => pick(&mut self.shard(url)).into_iter().collect(),
            None => self
                .shards
                .iter()
                .flat_map(|s| pick(&mut lock(s)))
                .collect(),
        }
    }

    /// Records a purge made now in the journal, before it picks anything (see the module doc).
    pub fn record(&self, target: Target, soft: bool) {
        let mut journal = lock(&self.journal);
        let at = journal::now_ns();
        journal.record(at, target, soft);
        self.newest_ns.store(at, Ordering::SeqCst);
    }

    /// What the purges made since `e`'s origin was asked make of it; the caller holds `e`'s
    /// shard.
    pub fn cover(&self, e: &Entry) -> Cover {
        // No purge recorded at or after its birth: none to apply (also none forgotten).
        if self.newest_ns.load(Ordering::SeqCst) < e.born {
            return Cover::None;
        }
        lock(&self.journal).cover(e)
    }

    /// Live objects of `site`, or of every site.
    pub fn live(&self, site: Option<&str>) -> u64 {
        self.shards.iter().map(|s| lock(s).live(site)).sum()
    }

    /// (URLs, distinct surrogate keys, tag memberships) — for status and leak checks.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (mut urls, mut memberships) = (0, 0);
        let mut tags: HashSet<Arc<str>> = HashSet::new();
        for s in self.shards.iter() {
            let s = lock(s);
            urls += s.by_url.len();
            memberships += s.by_tag.values().map(HashMap::len).sum::<usize>();
            tags.extend(s.by_tag.keys().cloned());
        }
        (urls, tags.len(), memberships)
    }
}

/// One shard of the URL and surrogate-key index.
#[derive(Debug, Default)]
pub struct Shard {
    /// `host/path?query` → every stored variant of that URL (almost always one: kept inline,
    /// not in a heap vector of its own).
    by_url: BTreeMap<Arc<str>, SmallVec<[Arc<Entry>; 1]>>,
    /// surrogate key → object id → entry.
    by_tag: HashMap<Arc<str>, HashMap<u128, Arc<Entry>>>,
    /// site → number of live stored objects (not purged, not gone with a purge of everything).
    live: HashMap<Arc<str>, u64>,
}

impl Shard {
    /// Indexes `e` and counts it live.
    pub fn add(&mut self, e: &Arc<Entry>) {
        let variants = self.by_url.entry(e.url.clone()).or_default();
        match variants.iter_mut().find(|v| v.id == e.id) {
            Some(v) => *v = e.clone(),
            None => variants.push(e.clone()),
        }
        for tag in e.tags.iter() {
            self.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(e.id, e.clone());
        }
        *self.live.entry(e.site.clone()).or_default() += 1;
    }

    /// Stops counting `e` as live (once: the caller saw its `kill` succeed).
    pub fn uncount(&mut self, e: &Entry) {
        self.uncount_n(&e.site, 1);
    }

    /// Stops counting `count` objects of `site` as live.
    pub fn uncount_n(&mut self, site: &str, count: u64) {
        if let Some(n) = self.live.get_mut(site) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                self.live.remove(site);
            }
        }
    }

    /// Stops counting every object of `site` (or all) as live: a purge of everything.
    pub fn uncount_all(&mut self, site: Option<&str>) -> u64 {
        match site {
            Some(s) => self.live.remove(s).unwrap_or(0),
            None => self.live.drain().map(|(_, n)| n).sum(),
        }
    }

    /// Live objects of `site`, or of every site.
    pub fn live(&self, site: Option<&str>) -> u64 {
        match site {
            Some(s) => self.live.get(s).copied().unwrap_or(0),
            None => self.live.values().sum(),
        }
    }

    /// Removes `e`, unless a newer version has taken its place (counts are the caller's).
    pub fn remove(&mut self, e: &Arc<Entry>) {
        if let Some(variants) = self.by_url.get_mut(&e.url) {
            variants.retain(|v| !Arc::ptr_eq(v, e));
            if variants.is_empty() {
                self.by_url.remove(&e.url);
            }
        }
        for tag in e.tags.iter() {
            if let Some(ids) = self.by_tag.get_mut(tag) {
                if ids.get(&e.id).is_some_and(|v| Arc::ptr_eq(v, e)) {
                    ids.remove(&e.id);
                }
                if ids.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
    }

    /// Every stored variant of exactly this URL.
    pub fn url(&self, url: &str) -> Vec<Arc<Entry>> {
        self.by_url.get(url).map_or_else(Vec::new, |v| v.to_vec())
    }

    /// Every stored object whose URL starts with `prefix`.
    pub fn prefix(&self, prefix: &str) -> Vec<Arc<Entry>> {
        self.by_url
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(url, _)| url.starts_with(prefix))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    /// Every stored object tagged with `tag`.
    pub fn tag(&self, tag: &str) -> Vec<Arc<Entry>> {
        self.by_tag
            .get(tag)
            .map(|ids| ids.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes the objects tagged with `tag` (of `site`, when given) out of the tag's set: a hard
    /// purge of a key in one map removal instead of one per object (the set is walked after
    /// the index is released).
    pub fn take_tag(&mut self, tag: &str, site: Option<&str>) -> HashMap<u128, Arc<Entry>> {
        let Some(site) = site else {
            return self.by_tag.remove(tag).unwrap_or_default();
        };
        let Some(ids) = self.by_tag.get_mut(tag) else {
            return HashMap::new();
        };
        let mut taken = HashMap::new();
        ids.retain(|id, e| {
            let ours = &*e.site == site;
            if ours {
                taken.insert(*id, e.clone());
            }
            !ours
        });
        if ids.is_empty() {
            self.by_tag.remove(tag);
        }
        taken
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

    fn entry(id: u128, url: &str, tags: &[&str]) -> Arc<Entry> {
        let tags = tags.iter().map(|t| Arc::from(*t)).collect();
        Arc::new(Entry::new(id, "s".into(), url.into(), tags, 0))
    }

    fn ids(v: Vec<Arc<Entry>>) -> Vec<u128> {
        let mut ids: Vec<u128> = v.iter().map(|e| e.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn replacement_keeps_the_newer_entries() {
        let mut index = Shard::default();
        let old = entry(1, "a.test/x", &["t1", "t2"]);
        let new = entry(1, "a.test/x", &["t2"]);
        index.add(&old);
        index.add(&new);
        index.remove(&old);
        assert_eq!(ids(index.url("a.test/x")), vec![1]);
        assert_eq!(ids(index.tag("t2")), vec![1]);
        assert!(index.tag("t1").is_empty());
        index.remove(&new);
        assert!(index.by_url.is_empty() && index.by_tag.is_empty());
    }

    #[test]
    fn shards_are_walked_by_prefix_and_key_and_counted_once() {
        let index = Index::default();
        let urls: Vec<String> = (0..200).map(|i| format!("a.test/p/{i}")).collect();
        for (i, url) in urls.iter().enumerate() {
            let e = entry(
                i as u128,
                url,
                &["all", if i % 2 == 0 { "even" } else { "odd" }],
            );
            index.shard(url).add(&e);
        }
        let shards: HashSet<usize> = urls.iter().map(|u| index.shard_of(u)).collect();
        assert!(shards.len() > 10, "the URLs spread over the shards");
        assert_eq!(index.pick(None, |s| s.prefix("a.test/p/1")).len(), 111);
        assert_eq!(index.pick(None, |s| s.tag("even")).len(), 100);
        assert_eq!(
            ids(index.pick(Some("a.test/p/7"), |s| s.url("a.test/p/7"))),
            vec![7]
        );
        assert_eq!(index.live(Some("s")), 200);
        assert_eq!(
            index.sizes(),
            (200, 3, 400),
            "a key in many shards is one key"
        );
    }

    #[test]
    fn a_fill_checks_the_journal_only_after_a_purge_since_its_birth() {
        let index = Index::default();
        let old = Entry::new(1, "s".into(), "a.test/x".into(), Box::new([]), 1);
        index.record(Target::Url("a.test/x".into()), false);
        assert_eq!(index.cover(&old), Cover::Dead);
        let newer = Entry::new(
            1,
            "s".into(),
            "a.test/x".into(),
            Box::new([]),
            journal::now_ns(),
        );
        assert_eq!(index.cover(&newer), Cover::None);
    }

    #[test]
    fn prefix_variants_and_marks() {
        let mut index = Shard::default();
        index.add(&entry(1, "a.test/release/1", &[]));
        index.add(&entry(2, "a.test/release/1", &[]));
        index.add(&entry(3, "a.test/release/2?x=1", &[]));
        index.add(&entry(4, "a.test/releases", &[]));
        index.add(&entry(5, "b.test/release/1", &[]));
        assert_eq!(ids(index.prefix("a.test/release/")), vec![1, 2, 3]);
        assert_eq!(index.url("a.test/release/1").len(), 2);
        assert_eq!(
            split_tags("a b,c ,  d").collect::<Vec<_>>(),
            vec!["a", "b", "c", "d"]
        );
        let e = entry(9, "x", &[]);
        e.mark_stale(1_000);
        e.mark_stale(2_000);
        assert_eq!(e.stale_since(), Some(UNIX_EPOCH + Duration::from_secs(1)));
        assert!(e.kill() && !e.kill() && e.is_dead());
    }
}
