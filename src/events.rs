//! The release timeline: every release action crossfade performs or observes — flips,
//! canaries, rollbacks (an operator's or the judge's), maintenance, purges, config reloads,
//! starts, upgrades and stops, a pool's release or asset hash changing, a server going down or
//! up, a pool starting to shed — as an [`Event`] with its time, node, who and what.
//!
//! The timeline owns the ring of the last [`CAPACITY`] events: kept in memory, saved beside
//! the release state (`<state_file>.events.json`, written off the request paths by its own
//! thread) so it survives restarts and upgrades, shared with the fleet (each event names its
//! node), logged one line each (target `crossfade::events`), counted in Prometheus
//! (`crossfade_events_total{kind}`, `crossfade_event_last_timestamp_seconds{kind}`, for
//! Grafana annotations); `Metrics::event` also sends statsd `<prefix>.events.<kind>`. `GET /events` and
//! `crossfade events` read it; the dashboard draws it on every chart.

use prometheus::{IntCounterVec, IntGaugeVec};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Events kept (memory, file, `/events`): about two weeks of a busy release schedule.
pub const CAPACITY: usize = 2000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Flip,
    CanaryStart,
    CanaryChange,
    CanaryEnd,
    Rollback,
    MaintenanceOn,
    MaintenanceOff,
    Purge,
    Reload,
    ReloadRejected,
    Start,
    Upgrade,
    Stop,
    /// A pool's health check announced another release name or asset hash.
    ReleaseSeen,
    ServerDown,
    ServerUp,
    /// A pool's origin protection started turning requests away.
    Shedding,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Flip,
        Kind::CanaryStart,
        Kind::CanaryChange,
        Kind::CanaryEnd,
        Kind::Rollback,
        Kind::MaintenanceOn,
        Kind::MaintenanceOff,
        Kind::Purge,
        Kind::Reload,
        Kind::ReloadRejected,
        Kind::Start,
        Kind::Upgrade,
        Kind::Stop,
        Kind::ReleaseSeen,
        Kind::ServerDown,
        Kind::ServerUp,
        Kind::Shedding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Flip => "flip",
            Kind::CanaryStart => "canary_start",
            Kind::CanaryChange => "canary_change",
            Kind::CanaryEnd => "canary_end",
            Kind::Rollback => "rollback",
            Kind::MaintenanceOn => "maintenance_on",
            Kind::MaintenanceOff => "maintenance_off",
            Kind::Purge => "purge",
            Kind::Reload => "reload",
            Kind::ReloadRejected => "reload_rejected",
            Kind::Start => "start",
            Kind::Upgrade => "upgrade",
            Kind::Stop => "stop",
            Kind::ReleaseSeen => "release_seen",
            Kind::ServerDown => "server_down",
            Kind::ServerUp => "server_up",
            Kind::Shedding => "shedding",
        }
    }
}

/// One entry of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// The node (fleet name) it happened on.
    pub node: String,
    /// Who did it: an admin token's name, `judge`, `health`, `SIGHUP`, `crossfade`.
    pub by: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// One line for people: `flip blue → green`, `purge key tracks (hard): 3 removed; complete`.
    pub what: String,
    /// The details a tool may want (a purge's report, a reload's changed keys, a reason).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Event {
    /// An event of `kind` now, by `by`, saying `what`; the node is filled in when recorded.
    pub fn new(kind: Kind, by: impl Into<String>, what: impl Into<String>) -> Event {
        Event {
            at_ms: now_ms(),
            node: String::new(),
            by: by.into(),
            kind,
            site: None,
            route: None,
            pool: None,
            what: what.into(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn site(mut self, site: impl Into<String>) -> Event {
        self.site = Some(site.into());
        self
    }

    pub fn route(mut self, route: Option<impl Into<String>>) -> Event {
        self.route = route.map(Into::into);
        self
    }

    pub fn pool(mut self, pool: impl Into<String>) -> Event {
        self.pool = Some(pool.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Event {
        self.detail = detail;
        self
    }

    /// The same event from another node is the same (node, time, kind, what).
    fn same(&self, other: &Event) -> bool {
        self.at_ms == other.at_ms
            && self.kind == other.kind
            && self.node == other.node
            && self.what == other.what
    }
}

fn lock(ring: &Mutex<VecDeque<Event>>) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
    ring.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where an event goes besides the ring: the fleet (set by the fleet link when there is one).
pub type Outbox = tokio::sync::mpsc::UnboundedSender<Event>;

/// The timeline of this process.
pub struct Timeline {
    /// Shared with the writer thread.
    ring: Arc<Mutex<VecDeque<Event>>>,
    node: OnceLock<String>,
    /// Wakes the writer thread; set when a file is attached.
    writer: OnceLock<std::sync::mpsc::Sender<()>>,
    outbox: OnceLock<Outbox>,
    counted: IntCounterVec,
    last: IntGaugeVec,
}

impl Timeline {
    /// An empty timeline whose counters are in `counted` and `last` (registered by
    /// [`crate::metrics::Metrics`]).
    pub fn new(counted: IntCounterVec, last: IntGaugeVec) -> Timeline {
        for kind in Kind::ALL {
            counted.with_label_values(&[kind.as_str()]);
        }
        Timeline {
            ring: Arc::default(),
            node: OnceLock::new(),
            writer: OnceLock::new(),
            outbox: OnceLock::new(),
            counted,
            last,
        }
    }

    /// Names this node, reads the events saved in `file` (a restart keeps its history) and
    /// saves there from now on. Once, at start.
    pub fn attach(&self, node: &str, file: Option<PathBuf>) {
        let _ = self.node.set(node.to_string());
        let Some(file) = file else { return };
        if let Ok(bytes) = std::fs::read(&file) {
            match serde_json::from_slice::<Vec<Event>>(&bytes) {
                Ok(saved) => {
                    let mut ring = self.lock();
                    ring.extend(saved);
                    while ring.len() > CAPACITY {
                        ring.pop_front();
                    }
                }
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "release timeline file unreadable; starting a new one")
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        if self.writer.set(tx).is_ok() {
            let ring = self.ring.clone();
            let started = std::thread::Builder::new()
                .name("crossfade-timeline".into())
                .spawn(move || writer(&ring, &file, rx));
            if let Err(e) = started {
                tracing::error!(error = %e, "release timeline writer did not start; events are not saved");
            }
        }
    }

    pub fn set_outbox(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        lock(&self.ring)
    }

    /// Records an event of this node: the ring, the log, the counters, the file and the
    /// fleet (statsd: [`crate::metrics::Metrics::event`]).
    pub fn record(&self, mut event: Event) {
        event.node = self.node.get().cloned().unwrap_or_default();
        tracing::info!(
            target: "crossfade::events",
            kind = event.kind.as_str(),
            by = %event.by,
            site = event.site.as_deref().unwrap_or(""),
            route = event.route.as_deref().unwrap_or(""),
            pool = event.pool.as_deref().unwrap_or(""),
            "{}",
            event.what
        );
        let kind = event.kind.as_str();
        self.counted.with_label_values(&[kind]).inc();
        self.last
            .with_label_values(&[kind])
            .set((event.at_ms / 1000) as i64);
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.send(event.clone());
        }
        self.insert(event);
    }

    /// An event another node recorded (heard on the fleet channel, or read from Redis when
    /// this node subscribed): kept once, in time order.
    pub fn insert_remote(&self, event: Event) {
        if self.node.get().is_some_and(|n| *n == event.node) {
            return;
        }
        if self.lock().iter().any(|e| e.same(&event)) {
            return;
        }
        self.insert(event);
    }

    fn insert(&self, event: Event) {
        {
            let mut ring = self.lock();
            let at = ring.partition_point(|e| e.at_ms <= event.at_ms);
            ring.insert(at, event);
            while ring.len() > CAPACITY {
                ring.pop_front();
            }
        }
        if let Some(w) = self.writer.get() {
            let _ = w.send(());
        }
    }

    /// Events at or after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Event> {
        self.lock()
            .iter()
            .filter(|e| e.at_ms >= since_ms)
            .cloned()
            .collect()
    }
}

/// Saves the ring whenever it changed, coalescing bursts: atomically (temp file, fsync,
/// rename), on its own thread so no request or admin call waits for the disk.
fn writer(ring: &Mutex<VecDeque<Event>>, file: &Path, wake: std::sync::mpsc::Receiver<()>) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        let events: Vec<Event> = lock(ring).iter().cloned().collect();
        let tmp = file.with_extension("tmp");
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&events).unwrap_or_default())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        })();
        if let Err(e) = written {
            tracing::error!(file = %file.display(), error = %e, "release timeline not saved");
        }
    }
}

/// The event of an applied release change: `before` and `after` tell a canary's start from
/// its change and end, and say where a rollback went.
pub fn of_change(
    change: &crate::pools::switch::Change,
    before: Option<&crate::pools::switch::SiteState>,
    after: &crate::pools::switch::SiteState,
    by: &str,
) -> Event {
    use crate::pools::switch::Change;
    let choice = |s: &crate::pools::switch::SiteState| match &s.canary {
        Some(c) => format!("{} + canary {} {}%", s.active, c.pool, c.percent),
        None => s.active.clone(),
    };
    let was = before.map(choice).unwrap_or_default();
    let (kind, what, pool) = match change {
        Change::Flip { pool, .. } => (Kind::Flip, format!("flip {was} → {pool}"), Some(pool)),
        Change::Canary { pool, percent, .. } => {
            let old = before.and_then(|b| b.canary.as_ref());
            match (old, *percent) {
                (_, 0) => (Kind::CanaryEnd, format!("canary {pool} ended"), Some(pool)),
                (None, p) => (Kind::CanaryStart, format!("canary {pool} {p}%"), Some(pool)),
                (Some(o), p) => (
                    Kind::CanaryChange,
                    format!("canary {pool} {}% → {p}%", o.percent),
                    Some(pool),
                ),
            }
        }
        Change::Rollback { .. } => (
            Kind::Rollback,
            format!("rollback {was} → {}", choice(after)),
            None,
        ),
        Change::Maintenance {
            route,
            on,
            serve_cached,
            ..
        } => {
            let of = route
                .as_deref()
                .map_or("the whole site".to_string(), |r| format!("route {r}"));
            let cached = if *on && *serve_cached {
                " (serving cached copies)"
            } else {
                ""
            };
            let kind = if *on {
                Kind::MaintenanceOn
            } else {
                Kind::MaintenanceOff
            };
            let verb = if *on { "on" } else { "off" };
            (kind, format!("maintenance {verb} for {of}{cached}"), None)
        }
    };
    let route = match change {
        Change::Maintenance { route, .. } => route.clone(),
        _ => None,
    };
    let mut event = Event::new(kind, by, what)
        .site(change.site())
        .route(route)
        .detail(serde_json::json!({ "state": after }));
    event.pool = pool.cloned();
    event
}

/// The event of a purge: the report in one line (as `crossfade purge` prints it), and whole.
pub fn of_purge(report: &crate::fleet::PurgeReport, by: &str) -> Event {
    let value = serde_json::to_value(report).unwrap_or_default();
    let line = crate::admin::human::purge(&value);
    let site = value["purge"]["site"].as_str().map(str::to_string);
    let mut event = Event::new(Kind::Purge, by, line.replacen("purged", "purge", 1)).detail(value);
    event.site = site;
    event
}

/// The file beside the release state: `state.json` → `state.events.json`.
pub fn file_beside(state_file: &Path) -> PathBuf {
    let stem = state_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    state_file.with_file_name(format!("{stem}.events.json"))
}

/// Reads `since` as Unix seconds (all digits) or a duration before now (`2h`, `90m`); in
/// Unix milliseconds.
pub fn parse_since(since: &str) -> Option<u64> {
    if since.chars().all(|c| c.is_ascii_digit()) {
        return since.parse::<u64>().ok().map(|s| s * 1000);
    }
    let ago = humantime::parse_duration(since).ok()?;
    Some(now_ms().saturating_sub(ago.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline() -> Timeline {
        Timeline::new(
            IntCounterVec::new(prometheus::Opts::new("e", "e"), &["kind"]).unwrap(),
            IntGaugeVec::new(prometheus::Opts::new("l", "l"), &["kind"]).unwrap(),
        )
    }

    #[test]
    fn events_are_kept_in_time_order_once_and_bounded() {
        let t = timeline();
        t.attach("edge-1", None);
        let mut late = Event::new(Kind::Flip, "ops", "flip blue → green").site("store");
        late.at_ms = 2_000;
        let mut early = Event::new(Kind::Purge, "ops", "purge all");
        early.at_ms = 1_000;
        early.node = "edge-2".into();
        t.record(late.clone());
        t.insert_remote(early.clone());
        t.insert_remote(early.clone());
        let all = t.since(0);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].kind, all[1].kind), (Kind::Purge, Kind::Flip));
        assert_eq!(all[1].node, "edge-1", "recorded events carry this node");
        assert_eq!(t.since(1_500).len(), 1);
        for _ in 0..CAPACITY + 5 {
            t.record(Event::new(Kind::Reload, "SIGHUP", "reload"));
        }
        assert_eq!(t.since(0).len(), CAPACITY);
    }

    #[test]
    fn since_reads_seconds_or_a_duration_ago() {
        assert_eq!(parse_since("1700000000"), Some(1_700_000_000_000));
        let two_hours = parse_since("2h").unwrap();
        assert!(now_ms() - two_hours >= 7_200_000 && now_ms() - two_hours < 7_210_000);
        assert_eq!(parse_since("soon"), None);
        assert_eq!(
            file_beside(Path::new("/var/lib/crossfade/state.json")),
            Path::new("/var/lib/crossfade/state.events.json")
        );
    }
}
