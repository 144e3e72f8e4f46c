//! Column family names: the only place that builds them.
//!
//! One column family per shard holds everything that shard owns; `meta`
//! holds node-wide facts (the shard count, secrets).

use chatgw_idgen::ShardId;

/// The node-wide metadata column family.
pub const META: &str = "meta";

/// The column family of one shard: `shard-000`, `shard-001`, ...
pub fn shard(shard: ShardId) -> String {
    format!("shard-{:03}", shard.0)
}
