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
//! object (read [`PROMOTE_AFTER`] times) keeps a parsed copy, which the fast transport's hits
//! read in place ([`MetaView`]) and pingora's path clones into a `CacheMeta`. Reading in place
//! matters beyond the clone's ~3k instructions: the copy's header values share one buffer, whose
//! reference count a clone writes once per field, and every thread serving the object writes
//! that same count (about 16 writes per 1 KiB hit to a line other cores write too, before). The
//! copy costs about 2 KB (a header map and its
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

/// What a hit reads of a hot object's `CacheMeta`, already parsed (the rest is read from the
/// stored internal part when a whole `CacheMeta` is needed).
pub struct Parsed {
    header: ResponseHeader,
    fresh_until: SystemTime,
    created: SystemTime,
    /// `CacheMeta::epoch()`: `updated` (the last revalidation) or an explicit override; Age and
    /// `fresh_sec` count from it.
    epoch: SystemTime,
    /// `CacheMeta::provenance()` (which a `CacheMeta` rebuilt from this copy cannot carry:
    /// pingora sets it only itself; rebuilt, it reads as `created`).
    provenance: SystemTime,
    variance: Option<HashBinary>,
}

/// A stored object's metadata as a hit reads it: the object's parsed copy in place, or a
/// `CacheMeta` parsed for this read (an object not yet hot). Nothing of it is cloned.
pub enum MetaView<'a> {
    Parsed(&'a Parsed),
    Meta(&'a CacheMeta),
}

impl MetaView<'_> {
    pub fn response_header(&self) -> &ResponseHeader {
        match self {
            MetaView::Parsed(p) => &p.header,
            MetaView::Meta(m) => m.response_header(),
        }
    }

    pub fn headers(&self) -> &http::HeaderMap {
        &self.response_header().headers
    }

    pub fn fresh_until(&self) -> SystemTime {
        match self {
            MetaView::Parsed(p) => p.fresh_until,
            MetaView::Meta(m) => m.fresh_until(),
        }
    }

    pub fn created(&self) -> SystemTime {
        match self {
            MetaView::Parsed(p) => p.created,
            MetaView::Meta(m) => m.created(),
        }
    }

    pub fn provenance(&self) -> SystemTime {
        match self {
            MetaView::Parsed(p) => p.provenance,
            MetaView::Meta(m) => m.provenance(),
        }
    }

    pub fn variance(&self) -> Option<HashBinary> {
        match self {
            MetaView::Parsed(p) => p.variance,
            MetaView::Meta(m) => m.variance(),
        }
    }

    /// As `CacheMeta::age`: the time since the epoch (the last revalidation, or an override).
    pub fn age(&self) -> std::time::Duration {
        let epoch = match self {
            MetaView::Parsed(p) => p.epoch,
            MetaView::Meta(m) => m.epoch(),
        };
        SystemTime::now().duration_since(epoch).unwrap_or_default()
    }

    /// As `CacheMeta::is_fresh`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.fresh_until() >= now
    }
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
        let (internal, header) = self.bytes.split_at(self.split as usize);
        if let Some(p) = self.parsed.get() {
            // The internal part as stored, so every field pingora keeps comes back (a
            // `CacheMeta::new` from the copy lost the provenance, which only pingora can set,
            // and a hot object's variants then read as older than their family), with a
            // one-line stand-in header replaced by the parsed copy's.
            let mut meta = CacheMeta::deserialize(internal, stand_in_header())?;
            *meta.response_header_mut() = p.header.clone();
            return Ok(meta);
        }
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
            provenance: meta.provenance(),
            variance: meta.variance(),
        }));
        if set.is_err() {
            // Another reader promoted it first and paid.
            self.budget.give(cost);
        }
        Ok(meta)
    }

    /// The parsed copy, for a hot object that has one (see the module doc).
    pub fn parsed(&self) -> Option<&Parsed> {
        self.parsed.get().map(|p| &**p)
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

/// The smallest header frame `CacheMeta::deserialize` takes (a status line), for a meta whose
/// header is then replaced by a parsed copy's ([`Stored::to_meta`]).
fn stand_in_header() -> &'static [u8] {
    static FRAME: OnceLock<Vec<u8>> = OnceLock::new();
    FRAME.get_or_init(|| raw_frame(b"HTTP/1.1 200 OK\r\n\r\n"))
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

    /// A meta as pingora writes it after refreshing an object of a `Vary` family: its
    /// provenance (when the family began) is older than its creation. Only pingora can set the
    /// field, so the test writes pingora-cache's encoding (`InternalMetaV2`) itself.
    fn meta_with_provenance(created: SystemTime, provenance: SystemTime) -> CacheMeta {
        #[derive(serde::Serialize)]
        struct InternalMetaV2 {
            version: u8,
            fresh_until: SystemTime,
            created: SystemTime,
            updated: SystemTime,
            stale_while_revalidate_sec: u32,
            stale_if_error_sec: u32,
            variance: Option<HashBinary>,
            epoch_override: Option<SystemTime>,
            provenance: Option<SystemTime>,
        }
        let internal = rmp_serde::encode::to_vec(&InternalMetaV2 {
            version: 2,
            fresh_until: created + Duration::from_secs(60),
            created,
            updated: created,
            stale_while_revalidate_sec: 0,
            stale_if_error_sec: 0,
            variance: None,
            epoch_override: None,
            provenance: Some(provenance),
        })
        .unwrap();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("Vary", "accept-encoding").unwrap();
        let plain = CacheMeta::new(created, created, 0, 0, header);
        let (_, header) = serialize(&plain).unwrap();
        CacheMeta::deserialize(&internal, &header).unwrap()
    }

    #[test]
    fn a_hot_object_keeps_its_provenance() {
        let created = SystemTime::now() - Duration::from_secs(10);
        let family = created - Duration::from_secs(3600);
        let meta = meta_with_provenance(created, family);
        assert_eq!(meta.provenance(), family);
        let stored = Stored::new(&meta, &ParsedBudget::new(1 << 20)).unwrap();
        for _ in 0..PROMOTE_AFTER {
            assert_eq!(stored.to_meta().unwrap().provenance(), family);
        }
        let parsed = stored.parsed().expect("promoted");
        // Rebuilt from the copy (pingora's path) and read in place (the fast transport's hits).
        assert_eq!(stored.to_meta().unwrap().provenance(), family);
        assert_eq!(MetaView::Parsed(parsed).provenance(), family);
        assert_eq!(MetaView::Parsed(parsed).created(), created);
        let rebuilt = stored.to_meta().unwrap();
        assert_eq!(
            rebuilt.response_header().headers.get("vary").unwrap(),
            "accept-encoding"
        );
        assert_eq!(rebuilt.fresh_until(), meta.fresh_until());
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
