//! Purge benchmark (issues 3 and 20): surrogate-key purge of 100,000 objects sharing one key,
//! and of one key among 100,000 keys, and purge-all, on the real storage, while another thread
//! keeps storing new objects (the longest of those stores during the purges is what a miss
//! waits behind a purge); plus the memory of the purge index per cached object. Run with
//! `loadtest/purge-bench.sh` (release build). Prints medians of rounds.

use bytes::Bytes;
use crossfade::cache::index::{Entry, Index};
use crossfade::cache::key;
use crossfade::cache::storage::EdgeStorage;
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const OBJECTS: usize = 100_000;
const ROUNDS: usize = 5;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn fill(storage: &'static EdgeStorage, n: usize) {
    for i in 0..n {
        store(storage, &format!("/track/{i}"), &format!("shared obj-{i}")).await;
    }
}

/// Stores one small object under `path` tagged with `tags`.
async fn store(storage: &'static EdgeStorage, path: &str, tags: &str) {
    let span = Span::inactive().handle();
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).unwrap();
    header.insert_header("surrogate-key", tags).unwrap();
    let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header);
    let k = CacheKey::new(
        key::primary("store", "www.store.test", path, "", ""),
        "store",
    );
    let mut fill = storage.get_miss_handler(&k, &meta, &span).await.unwrap();
    fill.write_body(Bytes::from_static(b"0123456789abcdef"), true)
        .await
        .unwrap();
    fill.finish().await.unwrap();
}

/// A thread that stores new objects until `stop`, keeping the longest store (µs) in `longest`
/// while `watch` is set.
fn filler(
    storage: &'static EdgeStorage,
    watch: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    longest: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                store(storage, &format!("/new/{i}"), "fresh").await;
                if watch.load(Ordering::Relaxed) {
                    longest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                i += 1;
                if i.is_multiple_of(64) {
                    // A miss rate, not a tight loop: leave the purge its core.
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Index memory: the index alone, built for OBJECTS objects with a URL and two keys each.
    let before = rss_bytes();
    let index = Index::default();
    for i in 0..OBJECTS {
        let url = format!("www.store.test/track/{i}");
        index.shard(&url).add(&Arc::new(Entry::new(
            i as u128,
            Arc::from("store"),
            Arc::from(url.as_str()),
            vec![Arc::from("shared"), Arc::from(format!("obj-{i}").as_str())].into(),
            0,
        )));
    }
    let index_bytes = rss_bytes().saturating_sub(before);
    drop(index);

    let storage: &'static EdgeStorage = Box::leak(Box::new(EdgeStorage::new(
        4 << 30,
        8 << 20,
        vec!["surrogate-key".into()],
    )));
    let (mut shared_hard, mut shared_soft, mut one_hard) = (vec![], vec![], vec![]);
    let (mut all_hard, mut longest_store) = (vec![], vec![]);
    let (watch, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let longest = Arc::new(AtomicU64::new(0));
    let other = filler(storage, watch.clone(), stop.clone(), longest.clone());
    for _ in 0..ROUNDS {
        fill(storage, OBJECTS).await;
        longest.store(0, Ordering::Relaxed);
        watch.store(true, Ordering::Relaxed);
        let t = Instant::now();
        let c = storage.purge_tag("shared", None, true);
        shared_soft.push(t.elapsed());

        assert_eq!(c.stale as usize, OBJECTS);

        let t = Instant::now();
        let c = storage.purge_tag("obj-50000", None, false);
        one_hard.push(t.elapsed());
        assert_eq!(c.removed, 1);

        let t = Instant::now();
        let c = storage.purge_tag("shared", None, false);
        shared_hard.push(t.elapsed());
        assert_eq!(c.removed as usize, OBJECTS - 1);
        // What a store waits for while the purges run and their objects are reclaimed.
        std::thread::sleep(Duration::from_millis(50));
        watch.store(false, Ordering::Relaxed);
        longest_store.push(Duration::from_micros(longest.load(Ordering::Relaxed)));

        fill(storage, OBJECTS).await;
        let t = Instant::now();
        storage.purge_all(None, false);
        all_hard.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
    let (urls, keys, memberships) = storage.index_sizes();
    println!("purge benchmark: {OBJECTS} objects, median of {ROUNDS} rounds");
    println!(
        "  hard purge of one key shared by {OBJECTS} objects: {:?}",
        median(shared_hard)
    );
    println!(
        "  soft purge of one key shared by {OBJECTS} objects: {:?}",
        median(shared_soft)
    );
    println!(
        "  hard purge of one key among {OBJECTS} keys:          {:?}",
        median(one_hard)
    );
    println!(
        "  hard purge of everything ({OBJECTS}+ objects):        {:?}",
        median(all_hard)
    );
    println!(
        "  longest store of a new object during those purges:  {:?} (median of rounds; max {:?})",
        median(longest_store.clone()),
        longest_store.iter().max().unwrap()
    );
    println!(
        "  purge index memory: {} bytes per cached object (URL + 2 keys; RSS delta of the index alone)",
        index_bytes / OBJECTS as u64
    );
    println!("  index after the last purge: {urls} urls, {keys} keys, {memberships} memberships");
}
