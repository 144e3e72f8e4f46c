//! A shard's figures: its snapshot (`services::stats::ShardStats`), every
//! core's gathered by one control message each, and the once-a-second
//! samplers (rates, the node's load).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::limits;
use crate::route::{Answer, Control, OpsMsg};
use crate::services::stats::{ShardStats, process_cpu_seconds};
use crate::shard::state::Shard;

/// This shard's figures now.
pub fn snapshot(shard: &Shard) -> ShardStats {
    let counters = &shard.counters;
    let registry = shard.registry.borrow();
    let (storage_sst_bytes, storage_memtable_bytes) = shard.store.shard_sizes(shard.id).unwrap_or_else(|error| {
        tracing::warn!(%error, "reading storage sizes");
        (0, 0)
    });
    ShardStats {
        shard: shard.id.0,
        connections: registry.len() as u64,
        users_connected: registry.users() as u64,
        messages_stored: counters.messages_stored.get(),
        deliveries: counters.deliveries.get(),
        typing_deliveries: counters.typing_deliveries.get(),
        receipt_deliveries: counters.receipt_deliveries.get(),
        typists: shard.typing.borrow().len() as u64,
        socket_writes: counters.socket_writes.get(),
        push_checks_skipped: counters.push_checks_skipped.get(),
        messages_per_s: counters.messages_per_s.get(),
        deliveries_per_s: counters.deliveries_per_s.get(),
        slow_consumers: counters.slow_consumers.get(),
        pushes_dead: counters.pushes_dead.get(),
        pushes_coalesced: counters.pushes_coalesced.get(),
        pushes_expired: counters.pushes_expired.get(),
        dead_pushes_dropped: counters.dead_pushes_dropped.get(),
        push_check_retries: counters.push_check_retries.get(),
        hand_offs_kept: counters.hand_offs_kept.get(),
        presence_watched_users: shard.presence.borrow().watched_users() as u64,
        channels_in_memory: shard.channels_in_memory() as u64,
        channels_evicted: counters.channels_evicted.get(),
        tasks: crate::tasks::alive(),
        errors: counters.errors.iter().map(Cell::get).collect(),
        accepts_refused: counters.accepts_refused.iter().map(Cell::get).collect(),
        mesh_sent: shard.router.sent_counts(),
        mesh_received: shard.router.received_counts(),
        mesh_sent_by_kind: shard.router.sent_by_kind(),
        requests_pending: shard.router.pending() as u64,
        mesh_timeouts: shard.router.timed_out(),
        commit_queue: shard.committer.queued() as u64,
        storage_write: shard.committer.timings.storage_write.snapshot(),
        group_commit: shard.committer.timings.group_commit.snapshot(),
        fan_out: counters.fan_out.snapshot(),
        storage_sst_bytes,
        storage_memtable_bytes,
        outbox_depth: shard.outbox_index.borrow().len() as u64,
    }
}

/// Every shard's figures, in shard order: one control message per other core.
pub async fn gather(shard: &Rc<Shard>) -> Result<Vec<ShardStats>, ApiError> {
    let asks = shard.others().map(|other| shard.router.ask(other, Control::Ops(OpsMsg::Stats)));
    let mut all = vec![snapshot(shard)];
    for answer in futures_util::future::join_all(asks).await {
        match answer? {
            Answer::Stats(stats) => all.push(*stats),
            other => return Err(ApiError::internal(format!("stats answered {other:?}"))),
        }
    }
    all.sort_by_key(|stats| stats.shard);
    Ok(all)
}

/// Updates a shard's per-second rates once a second (and prunes its rate
/// limiter every ten), until the server stops.
pub async fn sample_rates(shard: Rc<Shard>) {
    let counters = &shard.counters;
    let mut last = (counters.messages_stored.get(), counters.deliveries.get(), Instant::now());
    let mut ticks = 0u64;
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            shard.limiter.prune(Instant::now());
        }
        let now = (counters.messages_stored.get(), counters.deliveries.get(), Instant::now());
        let seconds = now.2.duration_since(last.2).as_secs_f64().max(1e-3);
        counters.messages_per_s.set((now.0 - last.0) as f64 / seconds);
        counters.deliveries_per_s.set((now.1 - last.1) as f64 / seconds);
        last = now;
    }
}

/// Samples the process's CPU time once a second into the shared load: the
/// busy fraction of the shards' cores (0 to 1). Shard 0 runs it.
pub async fn sample_load(shard: Rc<Shard>) {
    let mut last = (process_cpu_seconds(), Instant::now());
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let now = (process_cpu_seconds(), Instant::now());
        let wall = now.1.duration_since(last.1).as_secs_f64().max(1e-3);
        let load = (now.0 - last.0) / (wall * f64::from(shard.shard_count));
        shard.shared.set_load(load.clamp(0.0, 1.0));
        last = now;
    }
}

/// While storage writes fail, tries a small write once a second, so that
/// readiness comes back when the disk does even with no traffic, and with
/// it the message ids of the failed writes (which hold sync's frontier
/// until the store is known good). Shard 0 runs it.
pub async fn probe_failed_writes(shard: Rc<Shard>) {
    while !shard.stopping.get() {
        glommio::timer::sleep(limits::WRITE_PROBE_INTERVAL).await;
        if shard.shared.storage_failure().is_none() {
            continue;
        }
        let store = shard.store.clone();
        let epoch = shard.shared.write_epoch();
        let result = glommio::executor()
            .spawn_blocking(move || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_millis() as u64);
                store.put_meta("write-probe", &now.to_be_bytes()).map_err(|error| error.to_string())
            })
            .await;
        match result {
            Ok(()) => shard.shared.note_write_ok(epoch),
            Err(error) => shard.shared.note_write_failed(&error, shard.id, Vec::new()),
        }
    }
}
