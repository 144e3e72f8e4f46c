//! The load generator's threads: one glommio executor per worker, unpinned
//! (the gateway may be pinned to the same cores), each running its share.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::ensure;

use glommio::{LocalExecutorBuilder, Placement};

/// Runs `work(worker)` on `workers` executors and returns their results in
/// worker order. A worker that fails sets `failed`, which the others watch
/// in [`wait_for`] so that they stop too.
pub fn on_workers<T, F, Fut>(workers: usize, failed: &Arc<AtomicBool>, work: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    let handles = (0..workers)
        .map(|worker| {
            let (work, failed) = (work.clone(), failed.clone());
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("loadgen-{worker}"))
                // Sockets only: keep locked memory small (8 MiB a process here).
                .io_memory(64 << 10)
                // Many connections each keep a poll pending: a deep ring
                // gives the kernel's poll table its most buckets.
                .ring_depth(4096)
                .spawn(move || async move {
                    let result = work(worker).await;
                    if result.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    result
                })
                .map_err(|error| anyhow::anyhow!("starting load generator worker {worker}: {error}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut results = Vec::with_capacity(workers);
    let mut errors = Vec::new();
    for (worker, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(error)) => errors.push(error.context(format!("worker {worker}"))),
            Err(error) => errors.push(anyhow::anyhow!("worker {worker} failed: {error}")),
        }
    }
    // Workers stop when another fails: report the failure that came first.
    errors.sort_by_key(|error| error.root_cause().to_string() == ANOTHER_FAILED);
    match errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(results),
    }
}

/// What a worker says when it stops because another one failed.
pub const ANOTHER_FAILED: &str = "another worker failed";

/// Worker threads to use by default: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|cores| cores.get()).unwrap_or(1)
}

/// Waits (politely, on the executor) until `done` holds, a worker failed,
/// or `limit` passes.
pub async fn wait_for(what: &str, failed: &AtomicBool, limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = super::latency::now_ns() + limit.as_nanos() as u64;
    while !done() {
        ensure!(!failed.load(Ordering::Acquire), ANOTHER_FAILED);
        ensure!(super::latency::now_ns() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// `future`'s output, or `None` if `limit` passes first.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    glommio::timer::timeout(limit, async { Ok(future.await) }).await.ok()
}

/// One start time for every worker, a little ahead: the first worker to
/// ask sets it in `slot`, the others read it.
pub fn agreed_start(slot: &AtomicU64) -> u64 {
    let proposed = super::latency::now_ns() + 50_000_000;
    match slot.compare_exchange(0, proposed, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => proposed,
        Err(set) => set,
    }
}

/// Opening connections at `--ramp-per-s`, shared by `workers` workers, each
/// pacing its own share from when it started.
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    started_ns: u64,
    per_s: Option<f64>,
    workers: usize,
}

impl Ramp {
    /// A ramp from now (none: as fast as chunks go).
    pub fn new(per_s: Option<f64>, workers: usize) -> Self {
        Ramp { started_ns: super::latency::now_ns(), per_s, workers: workers.max(1) }
    }

    /// Connections to open at a time: 10 ms worth with a ramp (1 to `max`),
    /// else `max`.
    pub fn chunk(&self, max: usize) -> usize {
        let max = max.max(1);
        match self.per_s {
            Some(per_s) => ((per_s / self.workers as f64) / 100.0).ceil().clamp(1.0, max as f64) as usize,
            None => max,
        }
    }

    /// Waits until this worker's next connection is due, `opened` being how
    /// many it opened so far.
    pub async fn wait(&self, opened: usize) {
        let Some(per_s) = self.per_s else { return };
        let due = self.started_ns + (opened as f64 * self.workers as f64 / per_s * 1e9) as u64;
        let now = super::latency::now_ns();
        if due > now {
            glommio::timer::sleep(Duration::from_nanos(due - now)).await;
        }
    }
}
