//! How cached response metadata is kept in memory: pingora-cache's own serialised form, with
//! the header part re-framed so that reading it back on every hit is a copy, not a zstd
//! decompression.
//!
//! pingora stores a response header as its HTTP/1 wire form compressed with zstd, and
//! `CacheMeta` can only be rebuilt from that form (it is not `Clone`). Decompressing it was
//! about 6% of the CPU of a small cache hit. A zstd frame may also hold its bytes as *raw
//! blocks* (RFC 8878 §3.1.1.2), which any zstd decoder copies out without entropy decoding; so
//! the header is decompressed once when stored and kept as such a frame. It stays the format
//! `CacheMeta::deserialize` reads, so pingora's parser remains the only one.
//!
//! Parsing the header (httparse and a `HeaderMap` build) was the next 17% of a small hit. A hot
//! object (read [`PROMOTE_AFTER`] times) keeps a parsed copy, and later hits rebuild the
//! `CacheMeta` from it with a clone. The copy costs about 2 KB (a header map and its
//! case-preserving twin), so the long tail of objects read once or twice does not carry it.
//! Parsed copies are paid from a [`ParsedBudget`], a fixed share of the capacity set aside for
//! them: an object is charged for what it holds, and the cache never grows past its bound when
//! the whole set turns hot (past the budget, hot objects are parsed on each hit, as cold ones).

use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Reads after which an object keeps its metadata parsed.
pub const PROMOTE_AFTER: u32 = 3;

/// The bytes parsed copies may take, and how many they take now.
#[derive(Debug)]
pub struct ParsedBudget {
    limit: u64,
    used: AtomicU64,
}

impl ParsedBudget {
    pub fn new(limit: u64) -> Arc<ParsedBudget> {
        Arc::new(ParsedBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes held by parsed copies now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Response metadata as a cache object holds it.
pub struct Stored {
    /// pingora's internal part, then the header frame, in one allocation (one fewer per
    /// object; there are millions).
    bytes: Box<[u8]>,
    /// Where the header frame starts in `bytes`.
    split: u32,
    reads: AtomicU32,
    parsed: OnceLock<Box<Parsed>>,
    /// Where a parsed copy's bytes come from (and go back to when the object is dropped).
    budget: Arc<ParsedBudget>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        if self.parsed.get().is_some() {
            self.budget.give(self.parsed_weight() as u64);
        }
    }
}

/// Everything `CacheMeta` carries that a hit needs, already parsed.
struct Parsed {
    header: ResponseHeader,
    fresh_until: SystemTime,
    created: SystemTime,
    /// `CacheMeta::epoch()`: `updated` (the last revalidation) or an explicit override; Age and
    /// `fresh_sec` count from it.
    epoch: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
}

impl Stored {
    pub fn new(meta: &CacheMeta, budget: &Arc<ParsedBudget>) -> Result<Stored> {
        let (mut bytes, header) = serialize(meta)?;
        let split = bytes.len() as u32;
        bytes.extend_from_slice(&header);
        Ok(Stored {
            bytes: bytes.into_boxed_slice(),
            split,
            reads: AtomicU32::new(0),
            parsed: OnceLock::new(),
            budget: budget.clone(),
        })
    }

    /// A `CacheMeta` equal to the one stored.
    pub fn to_meta(&self) -> Result<CacheMeta> {
        if let Some(p) = self.parsed.get() {
            let mut meta = CacheMeta::new(
                p.fresh_until,
                p.created,
                p.stale_while_revalidate,
                p.stale_if_error,
                p.header.clone(),
            );
            if p.epoch != p.created {
                meta.set_epoch_override(p.epoch);
            }
            if let Some(v) = p.variance {
                meta.set_variance_key(v);
            }
            return Ok(meta);
        }
        let (internal, header) = self.bytes.split_at(self.split as usize);
        let meta = CacheMeta::deserialize(internal, header)?;
        if self.reads.fetch_add(1, Ordering::Relaxed) + 1 < PROMOTE_AFTER {
            return Ok(meta);
        }
        let cost = self.parsed_weight() as u64;
        if !self.budget.take(cost) {
            return Ok(meta);
        }
        let set = self.parsed.set(Box::new(Parsed {
            header: meta.response_header_copy(),
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
        }));
        if set.is_err() {
            // Another reader promoted it first and paid.
            self.budget.give(cost);
        }
        Ok(meta)
    }

    /// Bytes to account for against the capacity: the serialised form.
    pub fn weight(&self) -> usize {
        self.bytes.len()
    }

    /// An upper estimate of a parsed copy: a header map entry and its case-preserving twin
    /// per line (measured at about 150 B), the value bytes, which it holds again, and the box.
    fn parsed_weight(&self) -> usize {
        let header = &self.bytes[self.split as usize..];
        let lines = header.windows(2).filter(|w| w == b"\r\n").count();
        header.len() + 160 * lines + 128
    }
}

/// zstd frame magic number, little-endian on the wire.
const MAGIC: u32 = 0xFD2F_B528;
/// Largest raw block (RFC 8878 `Block_Maximum_Size`).
const MAX_BLOCK: usize = 128 * 1024;
/// pingora refuses larger header buffers anyway (pingora-header-serde `MAX_HEADER_BUF_SIZE`).
const MAX_HEADER: usize = 128 * 1024;

/// `meta` serialised for storage: (internal, header as a raw-block zstd frame).
pub fn serialize(meta: &CacheMeta) -> Result<(Vec<u8>, Vec<u8>)> {
    let (internal, compressed) = meta.serialize()?;
    let plain = zstd::bulk::decompress(&compressed, MAX_HEADER).map_err(|e| {
        Error::because(
            ErrorType::InternalError,
            "cannot decompress a serialised header",
            e,
        )
    })?;
    Ok((internal, raw_frame(&plain)))
}

/// `data` as a zstd frame of raw blocks: a single-segment frame with a 4-byte content size.
fn raw_frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 9 + 3 * data.len().div_ceil(MAX_BLOCK));
    out.extend_from_slice(&MAGIC.to_le_bytes());
    // Frame_Header_Descriptor: Frame_Content_Size_flag = 2 (4 bytes), Single_Segment_flag = 1.
    out.push(0b1010_0000);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut chunks = data.chunks(MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty frame still needs one (empty, last) block.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        // Block_Header: Last_Block (bit 0), Block_Type 0 = Raw (bits 1-2), Block_Size (3-23).
        let header = last | ((chunk.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    #[test]
    fn raw_frames_decode_with_zstd() {
        for len in [
            0,
            1,
            300,
            MAX_BLOCK - 1,
            MAX_BLOCK,
            MAX_BLOCK + 1,
            3 * MAX_BLOCK + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let back = zstd::bulk::decompress(&raw_frame(&data), 4 * MAX_BLOCK).unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn meta_survives_the_round_trip() {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("cache-control", "max-age=60").unwrap();
        header.append_header("set-cookie", "a=1").unwrap();
        header.append_header("set-cookie", "b=2").unwrap();
        header.insert_header("X-Mixed-Case", "v").unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 5, 7, header);
        let (internal, raw) = serialize(&meta).unwrap();
        let back = CacheMeta::deserialize(&internal, &raw).unwrap();
        assert_eq!(back.fresh_until(), meta.fresh_until());
        assert_eq!(back.stale_while_revalidate_sec(), 5);
        assert_eq!(back.stale_if_error_sec(), 7);
        let h = back.response_header();
        assert_eq!(h.status, 200);
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(h.headers.get("x-mixed-case").unwrap(), "v");
        // Stored as plain bytes, not entropy-coded.
        assert!(raw.windows(10).any(|w| w == b"max-age=60"));
    }

    #[test]
    fn a_parsed_copy_rebuilds_the_same_meta() {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Cache-Control", "max-age=60").unwrap();
        header.insert_header("Vary", "accept-encoding").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(100);
        let mut meta = CacheMeta::new(long_ago + Duration::from_secs(60), long_ago, 5, 7, header);
        // A revalidation: `updated` moves on, `created` stays; Age counts from `updated`.
        meta.update_freshness(SystemTime::now() + Duration::from_secs(60), 5, 7);
        meta.set_variance_key([7u8; 16]);
        let budget = ParsedBudget::new(1 << 20);
        let stored = Stored::new(&meta, &budget).unwrap();
        let first = stored.to_meta().unwrap(); // parses
        for _ in 1..PROMOTE_AFTER {
            stored.to_meta().unwrap(); // parses, the last one keeps a copy
        }
        assert!(stored.parsed.get().is_some());
        let second = stored.to_meta().unwrap(); // from the copy
        for m in [&first, &second] {
            assert_eq!(m.created(), meta.created());
            assert_eq!(m.epoch(), meta.epoch());
            assert_eq!(m.fresh_until(), meta.fresh_until());
            assert_eq!(m.fresh_sec(), meta.fresh_sec());
            assert!(
                m.age() < Duration::from_secs(5),
                "age counts from the revalidation"
            );
            assert_eq!(m.variance(), Some([7u8; 16]));
            assert_eq!(m.stale_while_revalidate_sec(), 5);
            assert_eq!(m.stale_if_error_sec(), 7);
            assert_eq!(
                m.response_header().headers.get("vary").unwrap(),
                "accept-encoding"
            );
        }
        // Header names keep their case on the wire (pingora's case map survives the copy).
        let mut wire = Vec::new();
        second.response_header().header_to_h1_wire(&mut wire);
        assert!(String::from_utf8_lossy(&wire).contains("Cache-Control: max-age=60"));
        // The copy is paid from the budget, and paid back when the object goes.
        assert_eq!(budget.used(), stored.parsed_weight() as u64);
        drop(stored);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn past_the_budget_hot_objects_are_parsed_on_each_read() {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Cache-Control", "max-age=60").unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        let one = Stored::new(&meta, &ParsedBudget::new(0)).unwrap();
        let budget = ParsedBudget::new(one.parsed_weight() as u64);
        let (a, b) = (
            Stored::new(&meta, &budget).unwrap(),
            Stored::new(&meta, &budget).unwrap(),
        );
        for _ in 0..PROMOTE_AFTER {
            a.to_meta().unwrap();
            b.to_meta().unwrap();
        }
        assert!(a.parsed.get().is_some(), "the first fits");
        assert!(b.parsed.get().is_none(), "the second does not");
        assert_eq!(b.to_meta().unwrap().fresh_until(), meta.fresh_until());
        drop(a);
        for _ in 0..PROMOTE_AFTER {
            b.to_meta().unwrap();
        }
        assert!(b.parsed.get().is_some(), "room again once the first went");
        drop(one);
    }
}
