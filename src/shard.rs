//! Per-thread shards of state that every request writes: which shard a serving thread owns
//! ([`index`], given round-robin when the thread first asks), and a slot padded to its own
//! cache lines ([`Padded`]) so that two threads' shards never share one. Without the padding,
//! shards in an array sat 48–64 bytes apart and two threads writing "their own" lock words
//! moved the same line between their cores on every request (false sharing), which
//! `loadtest/instructions.py --atomics` cannot tell from true sharing but the CPU pays alike.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Shards per array: beyond this many serving threads, two to four threads share one.
pub const SHARDS: usize = 16;

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// This thread's shard, the same in every sharded array.
pub fn index() -> usize {
    SHARD.with(|s| *s)
}

/// A value alone on its cache lines (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
