//! The server's configuration (protocol §6). The CLI fills it from flags,
//! `CHATGW_*` variables and a TOML file; `Config::default()` is the
//! embedded default `chatgw serve` runs on.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use chatgw_storage::Durability;

/// Whose presence a user may see (`--presence-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceScope {
    /// Any user's, by username: protocol §2 as written, the default.
    All,
    /// Only the users who share a channel (a group or a direct one) with
    /// the caller, and the caller's own.
    Shared,
}

/// Everything `chatgw serve` takes.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP and WebSocket, one port.
    pub listen: SocketAddr,
    /// RocksDB and the generated secrets live here.
    pub data_dir: PathBuf,
    /// Shards (one executor per core); `None` = one per available core.
    pub shards: Option<u16>,
    /// This node's name; `None` = the host name.
    pub node: Option<String>,
    /// This node's number in the Snowflake worker field (0 for one node).
    pub node_id: u16,
    /// The URL clients reach this node at (`ws`, `wss`, `http` or
    /// `https`), announced by discovery and login; `None` = derived from
    /// the address listened on.
    pub public_url: Option<String>,
    /// The admin token; `None` = generated at first start and kept in the data dir.
    pub admin_token: Option<String>,
    /// The JWT secret; `None` = generated at first start and kept in the data dir.
    pub jwt_secret: Option<String>,
    /// When a `send` is acknowledged.
    pub durability: Durability,
    /// Where pushes are POSTed; `None` = kept in the outbox and counted.
    pub push_webhook: Option<String>,
    /// PEM certificates the webhook's TLS server must chain to, instead of
    /// Mozilla's roots (a private CA).
    pub push_webhook_ca: Option<PathBuf>,
    /// The heartbeat clients are told to keep; 2 × this of silence closes.
    pub heartbeat_ms: u64,
    /// How long an HTTP request's whole body may take to arrive, ms: each
    /// byte resets the idle timer, so without this a body trickled a byte
    /// at a time would hold the connection for good.
    pub http_body_timeout_ms: u64,
    /// Threads that hash passwords (Argon2id), node-wide: each can take a
    /// whole core while it hashes, so few, and never the shards' own.
    pub hash_threads: usize,
    /// How long an HTTP connection may wait for its next request (or the
    /// rest of one) with nothing arriving before it is closed, ms: idle
    /// keep-alive connections go after this.
    pub http_idle_timeout_ms: u64,
    /// HTTP connections (accepted and not upgraded to a WebSocket) in the
    /// process at most (0: no cap); past it an accepted connection is
    /// closed at once.
    pub max_http_connections: usize,
    /// HTTP connections from one client IP at most (0: no cap); past it an
    /// accepted connection is closed at once.
    pub max_http_connections_per_ip: u32,
    /// Descriptors kept below the open-file limit for storage, the
    /// listeners and the webhook: a connection accepted onto one of them is
    /// closed at once.
    pub fd_reserve: u64,
    /// Live WebSocket connections in the process at most (0: none); `None`:
    /// the open-file limit less 1,024 descriptors kept for storage, HTTP
    /// and the admin API.
    pub max_connections: Option<usize>,
    /// Live connections from one client IP at most (0: no cap).
    pub max_connections_per_ip: u32,
    /// New connections from one client IP per second, in bursts of twice
    /// that (0: no cap).
    pub max_new_connections_per_ip_per_s: u32,
    /// Devices (live connections) of one user at most (0: no cap).
    pub max_devices_per_user: u32,
    /// Signups from one client IP per minute, in bursts of as many (0: no
    /// limit).
    pub max_signups_per_ip_per_min: u32,
    /// How long a user stays online after the last device goes.
    pub presence_grace_ms: u64,
    /// Whose presence a user may query or subscribe to.
    pub presence_scope: PresenceScope,
    /// How long after a user's last `typing` start the server ends it by
    /// itself (the other members hear `stop`), ms.
    pub typing_ttl_ms: u64,
    /// A test aid: serve `GET /v1/echo`, a WebSocket with no token that
    /// echoes messages through the real session (for Autobahn's cases).
    pub conformance_echo: bool,
    /// Members a channel may hold.
    pub max_channel_members: usize,
    /// Chars a message's text may hold.
    pub max_message_chars: usize,
    /// Members a group may have for a member's reads to reach the others as
    /// `receipt` events (direct channels always; a user's own devices
    /// always).
    pub receipt_members_max: usize,
    /// How long after sending a message its sender may edit it, seconds
    /// (`message.edit`; deletes have no window).
    pub edit_window_s: u64,
    /// Messages per second per user (0: no limit; flood control stays).
    pub rate_limit_per_s: u32,
    /// Burst of messages per user.
    pub rate_burst: u32,
    /// Channel creations and member additions per user a minute, in bursts
    /// of as many (0: no limit).
    pub channel_changes_per_min: u32,
    /// Channels a user may be in; creating or adding past it is refused.
    pub max_channels_per_user: usize,
    /// States of owned channels that no core hosts, kept in memory per
    /// shard (least recently used dropped first; read again on use).
    pub max_idle_channels_per_shard: usize,
    /// Push records one shard's outbox holds; past it the oldest expire.
    pub max_outbox_per_shard: usize,
    /// A connection whose socket takes nothing for this long while frames
    /// wait for it is closed as a slow consumer (1008), ms.
    pub write_stall_ms: u64,
    /// The block cache RocksDB shares across shards, in bytes.
    pub block_cache_bytes: usize,
    /// Memtable size per shard, in bytes (RocksDB preallocates about this
    /// much of its log). Tests make it small.
    pub write_buffer_bytes: usize,
    /// Whether RocksDB compresses its table files (off only where a test
    /// searches the files' bytes for a deleted text).
    pub storage_compression: bool,
    /// Pin each shard's executor to a core (off in tests that run several
    /// servers in one process).
    pub pin_cores: bool,
    /// Lifetime of the tokens signup and login hand out, in seconds.
    pub token_ttl_s: u64,
    /// Calls from other shards one shard works on at once; past it its mesh
    /// readers wait and the callers' queues fill (backpressure).
    pub calls_in_flight_per_shard_max: usize,
    /// A test aid, off by default: `POST /admin/v1/faults/panic` makes a
    /// shard's thread panic (which aborts the process), so that tests can
    /// check what a panic does. Never on in production.
    pub fault_hooks: bool,
    /// Test aid: how long a channel's owner waits after a message's
    /// commit before asking the members' owners to record its pushes (0:
    /// not at all), so that a test can kill the process in between. Never
    /// set in production.
    pub fault_push_check_delay_ms: u64,
    /// Test aid: how long an owner takes to apply a core's word that it
    /// hosts a channel, or that a user's device connected there (0: at
    /// once), as a busy owner core would. Never set in production.
    pub fault_owner_delay_ms: u64,
    /// Test aid: how long a channel's owner waits before it answers a
    /// sender on another core (0: at once), as a full queue back to that
    /// core would make it. Never set in production.
    pub fault_early_reply_delay_ms: u64,
    /// Test aid: how long each group commit waits before it writes (0: not
    /// at all), as a slow disk would make it. Never set in production.
    pub fault_commit_delay_ms: u64,
    /// Test aid: how many of a shard's first push recordings fail (0:
    /// none), as a full disk at the members' owner would make them, so a
    /// test can see a push check asked again while the server runs. Never
    /// set in production.
    pub fault_push_record_failures: u32,
    /// Test aid: how long a connection that passed its upgrade waits before
    /// it registers on its core (0: not at all), as a busy core would make
    /// it, so a test can revoke its token in between. Never set in
    /// production.
    pub fault_attach_delay_ms: u64,
    /// Microseconds an idle shard's executor spins before it parks (0: it
    /// parks at once): `--spin-before-park-us`.
    pub spin_before_park_us: u64,
    /// Whether a WebSocket session runs on the core that owns its user (the
    /// accepting core hands the socket over; `net::hand_off`).
    pub hand_off: bool,
    /// Test aid: every hand-off finds its owner's queue full, so the
    /// session stays where it was accepted. Never set in production.
    pub fault_hand_off_queue_full: bool,
    /// Test aid: how long a core waits before it starts a session handed
    /// to it (0: not at all), as a busy owner would make it. Never set in
    /// production.
    pub fault_hand_off_delay_ms: u64,
    /// Test aid: milliseconds added to the clock the id generators read
    /// (negative: behind the system clock), as a host whose clock stepped
    /// would make it. Never set in production.
    pub fault_id_clock_offset_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./chatgw-data"),
            shards: None,
            node: None,
            node_id: 0,
            public_url: None,
            admin_token: None,
            jwt_secret: None,
            durability: Durability::Wal,
            push_webhook: None,
            push_webhook_ca: None,
            heartbeat_ms: 15_000,
            http_body_timeout_ms: 10_000,
            http_idle_timeout_ms: 30_000,
            max_http_connections: 8_192,
            max_http_connections_per_ip: 1_024,
            fd_reserve: crate::limits::FD_RESERVE_DEFAULT,
            max_connections: None,
            max_connections_per_ip: 5_000,
            max_new_connections_per_ip_per_s: 1_000,
            max_devices_per_user: 32,
            max_signups_per_ip_per_min: 30,
            hash_threads: (std::thread::available_parallelism().map_or(1, |cores| cores.get()) / 4).max(1),
            presence_grace_ms: 5_000,
            presence_scope: PresenceScope::All,
            typing_ttl_ms: 6_000,
            conformance_echo: false,
            max_channel_members: 100,
            max_message_chars: 100_000,
            edit_window_s: 86_400,
            receipt_members_max: 20,
            rate_limit_per_s: 20,
            rate_burst: 100,
            channel_changes_per_min: 60,
            max_channels_per_user: 10_000,
            max_idle_channels_per_shard: 100_000,
            max_outbox_per_shard: 1_000_000,
            write_stall_ms: 30_000,
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            storage_compression: true,
            pin_cores: true,
            token_ttl_s: 7 * 24 * 3600,
            calls_in_flight_per_shard_max: crate::limits::CALLS_IN_FLIGHT_PER_SHARD_MAX,
            fault_hooks: false,
            fault_push_check_delay_ms: 0,
            fault_owner_delay_ms: 0,
            fault_early_reply_delay_ms: 0,
            fault_commit_delay_ms: 0,
            fault_push_record_failures: 0,
            fault_attach_delay_ms: 0,
            fault_id_clock_offset_ms: 0,
            hand_off: true,
            spin_before_park_us: 0,
            fault_hand_off_queue_full: false,
            fault_hand_off_delay_ms: 0,
        }
    }
}

impl Config {
    /// The shard count to run with.
    pub fn shard_count(&self) -> u16 {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |cores| cores.get().min(crate::limits::SHARDS_MAX) as u16)
        })
    }

    /// The node name to announce.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_string())
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "chatgw".to_string())
        })
    }
}
