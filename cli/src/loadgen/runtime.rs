//! The load generator's threads: one glommio executor per worker, unpinned
//! (the gateway may be pinned to the same cores), each running its share.

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};

/// Runs `work(worker)` on `workers` executors and returns their results in
/// worker order.
pub fn on_workers<T, F, Fut>(workers: usize, work: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    let handles = (0..workers)
        .map(|worker| {
            let work = work.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("loadgen-{worker}"))
                // Sockets only: keep locked memory small (8 MiB a process here).
                .io_memory(64 << 10)
                // Many connections each keep a poll pending: a deep ring
                // gives the kernel's poll table its most buckets.
                .ring_depth(4096)
                .spawn(move || async move { work(worker).await })
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
