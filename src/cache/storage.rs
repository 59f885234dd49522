//! The cache storage: a moka cache behind pingora-cache's `Storage` trait, weighed in bytes
//! and bounded by the configured capacity.
//!
//! An object becomes visible only when its body is complete (`HandleMiss::finish`); a fill
//! that fails or is dropped half-way stores nothing, so a truncated body is never served.
//! Eviction is moka's TinyLFU: an object must be asked for more than once to displace others
//! when the cache is full, which keeps one-off URLs (cache-busting query strings) from flushing
//! the hot set.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

/// Fixed bookkeeping per object beyond its bytes (key, Arc, moka node), so that many tiny
/// objects cannot overshoot the capacity by their overhead alone.
const OBJECT_OVERHEAD: usize = 160;

/// One stored response: serialised meta (as pingora-cache defines it) and the whole body.
struct Object {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
}

impl Object {
    fn weight(&self) -> u32 {
        let bytes = self.meta.0.len() + self.meta.1.len() + self.body.len() + OBJECT_OVERHEAD;
        bytes.min(u32::MAX as usize) as u32
    }
}

/// The bounded in-memory cache storage.
pub struct EdgeStorage {
    objects: moka::sync::Cache<u128, Arc<Object>>,
}

fn id(key: &impl CacheHashKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

impl EdgeStorage {
    pub fn new(capacity_bytes: u64) -> Self {
        EdgeStorage {
            objects: moka::sync::Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_, o: &Arc<Object>| o.weight())
                .build(),
        }
    }

    /// Number of objects stored (after pending maintenance).
    pub fn object_count(&self) -> u64 {
        self.objects.run_pending_tasks();
        self.objects.entry_count()
    }

    /// Bytes stored, as weighed for the capacity (after pending maintenance).
    pub fn weighted_bytes(&self) -> u64 {
        self.objects.run_pending_tasks();
        self.objects.weighted_size()
    }
}

#[async_trait]
impl Storage for EdgeStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(obj) = self.objects.get(&id(key)) else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&obj.meta.0, &obj.meta.1)?;
        let end = obj.body.len();
        let hit = Hit {
            body: obj.body.clone(),
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
        Ok(Box::new(Fill {
            id: id(key),
            meta: Some(meta.serialize()?),
            body: BytesMut::new(),
            storage: self,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(match self.objects.remove(&id(target.key())) {
            Some(_) => PurgeOutcome::Purged(None),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = id(target.key());
        let Some(obj) = self.objects.get(&key) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = CacheMeta::deserialize(&obj.meta.0, &obj.meta.1)?;
        meta.expire_at(SystemTime::now());
        let updated = Object {
            meta: meta.serialize()?,
            body: obj.body.clone(),
        };
        self.objects.insert(key, Arc::new(updated));
        Ok(PurgeOutcome::Expired)
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key = id(key);
        let Some(obj) = self.objects.get(&key) else {
            return Ok(false);
        };
        let updated = Object {
            meta: meta.serialize()?,
            body: obj.body.clone(),
        };
        self.objects.insert(key, Arc::new(updated));
        Ok(true)
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
    meta: Option<(Vec<u8>, Vec<u8>)>,
    body: BytesMut,
    storage: &'static EdgeStorage,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let meta = self.meta.take().unwrap_or_default();
        let obj = Object {
            meta,
            body: std::mem::take(&mut self.body).freeze(),
        };
        let size = obj.body.len();
        self.storage.objects.insert(self.id, Arc::new(obj));
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use pingora::http::ResponseHeader;
    use std::time::Duration;

    fn meta() -> CacheMeta {
        let header = ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    #[tokio::test]
    async fn stores_only_complete_bodies_and_stays_bounded() {
        let storage: &'static EdgeStorage = Box::leak(Box::new(EdgeStorage::new(64 * 1024)));
        let span = Span::inactive().handle();
        let key = CacheKey::new("k", "");
        let mut fill = storage
            .get_miss_handler(&key, &meta(), &span)
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"half"), false)
            .await
            .unwrap();
        drop(fill);
        assert!(storage.lookup(&key, &span).await.unwrap().is_none());

        let mut fill = storage
            .get_miss_handler(&key, &meta(), &span)
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"hello "), false)
            .await
            .unwrap();
        fill.write_body(Bytes::from_static(b"world"), true)
            .await
            .unwrap();
        fill.finish().await.unwrap();
        let (_, mut hit) = storage.lookup(&key, &span).await.unwrap().unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hello world");

        for i in 0..64 {
            let key = CacheKey::new(format!("k{i}"), "");
            for _ in 0..3 {
                let _ = storage.lookup(&key, &span).await.unwrap();
            }
            let mut fill = storage
                .get_miss_handler(&key, &meta(), &span)
                .await
                .unwrap();
            fill.write_body(Bytes::from(vec![0u8; 4096]), true)
                .await
                .unwrap();
            fill.finish().await.unwrap();
        }
        assert!(storage.weighted_bytes() <= 64 * 1024);
        assert!(storage.object_count() > 0);
    }
}
