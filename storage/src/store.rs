//! Opening the store, and every read.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    DBRawIterator, Options, ReadOptions, SliceTransform, WriteOptions, compaction_filter::Decision,
};

use crate::batch::{Batch, INBOX_CHANGE};
use crate::cf;
use crate::error::{Result, StorageError};
use crate::keys::{self, CLIENT_MSG_ID_BYTES_MAX, USERNAME_BYTES_MAX, check_key_part, tag};
use crate::model::{
    Change, ChangeKind, Channel, ChannelKind, DeadPush, DedupeEntry, InboxEntry, Message, OutboxEntry, PushDue,
    Settings, Unread, User, UserChannel,
};
use crate::record::{
    self, ArchivedChannelRecord, ArchivedDeadPushRecord, ArchivedDedupeRecord, ArchivedOutboxRecord,
    ArchivedUserRecord, MessageValue,
};

/// The most items one read returns; larger limits are refused.
pub const READ_LIMIT_MAX: usize = 10_000;
/// How long a `client_msg_id` is remembered: 24 hours.
pub const DEDUPE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

const META_SHARDS_KEY: &[u8] = b"shards";
const META_ID_LEASE_KEY: &[u8] = b"id-lease";

/// When a `send` is acknowledged, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// In the write-ahead log (the OS page cache): survives a process
    /// crash, not a power loss.
    #[default]
    Wal,
    /// In the write-ahead log and flushed to disk with fsync on each group
    /// commit: survives a power loss.
    Fsync,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The directory RocksDB lives in; made if missing.
    pub path: PathBuf,
    /// Shards, one column family each. Fixed for the life of the data.
    pub shards: u16,
    /// When writes count as done.
    pub durability: Durability,
    /// The block cache shared by every column family, in bytes.
    pub block_cache_bytes: usize,
    /// Memtable size per column family, in bytes.
    pub write_buffer_bytes: usize,
    /// Whether table files are compressed (LZ4, Zstd at the bottom). Off
    /// only where a test reads the files' bytes itself.
    pub compression: bool,
}

impl StoreConfig {
    /// Defaults for `shards` shards under `path`: 256 MiB of block cache,
    /// 64 MiB memtables, `wal` durability.
    pub fn new(path: impl Into<PathBuf>, shards: u16) -> Self {
        StoreConfig {
            path: path.into(),
            shards,
            durability: Durability::Wal,
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            compression: true,
        }
    }
}

/// One RocksDB instance for the node: a column family per shard plus `meta`.
///
/// `Store` is `Send + Sync`: any core may read any shard. Writes to a
/// shard's keys come only from the core that owns them (the gateway keeps
/// that rule); storage itself takes no lock of its own.
pub struct Store {
    db: DB,
    shards: u16,
    write_options: WriteOptions,
    durability: Durability,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .field("shards", &self.shards)
            .field("durability", &self.durability)
            .finish()
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// Drops dedupe records older than [`DEDUPE_TTL_MS`] during compaction;
/// reads check the age too, so expiry does not wait for compaction.
fn dedupe_expiry(_level: u32, key: &[u8], value: &[u8]) -> Decision {
    if key.first() != Some(&tag::DEDUPE) {
        return Decision::Keep;
    }
    match record::access::<ArchivedDedupeRecord>("dedupe", key, value) {
        Ok(dedupe) if dedupe.created_at_ms.to_native() + DEDUPE_TTL_MS < now_unix_ms() => Decision::Remove,
        _ => Decision::Keep,
    }
}

/// The memtable size of the column families that are not shards.
fn small_cf_write_buffer(config: &StoreConfig) -> usize {
    config.write_buffer_bytes.min(RESUME_FREE_BYTES)
}

/// How much free space RocksDB waits for before it resumes writes after a
/// full disk. It reserves the largest memtable size the database is
/// opened with (`SstFileManager::ReserveDiskBuffer`, checked every 5 s),
/// and the rust crate has no `DB::Resume` to resume sooner; so the shards'
/// column families open with memtables of at most this size and are set to
/// the configured size right after (`Store::open`). With 64 MiB memtables,
/// whose log RocksDB also preallocates at 1.1 times that, a 96 MiB disk
/// never had the 64 MiB free again and refused writes until a restart.
const RESUME_FREE_BYTES: usize = 4 << 20;

/// The shards' memtable size to open with: see [`RESUME_FREE_BYTES`].
fn opening_write_buffer(config: &StoreConfig) -> usize {
    config.write_buffer_bytes.min(RESUME_FREE_BYTES)
}

fn shard_options(config: &StoreConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    // Partitioned filters and a two-level index: a table of millions of
    // small keys (inbox entries) has a filter of megabytes, larger than a
    // block-cache shard, which would then be read from disk and checksummed
    // again on every point read. In partitions of about 4 KiB each piece
    // stays cached; the small top levels are pinned.
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4 << 10);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_optimize_filters_for_memory(true);
    table.set_format_version(5);
    // A latest-50 read of 200-byte messages spans ~12 KiB: one or two
    // 16 KiB blocks rather than three or four of the default 4 KiB.
    table.set_block_size(16 << 10);
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options.set_prefix_extractor(SliceTransform::create_fixed_prefix(keys::PREFIX_BYTES));
    options.set_memtable_prefix_bloom_ratio(0.1);
    if config.compression {
        options.set_compression_type(DBCompressionType::Lz4);
        options.set_bottommost_compression_type(DBCompressionType::Zstd);
    } else {
        options.set_compression_type(DBCompressionType::None);
        options.set_bottommost_compression_type(DBCompressionType::None);
    }
    options.set_level_compaction_dynamic_level_bytes(true);
    options.set_write_buffer_size(opening_write_buffer(config));
    // The arena's block size is derived from the memtable size at open:
    // the one the configured size would give (an eighth, at most 1 MiB).
    options.set_arena_block_size((config.write_buffer_bytes / 8).clamp(4 << 10, 1 << 20));
    options.set_compaction_filter("chatgw-dedupe-expiry", dedupe_expiry);
    options
}

impl Store {
    /// Opens (or creates) the store described by `config`.
    pub fn open(config: &StoreConfig) -> Result<Store> {
        if config.shards == 0 {
            return Err(StorageError::Config("at least one shard is needed".into()));
        }
        std::fs::create_dir_all(&config.path)
            .map_err(|error| StorageError::Engine(format!("creating {}: {error}", config.path.display())))?;
        // The store holds the token secrets and every message: its owner
        // only, whatever the umask made of it.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.path, std::fs::Permissions::from_mode(0o700)).map_err(|error| {
                StorageError::Engine(format!("making {} private (0700): {error}", config.path.display()))
            })?;
        }
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut db_options = Options::default();
        // Compaction runs at the lowest CPU and I/O priority: on a machine
        // whose every core runs a shard, it takes idle time instead of
        // delaying messages (which stalled them for tens of ms at 20,000
        // msg/s on two cores). Flushes keep their priority: a late flush
        // would stall writes.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_thread_pool_io_priority();
        db_options.set_env(&env);
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.increase_parallelism(std::thread::available_parallelism().map_or(2, |n| n.get() as i32));
        db_options.set_max_background_jobs(4);
        // The meta and default column families hold a few small keys: small
        // memtables. (After a full disk, RocksDB resumes writes only once
        // the largest memtable's size is free: it must not be 64 MiB for
        // them.)
        db_options.set_write_buffer_size(small_cf_write_buffer(config));

        // Open with every column family already on disk (RocksDB insists)
        // plus the ones this configuration needs.
        let mut names: Vec<String> = DB::list_cf(&db_options, &config.path).unwrap_or_default();
        names.push(cf::META.to_string());
        // Named, so that it gets the small options too (left out, it would be
        // opened with the defaults).
        names.push(rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_string());
        names.extend((0..config.shards).map(|shard| cf::shard(ShardId(shard))));
        names.sort();
        names.dedup();
        let descriptors = names.iter().map(|name| {
            let options = if name.starts_with("shard-") {
                shard_options(config, &cache)
            } else {
                let mut options = Options::default();
                options.set_write_buffer_size(small_cf_write_buffer(config));
                options
            };
            ColumnFamilyDescriptor::new(name, options)
        });
        let db = DB::open_cf_descriptors(&db_options, &config.path, descriptors)?;

        let mut write_options = WriteOptions::default();
        write_options.set_sync(config.durability == Durability::Fsync);
        let store = Store { db, shards: config.shards, write_options, durability: config.durability };
        store.check_shard_count()?;
        if opening_write_buffer(config) < config.write_buffer_bytes {
            let size = config.write_buffer_bytes.to_string();
            for shard in 0..config.shards {
                store.db.set_options_cf(store.shard_cf(ShardId(shard))?, &[("write_buffer_size", size.as_str())])?;
            }
        }
        Ok(store)
    }

    /// Records the shard count at first open and refuses another later.
    fn check_shard_count(&self) -> Result<()> {
        let meta = self.meta_cf()?;
        match self.db.get_pinned_cf(meta, META_SHARDS_KEY)? {
            Some(bytes) => {
                let stored =
                    <[u8; 2]>::try_from(&bytes[..]).map(u16::from_be_bytes).map_err(|_| StorageError::Corrupt {
                        what: "shard count",
                        key_hex: keys::hex(META_SHARDS_KEY),
                        reason: format!("{} bytes, expected 2", bytes.len()),
                    })?;
                if stored != self.shards {
                    return Err(StorageError::ShardCountMismatch { stored, configured: self.shards });
                }
            }
            None => {
                let mut options = WriteOptions::default();
                options.set_sync(true);
                self.db.put_cf_opt(meta, META_SHARDS_KEY, self.shards.to_be_bytes(), &options)?;
            }
        }
        Ok(())
    }

    /// How many shards the store has.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The durability writes are made with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub(crate) fn shard_cf(&self, shard: ShardId) -> Result<&ColumnFamily> {
        cf::shard_handle(&self.db, self.shards, shard)
    }

    fn meta_cf(&self) -> Result<&ColumnFamily> {
        self.db.cf_handle(cf::META).ok_or_else(|| StorageError::MissingColumnFamily(cf::META.into()))
    }

    /// A new, empty write batch against this store.
    pub fn batch(&self) -> Batch<'_> {
        Batch::new(&self.db, self.shards)
    }

    /// Writes `batch` atomically (every shard it touches, or none): into
    /// the WAL, and with [`Durability::Fsync`] synced to disk, before it
    /// returns. One call is one group commit.
    pub fn write(&self, batch: Batch<'_>) -> Result<()> {
        let inner = batch.into_inner();
        if inner.is_empty() {
            return Ok(());
        }
        self.db.write_opt(inner, &self.write_options)?;
        Ok(())
    }

    // ---- meta ----

    /// A node-wide metadata value (secrets and such).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.meta_cf()?, format!("x/{key}"))?)
    }

    /// Sets a node-wide metadata value, synced to disk.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.put_cf_opt(self.meta_cf()?, format!("x/{key}"), value, &options)?)
    }

    /// The node's id lease: an id the node promised its id generators
    /// resume above after a restart (the gateway raises it before it hands
    /// out a sync cursor past it). `None` until first set.
    pub fn id_lease(&self) -> Result<Option<MessageId>> {
        match self.db.get_pinned_cf(self.meta_cf()?, META_ID_LEASE_KEY)? {
            Some(value) => {
                let bytes = <[u8; 8]>::try_from(&value[..]).map_err(|_| StorageError::Corrupt {
                    what: "id lease",
                    key_hex: keys::hex(META_ID_LEASE_KEY),
                    reason: format!("{} bytes, expected 8", value.len()),
                })?;
                Ok(Some(MessageId(u64::from_be_bytes(bytes))))
            }
            None => Ok(None),
        }
    }

    /// Sets the node's id lease, synced to disk before it returns (whatever
    /// the store's durability: a cursor handed out above a lease that a
    /// power loss took back could hide later ids for good).
    pub fn set_id_lease(&self, lease: MessageId) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.put_cf_opt(self.meta_cf()?, META_ID_LEASE_KEY, lease.0.to_be_bytes(), &options)?)
    }

    // ---- messages ----

    fn check_limit(limit: usize) -> Result<()> {
        if limit == 0 || limit > READ_LIMIT_MAX {
            return Err(StorageError::InvalidLimit { limit, max: READ_LIMIT_MAX });
        }
        Ok(())
    }

    fn range_iterator(&self, shard: ShardId, tag: u8, id: u64) -> Result<DBRawIterator<'_>> {
        let cf = self.shard_cf(shard)?;
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(keys::prefix(tag, id).to_vec());
        options.set_iterate_upper_bound(keys::prefix_end(tag, id));
        options.set_prefix_same_as_start(true);
        Ok(self.db.raw_iterator_cf_opt(cf, options))
    }

    fn decode_message(channel: ChannelId, key: &[u8], value: &[u8]) -> Result<Message> {
        let id = keys::suffix_id(key).ok_or_else(|| StorageError::Corrupt {
            what: "message key",
            key_hex: keys::hex(key),
            reason: "not 17 bytes".into(),
        })?;
        let when = |ms: u64| (ms != 0).then_some(ms);
        Ok(match record::access_message(key, value)? {
            MessageValue::First(archived) => Message {
                id: MessageId(id),
                channel_id: channel,
                sender_id: UserId(archived.sender_id.to_native()),
                created_at_ms: archived.created_at_ms.to_native(),
                client_msg_id: archived.client_msg_id.as_ref().map(|id| id.as_str().to_owned()),
                text: archived.text.as_str().to_owned(),
                edited_at_ms: None,
                deleted_at_ms: None,
            },
            MessageValue::Changed(archived) => Message {
                id: MessageId(id),
                channel_id: channel,
                sender_id: UserId(archived.sender_id.to_native()),
                created_at_ms: archived.created_at_ms.to_native(),
                client_msg_id: archived.client_msg_id.as_ref().map(|id| id.as_str().to_owned()),
                text: archived.text.as_str().to_owned(),
                edited_at_ms: when(archived.edited_at_ms.to_native()),
                deleted_at_ms: when(archived.deleted_at_ms.to_native()),
            },
        })
    }

    /// Walks messages of `channel` from `start` (a message id, inclusive)
    /// forward or backward, up to `limit`, in walk order.
    fn walk_messages(
        &self,
        shard: ShardId,
        channel: ChannelId,
        start: u64,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let mut iterator = self.range_iterator(shard, tag::MESSAGE, channel.0)?;
        let start_key = keys::message(channel, MessageId(start));
        if forward {
            iterator.seek(start_key);
        } else {
            iterator.seek_for_prev(start_key);
        }
        let mut messages = Vec::with_capacity(limit.min(256));
        while messages.len() < limit && iterator.valid() {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else { break };
            messages.push(Self::decode_message(channel, key, value)?);
            if forward {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        Ok(messages)
    }

    /// The newest `limit` messages of `channel`, in ascending id order.
    pub fn latest(&self, shard: ShardId, channel: ChannelId, limit: usize) -> Result<Vec<Message>> {
        Self::check_limit(limit)?;
        let mut messages = self.walk_messages(shard, channel, u64::MAX, false, limit)?;
        messages.reverse();
        Ok(messages)
    }

    /// The newest `limit` messages with ids below `before`, ascending.
    pub fn before(&self, shard: ShardId, channel: ChannelId, before: MessageId, limit: usize) -> Result<Vec<Message>> {
        Self::check_limit(limit)?;
        let Some(start) = before.0.checked_sub(1) else { return Ok(Vec::new()) };
        let mut messages = self.walk_messages(shard, channel, start, false, limit)?;
        messages.reverse();
        Ok(messages)
    }

    /// The oldest `limit` messages with ids above `after`, ascending.
    pub fn after(&self, shard: ShardId, channel: ChannelId, after: MessageId, limit: usize) -> Result<Vec<Message>> {
        Self::check_limit(limit)?;
        let Some(start) = after.0.checked_add(1) else { return Ok(Vec::new()) };
        self.walk_messages(shard, channel, start, true, limit)
    }

    /// Up to `limit` messages around `around`, ascending: up to half of
    /// them older than it, the rest from it on (itself included if it
    /// exists); a short side is made up from the other.
    pub fn around(&self, shard: ShardId, channel: ChannelId, around: MessageId, limit: usize) -> Result<Vec<Message>> {
        let ids = self.ids_around(shard, channel, around, limit)?;
        match (ids.first(), ids.len()) {
            (Some(first), count) => self.walk_messages(shard, channel, first.0, true, count),
            (None, _) => Ok(Vec::new()),
        }
    }

    /// The ids `around` returns, ascending, chosen from keys alone (so only
    /// the chosen messages are loaded): up to half of `limit` older than
    /// `around`, the rest from it on; a short side is made up from the other.
    pub fn ids_around(
        &self,
        shard: ShardId,
        channel: ChannelId,
        around: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageId>> {
        Self::check_limit(limit)?;
        let older_wanted = limit / 2;
        let older = match around.0.checked_sub(1) {
            Some(start) => self.message_ids(shard, channel, MessageId(start), MessageId(0), limit)?,
            None => Vec::new(),
        };
        let newer = self.message_ids(shard, channel, around, MessageId(u64::MAX), limit)?;
        // Take `older_wanted` from the older side unless the newer side is short.
        let take_newer = newer.len().min(limit - older_wanted.min(older.len()));
        let take_older = older.len().min(limit - take_newer);
        let mut ids: Vec<MessageId> = older.into_iter().take(take_older).collect();
        ids.reverse();
        ids.extend(newer.into_iter().take(take_newer));
        Ok(ids)
    }

    /// Ids of up to `limit` messages of `channel` from `start` to `end`
    /// (both inclusive), read from the keys alone: no value is decoded or
    /// copied, so a reader can choose what it will load before it loads it.
    /// Ascending when `start <= end`, else descending.
    pub fn message_ids(
        &self,
        shard: ShardId,
        channel: ChannelId,
        start: MessageId,
        end: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageId>> {
        self.ids_in_range(shard, tag::MESSAGE, "message key", channel, start, end, limit)
    }

    /// Ids of up to `limit` keys `tag | channel | id` from `start` to `end`
    /// (both inclusive), from the keys alone; ascending when `start <=
    /// end`, else descending. What `message_ids` and `change_ids` read.
    #[allow(clippy::too_many_arguments)]
    fn ids_in_range(
        &self,
        shard: ShardId,
        tag: u8,
        what: &'static str,
        channel: ChannelId,
        start: MessageId,
        end: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageId>> {
        Self::check_limit(limit)?;
        let forward = start <= end;
        let mut iterator = self.range_iterator(shard, tag, channel.0)?;
        let start_key = keys::channel_id_key(tag, channel, start);
        if forward {
            iterator.seek(start_key);
        } else {
            iterator.seek_for_prev(start_key);
        }
        let mut ids = Vec::with_capacity(limit.min(256));
        while ids.len() < limit && iterator.valid() {
            let Some(key) = iterator.key() else { break };
            let id = keys::suffix_id(key).ok_or_else(|| StorageError::Corrupt {
                what,
                key_hex: keys::hex(key),
                reason: "not 17 bytes".into(),
            })?;
            if (forward && id > end.0) || (!forward && id < end.0) {
                break;
            }
            ids.push(MessageId(id));
            if forward {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        Ok(ids)
    }

    /// One message, if stored.
    pub fn message(&self, shard: ShardId, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        let key = keys::message(channel, id);
        match self.db.get_pinned_cf(self.shard_cf(shard)?, key)? {
            Some(value) => Self::decode_message(channel, &key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// One change of a channel's message, if stored.
    pub fn change(&self, shard: ShardId, channel: ChannelId, id: MessageId) -> Result<Option<Change>> {
        let key = keys::change(channel, id);
        let Some(value) = self.db.get_pinned_cf(self.shard_cf(shard)?, key)? else { return Ok(None) };
        let corrupt =
            |reason: &str| StorageError::Corrupt { what: "change", key_hex: keys::hex(&key), reason: reason.into() };
        let value = <[u8; 9]>::try_from(&value[..]).map_err(|_| corrupt("value not 9 bytes"))?;
        let kind = match value[8] {
            1 => ChangeKind::Edited,
            2 => ChangeKind::Deleted,
            _ => return Err(corrupt("unknown kind")),
        };
        let message = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
        Ok(Some(Change { id, channel_id: channel, message_id: MessageId(message), kind }))
    }

    /// Ids of up to `limit` changes of `channel` from `start` to `end`
    /// (both inclusive, `start <= end`), ascending, from the keys alone.
    pub fn change_ids(
        &self,
        shard: ShardId,
        channel: ChannelId,
        start: MessageId,
        end: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageId>> {
        Self::check_limit(limit)?;
        if start > end {
            // Changes are read ascending only.
            return Ok(Vec::new());
        }
        self.ids_in_range(shard, tag::CHANGE, "change key", channel, start, end, limit)
    }

    /// A member's read pointer in a channel, if it has one.
    pub fn read_pointer(&self, shard: ShardId, channel: ChannelId, user: UserId) -> Result<Option<MessageId>> {
        let key = keys::read_pointer(channel, user);
        match self.db.get_pinned_cf(self.shard_cf(shard)?, key)? {
            Some(value) => id_from(&value, &key, "read pointer").map(|id| Some(MessageId(id))),
            None => Ok(None),
        }
    }

    /// A user's settings (the defaults if never set).
    pub fn settings(&self, shard: ShardId, user: UserId) -> Result<Settings> {
        let key = keys::settings(user);
        match self.db.get_pinned_cf(self.shard_cf(shard)?, key)?.as_deref() {
            None => Ok(Settings::default()),
            Some([flags]) => Ok(Settings { private_reads: flags & 1 != 0 }),
            Some(other) => Err(StorageError::Corrupt {
                what: "settings",
                key_hex: keys::hex(&key),
                reason: format!("{} bytes, expected 1", other.len()),
            }),
        }
    }

    /// What `channel`'s messages after `after` hold for `user` (named
    /// `username`): those not its own and not deleted, and those of them
    /// whose text mentions `@username`, reading at most `max` messages (so
    /// each count stops at `max`). Values are read in place, never copied.
    pub fn unread(
        &self,
        shard: ShardId,
        channel: ChannelId,
        user: UserId,
        username: &str,
        after: MessageId,
        max: usize,
    ) -> Result<Unread> {
        Self::check_limit(max)?;
        let mut unread = Unread::default();
        let Some(start) = after.0.checked_add(1) else { return Ok(unread) };
        let mut iterator = self.range_iterator(shard, tag::MESSAGE, channel.0)?;
        iterator.seek(keys::message(channel, MessageId(start)));
        let mut read = 0;
        while read < max && iterator.valid() {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else { break };
            read += 1;
            let (sender, text, deleted) = match record::access_message(key, value)? {
                MessageValue::First(archived) => (archived.sender_id.to_native(), archived.text.as_str(), false),
                MessageValue::Changed(archived) => {
                    (archived.sender_id.to_native(), archived.text.as_str(), archived.deleted_at_ms.to_native() != 0)
                }
            };
            if sender != user.0 && !deleted {
                unread.messages += 1;
                if mentions(text, username) {
                    unread.mentions += 1;
                }
            }
            iterator.next();
        }
        iterator.status()?;
        Ok(unread)
    }

    /// The newest message id of `channel`, if it has any.
    pub fn last_message_id(&self, shard: ShardId, channel: ChannelId) -> Result<Option<MessageId>> {
        let mut iterator = self.range_iterator(shard, tag::MESSAGE, channel.0)?;
        iterator.seek_for_prev(keys::message(channel, MessageId(u64::MAX)));
        let id = if iterator.valid() { iterator.key().and_then(keys::suffix_id).map(MessageId) } else { None };
        iterator.status()?;
        Ok(id)
    }

    /// The largest message id the shard has stored (its high-water mark),
    /// for resuming its id generator after a restart.
    pub fn high_water(&self, shard: ShardId) -> Result<Option<MessageId>> {
        let key = keys::high_water();
        match self.db.get_pinned_cf(self.shard_cf(shard)?, key)? {
            Some(value) => {
                let bytes = <[u8; 8]>::try_from(&value[..]).map_err(|_| StorageError::Corrupt {
                    what: "high-water mark",
                    key_hex: keys::hex(&key),
                    reason: format!("{} bytes, expected 8", value.len()),
                })?;
                Ok(Some(MessageId(u64::from_be_bytes(bytes))))
            }
            None => Ok(None),
        }
    }

    // ---- inbox ----

    /// The user's inbox entries with ids above `since`, ascending, up to `limit`.
    pub fn inbox_after(&self, shard: ShardId, user: UserId, since: MessageId, limit: usize) -> Result<Vec<InboxEntry>> {
        Self::check_limit(limit)?;
        let Some(start) = since.0.checked_add(1) else { return Ok(Vec::new()) };
        let mut iterator = self.range_iterator(shard, tag::INBOX, user.0)?;
        iterator.seek(keys::inbox(user, MessageId(start)));
        let mut entries = Vec::with_capacity(limit.min(1024));
        while entries.len() < limit && iterator.valid() {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else { break };
            let corrupt = |reason: &str| StorageError::Corrupt {
                what: "inbox entry",
                key_hex: keys::hex(key),
                reason: reason.into(),
            };
            let message_id = keys::suffix_id(key).ok_or_else(|| corrupt("key not 17 bytes"))?;
            let change = match value.get(8) {
                None => false,
                Some(&INBOX_CHANGE) if value.len() == 9 => true,
                Some(_) => return Err(corrupt("value not 8 bytes, nor 9 for a change")),
            };
            let channel = value.get(..8).and_then(|bytes| <[u8; 8]>::try_from(bytes).ok());
            let channel = channel.ok_or_else(|| corrupt("value shorter than 8 bytes"))?;
            entries.push(InboxEntry {
                message_id: MessageId(message_id),
                channel_id: ChannelId(u64::from_be_bytes(channel)),
                change,
            });
            iterator.next();
        }
        iterator.status()?;
        Ok(entries)
    }

    // ---- channels ----

    /// A channel, if it exists.
    pub fn channel(&self, shard: ShardId, id: ChannelId) -> Result<Option<Channel>> {
        let key = keys::channel(id);
        let Some(value) = self.db.get_pinned_cf(self.shard_cf(shard)?, key)? else { return Ok(None) };
        let archived = record::access::<ArchivedChannelRecord>("channel", &key, &value)?;
        let kind = match archived.kind {
            0 => ChannelKind::Direct,
            1 => ChannelKind::Group,
            other => {
                return Err(StorageError::Corrupt {
                    what: "channel",
                    key_hex: keys::hex(&key),
                    reason: format!("unknown kind {other}"),
                });
            }
        };
        Ok(Some(Channel {
            id,
            name: archived.name.as_str().to_owned(),
            kind,
            owner_id: UserId(archived.owner_id.to_native()),
            created_at_ms: archived.created_at_ms.to_native(),
            fan_out_on_read: archived.fan_out_on_read,
        }))
    }

    /// Walks the 17-byte keys under (tag, id), giving each key's trailing
    /// id and its value to `visit`.
    fn for_each_suffix(
        &self,
        shard: ShardId,
        tag: u8,
        id: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.for_each_suffix_from(shard, tag, id, 0, usize::MAX, |suffix, value| {
            visit(suffix, value).map(ControlFlow::Continue)
        })
    }

    /// Walks at most `limit` of the 17-byte keys under (tag, id) whose
    /// trailing id is at least `from`, as `for_each_suffix` does, and
    /// stops early where `visit` says `Break`.
    fn for_each_suffix_from(
        &self,
        shard: ShardId,
        tag: u8,
        id: u64,
        from: u64,
        limit: usize,
        mut visit: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let mut iterator = self.range_iterator(shard, tag, id)?;
        let mut start = keys::prefix(tag, id).to_vec();
        start.extend_from_slice(&from.to_be_bytes());
        iterator.seek(start);
        let mut visited = 0;
        while visited < limit && iterator.valid() {
            visited += 1;
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else { break };
            let suffix = keys::suffix_id(key).ok_or_else(|| StorageError::Corrupt {
                what: "index key",
                key_hex: keys::hex(key),
                reason: "not 17 bytes".into(),
            })?;
            if visit(suffix, value)?.is_break() {
                return Ok(());
            }
            iterator.next();
        }
        iterator.status()?;
        Ok(())
    }

    /// Every member of a channel, in id order.
    pub fn members(&self, shard: ShardId, channel: ChannelId) -> Result<Vec<UserId>> {
        let mut members = Vec::new();
        self.for_each_suffix(shard, tag::MEMBER, channel.0, |user, _| {
            members.push(UserId(user));
            Ok(())
        })?;
        Ok(members)
    }

    /// At most `limit` members of a channel with ids at or above `from`, in
    /// id order (a page: the next starts one above the last returned).
    pub fn members_from(&self, shard: ShardId, channel: ChannelId, from: UserId, limit: usize) -> Result<Vec<UserId>> {
        let mut members = Vec::new();
        self.for_each_suffix_from(shard, tag::MEMBER, channel.0, from.0, limit, |user, _| {
            members.push(UserId(user));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(members)
    }

    /// Whether `user` is a member of `channel` (a point read).
    pub fn is_member(&self, shard: ShardId, channel: ChannelId, user: UserId) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.shard_cf(shard)?, keys::member(channel, user))?.is_some())
    }

    /// Every channel of a user, in channel id order.
    pub fn user_channels(&self, shard: ShardId, user: UserId) -> Result<Vec<UserChannel>> {
        self.user_channels_from(shard, user, 0, usize::MAX)
    }

    /// At most `limit` of a user's channels with ids above `after` (all of
    /// them from the first with `None`), in id order.
    pub fn user_channels_after(
        &self,
        shard: ShardId,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<UserChannel>> {
        Self::check_limit(limit)?;
        match after.map_or(Some(0), |after| after.0.checked_add(1)) {
            Some(from) => self.user_channels_from(shard, user, from, limit),
            None => Ok(Vec::new()),
        }
    }

    /// How many channels the user is in, counted up to `up_to` (a key scan
    /// that stops there: enough to tell whether a cap is reached).
    pub fn user_channel_count(&self, shard: ShardId, user: UserId, up_to: usize) -> Result<usize> {
        let mut count = 0;
        self.for_each_suffix_from(shard, tag::USER_CHANNEL, user.0, 0, up_to, |_, _| {
            count += 1;
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(count)
    }

    /// Whether any channel of `user` passes `wanted`: a key scan, in
    /// channel id order, that stops at the first that does.
    pub fn any_user_channel(
        &self,
        shard: ShardId,
        user: UserId,
        mut wanted: impl FnMut(ChannelId) -> bool,
    ) -> Result<bool> {
        let mut found = false;
        self.for_each_suffix_from(shard, tag::USER_CHANNEL, user.0, 0, usize::MAX, |channel, _| {
            found = wanted(ChannelId(channel));
            Ok(if found { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })?;
        Ok(found)
    }

    fn user_channels_from(&self, shard: ShardId, user: UserId, from: u64, limit: usize) -> Result<Vec<UserChannel>> {
        let mut channels = Vec::new();
        self.for_each_suffix_from(shard, tag::USER_CHANNEL, user.0, from, limit, |channel, flags| {
            channels.push(UserChannel { channel_id: ChannelId(channel), fan_out_on_read: flags.first() == Some(&1) });
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(channels)
    }

    /// A user's token version (0 until first raised).
    pub fn token_version(&self, shard: ShardId, user: UserId) -> Result<u64> {
        Ok(self.get_id(shard, &keys::token_version(user), "token version")?.unwrap_or(0))
    }

    /// The direct channel of a pair of users, in either order.
    pub fn direct_channel(&self, shard: ShardId, first: UserId, second: UserId) -> Result<Option<ChannelId>> {
        self.get_id(shard, &keys::direct(first, second), "direct channel").map(|id| id.map(ChannelId))
    }

    fn get_id(&self, shard: ShardId, key: &[u8], what: &'static str) -> Result<Option<u64>> {
        match self.db.get_pinned_cf(self.shard_cf(shard)?, key)? {
            Some(value) => id_from(&value, key, what).map(Some),
            None => Ok(None),
        }
    }

    // ---- users ----

    /// A user by id.
    pub fn user(&self, shard: ShardId, id: UserId) -> Result<Option<User>> {
        let key = keys::user(id);
        let Some(value) = self.db.get_pinned_cf(self.shard_cf(shard)?, key)? else { return Ok(None) };
        user_from(id, &key, &value).map(Some)
    }

    /// A user by id together with its token version (0 until first
    /// raised), both read from one snapshot: what a login verifies against
    /// and the version it signs with come from the same moment, so a
    /// password change (which writes the hash and the raised version in
    /// one batch) is either wholly before the read or wholly after it.
    pub fn user_and_token_version(&self, shard: ShardId, id: UserId) -> Result<Option<(User, u64)>> {
        let cf = self.shard_cf(shard)?;
        let snapshot = self.db.snapshot();
        let user_key = keys::user(id);
        let Some(value) = snapshot.get_pinned_cf(cf, user_key)? else { return Ok(None) };
        let user = user_from(id, &user_key, &value)?;
        let version_key = keys::token_version(id);
        let version = match snapshot.get_pinned_cf(cf, version_key)? {
            Some(value) => id_from(&value, &version_key, "token version")?,
            None => 0,
        };
        Ok(Some((user, version)))
    }

    /// A user's id by username.
    pub fn user_id_by_name(&self, shard: ShardId, username: &str) -> Result<Option<UserId>> {
        check_key_part("username", username, USERNAME_BYTES_MAX)?;
        self.get_id(shard, &keys::username(username), "username index").map(|id| id.map(UserId))
    }

    // ---- dedupe ----

    /// What `client_msg_id` from `sender` was first answered with, unless
    /// that was more than 24 hours before `now_ms`.
    pub fn dedupe(
        &self,
        shard: ShardId,
        sender: UserId,
        client_msg_id: &str,
        now_ms: u64,
    ) -> Result<Option<DedupeEntry>> {
        check_key_part("client_msg_id", client_msg_id, CLIENT_MSG_ID_BYTES_MAX)?;
        let key = keys::dedupe(sender, client_msg_id);
        let Some(value) = self.db.get_pinned_cf(self.shard_cf(shard)?, &key)? else { return Ok(None) };
        let archived = record::access::<ArchivedDedupeRecord>("dedupe", &key, &value)?;
        let entry = DedupeEntry {
            channel_id: ChannelId(archived.channel_id.to_native()),
            message_id: MessageId(archived.message_id.to_native()),
            created_at_ms: archived.created_at_ms.to_native(),
        };
        Ok((entry.created_at_ms + DEDUPE_TTL_MS >= now_ms).then_some(entry))
    }

    // ---- outbox ----

    /// Reads at most `limit` of the 9-byte keys `tag | id` with ids above
    /// `after`, in id order, each made into a `T` by `decode` (its id, key
    /// and value).
    fn read_ids_after<T>(
        &self,
        shard: ShardId,
        tag: u8,
        what: &'static str,
        after: u64,
        limit: usize,
        mut decode: impl FnMut(u64, &[u8], &[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        Self::check_limit(limit)?;
        let Some(start) = after.checked_add(1) else { return Ok(Vec::new()) };
        let cf = self.shard_cf(shard)?;
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(vec![tag + 1]);
        options.set_total_order_seek(true);
        let mut iterator = self.db.raw_iterator_cf_opt(cf, options);
        iterator.seek(keys::prefix(tag, start));
        let mut found = Vec::new();
        while found.len() < limit && iterator.valid() {
            let (Some(key), Some(value)) = (iterator.key(), iterator.value()) else { break };
            let id = <[u8; 8]>::try_from(&key[1..]).map(u64::from_be_bytes).map_err(|_| StorageError::Corrupt {
                what,
                key_hex: keys::hex(key),
                reason: "not 9 bytes".into(),
            })?;
            found.push(decode(id, key, value)?);
            iterator.next();
        }
        iterator.status()?;
        Ok(found)
    }

    /// Outbox entries with push ids above `after`, in order, up to `limit`.
    pub fn outbox(&self, shard: ShardId, after: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        self.read_ids_after(shard, tag::OUTBOX, "outbox key", after, limit, |push_id, key, value| {
            let archived = record::access::<ArchivedOutboxRecord>("outbox", key, value)?;
            Ok(OutboxEntry {
                push_id,
                user_id: UserId(archived.user_id.to_native()),
                channel_id: ChannelId(archived.channel_id.to_native()),
                message_id: MessageId(archived.message_id.to_native()),
                created_at_ms: archived.created_at_ms.to_native(),
            })
        })
    }

    /// Dead pushes with push ids above `after`, in order, up to `limit`.
    pub fn dead_pushes(&self, shard: ShardId, after: u64, limit: usize) -> Result<Vec<DeadPush>> {
        self.read_ids_after(shard, tag::DEAD_PUSH, "dead push key", after, limit, |push_id, key, value| {
            let archived = record::access::<ArchivedDeadPushRecord>("dead push", key, value)?;
            Ok(DeadPush {
                entry: OutboxEntry {
                    push_id,
                    user_id: UserId(archived.user_id.to_native()),
                    channel_id: ChannelId(archived.channel_id.to_native()),
                    message_id: MessageId(archived.message_id.to_native()),
                    created_at_ms: archived.created_at_ms.to_native(),
                },
                failed_at_ms: archived.failed_at_ms.to_native(),
                status: archived.status.to_native(),
            })
        })
    }

    /// A shard's pending push checks of messages above `after`, oldest
    /// first, up to `limit`.
    pub fn pushes_due(&self, shard: ShardId, after: MessageId, limit: usize) -> Result<Vec<PushDue>> {
        self.read_ids_after(shard, tag::PUSH_DUE, "pending push check key", after.0, limit, |message, key, value| {
            let value = <[u8; 16]>::try_from(value).map_err(|_| StorageError::Corrupt {
                what: "pending push check",
                key_hex: keys::hex(key),
                reason: "value not 16 bytes".into(),
            })?;
            let (channel, sender) = value.split_at(8);
            Ok(PushDue {
                message_id: MessageId(message),
                channel_id: ChannelId(u64::from_be_bytes(channel.try_into().expect("8 bytes"))),
                sender_id: UserId(u64::from_be_bytes(sender.try_into().expect("8 bytes"))),
            })
        })
    }

    /// A shard's bytes in SST files on disk and in memtables.
    pub fn shard_sizes(&self, shard: ShardId) -> Result<(u64, u64)> {
        let cf = self.shard_cf(shard)?;
        let sst = self.db.property_int_value_cf(cf, "rocksdb.total-sst-files-size")?.unwrap_or(0);
        let memtables = self.db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")?.unwrap_or(0);
        Ok((sst, memtables))
    }

    /// The bytes the block cache holds now (one cache for every column
    /// family: uncompressed data blocks, and index and filter blocks).
    pub fn block_cache_bytes(&self) -> Result<u64> {
        let cf = self.shard_cf(ShardId(0))?;
        Ok(self.db.property_int_value_cf(cf, "rocksdb.block-cache-usage")?.unwrap_or(0))
    }

    /// The approximate bytes a shard takes on disk (SST files).
    pub fn shard_disk_bytes(&self, shard: ShardId) -> Result<u64> {
        let cf = self.shard_cf(shard)?;
        Ok(self.db.property_int_value_cf(cf, "rocksdb.total-sst-files-size")?.unwrap_or(0))
    }

    /// Whether RocksDB has flushes or compactions pending or running (for
    /// benchmarks that measure a settled store).
    pub fn background_work_pending(&self) -> Result<bool> {
        for shard in 0..self.shards {
            let cf = self.shard_cf(ShardId(shard))?;
            for property in ["rocksdb.compaction-pending", "rocksdb.mem-table-flush-pending"] {
                if self.db.property_int_value_cf(cf, property)?.unwrap_or(0) > 0 {
                    return Ok(true);
                }
            }
        }
        Ok(self.db.property_int_value("rocksdb.num-running-compactions")?.unwrap_or(0) > 0
            || self.db.property_int_value("rocksdb.num-running-flushes")?.unwrap_or(0) > 0)
    }

    /// Flushes every memtable to SST files (for benchmarks and clean shutdown).
    pub fn flush(&self) -> Result<()> {
        for shard in 0..self.shards {
            self.db.flush_cf(self.shard_cf(ShardId(shard))?)?;
        }
        Ok(())
    }

    /// Flushes every column family, `meta` included, then compacts every
    /// shard fully: what was overwritten or deleted is then gone from the
    /// table files, and the write-ahead logs that held it are obsolete.
    pub fn flush_and_compact_all(&self) -> Result<()> {
        self.db.flush_cf(self.meta_cf()?)?;
        self.flush()?;
        for shard in 0..self.shards {
            let cf = self.shard_cf(ShardId(shard))?;
            let mut options = rocksdb::CompactOptions::default();
            options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            self.db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &options);
        }
        Ok(())
    }

    /// Compacts a shard fully (for benchmarks that measure a settled store).
    pub fn compact_shard(&self, shard: ShardId) -> Result<()> {
        let cf = self.shard_cf(shard)?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }
}

/// Whether `text` mentions `@username`: the name after an `@` that starts
/// the text or follows a character that is not part of a name, and ends
/// it or is followed by one that is not (usernames are ASCII letters,
/// digits and `_`), compared without case.
pub fn mentions(text: &str, username: &str) -> bool {
    let name_char = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let (bytes, name) = (text.as_bytes(), username.as_bytes());
    if name.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(found) = text[from..].find('@') {
        let at = from + found;
        let start = at + 1;
        let end = start + name.len();
        let before_ok = at == 0 || !name_char(bytes[at - 1]);
        let name_ok = bytes.get(start..end).is_some_and(|candidate| candidate.eq_ignore_ascii_case(name));
        let after_ok = bytes.get(end).is_none_or(|next| !name_char(*next));
        if before_ok && name_ok && after_ok {
            return true;
        }
        from = start;
    }
    false
}

/// A big-endian `u64` value (an id or a version) stored under `key`.
fn id_from(value: &[u8], key: &[u8], what: &'static str) -> Result<u64> {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).map_err(|_| StorageError::Corrupt {
        what,
        key_hex: keys::hex(key),
        reason: format!("{} bytes, expected 8", value.len()),
    })
}

/// A user record stored under `key`, validated and copied out.
fn user_from(id: UserId, key: &[u8], value: &[u8]) -> Result<User> {
    let archived = record::access::<ArchivedUserRecord>("user", key, value)?;
    Ok(User {
        id,
        username: archived.username.as_str().to_owned(),
        display_name: archived.display_name.as_str().to_owned(),
        password_hash: archived.password_hash.as_str().to_owned(),
        created_at_ms: archived.created_at_ms.to_native(),
        disabled: archived.disabled,
    })
}

#[cfg(test)]
mod tests {
    use super::mentions;

    #[test]
    fn a_mention_is_the_whole_name_after_an_at() {
        assert!(mentions("@ann hi", "ann"));
        assert!(mentions("hi @ann.", "ann"));
        assert!(mentions("hi @Ann, and @bob", "bob"));
        assert!(mentions("안녕 @ann님", "ann"), "a name ends where its characters do");
        assert!(mentions("cc: @ann", "ann"));
        assert!(!mentions("@anna hi", "ann"), "a longer name is someone else");
        assert!(!mentions("mail ann@ann", "ann"), "an address is no mention");
        assert!(!mentions("ann", "ann"));
        assert!(!mentions("@", "ann"));
        assert!(mentions("@@ann", "ann"));
        assert!(!mentions("text that ends in @", "ann"), "an @ near the end reads no further than the text");
        assert!(!mentions("@an", "ann"));
    }
}
