//! Storage's one error type. No RocksDB or rkyv type appears in it: the
//! engine's errors arrive as text, so callers depend on this crate alone.

use chatgw_idgen::ShardId;

/// Everything that can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine (RocksDB) failed: I/O, a full disk, a lock held by
    /// another process, corruption found by the engine itself.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A value did not validate as the record its key promises.
    #[error("corrupt {what} record at key {key_hex}: {reason}")]
    Corrupt {
        /// The kind of record.
        what: &'static str,
        /// The key, in hex.
        key_hex: String,
        /// What was wrong.
        reason: String,
    },
    /// A column family the store needs is missing.
    #[error("column family {0:?} is missing")]
    MissingColumnFamily(String),
    /// The shard is not one of this store's.
    #[error("shard {shard} does not exist (the store has {shards} shards)")]
    NoSuchShard {
        /// The shard asked for.
        shard: ShardId,
        /// How many shards the store has.
        shards: u16,
    },
    /// The store on disk was made with another shard count; data is placed
    /// by hash of the shard count, so it cannot be reopened with this one.
    #[error("the data directory holds {stored} shards but {configured} were configured")]
    ShardCountMismatch {
        /// Shards recorded on disk.
        stored: u16,
        /// Shards asked for now.
        configured: u16,
    },
    /// A read asked for a number of items outside what storage serves.
    #[error("limit {limit} is out of range 1..={max}")]
    InvalidLimit {
        /// The limit asked for.
        limit: usize,
        /// The largest limit served.
        max: usize,
    },
    /// A key part was too long or empty.
    #[error("{what} must be 1 to {max} bytes, got {len}")]
    InvalidKeyPart {
        /// The part of the key.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// The configuration makes no sense (zero shards, say).
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

impl From<rocksdb::Error> for StorageError {
    fn from(error: rocksdb::Error) -> Self {
        StorageError::Engine(error.into_string())
    }
}

/// Storage's result.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
