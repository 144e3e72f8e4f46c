//! Threads of their own for blocking work that must never take a shard's
//! core, nor its executor's one blocking thread (which writes its group
//! commits): password hashing and webhook POSTs. A pool is a few threads
//! behind one bounded queue; past the bound a job is refused at once
//! rather than queued without end.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use futures_channel::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The queue holds its bound of jobs.
    #[error("the queue is full")]
    Full,
    /// The pool's threads are gone.
    #[error("the pool stopped")]
    Stopped,
}

/// `threads` threads fed by one queue of `queue_max` jobs.
#[derive(Debug)]
pub struct WorkerPool {
    jobs: SyncSender<Job>,
}

impl WorkerPool {
    /// Starts `threads` threads (at least one) named `{name}-{n}` behind a
    /// queue of `queue_max` jobs. They end when the pool is dropped.
    pub fn new(name: &str, threads: usize, queue_max: usize) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel::<Job>(queue_max);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("{name}-{n}")).spawn(move || work(&queue))?;
        }
        Ok(WorkerPool { jobs })
    }

    /// Queues `job` now; the receiver gets its result.
    pub fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, Refused> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_at_once_and_queued_jobs_all_run() {
        let pool = WorkerPool::new("test-pool", 1, 2).unwrap();
        // One job running, two queued: the fourth is refused at once.
        let (started, running) = std::sync::mpsc::channel();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let first = pool
            .submit(move || {
                started.send(()).unwrap();
                hold.recv().unwrap();
                1
            })
            .unwrap();
        running.recv().unwrap();
        let queued: Vec<_> = (2..4).map(|n| pool.submit(move || n).unwrap()).collect();
        assert_eq!(pool.submit(|| 0).unwrap_err(), Refused::Full);
        release.send(()).unwrap();
        let results: Vec<i32> = futures_lite::future::block_on(async {
            let mut results = vec![first.await.unwrap()];
            for job in queued {
                results.push(job.await.unwrap());
            }
            results
        });
        assert_eq!(results, [1, 2, 3]);
    }
}
