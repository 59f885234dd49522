//! The journal of recent purges by URL, prefix and surrogate key, which a fill reads before it
//! is stored.
//!
//! A purge reaches what is stored; a response that is still on its way from the origin is not
//! stored yet. Without the journal, a page the origin was asked for at 0.0 s, purged at 0.3 s
//! (`removed: 0`) and answered at 1.0 s is stored and served as if the purge had never been:
//! the race most caches have. With it, a fill is compared with every purge made since the
//! origin was asked (the entry's `born`): one that covers it is applied to it before it is
//! stored (a hard purge: not stored; a soft one: stored already stale). Purges of everything
//! need no journal: their epochs compare with `born` on every lookup.
//!
//! The journal keeps the purges of the last [`SPAN`] (a fill takes at most the origin's read
//! timeout), and at most [`CAPACITY`] of them; a fill older than what it still holds is stored
//! stale, since a purge it cannot check any more may have covered it.

use super::index::Entry;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now on the cache's clock: nanoseconds since the process's first use of it, monotonic, so
/// a wall clock stepped back cannot make new content look older than a purge.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    // Starts at 1 s so that 0 can mean "never".
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1_000_000_000
}

/// The cache clock's reading at the wall-clock time `at` (in the past; a moment ago when the
/// wall clock says the future).
pub fn ns_at(at: SystemTime) -> u64 {
    let ago = SystemTime::now().duration_since(at).unwrap_or_default();
    now_ns().saturating_sub(ago.as_nanos() as u64)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// How long a purge is remembered for fills in flight.
const SPAN_NS: u64 = 600 * 1_000_000_000;
/// The most purges remembered; older ones are forgotten first.
const CAPACITY: usize = 100_000;

/// What one purge covered.
#[derive(Debug, Clone)]
pub enum Target {
    Url(Arc<str>),
    Prefix(Arc<str>),
    Tag {
        tag: Arc<str>,
        site: Option<Arc<str>>,
    },
}

impl Target {
    fn covers(&self, e: &Entry) -> bool {
        match self {
            Target::Url(url) => *e.url == **url,
            Target::Prefix(prefix) => e.url.starts_with(&**prefix),
            Target::Tag { tag, site } => {
                site.as_ref().is_none_or(|s| *s == e.site) && e.tags.iter().any(|t| t == tag)
            }
        }
    }
}

#[derive(Debug)]
struct Recorded {
    at_ns: u64,
    /// The same moment on the wall clock (ms since the Unix epoch): when a soft purge made
    /// what it covers stale.
    wall_ms: u64,
    target: Target,
    soft: bool,
}

/// What recent purges make of a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// No purge since the origin was asked covers it.
    None,
    /// A soft purge did (or one that may have is forgotten): stored stale as of then (ms since
    /// the Unix epoch).
    Stale(u64),
    /// A hard purge did: not stored.
    Dead,
}

/// Recent purges, oldest first.
#[derive(Debug, Default)]
pub struct Journal {
    recent: VecDeque<Recorded>,
    /// Purges made at or before this were forgotten (0: none), and its wall-clock time.
    forgotten_until_ns: u64,
    forgotten_wall_ms: u64,
}

impl Journal {
    /// Remembers a purge made at `at_ns`.
    pub fn record(&mut self, at_ns: u64, target: Target, soft: bool) {
        let horizon = at_ns.saturating_sub(SPAN_NS);
        while let Some(first) = self.recent.front() {
            if first.at_ns >= horizon && self.recent.len() < CAPACITY {
                break;
            }
            self.forgotten_until_ns = first.at_ns;
            self.forgotten_wall_ms = first.wall_ms;
            self.recent.pop_front();
        }
        self.recent.push_back(Recorded {
            at_ns,
            wall_ms: wall_ms(),
            target,
            soft,
        });
    }

    /// What the purges made since `e` was asked of the origin make of it.
    pub fn cover(&self, e: &Entry) -> Cover {
        let mut stale_ms = (self.forgotten_until_ns > 0 && e.born <= self.forgotten_until_ns)
            .then_some(self.forgotten_wall_ms);
        for r in self.recent.iter().rev() {
            if r.at_ns < e.born {
                break;
            }
            if r.target.covers(e) {
                if !r.soft {
                    return Cover::Dead;
                }
                stale_ms = Some(stale_ms.map_or(r.wall_ms, |s| s.min(r.wall_ms)));
            }
        }
        stale_ms.map_or(Cover::None, |ms| Cover::Stale(ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, tags: &[&str], born: u64) -> Entry {
        let tags = tags.iter().map(|t| Arc::from(*t)).collect();
        Entry::new(1, "s".into(), url.into(), tags, born)
    }

    #[test]
    fn a_purge_after_the_origin_was_asked_covers_the_fill() {
        let mut j = Journal::default();
        j.record(100, Target::Url("a.test/x".into()), false);
        j.record(
            200,
            Target::Tag {
                tag: "k".into(),
                site: None,
            },
            true,
        );
        j.record(300, Target::Prefix("b.test/".into()), false);
        assert_eq!(j.cover(&entry("a.test/x", &[], 50)), Cover::Dead);
        assert_eq!(j.cover(&entry("a.test/x", &[], 150)), Cover::None);
        assert!(matches!(
            j.cover(&entry("a.test/y", &["k"], 150)),
            Cover::Stale(_)
        ));
        assert_eq!(j.cover(&entry("b.test/z", &["k"], 150)), Cover::Dead);
        assert_eq!(j.cover(&entry("c.test/", &["k"], 250)), Cover::None);
    }

    #[test]
    fn a_fill_older_than_the_journal_is_stored_stale() {
        let mut j = Journal::default();
        let old = 1_000_000_000;
        j.record(old, Target::Url("a.test/x".into()), false);
        j.record(old + SPAN_NS + 1, Target::Url("a.test/y".into()), false);
        assert!(matches!(
            j.cover(&entry("a.test/z", &[], 10)),
            Cover::Stale(_)
        ));
        assert_eq!(j.cover(&entry("a.test/z", &[], old + 1)), Cover::None);
    }
}
