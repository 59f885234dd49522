//! The bounded map of stored objects: a quick_cache map weighed in bytes, and the purge index
//! kept true on every way an object leaves it (eviction, replacement, removal).
//!
//! Why quick_cache and not moka: memory per object is the product's density. moka keeps about
//! 260 B of its own per entry (a concurrent hash-map node, a boxed entry, access-order deque
//! nodes; measured with 100,000 entries), quick_cache keeps one 48 B slab slot and a 4 B
//! hash-table slot, which on a 1 KiB object is a tenth of its memory. Its eviction is CLOCK-PRO:
//! a new object enters a small cold section and must be read again before it is evicted from
//! there to be kept (a key evicted unread is remembered as a ghost, and comes back hot), so a
//! flood of one-off URLs churns the cold section and leaves the hot set alone — the property
//! moka's TinyLFU gave us.
//!
//! quick_cache reports evictions only, through a per-call state; replacements and removals are
//! seen here (every writer goes through this module, in the write order), so the index and its
//! live counts are updated in one place, outside the map's shard locks. A new object is checked
//! here, under its URL's index shard, against the purges made since its origin was asked (the
//! epochs of purges of everything and the journal of the others), so no purge can slip between
//! the check and the store (see [`Index`]).

use super::super::index::Index;
use super::super::journal::Cover;
use super::{lock, Epochs, Object};
use arc_swap::ArcSwap;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An object's id as the map keys it: two words rather than a `u128`, whose 16-byte alignment
/// would pad every slab slot from 48 to 64 bytes.
type Slot = (u64, u64);

fn slot(id: u128) -> Slot {
    ((id >> 64) as u64, id as u64)
}

/// Weighs an object by the bytes it accounts for (computed once, when it is built: the map
/// asks again on every eviction step and must get the same answer).
#[derive(Clone)]
struct Weigh;

impl Weighter<Slot, Arc<Object>> for Weigh {
    fn weight(&self, _: &Slot, o: &Arc<Object>) -> u64 {
        u64::from(o.weight)
    }
}

/// Collects the objects a write evicted, so that the index is updated after the shard lock
/// is released.
#[derive(Clone, Default)]
struct Evicted;

impl Lifecycle<Slot, Arc<Object>> for Evicted {
    type RequestState = Vec<Arc<Object>>;

    fn on_evict(&self, state: &mut Self::RequestState, _: Slot, o: Arc<Object>) {
        state.push(o);
    }
}

/// Stored objects, their purge index and the order writers take.
pub(super) struct Objects {
    map: Cache<Slot, Arc<Object>, Weigh, foldhash::fast::RandomState, Evicted>,
    pub(super) index: Index,
    /// Cut-offs of purges of everything: read without a lock by every lookup, replaced by a
    /// purge of everything while it holds every index shard.
    pub(super) epochs: ArcSwap<Epochs>,
    /// Serialises index update + write (and purge removals) per id, so that two writers of
    /// one id cannot interleave and a replaced object is known to the writer that replaced it.
    /// Sharded by id: writers of different ids never wait for each other here (nor, mostly, for
    /// the index, sharded by URL).
    write_order: [Mutex<()>; WRITE_SHARDS],
    /// Objects evicted to stay within the capacity (not purges or replacements).
    evictions: AtomicU64,
}

/// Locks of the write order: enough that fills on 64 cores rarely share one.
const WRITE_SHARDS: usize = 256;

/// Objects the map may hold per byte of capacity, for sizing its tables up front: an entry
/// costs about 50 bytes of table, and a table that grows by doubling keeps up to half of it
/// unused. Untouched, the reserved part is address space, not memory.
const BYTES_PER_ESTIMATED_OBJECT: u64 = 2048;

/// Each shard evicts on its own from an equal share of the capacity and refuses an object
/// larger than its share's hot part, so a shard must hold many of the largest objects.
const LARGEST_PER_SHARD: u64 = 16;

impl Objects {
    pub(super) fn new(capacity: u64, max_object: u64) -> Objects {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut shards = (cpus * 4).next_power_of_two() as u64;
        while shards > 1 && capacity / shards < LARGEST_PER_SHARD * max_object.max(1) {
            shards /= 2;
        }
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .weight_capacity(capacity)
            .estimated_items_capacity((capacity / BYTES_PER_ESTIMATED_OBJECT).max(64) as usize)
            .build()
            .expect("cache options are within their ranges");
        Objects {
            map: Cache::with_options(options, Weigh, Default::default(), Evicted),
            index: Index::default(),
            epochs: ArcSwap::from_pointee(Epochs::default()),
            write_order: std::array::from_fn(|_| Mutex::new(())),
            evictions: AtomicU64::new(0),
        }
    }

    /// The write order of `id`.
    fn order(&self, id: u128) -> std::sync::MutexGuard<'_, ()> {
        // Ids are hashes already: their low bits spread evenly.
        lock(&self.write_order[id as usize % WRITE_SHARDS])
    }

    /// The object stored under `id`, counted as a read for eviction.
    pub(super) fn get(&self, id: u128) -> Option<Arc<Object>> {
        self.map.get(&slot(id))
    }

    /// The object stored under `id`, without counting a read (purges and revalidation).
    pub(super) fn peek(&self, id: u128) -> Option<Arc<Object>> {
        self.map.peek(&slot(id))
    }

    pub(super) fn weight(&self) -> u64 {
        self.map.weight()
    }

    pub(super) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Stores `obj` under `id`, replacing what was there, unless a purge made since its
    /// origin was asked removed it (then `false`; a soft one stores it stale); indexes it and
    /// unindexes what it replaced or evicted.
    pub(super) fn insert(&self, id: u128, obj: Object) -> bool {
        let obj = Arc::new(obj);
        let mut evicted = Vec::new();
        let replaced = {
            let _order = self.order(id);
            {
                let mut shard = self.index.shard(&obj.entry.url);
                if self.epochs.load().gone(&obj.entry) {
                    return false;
                }
                match self.index.cover(&obj.entry) {
                    Cover::Dead => return false,
                    Cover::Stale(at_ms) => obj.entry.mark_stale(at_ms),
                    Cover::None => {}
                }
                shard.add(&obj.entry);
            }
            let replaced = self.map.peek(&slot(id));
            self.map
                .insert_with_lifecycle(slot(id), obj.clone(), &mut evicted);
            replaced
        };
        // An object too large for its shard is refused through the same path; it was never
        // stored, so it is not counted as an eviction.
        let refused = evicted.iter().any(|o| Arc::ptr_eq(o, &obj));
        let count = evicted.len() - usize::from(refused);
        self.evictions.fetch_add(count as u64, Ordering::Relaxed);
        self.forget(replaced.into_iter().chain(evicted));
        true
    }

    /// Removes the object under `id`, whatever it is.
    pub(super) fn remove(&self, id: u128) -> bool {
        let removed = {
            let _order = self.order(id);
            self.map.remove(&slot(id))
        };
        let found = removed.is_some();
        self.forget(removed.map(|(_, o)| o));
        found
    }

    /// Removes the object of each of `items` (its id by `id`) that `doomed` still says is
    /// gone when its turn comes (a newer object stored under the id meanwhile stays), each
    /// under its id's write order, a few at a time, pausing `pace` between batches.
    ///
    /// On a helper thread the pause keeps the reclaim to a fraction of a core: unpaced,
    /// 120,000 objects took 1.25 s of one core, which on a 2-core edge is traffic's CPU (the
    /// objects are already invisible; only their memory is waiting).
    pub(super) fn remove_if<T>(
        &self,
        items: &[T],
        id: impl Fn(&T) -> u128,
        doomed: impl Fn(&T, &Object) -> bool,
        pace: Option<std::time::Duration>,
    ) {
        for (i, chunk) in items.chunks(64).enumerate() {
            if let (Some(pause), true) = (pace, i > 0) {
                std::thread::sleep(pause);
            }
            let removed: Vec<Arc<Object>> = chunk
                .iter()
                .filter_map(|item| {
                    let id = id(item);
                    let _order = self.order(id);
                    self.map
                        .remove_if(&slot(id), |o| doomed(item, o))
                        .map(|(_, o)| o)
                })
                .collect();
            self.forget(removed);
        }
    }

    /// Ids of the stored objects `pick` chooses (a walk, shard by shard).
    pub(super) fn ids_where(&self, pick: impl Fn(&Object) -> bool) -> Vec<u128> {
        self.map
            .iter()
            .filter(|(_, o)| pick(o))
            .map(|(_, o)| o.entry.id)
            .collect()
    }

    /// Unindexes objects that left the map (by identity: a newer version's entries stay) and
    /// stops counting those still counted live (not purged, not gone with a purge of
    /// everything, which stopped counting them itself).
    fn forget(&self, gone: impl IntoIterator<Item = Arc<Object>>) {
        let mut gone = gone.into_iter().peekable();
        if gone.peek().is_none() {
            return;
        }
        for o in gone {
            let mut shard = self.index.shard(&o.entry.url);
            shard.remove(&o.entry);
            if o.entry.kill() && !self.epochs.load().gone(&o.entry) {
                shard.uncount(&o.entry);
            }
        }
    }

    /// Removes purged entries from the index (by identity), a batch at a time, pausing `pace`
    /// between batches: what a hard purge marked dead without unindexing.
    pub(super) fn unindex(
        &self,
        doomed: &[Arc<super::super::index::Entry>],
        pace: Option<std::time::Duration>,
    ) {
        for (i, chunk) in doomed.chunks(256).enumerate() {
            if let (Some(pause), true) = (pace, i > 0) {
                std::thread::sleep(pause);
            }
            for e in chunk {
                self.index.shard(&e.url).remove(e);
            }
        }
    }
}
