//! The process's own metrics, read from `/proc/self` when `/metrics` is scraped (the names
//! Prometheus client libraries use, so standard dashboards and alerts work), and
//! `crossfade_build_info{version,commit}`.

use prometheus::{Counter, IntGauge, IntGaugeVec, Opts, Registry};

/// Clock ticks per second of `/proc/self/stat` times (`sysconf(_SC_CLK_TCK)`: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct ProcessMetrics {
    resident_bytes: IntGauge,
    cpu_seconds: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
}

impl ProcessMetrics {
    pub fn new(r: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let cpu_seconds = Counter::new(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
        )
        .expect("valid metric");
        r.register(Box::new(cpu_seconds.clone()))
            .expect("metric registered once");
        let start = gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        let build = IntGaugeVec::new(
            Opts::new(
                "crossfade_build_info",
                "1, labelled with the version and the git commit of this binary.",
            ),
            &["version", "commit"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone()))
            .expect("metric registered once");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CROSSFADE_COMMIT")])
            .set(1);
        ProcessMetrics {
            resident_bytes: gauge(
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
            ),
            cpu_seconds,
            open_fds: gauge("process_open_fds", "Open file descriptors."),
            max_fds: gauge("process_max_fds", "The limit of open file descriptors."),
        }
    }

    /// Reads the process's state now.
    pub fn refresh(&self) {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.resident_bytes.set(pages * page_size());
        }
        if let Some(ticks) = cpu_ticks() {
            let seconds = ticks as f64 / TICKS_PER_SECOND;
            let delta = seconds - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))?
                    .split_whitespace()
                    .nth(3)?
                    .parse::<i64>()
                    .ok()
            })
        {
            self.max_fds.set(limit);
        }
    }
}

/// utime + stime of `/proc/self/stat` (the fields after the parenthesised command name).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

fn page_size() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as i64
    } else {
        4096
    }
}
