//! What every shard of one server shares: readiness, the stop flag, the
//! connection counts and the load that discovery reports. Not on the
//! message path: each shard writes only its own connection count, when a
//! connection comes or goes, and shard 0 writes the load once a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// What every core of one server shares.
#[derive(Debug)]
pub struct Shared {
    /// Shards that have joined the meshes and listen.
    pub ready_shards: AtomicUsize,
    /// Set to stop the server (signal handlers set it directly).
    pub stop: Arc<AtomicBool>,
    /// Connections per shard (for discovery).
    pub connections: Box<[AtomicU64]>,
    /// The shards' busy fraction over the last second, as `f64` bits.
    load_bits: AtomicU64,
    /// When the server started.
    pub started: Instant,
}

impl Shared {
    /// State for a server of `shard_count` shards.
    pub fn new(shard_count: u16) -> Self {
        Shared {
            ready_shards: AtomicUsize::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            connections: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            load_bits: AtomicU64::new(0f64.to_bits()),
            started: Instant::now(),
        }
    }

    /// The shards' busy fraction (0 to 1) over the last second, from the
    /// process's CPU time.
    pub fn load(&self) -> f64 {
        f64::from_bits(self.load_bits.load(Ordering::Relaxed))
    }

    /// Sets the busy fraction (shard 0 samples it).
    pub fn set_load(&self, load: f64) {
        self.load_bits.store(load.to_bits(), Ordering::Relaxed);
    }

    /// All shards' connections now.
    pub fn connection_count(&self) -> u64 {
        self.connections.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }
}
