//! Handing the CPU back between cache hits: a worker thread that has served hits for [`AFTER`]
//! since it last yielded its core yields it (`sched_yield`) before reading the next request.
//!
//! Why: under steady load a tokio worker never blocks. The two workers steal from each other,
//! so neither runs out of work while either has any, and on a kernel without forced preemption
//! (Debian's server kernels: `PREEMPT_NONE`, `HZ=250`) a thread that does not block keeps its
//! core until the next tick, 4 ms. Everything else that wants the core waits that long: softirq
//! threads, log shippers and agents, and on the benchmark box the load generator, whose wait
//! counts as latency. Measured with `loadtest/sched.py /c/16k`: nginx's workers blocked about
//! 13,000 times a second, crossfade's about 2,000; wrk waited 0.67 ms on average for a core
//! beside crossfade (0.16 ms beside nginx), and crossfade's 16 KiB p99 sat at one tick, 4.4–4.7
//! ms, in every round. Yielding after 200 µs of hits took that p99 to 1.8–2.3 ms and raised the
//! hit rate in the same rounds (16 KiB: 89.0k against 80.5k req/s; the README has the full run).
//!
//! Only hits count: a pass or a miss waits for the origin, and that wait gives the core away by
//! itself. Yielding after passes as well cost a tenth of the pass rate in the same rounds (31.1k
//! against 34.6k req/s): the core went to the origin and the client while the worker had
//! answers to relay. A yield with nothing else runnable on the core returns at once (a system
//! call, a few hundred nanoseconds, at most every 200 µs per thread). It happens between
//! requests, never in the middle of one, and the clock is per thread, so nothing is shared.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Work after which a thread yields: a twentieth of a 4 ms tick.
pub const AFTER: Duration = Duration::from_micros(200);

thread_local! {
    /// When this thread last yielded (or first served a request).
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called when a cache hit has been written: yields this thread's core when [`AFTER`] has
/// passed since it last did.
pub fn hit_served() {
    let now = Instant::now();
    LAST.with(|last| match due(last.get(), now) {
        Some(true) => {
            std::thread::yield_now();
            last.set(Some(Instant::now()));
        }
        Some(false) => {}
        None => last.set(Some(now)),
    });
}

/// Whether a thread that last yielded at `last` yields at `now`; `None` on its first request,
/// which starts its clock.
fn due(last: Option<Instant>, now: Instant) -> Option<bool> {
    last.map(|last| now.saturating_duration_since(last) >= AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_yields_once_it_has_worked_for_the_interval() {
        let t0 = Instant::now();
        assert_eq!(due(None, t0), None);
        assert_eq!(due(Some(t0), t0), Some(false));
        assert_eq!(due(Some(t0), t0 + AFTER / 2), Some(false));
        assert_eq!(due(Some(t0), t0 + AFTER), Some(true));
        // A clock read before `last` (another core's Instant) never yields early.
        assert_eq!(due(Some(t0 + AFTER), t0), Some(false));
    }
}
