//! Storage unit tests: complete bodies only, bounds, index consistency, purge epochs.

use super::*;
use pingora::cache::trace::Span;
use pingora::http::ResponseHeader;
use std::time::Duration;

fn meta(tags: &str) -> CacheMeta {
    if tags.is_empty() {
        meta_with(&[])
    } else {
        meta_with(&[("surrogate-key", tags)])
    }
}

fn meta_with(headers: &[(&'static str, &str)]) -> CacheMeta {
    let mut header = ResponseHeader::build(200, None).unwrap();
    for (name, value) in headers {
        header.insert_header(*name, *value).unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
}

fn leak(capacity: u64) -> &'static EdgeStorage {
    leak_with(capacity, capacity / 16)
}

fn leak_with(capacity: u64, max_object: u64) -> &'static EdgeStorage {
    Box::leak(Box::new(EdgeStorage::new(
        capacity,
        max_object,
        vec!["surrogate-key".into()],
    )))
}

fn key(path: &str) -> CacheKey {
    CacheKey::new(key::primary("shop", "a.test", path, "", ""), "shop")
}

async fn put(storage: &'static EdgeStorage, k: &CacheKey, tags: &str, body: &[u8]) {
    let span = Span::inactive().handle();
    let mut fill = storage
        .get_miss_handler(k, &meta(tags), &span)
        .await
        .unwrap();
    fill.write_body(Bytes::copy_from_slice(body), true)
        .await
        .unwrap();
    fill.finish().await.unwrap();
}

async fn has(storage: &'static EdgeStorage, k: &CacheKey) -> bool {
    let span = Span::inactive().handle();
    storage.lookup(k, &span).await.unwrap().is_some()
}

#[tokio::test]
async fn stores_only_complete_bodies_and_stays_bounded() {
    let storage = leak(64 * 1024);
    let span = Span::inactive().handle();
    let k = key("/k");
    let mut fill = storage
        .get_miss_handler(&k, &meta(""), &span)
        .await
        .unwrap();
    fill.write_body(Bytes::from_static(b"half"), false)
        .await
        .unwrap();
    drop(fill);
    assert!(!has(storage, &k).await);

    put(storage, &k, "", b"hello world").await;
    let (_, mut hit) = storage.lookup(&k, &span).await.unwrap().unwrap();
    assert_eq!(hit.read_body().await.unwrap().unwrap(), "hello world");

    for i in 0..64 {
        let k = key(&format!("/k{i}"));
        for _ in 0..3 {
            let _ = storage.lookup(&k, &span).await.unwrap();
        }
        put(storage, &k, "t", &[0u8; 4096]).await;
    }
    assert!(storage.weighted_bytes() <= 64 * 1024);
    let objects = storage.object_count() as usize;
    assert!(objects > 0);
    // 65 distinct keys stored, no purges: whatever is not stored was evicted, and counted.
    assert_eq!(storage.evictions() as usize + objects, 65);
    let (urls, _, memberships) = storage.index_sizes();
    assert_eq!(urls, objects, "the index holds exactly the stored objects");
    assert!(memberships <= objects);
}

#[tokio::test]
async fn tag_index_survives_replacement_and_purges() {
    let storage = leak(1 << 20);
    let (a, b) = (key("/a"), key("/b"));
    put(storage, &a, "t1 t2", b"a1").await;
    put(storage, &a, "t2", b"a2").await; // replaced: no longer tagged t1
    put(storage, &b, "t1", b"b").await;
    assert_eq!(storage.purge_tag("t1", None, false).removed, 1);
    assert!(has(storage, &a).await && !has(storage, &b).await);
    assert_eq!(
        storage.purge_tag("t2", Some("other-site"), false).removed,
        0
    );
    assert_eq!(storage.purge_tag("t2", Some("shop"), false).removed, 1);
    assert!(!has(storage, &a).await);
    assert_eq!(
        storage.index_sizes(),
        (0, 0, 0),
        "nothing leaks in the index"
    );
}

#[tokio::test]
async fn soft_purge_marks_stale_and_purge_all_is_immediate() {
    let storage = leak(1 << 20);
    let span = Span::inactive().handle();
    let (a, b) = (key("/a"), key("/b"));
    put(storage, &a, "", b"a").await;
    put(storage, &b, "", b"b").await;
    assert_eq!(storage.purge_url("a.test/a", true).stale, 1);
    let (m, _) = storage.lookup(&a, &span).await.unwrap().unwrap();
    assert!(
        !m.is_fresh(SystemTime::now()),
        "soft purge keeps the object, stale"
    );

    assert_eq!(storage.purge_all(Some("shop"), true).stale, 2);
    let (m, _) = storage.lookup(&b, &span).await.unwrap().unwrap();
    assert!(!m.is_fresh(SystemTime::now()));
    put(storage, &b, "", b"b2").await;
    let (m, _) = storage.lookup(&b, &span).await.unwrap().unwrap();
    assert!(
        m.is_fresh(SystemTime::now()),
        "a new store after the purge is fresh"
    );

    storage.purge_all(None, false);
    assert!(!has(storage, &a).await && !has(storage, &b).await);
    put(storage, &a, "", b"a3").await;
    assert!(
        has(storage, &a).await,
        "objects stored after a purge-all live"
    );
}

#[tokio::test]
async fn a_body_in_chunks_is_stored_whole_in_its_own_buffer() {
    let storage = leak(64 * 1024);
    let span = Span::inactive().handle();
    // Chunks that are slices of one bigger read buffer, as the origin's body arrives.
    let read_buffer = Bytes::from(vec![b'x'; 8192]);
    // Without a Content-Length (the buffer grows), with the right one, with wrong ones.
    for (i, length) in [None, Some("1003"), Some("10"), Some("100000")]
        .into_iter()
        .enumerate()
    {
        let k = key(&format!("/chunks{i}"));
        let meta = match length {
            Some(length) => meta_with(&[("content-length", length)]),
            None => meta_with(&[]),
        };
        let mut fill = storage.get_miss_handler(&k, &meta, &span).await.unwrap();
        for chunk in [
            read_buffer.slice(0..3),
            Bytes::new(),
            read_buffer.slice(100..1100),
        ] {
            fill.write_body(chunk, false).await.unwrap();
        }
        fill.finish().await.unwrap();
        let (_, mut hit) = storage.lookup(&k, &span).await.unwrap().unwrap();
        let body = hit.read_body().await.unwrap().unwrap();
        assert_eq!(body, vec![b'x'; 1003], "{length:?}");
        // Not a view into the origin's buffer (which would keep all 8 KiB alive).
        let inside = read_buffer.as_ptr_range();
        assert!(!inside.contains(&body.as_ptr()));
    }
}

#[tokio::test]
async fn a_hard_purge_all_gives_the_memory_back_and_keeps_what_came_after() {
    let storage = leak(1 << 24);
    for i in 0..300 {
        put(storage, &key(&format!("/old{i}")), "", &[1u8; 1024]).await;
    }
    assert_eq!(storage.object_count(), 300);
    storage.purge_all(None, false);
    put(storage, &key("/new"), "", b"new").await;
    // Counted at once as what is live; the dead objects' memory is given back on a helper
    // thread; the new one stays.
    assert_eq!(storage.object_count(), 1);
    for _ in 0..200 {
        if storage.weighted_bytes() < 2048 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        storage.weighted_bytes() < 2048,
        "purged objects still held: {}",
        storage.weighted_bytes()
    );
    assert!(has(storage, &key("/new")).await);
    assert_eq!(storage.object_count(), 1);
}

#[tokio::test]
async fn the_largest_allowed_object_is_stored_and_a_larger_one_is_not_counted_as_evicted() {
    // The map evicts per shard from an equal share of the capacity: with one shard per core
    // (or more) a quarter-of-the-cache object would not fit any share.
    let storage = leak_with(1 << 20, 256 << 10);
    let big = key("/big");
    put(storage, &big, "t", &vec![7u8; (256 << 10) - 1]).await;
    assert!(
        has(storage, &big).await,
        "an object of max_object_size is stored"
    );
    let huge = key("/huge");
    put(storage, &huge, "t", &vec![7u8; 2 << 20]).await;
    assert!(!has(storage, &huge).await);
    assert_eq!(storage.evictions(), 0, "a refused object was never stored");
    assert_eq!(storage.index_sizes(), (1, 1, 1), "and is not indexed");
}

/// A fill whose origin was asked at `asked`, finished now.
async fn put_asked(storage: &'static EdgeStorage, k: &CacheKey, tags: &str, asked: SystemTime) {
    let mut m = meta(tags);
    let header = m.response_header_copy();
    m = CacheMeta::new(
        SystemTime::now() + Duration::from_secs(60),
        asked,
        0,
        0,
        header,
    );
    let span = Span::inactive().handle();
    let mut fill = storage.get_miss_handler(k, &m, &span).await.unwrap();
    fill.write_body(Bytes::from_static(b"old"), true)
        .await
        .unwrap();
    fill.finish().await.unwrap();
}

#[tokio::test]
async fn a_fill_asked_before_a_purge_that_covers_it_is_not_served_as_fresh() {
    let storage = leak(1 << 24);
    let asked = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Each kind of purge, made while the origin was answering (nothing stored yet).
    assert_eq!(
        storage
            .purge_url(&key::url("a.test", "/u", ""), false)
            .removed,
        0
    );
    storage.purge_tag("k", None, false);
    storage.purge_prefix("a.test/p/", true);
    for path in ["/u", "/t"] {
        let tags = if path == "/t" { "k" } else { "" };
        put_asked(storage, &key(path), tags, asked).await;
        assert!(
            !has(storage, &key(path)).await,
            "{path}: hard-purged fill stored"
        );
    }
    put_asked(storage, &key("/p/1"), "", asked).await;
    let span = Span::inactive().handle();
    let (m, _) = storage.lookup(&key("/p/1"), &span).await.unwrap().unwrap();
    assert!(
        !m.is_fresh(SystemTime::now()),
        "soft-purged fill stored fresh"
    );
    // A fill asked after the purges is stored as usual; one asked before a purge of
    // everything is gone with it.
    put_asked(storage, &key("/u"), "", SystemTime::now()).await;
    assert!(has(storage, &key("/u")).await);
    let asked = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    storage.purge_all(None, false);
    put_asked(storage, &key("/late"), "", asked).await;
    assert!(!has(storage, &key("/late")).await);
    assert_eq!(storage.object_count(), 0);
}

#[tokio::test]
async fn counts_after_a_purge_of_everything_are_of_live_objects_only() {
    let storage = leak(1 << 24);
    for i in 0..400 {
        put(storage, &key(&format!("/o{i}")), "k", b"x").await;
    }
    assert_eq!(storage.purge_all(None, false).removed, 400);
    assert_eq!(
        storage.object_count(),
        0,
        "counted before the memory is back"
    );
    assert_eq!(storage.purge_tag("k", None, false).removed, 0);
    assert_eq!(storage.purge_tag("k", None, true).stale, 0);
    put(storage, &key("/new"), "k", b"x").await;
    assert_eq!(storage.object_count(), 1);
    assert_eq!(storage.purge_tag("k", None, false).removed, 1);
    assert_eq!(storage.object_count(), 0);
}
