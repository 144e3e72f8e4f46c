//! Column family names: the only place that builds them.
//!
//! One column family per shard holds everything that shard owns; `meta`
//! holds node-wide facts (the shard count, secrets).

use chatgw_idgen::ShardId;
use rocksdb::{ColumnFamily, DB};

use crate::error::{Result, StorageError};

/// The node-wide metadata column family.
pub const META: &str = "meta";

/// The column family of one shard: `shard-000`, `shard-001`, ...
pub fn shard(shard: ShardId) -> String {
    format!("shard-{:03}", shard.0)
}

/// The column family of one of a store's `shards` shards.
pub(crate) fn shard_handle(db: &DB, shards: u16, shard: ShardId) -> Result<&ColumnFamily> {
    if shard.0 >= shards {
        return Err(StorageError::NoSuchShard { shard, shards });
    }
    let name = self::shard(shard);
    db.cf_handle(&name).ok_or(StorageError::MissingColumnFamily(name))
}
