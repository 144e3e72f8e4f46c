//! `GET /metrics`: every core's figures in the Prometheus text format
//! (version 0.0.4), encoded by `prometheus-client` from the snapshots the
//! cores answer. The registry is built per scrape from those snapshots, so
//! nothing on the message path touches a shared metric.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::admission::AcceptRefusal;
use crate::error::ApiError;
use crate::net::http::body::Body;
use crate::route::MeshKind;
use crate::services::stats::{self, ERROR_CODES, LatencySnapshot, ShardStats};
use crate::shard::state::Shard;

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    from: u16,
    to: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// A histogram as counted already (every core's buckets added up).
#[derive(Debug)]
struct Buckets(LatencySnapshot);

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder accumulates the counts itself: give it each bucket's own.
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_s, self.0.count(), &self.0.per_bucket(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Figures of the process as a whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFigures {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU used, seconds.
    pub cpu_seconds: f64,
    /// Busy fraction of the shards' cores over the last second.
    pub load: f64,
    /// What RocksDB's block cache (one for the whole store) holds, bytes.
    pub block_cache_bytes: u64,
    /// HTTP connections accepted and not yet ended or upgraded.
    pub http_connections: u64,
    /// Keys (accounts and IPs) the login throttle tracks.
    pub login_throttle_keys: u64,
    /// Bytes the login throttle's table holds (its estimate).
    pub login_throttle_bytes: u64,
}

impl ProcessFigures {
    /// The process's own figures now (resident memory, CPU); the node's
    /// are filled in by the caller.
    pub fn now() -> Self {
        ProcessFigures {
            rss_bytes: stats::process_rss_bytes(),
            cpu_seconds: stats::process_cpu_seconds(),
            ..ProcessFigures::default()
        }
    }
}

fn shard_gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
    all: &[ShardStats],
    value: impl Fn(&ShardStats) -> u64,
) {
    let family = Family::<ShardLabel, Gauge>::default();
    for stats in all {
        family.get_or_create(&ShardLabel { shard: stats.shard }).set(value(stats) as i64);
    }
    registry.register(name, help, family);
}

fn shard_counter(
    registry: &mut Registry,
    name: &str,
    help: &str,
    all: &[ShardStats],
    value: impl Fn(&ShardStats) -> u64,
) {
    let family = Family::<ShardLabel, Counter>::default();
    for stats in all {
        family.get_or_create(&ShardLabel { shard: stats.shard }).inc_by(value(stats));
    }
    registry.register(name, help, family);
}

fn histogram(
    registry: &mut Registry,
    name: &str,
    help: &str,
    all: &[ShardStats],
    pick: fn(&ShardStats) -> &LatencySnapshot,
) {
    let mut merged = LatencySnapshot::default();
    for stats in all {
        merged.merge(pick(stats));
    }
    registry.register_with_unit(name, help, Unit::Seconds, Buckets(merged));
}

/// `GET /metrics`: every shard's figures, gathered now.
pub async fn scrape(shard: &Rc<Shard>) -> Result<Response<Body>, ApiError> {
    let all = crate::shard::stats::gather(shard).await?;
    let block_cache_bytes = shard.store.block_cache_bytes().unwrap_or_else(|error| {
        tracing::warn!(%error, "reading the block cache's usage");
        0
    });
    let (login_throttle_keys, login_throttle_bytes) = shard.shared.login_throttle_size();
    let process = ProcessFigures {
        load: shard.shared.load(),
        block_cache_bytes,
        http_connections: shard.shared.http_connections_live() as u64,
        login_throttle_keys: login_throttle_keys as u64,
        login_throttle_bytes: login_throttle_bytes as u64,
        ..ProcessFigures::now()
    };
    let text = encode(&all, process).map_err(|_| ApiError::internal("encoding metrics failed"))?;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// The exposition text for every core's figures.
pub fn encode(all: &[ShardStats], process: ProcessFigures) -> Result<String, std::fmt::Error> {
    let mut root = Registry::default();
    {
        let registry = root.sub_registry_with_prefix("chatgw");
        shard_gauge(registry, "connections", "WebSocket connections, by the shard that holds them", all, |s| {
            s.connections
        });
        shard_gauge(registry, "users_connected", "Distinct users with a connection on the shard", all, |s| {
            s.users_connected
        });
        shard_counter(registry, "messages_received", "Messages stored by their channel's owner shard", all, |s| {
            s.messages_stored
        });
        shard_counter(registry, "messages_delivered", "Message frames queued to connections", all, |s| s.deliveries);
        shard_counter(registry, "typing_delivered", "Typing events queued to connections", all, |s| {
            s.typing_deliveries
        });
        shard_counter(registry, "receipts_delivered", "Receipt events queued to connections", all, |s| {
            s.receipt_deliveries
        });
        shard_gauge(registry, "typists", "People typing in the channels the shard owns", all, |s| s.typists);
        shard_counter(
            registry,
            "socket_writes",
            "Writes to WebSocket connections' sockets (one may carry several frames)",
            all,
            |s| s.socket_writes,
        );
        shard_counter(
            registry,
            "push_checks_skipped",
            "Messages stored with no pending push check: every member but the sender had a device on the channel's core",
            all,
            |s| s.push_checks_skipped,
        );
        shard_counter(
            registry,
            "pushes_coalesced",
            "Push records dropped for a newer one of the same user",
            all,
            |s| s.pushes_coalesced,
        );
        shard_counter(
            registry,
            "pushes_expired",
            "Push records dropped, oldest first, at the shard's bound",
            all,
            |s| s.pushes_expired,
        );
        shard_counter(
            registry,
            "dead_pushes_dropped",
            "Dead pushes dropped, oldest first, at the shard's bound on them",
            all,
            |s| s.dead_pushes_dropped,
        );
        shard_gauge(
            registry,
            "presence_watched_users",
            "Users the shard owns whose presence some core is subscribed to",
            all,
            |s| s.presence_watched_users,
        );
        shard_counter(
            registry,
            "push_check_retries",
            "Push checks asked again while running after an owner or the disk failed",
            all,
            |s| s.push_check_retries,
        );
        shard_counter(
            registry,
            "hand_offs_kept",
            "WebSocket connections run on the accepting core, not their user's owner (its queue was full)",
            all,
            |s| s.hand_offs_kept,
        );
        shard_gauge(registry, "channels_in_memory", "States of channels the shard owns held in memory", all, |s| {
            s.channels_in_memory
        });
        shard_counter(
            registry,
            "channels_evicted",
            "Owned channels' states dropped from memory at the idle bound",
            all,
            |s| s.channels_evicted,
        );
        shard_gauge(registry, "tasks", "The gateway's tasks alive on the shard's core", all, |s| s.tasks);
        shard_counter(registry, "pushes_dead", "Push records the webhook refused for good (4xx)", all, |s| {
            s.pushes_dead
        });
        shard_counter(registry, "slow_consumers", "Connections closed for not reading (1008)", all, |s| {
            s.slow_consumers
        });
        shard_counter(
            registry,
            "mesh_timeouts",
            "Calls and asks to other shards answered overloaded at their deadline",
            all,
            |s| s.mesh_timeouts,
        );
        shard_gauge(registry, "requests_pending", "Requests to other shards awaiting answers", all, |s| {
            s.requests_pending
        });
        shard_gauge(registry, "commit_queue", "Writes waiting for the shard's next group commit", all, |s| {
            s.commit_queue
        });
        shard_gauge(registry, "storage_sst_bytes", "The shard's SST files on disk", all, |s| s.storage_sst_bytes);
        shard_gauge(registry, "storage_memtable_bytes", "The shard's memtables", all, |s| s.storage_memtable_bytes);
        shard_gauge(registry, "push_outbox_depth", "Push records waiting in the shard's outbox", all, |s| {
            s.outbox_depth
        });

        let depth = Family::<QueueLabels, Gauge>::default();
        for from in 0..all.len() {
            for to in 0..all.len() {
                if from != to {
                    let labels = QueueLabels { from: all[from].shard, to: all[to].shard };
                    depth.get_or_create(&labels).set(stats::queue_depth(all, from, to) as i64);
                }
            }
        }
        registry.register("mesh_queue_depth", "Cross-core messages queued from one shard to another", depth);

        let kinds = Family::<KindLabel, Counter>::default();
        for (index, kind) in MeshKind::ALL.iter().enumerate() {
            let count: u64 = all.iter().map(|stats| stats.mesh_sent_by_kind.get(index).copied().unwrap_or(0)).sum();
            kinds.get_or_create(&KindLabel { kind: kind.as_str() }).inc_by(count);
        }
        registry.register("mesh_messages", "Cross-core messages sent, by what they are for", kinds);

        let errors = Family::<CodeLabel, Counter>::default();
        for (index, code) in ERROR_CODES.iter().enumerate() {
            let count: u64 = all.iter().map(|stats| stats.errors.get(index).copied().unwrap_or(0)).sum();
            errors.get_or_create(&CodeLabel { code: code.as_str() }).inc_by(count);
        }
        registry.register("errors", "Errors answered to clients, by code", errors);

        let refused = Family::<ReasonLabel, Counter>::default();
        for reason in AcceptRefusal::ALL {
            let count: u64 =
                all.iter().map(|stats| stats.accepts_refused.get(reason.index()).copied().unwrap_or(0)).sum();
            refused.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc_by(count);
        }
        registry.register(
            "accepts_refused",
            "Accepted connections closed at once: descriptor reserve, or an HTTP connection cap",
            refused,
        );
        let http = Gauge::<i64>::default();
        http.set(process.http_connections as i64);
        registry.register("http_connections", "HTTP connections accepted and not yet ended or upgraded", http);
        let keys = Gauge::<i64>::default();
        keys.set(process.login_throttle_keys as i64);
        registry.register("login_throttle_keys", "Accounts and addresses the login throttle tracks", keys);
        let bytes = Gauge::<i64>::default();
        bytes.set(process.login_throttle_bytes as i64);
        registry.register_with_unit("login_throttle", "What the login throttle's table holds", Unit::Bytes, bytes);

        histogram(registry, "storage_write", "One group commit's RocksDB batch write", all, |s| &s.storage_write);
        histogram(registry, "group_commit", "A write's wait from the committer's queue until durable", all, |s| {
            &s.group_commit
        });
        histogram(
            registry,
            "fan_out",
            "From the owner taking a message until its frame is queued on a core hosting members",
            all,
            |s| &s.fan_out,
        );
        let cache = Gauge::<i64>::default();
        cache.set(process.block_cache_bytes as i64);
        registry.register(
            "storage_block_cache_bytes",
            "What the store's one block cache holds (uncompressed data, index and filter blocks)",
            cache,
        );
        let load = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        load.set(process.load);
        registry.register("load", "Busy fraction of the shards' cores over the last second", load);
    }
    let rss = Gauge::<i64>::default();
    rss.set(process.rss_bytes as i64);
    root.register_with_unit("process_resident_memory", "Resident memory of the process", Unit::Bytes, rss);
    let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    cpu.inc_by(process.cpu_seconds);
    root.register_with_unit("process_cpu", "CPU time used by the process", Unit::Seconds, cpu);

    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &root)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_in_the_text() {
        let mut first = ShardStats {
            shard: 0,
            connections: 3,
            errors: vec![0; ERROR_CODES.len()],
            mesh_sent: vec![0, 4],
            mesh_received: vec![0, 0],
            mesh_sent_by_kind: vec![3, 0, 1],
            ..ShardStats::default()
        };
        first.errors[0] = 2;
        first.accepts_refused = vec![0, 0, 3];
        // Two fast fan-outs on one core, one slow on the other: the buckets
        // are cumulative across bounds and add up to the count, not beyond.
        first.fan_out.counts[0] = 2;
        let mut second = ShardStats {
            shard: 1,
            connections: 5,
            errors: vec![0; ERROR_CODES.len()],
            mesh_sent: vec![0, 0],
            mesh_received: vec![1, 0],
            ..ShardStats::default()
        };
        second.fan_out.counts[11] = 1;
        let text = encode(
            &[first, second],
            ProcessFigures {
                rss_bytes: 1234,
                cpu_seconds: 1.5,
                load: 0.25,
                block_cache_bytes: 4096,
                http_connections: 7,
                login_throttle_keys: 2,
                login_throttle_bytes: 150,
            },
        )
        .unwrap();
        for needle in [
            "chatgw_connections{shard=\"0\"} 3",
            "chatgw_connections{shard=\"1\"} 5",
            "chatgw_mesh_queue_depth{from=\"0\",to=\"1\"} 3",
            "chatgw_mesh_messages_total{kind=\"send\"} 3",
            "chatgw_mesh_messages_total{kind=\"reply\"} 1",
            "chatgw_mesh_messages_total{kind=\"deliver\"} 0",
            "chatgw_errors_total{code=\"bad_request\"} 2",
            "chatgw_fan_out_seconds_bucket{le=\"5e-05\"} 2",
            "chatgw_fan_out_seconds_bucket{le=\"0.1\"} 2",
            "chatgw_fan_out_seconds_bucket{le=\"0.25\"} 3",
            "chatgw_fan_out_seconds_bucket{le=\"+Inf\"} 3",
            "chatgw_fan_out_seconds_count 3",
            "process_resident_memory_bytes 1234",
            "chatgw_load 0.25",
            "chatgw_storage_block_cache_bytes 4096",
            "chatgw_http_connections 7",
            "chatgw_login_throttle_keys 2",
            "chatgw_login_throttle_bytes 150",
            "chatgw_accepts_refused_total{reason=\"per_ip\"} 3",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
