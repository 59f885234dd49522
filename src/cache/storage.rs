//! The cache storage: pingora-cache's `Storage` trait over a map of objects weighed in bytes
//! and bounded by the configured capacity ([`objects`]), with the purge index and purge epochs.
//!
//! An object becomes visible only when its body is complete (`HandleMiss::finish`); a fill
//! that fails or is dropped half-way stores nothing, so a truncated body is never served.
//! Eviction is CLOCK-PRO (see [`objects`]): an object must be read again soon after it is
//! stored to displace others when the cache is full, which keeps one-off URLs (cache-busting
//! query strings) from flushing the hot set. Purging everything (or a site) is an epoch bump
//! checked on lookup, so it is O(1) and immediate; the dead objects' memory is reclaimed on
//! the storage's one reclaim thread ([`reclaim`]).
//!
//! Every object is born when the origin was asked for it (the request's start, carried in the
//! meta's creation time), on the cache's monotonic clock ([`journal::now_ns`]): a purge made
//! after that covers it even when the answer arrives after the purge — purges of everything
//! through their epochs, the others through the [`journal`] a fill reads before it is stored.

use super::body::Body;
use super::index::{split_tags, Entry, Shard, SHARDS};
use super::journal::{self, Target};
use super::key;
use super::meta::MetaView;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod objects;
mod reclaim;
use objects::Objects;
use std::time::{SystemTime, UNIX_EPOCH};

/// Fixed bookkeeping per object beyond its bytes (key, Arc, map slot, index entries, the
/// allocator's share), measured with `loadtest/capacity.py`, so that many tiny objects cannot
/// overshoot the capacity by their overhead alone.
const OBJECT_OVERHEAD: usize = 540;

/// The share of the capacity set aside for parsed copies of hot objects' heads
/// (`meta::ParsedBudget`): 1/16.
const PARSED_SHARE: u64 = 16;

/// One stored response: serialised meta (as pingora-cache defines it) and the whole body.
struct Object {
    meta: super::meta::Stored,
    body: super::body::Body,
    /// This version's index entry, which also carries its birth and purge marks.
    entry: Arc<Entry>,
    /// Bytes accounted for against the capacity (see [`Object::new`]).
    weight: u32,
}

/// A stored object a hit serves, held while it is answered: its metadata is read in place
/// ([`MetaView`]), never cloned.
pub struct FreshHit {
    obj: Arc<Object>,
    /// Parsed for this hit when the object keeps no parsed copy (yet, or past the budget).
    meta: Option<CacheMeta>,
}

impl FreshHit {
    fn of(obj: Arc<Object>) -> Result<FreshHit> {
        let meta = match obj.meta.parsed() {
            Some(_) => None,
            None => Some(obj.meta.to_meta()?),
        };
        Ok(FreshHit { obj, meta })
    }

    pub fn meta(&self) -> MetaView<'_> {
        match (&self.meta, self.obj.meta.parsed()) {
            (Some(meta), _) => MetaView::Meta(meta),
            (None, Some(parsed)) => MetaView::Parsed(parsed),
            (None, None) => unreachable!("a hit without a parsed copy parses its own"),
        }
    }

    /// The stored body (borrowed: a clone would write its count, which every thread serving
    /// the object writes too).
    pub fn body(&self) -> &Body {
        &self.obj.body
    }
}

/// Purges of more objects than this remove them from the map on a helper thread, so the purge
/// answers in milliseconds; the objects are invisible from the moment the purge returns.
const SYNC_REMOVAL_LIMIT: usize = 256;

/// The pause between batches of 64 removals on a helper thread (see [`remove_if`]).
const RECLAIM_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

impl Object {
    /// An object weighed once: its stored head, body (a memory file's in whole pages), URL
    /// and keys, plus fixed bookkeeping.
    fn new(meta: super::meta::Stored, body: Body, entry: Arc<Entry>) -> Object {
        let tags: usize = entry.tags.iter().map(|t| t.len() + 48).sum();
        let body_bytes = match &body {
            Body::Heap(b) => b.len(),
            Body::File(f) => f.len().div_ceil(4096) * 4096,
        };
        let bytes = meta.weight() + body_bytes + entry.url.len() + tags + OBJECT_OVERHEAD;
        Object {
            meta,
            body,
            entry,
            weight: bytes.min(u32::MAX as usize) as u32,
        }
    }
}

/// Cut-offs of purge-everything operations for one scope (all, or a site), on the cache clock.
#[derive(Debug, Default, Clone, Copy)]
struct Epoch {
    /// Objects born at or before this are gone.
    hard: u64,
    /// Objects born at or before this are stale as of `soft_at`.
    soft: u64,
    soft_at: Option<SystemTime>,
}

/// The cut-offs of every scope. Read by every lookup, so kept behind an `ArcSwap`: a read
/// writes only the reading thread's own slot (a read lock's count is a line every thread
/// writes); a purge of everything, which holds every index shard, stores a new copy.
#[derive(Debug, Default, Clone)]
struct Epochs {
    all: Epoch,
    sites: HashMap<Arc<str>, Epoch>,
}

impl Epochs {
    /// What the purges of everything make of `e`.
    fn verdict(&self, e: &Entry) -> Verdict {
        let site = self.sites.get(&e.site).copied().unwrap_or_default();
        if e.born <= self.all.hard.max(site.hard) {
            return Verdict::Gone;
        }
        let soft = [self.all, site]
            .into_iter()
            .filter(|p| e.born <= p.soft)
            .filter_map(|p| p.soft_at)
            .min();
        soft.map_or(Verdict::Live, Verdict::StaleSince)
    }

    /// Whether a purge of everything has removed `e`.
    fn gone(&self, e: &Entry) -> bool {
        e.born <= self.hard_cutoff(&e.site)
    }

    /// Objects of `site` born at or before this are gone.
    fn hard_cutoff(&self, site: &str) -> u64 {
        let own = self.sites.get(site).map_or(0, |p| p.hard);
        self.all.hard.max(own)
    }
}

/// What a lookup makes of an object under the purge epochs.
enum Verdict {
    Live,
    Gone,
    StaleSince(SystemTime),
}

/// How many objects one purge removed or marked stale on this node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PurgeCount {
    pub removed: u64,
    pub stale: u64,
}

/// The bounded in-memory cache storage.
pub struct EdgeStorage {
    objects: Arc<Objects>,
    tag_headers: Vec<String>,
    parsed: Arc<super::meta::ParsedBudget>,
    reclaimer: reclaim::Reclaimer,
}

fn id(key: &impl CacheHashKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

impl EdgeStorage {
    /// `max_object_bytes`: the largest body stored (sizes the map's shards);
    /// `tag_headers`: response headers whose values are surrogate keys (lowercase names).
    /// `capacity_bytes` bounds what objects hold, parsed copies of hot heads included.
    pub fn new(capacity_bytes: u64, max_object_bytes: u64, tag_headers: Vec<String>) -> Self {
        let parsed = capacity_bytes / PARSED_SHARE;
        EdgeStorage {
            objects: Arc::new(Objects::new(capacity_bytes - parsed, max_object_bytes)),
            tag_headers,
            parsed: super::meta::ParsedBudget::new(parsed),
            reclaimer: reclaim::Reclaimer::default(),
        }
    }

    /// Number of live objects stored: not purged, including the purged ones whose memory is
    /// still being reclaimed.
    pub fn object_count(&self) -> u64 {
        self.objects.index.live(None)
    }

    /// Bytes stored, as weighed for the capacity: objects, and parsed copies of hot heads.
    pub fn weighted_bytes(&self) -> u64 {
        self.objects.weight() + self.parsed.used()
    }

    /// Objects evicted for space since start.
    pub fn evictions(&self) -> u64 {
        self.objects.evictions()
    }

    /// (URLs, surrogate keys, tag memberships) in the purge index.
    pub fn index_sizes(&self) -> (usize, usize, usize) {
        self.objects.index.sizes()
    }

    /// A copy of `obj` with new meta, as a new stored version (unless a purge made since the
    /// revalidation was asked covers it).
    fn restore(&self, id: u128, obj: &Object, meta: &CacheMeta) -> Result<bool> {
        let born = journal::ns_at(meta.created());
        let updated = Object::new(
            super::meta::Stored::new(meta, &self.parsed)?,
            obj.body.clone(),
            Arc::new(obj.entry.renewed(born)),
        );
        Ok(self.objects.insert(id, updated))
    }

    /// The fresh stored answer a request to `rule`'s route finds under the primary key `hash`
    /// now, in the variant it selects as `cache_vary_filter` keys variants (origin `Vary`, key
    /// cookies and headers); `request` gives the request headers for the stored object's
    /// headers, asked only when a variance is needed (a plain object needs none). What both
    /// transports serve as a hit without asking the predictor.
    pub fn fresh_hit<'h>(
        &self,
        rule: &crate::rules::Rule,
        hash: HashBinary,
        request: impl FnOnce(&http::HeaderMap) -> std::borrow::Cow<'h, http::HeaderMap>,
    ) -> Option<FreshHit> {
        let keyed = !rule.key_cookies.is_empty() || !rule.key_headers.is_empty();
        let variance = |meta: &MetaView| {
            if !keyed && meta.variance().is_none() {
                return None;
            }
            let stored = meta.headers();
            key::variance(stored, rule, &request(stored))
        };
        self.fresh_variant_hit(hash, SystemTime::now, variance)
    }

    /// The object a request for `primary` finds when it can be served as a plain hit: live and
    /// fresh at the time `now` gives (read only for an object found; see [`Self::fresh_hit`]).
    /// Objects that vary (origin `Vary`, key cookies
    /// and headers) are found as pingora's lookup finds them: the primary slot under
    /// `primary`, then, when the request's variance (`variance_of`, given the primary slot's
    /// meta) is not the slot's, the variant stored under the primary and that variance, valid
    /// only if stored no earlier than the primary slot's provenance (a purge of all variants
    /// removes only the primary slot). `None` leaves the request to pingora's cache path.
    pub fn fresh_variant_hit(
        &self,
        primary: HashBinary,
        now: impl FnOnce() -> SystemTime,
        variance_of: impl FnOnce(&MetaView) -> Option<HashBinary>,
    ) -> Option<FreshHit> {
        let slot = self.objects.get(u128::from_be_bytes(primary))?;
        if !matches!(self.verdict(&slot), Verdict::Live) {
            return None;
        }
        let slot = FreshHit::of(slot).ok()?;
        let variance = variance_of(&slot.meta());
        let found = if variance == slot.meta().variance() {
            slot
        } else {
            let mut key = CacheKey::new("", "");
            key.set_primary_bin_override(primary);
            key.set_variance_key(variance?);
            let variant = self.objects.get(id(&key))?;
            let valid = matches!(self.verdict(&variant), Verdict::Live);
            let variant = FreshHit::of(variant).ok()?;
            if !valid || variant.meta().created() < slot.meta().provenance() {
                return None;
            }
            variant
        };
        found.meta().is_fresh(now()).then_some(found)
    }

    fn verdict(&self, obj: &Object) -> Verdict {
        if obj.entry.is_dead() {
            return Verdict::Gone;
        }
        let epochs = self.objects.epochs.load().verdict(&obj.entry);
        match (epochs, obj.entry.stale_since()) {
            (Verdict::StaleSince(a), Some(b)) => Verdict::StaleSince(a.min(b)),
            (Verdict::Live, Some(b)) => Verdict::StaleSince(b),
            (v, _) => v,
        }
    }

    /// Purges what `pick` takes from the index (from `url`'s shard, or from each shard in
    /// turn): recorded in the journal first (so a fill that is stored after this sees it),
    /// then marked stale (soft) or dead (hard), counting only objects that were live. Purges
    /// go through the index entries, so they neither look objects up nor disturb the eviction
    /// order. A shard is held only to pick and (hard) to count what was removed, so fills never
    /// wait behind a big purge; the entries' removal is left to [`Self::reclaim`].
    fn purge_picked<P>(
        &self,
        target: Target,
        soft: bool,
        url: Option<&str>,
        pick: impl FnMut(&mut Shard) -> P,
    ) -> PurgeCount
    where
        P: IntoIterator<Item = Arc<Entry>>,
    {
        let mut count = PurgeCount::default();
        let index = &self.objects.index;
        index.record(target, soft);
        let picked = index.pick(url, pick);
        if soft {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64);
            let epochs = self.objects.epochs.load();
            for e in picked {
                if !e.is_dead() && !epochs.gone(&e) {
                    e.mark_stale(now_ms);
                    count.stale += 1;
                }
            }
            return count;
        }
        // The births of the objects this purge killed, by shard and site: counted out below,
        // under their shard, against the epochs of that moment (a purge of everything
        // meanwhile has counted them out already).
        let mut killed: Vec<Vec<(Arc<str>, Vec<u64>)>> = vec![Vec::new(); SHARDS];
        let mut doomed = Vec::new();
        for e in picked {
            if !e.kill() {
                continue;
            }
            let sites = &mut killed[index.shard_of(&e.url)];
            match sites.iter_mut().find(|(site, _)| *site == e.site) {
                Some((_, borns)) => borns.push(e.born),
                None => sites.push((e.site.clone(), vec![e.born])),
            }
            doomed.push(e);
        }
        for (n, sites) in killed.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            let mut shard = index.shard_number(n);
            let epochs = self.objects.epochs.load();
            for (site, borns) in sites {
                let cutoff = epochs.hard_cutoff(site);
                let live = borns.iter().filter(|b| **b > cutoff).count() as u64;
                shard.uncount_n(site, live);
                count.removed += live;
            }
        }
        self.reclaim(doomed);
        count
    }

    /// Removes purged entries' objects (only those versions: a newer object stored since then
    /// stays) and their index entries: at once when they are few, else on the reclaim thread.
    fn reclaim(&self, doomed: Vec<Arc<Entry>>) {
        let objects = self.objects.clone();
        let few = doomed.len() <= SYNC_REMOVAL_LIMIT;
        let remove = move |pace| {
            objects.remove_if(&doomed, |e| e.id, |e, o| Arc::ptr_eq(&o.entry, e), pace);
            objects.unindex(&doomed, pace);
        };
        if few {
            remove(None);
        } else {
            self.reclaimer.run(move || remove(Some(RECLAIM_PAUSE)));
        }
    }

    /// Purges every variant of one URL (`host/path?query`, query normalised).
    pub fn purge_url(&self, url: &str, soft: bool) -> PurgeCount {
        self.purge_picked(Target::Url(url.into()), soft, Some(url), |s| s.url(url))
    }

    /// Purges every object whose URL starts with `prefix` (`host/path…`).
    pub fn purge_prefix(&self, prefix: &str, soft: bool) -> PurgeCount {
        self.purge_picked(Target::Prefix(prefix.into()), soft, None, |s| {
            s.prefix(prefix)
        })
    }

    /// Purges every object tagged with the surrogate key `tag` (optionally of one site).
    pub fn purge_tag(&self, tag: &str, site: Option<&str>, soft: bool) -> PurgeCount {
        let target = Target::Tag {
            tag: tag.into(),
            site: site.map(Arc::from),
        };
        if soft {
            self.purge_picked(target, soft, None, |shard| {
                let mut entries = shard.tag(tag);
                entries.retain(|e| site.is_none_or(|s| &*e.site == s));
                entries
            })
        } else {
            // The key's whole set leaves each shard in one removal and is walked outside it.
            self.purge_picked(target, soft, None, |shard| {
                shard.take_tag(tag, site).into_values()
            })
        }
    }

    /// Purges everything, or everything of one site, in O(1): an epoch bump.
    pub fn purge_all(&self, site: Option<&str>, soft: bool) -> PurgeCount {
        // Every shard, so that no count changes between the cut-off and the counting.
        let mut shards = self.objects.index.all_shards();
        let cutoff = journal::now_ns();
        // Holding every shard also makes this the only writer of the epochs.
        let mut epochs = Epochs::clone(&self.objects.epochs.load());
        let epoch = match site {
            Some(s) => epochs.sites.entry(Arc::from(s)).or_default(),
            None => &mut epochs.all,
        };
        if soft {
            epoch.soft = cutoff;
            epoch.soft_at = Some(SystemTime::now());
            self.objects.epochs.store(Arc::new(epochs));
            return PurgeCount {
                removed: 0,
                stale: shards.iter().map(|s| s.live(site)).sum(),
            };
        }
        epoch.hard = cutoff;
        self.objects.epochs.store(Arc::new(epochs));
        let removed = shards.iter_mut().map(|s| s.uncount_all(site)).sum();
        drop(shards);
        let site: Option<Arc<str>> = site.map(Arc::from);
        // Reclaims the memory in the background; lookups already treat these as gone.
        let objects = self.objects.clone();
        self.reclaimer.run(move || {
            let gone = |o: &Object| {
                o.entry.born <= cutoff && site.as_ref().is_none_or(|s| *s == o.entry.site)
            };
            let ids = objects.ids_where(gone);
            let pace = Some(RECLAIM_PAUSE);
            objects.remove_if(&ids, |id| *id, |_, o| gone(o), pace);
        });
        PurgeCount { removed, stale: 0 }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Storage for EdgeStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(obj) = self.objects.get(id(key)) else {
            return Ok(None);
        };
        let mut meta = obj.meta.to_meta()?;
        match self.verdict(&obj) {
            Verdict::Live => {}
            Verdict::Gone => return Ok(None),
            Verdict::StaleSince(at) => meta.expire_at(at),
        }
        let end = obj.body.len();
        let hit = Hit {
            body: obj.body.bytes(),
            done: false,
            start: 0,
            end,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (site, url) = key::decode_primary(key.primary_key())
            .map(|p| (p.site.to_string(), key::url(p.host, p.path, p.query)))
            .unwrap_or_default();
        let mut tags: Vec<Arc<str>> = Vec::new();
        for name in &self.tag_headers {
            for value in meta.headers().get_all(name.as_str()) {
                let Ok(value) = value.to_str() else { continue };
                for tag in split_tags(value) {
                    if !tags.iter().any(|t| &**t == tag) {
                        tags.push(tag.into());
                    }
                }
            }
        }
        Ok(Box::new(Fill {
            id: id(key),
            born: journal::ns_at(meta.created()),
            meta: Some(super::meta::Stored::new(meta, &self.parsed)?),
            body: BytesMut::with_capacity(
                meta.headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(PRESIZE_LIMIT),
            ),
            site: site.into(),
            url: url.into(),
            tags: tags.into(),
            storage: self,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(match self.objects.remove(id(target.key())) {
            true => PurgeOutcome::Purged(None),
            false => PurgeOutcome::NotFound,
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let live = self
            .objects
            .peek(id(target.key()))
            .filter(|o| matches!(self.verdict(o), Verdict::Live));
        Ok(match live {
            Some(o) => {
                o.entry.mark_stale(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(1, |d| d.as_millis() as u64),
                );
                PurgeOutcome::Expired
            }
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key = id(key);
        // A purged object stays purged: the 304 was for content a purge has since removed.
        let Some(obj) = self.objects.peek(key).filter(|o| !o.entry.is_dead()) else {
            return Ok(false);
        };
        // A 304 confirmed the content: it is as new as a store of the revalidation's answer.
        self.restore(key, &obj, meta)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads a stored body; supports seeking for Range requests.
struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a body from the origin; stores it only when complete.
struct Fill {
    id: u128,
    /// When the origin was asked (the meta's creation time, on the cache clock).
    born: u64,
    meta: Option<super::meta::Stored>,
    /// The body so far, in a buffer sized from Content-Length when the origin gave one.
    body: BytesMut,
    site: Arc<str>,
    url: Arc<str>,
    tags: Box<[Arc<str>]>,
    storage: &'static EdgeStorage,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let meta = self
            .meta
            .take()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "fill finished twice"))?;
        let entry = Entry::new(
            self.id,
            self.site.clone(),
            self.url.clone(),
            std::mem::take(&mut self.tags),
            self.born,
        );
        let body = Body::new(std::mem::take(&mut self.body));
        let obj = Object::new(meta, body, Arc::new(entry));
        let size = obj.body.len();
        // Not stored when a purge made since the origin was asked removed it; the response
        // still reaches the clients waiting for it, who asked before the purge.
        self.storage.objects.insert(self.id, obj);
        Ok(MissFinishType::Created(size))
    }
}

/// Largest buffer reserved up front from a Content-Length (which the origin may get wrong).
const PRESIZE_LIMIT: usize = 4 << 20;

#[cfg(test)]
mod tests;
