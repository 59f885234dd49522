//! The one helper thread of a storage that gives back the memory of purged objects, in the
//! order the purges came. A purge answers as soon as its objects are invisible; their removal
//! from the map and the index, paced in batches, happens here. One long-lived thread, not one
//! per purge: a storm of big purges queues up instead of starting a thread each.

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// Runs reclaim jobs one after another on a thread started with the first job.
#[derive(Default)]
pub(super) struct Reclaimer {
    jobs: Mutex<Option<Sender<Job>>>,
}

impl Reclaimer {
    /// Queues `job`; runs it on the caller's thread if no helper thread can be had.
    pub(super) fn run(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        let mut jobs = super::lock(&self.jobs);
        if jobs.is_none() {
            let (tx, rx) = channel::<Job>();
            let started = std::thread::Builder::new()
                .name("crossfade-reclaim".into())
                .spawn(move || rx.into_iter().for_each(|job| job()));
            if started.is_ok() {
                *jobs = Some(tx);
            }
        }
        let refused = match jobs.as_ref() {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        drop(jobs);
        if let Some(job) = refused {
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn jobs_run_in_order_on_one_thread() {
        let r = Reclaimer::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done, wait) = channel();
        for i in 0..50 {
            let seen = seen.clone();
            let done = done.clone();
            r.run(move || {
                seen.lock().unwrap().push((i, std::thread::current().id()));
                done.send(()).unwrap();
            });
        }
        for _ in 0..50 {
            wait.recv().unwrap();
        }
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
        assert!(
            seen.iter().all(|(_, t)| *t == seen[0].1),
            "one helper thread"
        );
        assert_ne!(seen[0].1, std::thread::current().id());
    }
}
