//! The cache: the one home of pingora-cache's `'static` pieces (storage, cache lock, predictor),
//! plus key building ([`key`]), request/response policy ([`policy`]) and the storage itself
//! ([`storage`], with large bodies in memory files: [`body`]).
//!
//! pingora-cache wants `&'static` storage and locks; they live for the whole process, so they
//! are created once at startup and leaked on purpose. Their sizes come from the config at start;
//! a reload keeps them (and so keeps every cached object).

pub mod armor;
pub mod body;
pub mod freshness;
pub mod index;
pub mod journal;
pub mod key;
mod meta;
pub use meta::MetaView;
pub mod policy;
pub mod purge;
pub mod storage;
pub mod vary;

use crate::config::CacheSettings;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use storage::EdgeStorage;

/// Shards of the uncacheable-key predictor; each remembers this many keys.
const PREDICTOR_SHARD_CAPACITY: usize = 4096;

/// The process-wide cache pieces handed to every request.
#[derive(Clone, Copy)]
pub struct CacheCore {
    pub storage: &'static EdgeStorage,
    /// Request coalescing: one request fetches a missing object, the others wait for it.
    pub lock: &'static CacheKeyLockImpl,
    /// Remembers keys whose responses were uncacheable, so later requests for them skip the
    /// lock instead of queueing behind each other.
    pub predictor: &'static Predictor<32>,
    pub max_object_size: usize,
}

impl CacheCore {
    pub fn new(settings: &CacheSettings) -> Self {
        let lock: Box<CacheKeyLockImpl> = CacheLock::new_boxed(settings.lock_timeout);
        CacheCore {
            storage: Box::leak(Box::new(EdgeStorage::new(
                settings.capacity,
                settings.max_object_size as u64,
                settings.tag_headers.clone(),
            ))),
            lock: Box::leak(lock),
            predictor: Box::leak(Box::new(Predictor::new(PREDICTOR_SHARD_CAPACITY, None))),
            max_object_size: settings.max_object_size,
        }
    }
}
