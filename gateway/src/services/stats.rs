//! What each shard counts about itself, and the snapshot of it that
//! `/metrics`, `/admin/v1/stats` and discovery gather (`shard::stats` takes
//! it and asks the other cores for theirs). Nothing here is shared between
//! cores, so counting costs a plain add on the message path.

use std::cell::Cell;
use std::time::Duration;

use crate::admission::AcceptRefusal;
use crate::error::ErrorCode;

/// Upper bounds of the latency histograms' buckets, in seconds (an
/// overflow bucket follows the last).
pub const LATENCY_BUCKETS_S: [f64; 16] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

const BUCKETS: usize = LATENCY_BUCKETS_S.len() + 1;

/// A latency histogram with fixed buckets, kept by one core.
#[derive(Debug, Default)]
pub struct Latency {
    counts: [Cell<u64>; BUCKETS],
    sum_ns: Cell<u64>,
}

impl Latency {
    /// Counts one observation.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S.partition_point(|bound| *bound < seconds);
        self.counts[bucket].set(self.counts[bucket].get() + 1);
        self.sum_ns.set(self.sum_ns.get().saturating_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64));
    }

    /// A copy of its counts.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot { counts: self.counts.iter().map(Cell::get).collect(), sum_s: self.sum_ns.get() as f64 / 1e9 }
    }
}

/// A latency histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Observations per bucket (not cumulative); the last is the overflow.
    pub counts: Vec<u64>,
    /// The sum of all observations, in seconds.
    pub sum_s: f64,
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot { counts: vec![0; BUCKETS], sum_s: 0.0 }
    }
}

impl LatencySnapshot {
    /// Adds another core's counts.
    pub fn merge(&mut self, other: &LatencySnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_s += other.sum_s;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Each bucket's upper bound and its own count (not cumulative), `+Inf`
    /// last: what prometheus-client's encoder takes (it adds them up).
    pub fn per_bucket(&self) -> Vec<(f64, u64)> {
        LATENCY_BUCKETS_S.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().copied()).collect()
    }

    /// Each bucket's upper bound and the count up to it (cumulative),
    /// `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.per_bucket()
            .into_iter()
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1), in
    /// seconds; `None` without observations, infinity in the overflow.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        self.cumulative().into_iter().find(|(_, cumulative)| *cumulative >= rank).map(|(bound, _)| bound)
    }
}

/// Every error code, in a fixed order (the index of a code's counter).
pub const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::UsernameTaken,
    ErrorCode::MessageTooLong,
    ErrorCode::RateLimited,
    ErrorCode::ChannelFull,
    ErrorCode::ForbiddenContent,
    ErrorCode::Overloaded,
    ErrorCode::Internal,
];

/// Counters a shard keeps for itself.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages stored by this shard as owner (sends received).
    pub messages_stored: Cell<u64>,
    /// Frames queued to local connections by deliveries.
    pub deliveries: Cell<u64>,
    /// `typing` events queued to local connections.
    pub typing_deliveries: Cell<u64>,
    /// `receipt` events queued to local connections.
    pub receipt_deliveries: Cell<u64>,
    /// Writes to connections' sockets (one may carry several frames).
    pub socket_writes: Cell<u64>,
    /// Messages stored with no pending push check: every member but the
    /// sender was this core's and had a device on it.
    pub push_checks_skipped: Cell<u64>,
    /// Connections closed as slow consumers.
    pub slow_consumers: Cell<u64>,
    /// Push records the webhook refused for good (moved to the dead pushes).
    pub pushes_dead: Cell<u64>,
    /// Push records dropped for a newer one of the same user (the user's
    /// bound in the outbox).
    pub pushes_coalesced: Cell<u64>,
    /// Push records dropped, oldest first, at the shard's outbox bound.
    pub pushes_expired: Cell<u64>,
    /// Dead pushes dropped, oldest first, at the shard's bound on them.
    pub dead_pushes_dropped: Cell<u64>,
    /// Push checks asked again while running (an owner that failed to
    /// record, or a pending record's removal that failed).
    pub push_check_retries: Cell<u64>,
    /// WebSocket connections whose session ran on the accepting core
    /// though another core owns their user (the owner's queue was full).
    pub hand_offs_kept: Cell<u64>,
    /// Owned channels' states dropped from memory, least recently used
    /// first, at `--max-idle-channels-per-shard`.
    pub channels_evicted: Cell<u64>,
    /// Error replies and responses, by `ERROR_CODES` index.
    pub errors: [Cell<u64>; ERROR_CODES.len()],
    /// Accepted connections closed at once, by `AcceptRefusal` index.
    pub accepts_refused: [Cell<u64>; AcceptRefusal::ALL.len()],
    /// From the owner taking a message until its frame is queued to the
    /// connections of a core hosting members (one observation per core).
    pub fan_out: Latency,
    /// Messages stored per second, over the last second.
    pub messages_per_s: Cell<f64>,
    /// Deliveries per second, over the last second.
    pub deliveries_per_s: Cell<f64>,
}

impl Counters {
    /// Counts an error answered to a client.
    pub fn error(&self, code: ErrorCode) {
        if let Some(index) = ERROR_CODES.iter().position(|known| *known == code) {
            self.errors[index].set(self.errors[index].get() + 1);
        }
    }

    /// Counts a connection whose session runs where it was accepted, not
    /// on its user's owner.
    pub fn hand_off_kept(&self) {
        self.hand_offs_kept.set(self.hand_offs_kept.get() + 1);
    }

    /// Counts an accepted connection closed at once, for `reason`.
    pub fn accept_refused(&self, reason: AcceptRefusal) {
        let counter = &self.accepts_refused[reason.index()];
        counter.set(counter.get() + 1);
    }
}

/// One shard's figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    /// The shard.
    pub shard: u16,
    /// WebSocket connections on this core.
    pub connections: u64,
    /// Distinct users with a connection on this core.
    pub users_connected: u64,
    /// Messages stored by this shard as owner.
    pub messages_stored: u64,
    /// Frames queued to this core's connections.
    pub deliveries: u64,
    /// `typing` events queued to this core's connections.
    pub typing_deliveries: u64,
    /// `receipt` events queued to this core's connections.
    pub receipt_deliveries: u64,
    /// People typing in the channels this shard owns.
    pub typists: u64,
    /// Writes to this core's connections' sockets.
    pub socket_writes: u64,
    /// Messages stored with no pending push check (every member but the
    /// sender connected to this core).
    pub push_checks_skipped: u64,
    /// Messages stored per second, over the last second.
    pub messages_per_s: f64,
    /// Deliveries per second, over the last second.
    pub deliveries_per_s: f64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Push records moved to the dead pushes.
    pub pushes_dead: u64,
    /// Push records coalesced away at the per-user bound.
    pub pushes_coalesced: u64,
    /// Push records expired at the shard's bound.
    pub pushes_expired: u64,
    /// Dead pushes dropped at the shard's bound.
    pub dead_pushes_dropped: u64,
    /// Push checks asked again while running.
    pub push_check_retries: u64,
    /// Connections kept on the accepting core rather than handed to their
    /// user's owner.
    pub hand_offs_kept: u64,
    /// Users this shard owns whose presence some core is subscribed to.
    pub presence_watched_users: u64,
    /// Cross-core messages this shard sent, by kind (`route::MeshKind::ALL`'s
    /// order).
    pub mesh_sent_by_kind: Vec<u64>,
    /// Owned channels' states in memory.
    pub channels_in_memory: u64,
    /// Owned channels' states dropped from memory at the bound.
    pub channels_evicted: u64,
    /// The gateway's tasks alive on this core (`tasks::alive`).
    pub tasks: u64,
    /// Error replies by `ERROR_CODES` index.
    pub errors: Vec<u64>,
    /// Accepted connections closed at once, by `AcceptRefusal` index.
    pub accepts_refused: Vec<u64>,
    /// Cross-core messages this core sent, by receiving shard.
    pub mesh_sent: Vec<u64>,
    /// Cross-core messages this core took off its queues, by sending shard.
    pub mesh_received: Vec<u64>,
    /// Requests to other shards awaiting their answers.
    pub requests_pending: u64,
    /// Calls and asks to other shards that got no answer in time.
    pub mesh_timeouts: u64,
    /// Writes waiting for the next group commit.
    pub commit_queue: u64,
    /// Storage batch write latency.
    pub storage_write: LatencySnapshot,
    /// Group commit latency.
    pub group_commit: LatencySnapshot,
    /// Fan-out latency.
    pub fan_out: LatencySnapshot,
    /// This shard's SST files, bytes.
    pub storage_sst_bytes: u64,
    /// This shard's memtables, bytes.
    pub storage_memtable_bytes: u64,
    /// Push records waiting in this shard's outbox.
    pub outbox_depth: u64,
}

/// Messages queued from shard `from` to shard `to` and not yet taken, by
/// the two cores' counts (read at slightly different moments, so an
/// estimate; never negative).
pub fn queue_depth(all: &[ShardStats], from: usize, to: usize) -> u64 {
    let sent = all.get(from).and_then(|stats| stats.mesh_sent.get(to)).copied().unwrap_or(0);
    let received = all.get(to).and_then(|stats| stats.mesh_received.get(from)).copied().unwrap_or(0);
    sent.saturating_sub(received)
}

/// The process's resident memory, bytes (0 where `/proc` cannot say).
pub fn process_rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|pages| pages.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// CPU seconds the process has used (user and system).
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `fields[0]` is field 3.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets_and_quantiles_read_back() {
        let latency = Latency::default();
        for _ in 0..90 {
            latency.record(Duration::from_micros(80));
        }
        for _ in 0..10 {
            latency.record(Duration::from_millis(3));
        }
        latency.record(Duration::from_secs(60));
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count(), 101);
        assert_eq!(snapshot.counts[1], 90, "80 µs is in the ≤ 100 µs bucket");
        assert_eq!(snapshot.counts[6], 10, "3 ms is in the ≤ 5 ms bucket");
        assert_eq!(*snapshot.counts.last().unwrap(), 1, "overflow");
        assert_eq!(snapshot.quantile_upper_bound(0.5), Some(0.000_1));
        assert_eq!(snapshot.quantile_upper_bound(0.95), Some(0.005));
        assert_eq!(snapshot.quantile_upper_bound(1.0), Some(f64::INFINITY));
        let cumulative = snapshot.cumulative();
        assert_eq!(cumulative.last(), Some(&(f64::INFINITY, 101)));
        assert!((snapshot.sum_s - (90.0 * 80e-6 + 10.0 * 3e-3 + 60.0)).abs() < 1e-9);
        let mut merged = LatencySnapshot::default();
        merged.merge(&snapshot);
        merged.merge(&snapshot);
        assert_eq!(merged.count(), 202);
        assert_eq!(LatencySnapshot::default().quantile_upper_bound(0.99), None);
    }

    #[test]
    fn queue_depth_is_sent_less_received_and_never_negative() {
        let a = ShardStats { mesh_sent: vec![0, 10], mesh_received: vec![0, 3], ..ShardStats::default() };
        let b = ShardStats { mesh_sent: vec![5, 0], mesh_received: vec![7, 0], ..ShardStats::default() };
        let all = [a, b];
        assert_eq!(queue_depth(&all, 0, 1), 3, "10 sent to 1, 7 taken by 1");
        assert_eq!(queue_depth(&all, 1, 0), 2, "5 sent to 0, 3 taken by 0");
        assert_eq!(queue_depth(&all, 0, 5), 0, "unknown shard");
    }

    #[test]
    fn process_figures_are_read_from_proc() {
        assert!(process_rss_bytes() > 1 << 20);
        assert!(process_cpu_seconds() >= 0.0);
    }
}
