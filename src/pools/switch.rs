//! Release state: per site, the active pool, a canary split, maintenance, and the history of
//! earlier pool choices that rollbacks walk back through. Changed by the admin API (and the fleet), persisted atomically (write a
//! temp file, fsync, rename) so it survives a restart, read on every request.
//!
//! Cohorts: during a canary each visitor has a bucket 0–99 (from the `cohort_cookie`, else a
//! hash of their session cookie); buckets below the canary percentage go to the canary pool.
//! The bucket is sticky, so a visitor never mixes pages and assets of two releases.

use super::Registry;
use crate::config::{Runtime, Site};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A weighted split towards a canary pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub pool: String,
    /// Share of visitors (buckets 0–99) sent to the canary pool.
    pub percent: u8,
}

/// Maintenance mode of a site or of some of its routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub site: bool,
    pub routes: BTreeSet<String>,
    /// Serve cached copies (fresh or stale) instead of the maintenance page when there are any.
    pub serve_cached: bool,
}

impl Maintenance {
    pub fn covers(&self, route: &str) -> bool {
        self.site || self.routes.contains(route)
    }
}

/// How many earlier pool choices a site keeps: a rollback returns to the last one, the next
/// rollback to the one before (as a deploy tool's release list, not one undo step).
pub const HISTORY: usize = 10;

/// The release state of one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateOnDisk")]
pub struct SiteState {
    pub active: String,
    pub canary: Option<Canary>,
    pub maintenance: Maintenance,
    /// Earlier pool choices, oldest first, at most [`HISTORY`]: where rollbacks return to
    /// (the pool choice only; maintenance is not rolled back).
    pub history: Vec<Choice>,
}

/// A pool choice a site had, and when it was left (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub active: String,
    pub canary: Option<Canary>,
    #[serde(default)]
    pub until: u64,
}

/// What a state file (or a fleet message) holds: today's `history`, or the single `previous`
/// state that crossfade wrote before it kept a history (read so an upgrade keeps it).
#[derive(Deserialize)]
struct StateOnDisk {
    active: String,
    canary: Option<Canary>,
    #[serde(default)]
    maintenance: Maintenance,
    #[serde(default)]
    history: Vec<Choice>,
    #[serde(default)]
    previous: Option<Box<SiteState>>,
}

impl From<StateOnDisk> for SiteState {
    fn from(d: StateOnDisk) -> Self {
        let mut history = d.history;
        if history.is_empty() {
            if let Some(p) = d.previous {
                history.push(Choice {
                    active: p.active,
                    canary: p.canary,
                    until: 0,
                });
            }
        }
        SiteState {
            active: d.active,
            canary: d.canary,
            maintenance: d.maintenance,
            history,
        }
    }
}

impl SiteState {
    /// This state's history with its own pool choice added last (the oldest dropped beyond
    /// [`HISTORY`]): what a flip or canary change leaves behind.
    fn left_behind(&self) -> Vec<Choice> {
        let mut history = self.history.clone();
        history.push(Choice {
            active: self.active.clone(),
            canary: self.canary.clone(),
            until: crate::stats::now_secs(),
        });
        let extra = history.len().saturating_sub(HISTORY);
        history.drain(..extra);
        history
    }
}

/// A change to a site's release state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Change {
    Flip {
        site: String,
        pool: String,
    },
    Canary {
        site: String,
        pool: String,
        percent: u8,
    },
    Rollback {
        site: String,
    },
    Maintenance {
        site: String,
        #[serde(default)]
        route: Option<String>,
        on: bool,
        #[serde(default)]
        serve_cached: bool,
    },
}

impl Change {
    pub fn site(&self) -> &str {
        match self {
            Change::Flip { site, .. }
            | Change::Canary { site, .. }
            | Change::Rollback { site }
            | Change::Maintenance { site, .. } => site,
        }
    }
}

/// Why a change was refused. `Conflict` maps to 409, the others to 400.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no site is named {0:?}")]
    UnknownSite(String),
    #[error("no route {route:?} in site {site:?}")]
    UnknownRoute { site: String, route: String },
    #[error("site {site:?} has no pool {pool:?}")]
    UnknownPool { site: String, pool: String },
    #[error("pool {pool:?} of site {site:?} has no healthy server")]
    Unhealthy { site: String, pool: String },
    #[error("percent must be 0-100, not {0}")]
    Percent(u8),
    #[error("pool {0:?} is already the active pool; a canary needs another pool")]
    CanaryIsActive(String),
    #[error("site {0:?} has nothing to roll back to")]
    NothingToRollBack(String),
    #[error(
        "the release state cannot be saved to {file}: {source}; nothing was changed (a change \
         that is not saved would be undone by the next restart)"
    )]
    NotSaved {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// Whether a change must be saved to the state file to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// An operator's change: refused when it cannot be saved, so no one believes in a flip
    /// that a restart would undo.
    Required,
    /// The canary judge's rollback: applied even unsaved (logged), since a failing canary
    /// serving visitors is worse than a rollback a restart could undo.
    BestEffort,
}

impl ChangeError {
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            ChangeError::UnknownPool { .. }
                | ChangeError::Unhealthy { .. }
                | ChangeError::CanaryIsActive(_)
                | ChangeError::NothingToRollBack(_)
        )
    }
}

/// Every site's release state by site name. foldhash: every request looks its site up here,
/// and SipHash cost more than the lookup (the names come from the config, not from clients).
pub type States = foldhash::HashMap<String, SiteState>;

/// The release state of every site, shared by the proxy, the admin API and the fleet.
pub struct Release {
    states: ArcSwap<States>,
    file: Option<PathBuf>,
    write: Mutex<()>,
}

fn initial(site: &Site) -> SiteState {
    SiteState {
        active: site.active_pool().name.clone(),
        canary: None,
        maintenance: Maintenance::default(),
        history: Vec::new(),
    }
}

impl Release {
    /// The persisted state where there is one (for sites and pools that still exist), else
    /// each site's configured `active_pool`.
    pub fn load(rt: &Runtime, file: Option<PathBuf>) -> Self {
        let saved: States = file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "release state file unreadable; starting from config");
                    None
                }
            })
            .unwrap_or_default();
        let mut states = States::default();
        for site in &rt.sites.list {
            let state = saved
                .get(&*site.name)
                .filter(|s| site.pools.iter().any(|p| p.name == s.active))
                .cloned()
                .unwrap_or_else(|| initial(site));
            // Said at start: an operator (or a demo) that expects the configured pool must see
            // that an earlier flip, canary or maintenance was restored instead.
            if state.active != initial(site).active
                || state.canary.is_some()
                || state.maintenance != Maintenance::default()
            {
                tracing::warn!(
                    site = %site.name,
                    active = %state.active,
                    configured = %site.active_pool().name,
                    canary = ?state.canary.as_ref().map(|c| (&c.pool, c.percent)),
                    maintenance = ?state.maintenance,
                    file = %file.as_deref().map(|f| f.display().to_string()).unwrap_or_default(),
                    "release state restored from the state file (not the config's active_pool); `crossfade pools status` shows it"
                );
            }
            states.insert(site.name.to_string(), state);
        }
        Release {
            states: ArcSwap::from_pointee(states),
            file,
            write: Mutex::new(()),
        }
    }

    /// After a reload: new sites get their configured state; a site whose active pool is gone
    /// falls back to its configured one.
    pub fn sync(&self, rt: &Runtime) {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = (*self.states.load_full()).clone();
        for site in &rt.sites.list {
            let keep = all.get(&*site.name).is_some_and(|s| {
                site.pool(&s.active).is_some()
                    && s.canary
                        .as_ref()
                        .is_none_or(|c| site.pool(&c.pool).is_some())
            });
            if !keep {
                tracing::warn!(site = %site.name, "release state reset to the configured active pool");
                all.insert(site.name.to_string(), initial(site));
            }
            // A rollback must never return to a pool the config no longer has.
            if let Some(state) = all.get_mut(&*site.name) {
                state.history.retain(|c| {
                    site.pool(&c.active).is_some()
                        && c.canary
                            .as_ref()
                            .is_none_or(|k| site.pool(&k.pool).is_some())
                });
            }
        }
        self.states.store(Arc::new(all));
    }

    pub fn get(&self, site: &str) -> Option<SiteState> {
        self.states.load().get(site).cloned()
    }

    /// Every site's state as of now, to read without copying (the request paths look at one
    /// site per request; a copy was a handful of allocations).
    pub fn current(&self) -> arc_swap::Guard<Arc<States>> {
        self.states.load()
    }

    pub fn all(&self) -> Arc<States> {
        self.states.load_full()
    }

    /// Validates and applies a change, persists it, and returns the site's new state.
    pub fn apply(
        &self,
        rt: &Runtime,
        pools: &Registry,
        change: &Change,
        save: Save,
    ) -> Result<SiteState, ChangeError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let site_name = change.site();
        let site = rt
            .sites
            .list
            .iter()
            .find(|s| &*s.name == site_name)
            .ok_or_else(|| ChangeError::UnknownSite(site_name.into()))?;
        let current = self.get(site_name).unwrap_or_else(|| initial(site));
        let usable = |pool: &str| -> Result<(), ChangeError> {
            let unknown = || ChangeError::UnknownPool {
                site: site_name.into(),
                pool: pool.into(),
            };
            site.pool(pool).ok_or_else(unknown)?;
            let healthy = pools
                .pool(site_name, pool)
                .map_or(0, |p| p.healthy_servers());
            if healthy == 0 {
                return Err(ChangeError::Unhealthy {
                    site: site_name.into(),
                    pool: pool.into(),
                });
            }
            Ok(())
        };
        let next = match change {
            Change::Flip { pool, .. } => {
                usable(pool)?;
                SiteState {
                    active: pool.clone(),
                    canary: None,
                    history: current.left_behind(),
                    ..current.clone()
                }
            }
            Change::Canary { pool, percent, .. } => {
                if *percent > 100 {
                    return Err(ChangeError::Percent(*percent));
                }
                usable(pool)?;
                if *pool == current.active {
                    return Err(ChangeError::CanaryIsActive(pool.clone()));
                }
                let canary = (*percent > 0).then(|| Canary {
                    pool: pool.clone(),
                    percent: *percent,
                });
                SiteState {
                    canary,
                    history: current.left_behind(),
                    ..current.clone()
                }
            }
            Change::Rollback { .. } => {
                let mut history = current.history.clone();
                let back = history
                    .pop()
                    .ok_or_else(|| ChangeError::NothingToRollBack(site_name.into()))?;
                SiteState {
                    active: back.active,
                    canary: back.canary,
                    maintenance: current.maintenance.clone(),
                    history,
                }
            }
            Change::Maintenance {
                route,
                on,
                serve_cached,
                ..
            } => {
                let mut m = current.maintenance.clone();
                match route {
                    Some(r) => {
                        if !site.routes.routes.iter().any(|x| &*x.name == r) {
                            return Err(ChangeError::UnknownRoute {
                                site: site_name.into(),
                                route: r.clone(),
                            });
                        }
                        if *on {
                            m.routes.insert(r.clone());
                        } else {
                            m.routes.remove(r);
                        }
                    }
                    None => {
                        m.site = *on;
                        if !on {
                            m.routes.clear();
                        }
                    }
                }
                m.serve_cached = *serve_cached;
                SiteState {
                    maintenance: m,
                    ..current.clone()
                }
            }
        };
        self.set(site_name, next.clone(), save)?;
        Ok(next)
    }

    /// Installs a state received from another node (already validated and saved there).
    pub fn install(&self, site: &str, state: SiteState) {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.set(site, state, Save::BestEffort);
    }

    fn set(&self, site: &str, state: SiteState, save: Save) -> Result<(), ChangeError> {
        let mut all = (*self.states.load_full()).clone();
        all.insert(site.to_string(), state);
        if let Some(file) = &self.file {
            if let Err(e) = persist(file, &all) {
                tracing::error!(error = %e, file = %file.display(), ?save, "release state not saved");
                if save == Save::Required {
                    return Err(ChangeError::NotSaved {
                        file: file.clone(),
                        source: e,
                    });
                }
            }
        }
        self.states.store(Arc::new(all));
        Ok(())
    }
}

/// Writes `state` to `file` atomically: temp file in the same directory, fsync, rename.
fn persist(file: &Path, state: &States) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The visitor's cohort bucket (0–99): the cohort cookie if valid, else a stable hash of the
/// session cookie, else `None` (a new bucket is assigned and set as a cookie).
pub fn bucket(cohort: Option<&str>, session: Option<&str>) -> Option<u8> {
    if let Some(b) = cohort
        .and_then(|c| c.parse::<u8>().ok())
        .filter(|b| *b < 100)
    {
        return Some(b);
    }
    session.map(|s| {
        let h = s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        (h % 100) as u8
    })
}

/// A fresh random bucket for a visitor without one.
pub fn new_bucket() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sticky() {
        assert_eq!(bucket(Some("42"), Some("abc")), Some(42));
        assert_eq!(bucket(Some("420"), Some("abc")), bucket(None, Some("abc")));
        assert_eq!(bucket(None, None), None);
        assert!(new_bucket() < 100);
        let parsed: Change =
            serde_json::from_str(r#"{"action":"canary","site":"s","pool":"green","percent":10}"#)
                .unwrap();
        assert_eq!(parsed.site(), "s");
        assert!(serde_json::from_str::<Change>(r#"{"action":"flip","site":"s"}"#).is_err());
    }

    /// A state file written before the history existed keeps its one rollback step.
    #[test]
    fn a_state_file_with_a_previous_state_reads_as_a_history_of_one() {
        let old = r#"{"active":"green","canary":null,"maintenance":{"site":false,"routes":[],"serve_cached":false},
            "previous":{"active":"blue","canary":{"pool":"green","percent":5},"previous":null}}"#;
        let state: SiteState = serde_json::from_str(old).unwrap();
        assert_eq!(state.history.len(), 1);
        assert_eq!(state.history[0].active, "blue");
        assert_eq!(state.history[0].canary.as_ref().map(|c| c.percent), Some(5));
        let mut long = state.clone();
        for _ in 0..HISTORY + 3 {
            long.history = long.left_behind();
        }
        assert_eq!(
            long.history.len(),
            HISTORY,
            "the oldest choices are dropped"
        );
        let again: SiteState =
            serde_json::from_str(&serde_json::to_string(&long).unwrap()).unwrap();
        assert_eq!(again, long);
    }
}
