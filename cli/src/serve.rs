//! `chatgw serve`: flags over `CHATGW_*` environment variables over the
//! `--config` TOML file over the embedded default.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chatgw_gateway::{Config, Durability, PresenceScope};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// When a `send` is acknowledged.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// In the write-ahead log: survives a process crash.
    Wal,
    /// In the log and synced to disk: survives a power loss.
    Fsync,
}

/// Whose presence a user may see.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceScopeArg {
    /// Any user's (protocol §2 as written).
    All,
    /// Only users who share a channel with the caller.
    Shared,
}

/// Flags of `chatgw serve`. Each also reads `CHATGW_<NAME>` and the
/// `--config` file's key of the same name (with `_` for `-`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below.
    #[arg(long, env = "CHATGW_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP and WebSocket address [default: 127.0.0.1:8080].
    #[arg(long, env = "CHATGW_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./chatgw-data].
    #[arg(long, env = "CHATGW_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Shards [default: one per available core].
    #[arg(long, env = "CHATGW_SHARDS")]
    shards: Option<u16>,
    /// Node name [default: the host name].
    #[arg(long, env = "CHATGW_NODE")]
    node: Option<String>,
    /// The URL clients reach this node at, announced by discovery and login
    /// (ws, wss, http or https; `/v1/ws` is appended) [default: derived
    /// from --listen].
    #[arg(long, env = "CHATGW_PUBLIC_URL")]
    public_url: Option<String>,
    /// Admin token [default: generated at first start, kept in the data dir].
    #[arg(long, env = "CHATGW_ADMIN_TOKEN", hide_env_values = true, conflicts_with = "admin_token_file")]
    admin_token: Option<String>,
    /// A file holding the admin token (kept out of `ps`; a trailing
    /// newline is dropped).
    #[arg(long, env = "CHATGW_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// JWT secret [default: generated at first start, kept in the data dir].
    #[arg(long, env = "CHATGW_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// When a send is acknowledged [default: wal].
    #[arg(long, env = "CHATGW_DURABILITY", value_enum)]
    durability: Option<DurabilityArg>,
    /// Webhook pushes are POSTed to [default: none, kept in the outbox].
    #[arg(long, env = "CHATGW_PUSH_WEBHOOK")]
    push_webhook: Option<String>,
    /// PEM file of the certificates an https webhook's server must chain
    /// to, instead of Mozilla's roots (for a private CA) [default: none].
    #[arg(long, env = "CHATGW_PUSH_WEBHOOK_CA")]
    push_webhook_ca: Option<PathBuf>,
    /// Heartbeat interval told to clients, ms [default: 15000].
    #[arg(long, env = "CHATGW_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Offline grace after the last device goes, ms [default: 5000].
    #[arg(long, env = "CHATGW_PRESENCE_GRACE_MS")]
    presence_grace_ms: Option<u64>,
    /// How long after a user's last `typing` start the server ends it by
    /// itself, ms [default: 6000].
    #[arg(long, env = "CHATGW_TYPING_TTL_MS")]
    typing_ttl_ms: Option<u64>,
    /// How long after sending a message its sender may edit it, seconds
    /// [default: 86400].
    #[arg(long, env = "CHATGW_EDIT_WINDOW_S")]
    edit_window_s: Option<u64>,
    /// Members a group may have for reads to reach the other members as
    /// `receipt` events [default: 20].
    #[arg(long, env = "CHATGW_RECEIPT_MEMBERS_MAX")]
    receipt_members_max: Option<usize>,
    /// Whose presence a user may query or subscribe to: `all` users, or
    /// only those who share a channel with them [default: all].
    #[arg(long, env = "CHATGW_PRESENCE_SCOPE", value_enum)]
    presence_scope: Option<PresenceScopeArg>,
    /// How long an HTTP request's whole body may take to arrive, ms
    /// [default: 10000].
    #[arg(long, env = "CHATGW_HTTP_BODY_TIMEOUT_MS")]
    http_body_timeout_ms: Option<u64>,
    /// How long an HTTP connection may wait for its next request with
    /// nothing arriving before it is closed (idle keep-alive), ms
    /// [default: 30000].
    #[arg(long, env = "CHATGW_HTTP_IDLE_TIMEOUT_MS")]
    http_idle_timeout_ms: Option<u64>,
    /// HTTP connections (not upgraded to a WebSocket) in the process at
    /// most; past it an accepted connection is closed at once [default:
    /// 8192; 0: no cap].
    #[arg(long, env = "CHATGW_MAX_HTTP_CONNECTIONS")]
    max_http_connections: Option<usize>,
    /// HTTP connections (not upgraded to a WebSocket) from one client IP at
    /// most; past it an accepted connection is closed at once [default:
    /// 1024; 0: no cap].
    #[arg(long, env = "CHATGW_MAX_HTTP_CONNECTIONS_PER_IP")]
    max_http_connections_per_ip: Option<u32>,
    /// Descriptors kept below the open-file limit for storage and the
    /// listeners: a connection accepted onto one is closed at once
    /// [default: 1024].
    #[arg(long, env = "CHATGW_FD_RESERVE")]
    fd_reserve: Option<u64>,
    /// Live WebSocket connections at most [default: the open-file limit
    /// less --fd-reserve; 0: no cap].
    #[arg(long, env = "CHATGW_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Live connections from one client IP at most [default: 5000; 0: no cap].
    #[arg(long, env = "CHATGW_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<u32>,
    /// New connections per second from one client IP, in bursts of twice
    /// that [default: 1000; 0: no cap].
    #[arg(long, env = "CHATGW_MAX_NEW_CONNECTIONS_PER_IP_PER_S")]
    max_new_connections_per_ip_per_s: Option<u32>,
    /// Devices connected per user at most [default: 32; 0: no cap].
    #[arg(long, env = "CHATGW_MAX_DEVICES_PER_USER")]
    max_devices_per_user: Option<u32>,
    /// Signups per minute from one client IP, in bursts of as many
    /// [default: 30; 0: no limit].
    #[arg(long, env = "CHATGW_MAX_SIGNUPS_PER_IP_PER_MIN")]
    max_signups_per_ip_per_min: Option<u32>,
    /// Threads that hash passwords, node-wide [default: a quarter of the
    /// cores, at least 1].
    #[arg(long, env = "CHATGW_HASH_THREADS")]
    hash_threads: Option<usize>,
    /// Members per channel [default: 100].
    #[arg(long, env = "CHATGW_MAX_CHANNEL_MEMBERS")]
    max_channel_members: Option<usize>,
    /// Chars per message [default: 100000].
    #[arg(long, env = "CHATGW_MAX_MESSAGE_CHARS")]
    max_message_chars: Option<usize>,
    /// Messages per second per user, 0 for no limit [default: 20].
    #[arg(long, env = "CHATGW_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Message burst per user [default: 100].
    #[arg(long, env = "CHATGW_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Channel creations and member additions per user a minute, in bursts
    /// of as many; 0 for no limit [default: 60].
    #[arg(long, env = "CHATGW_CHANNEL_CHANGES_PER_MIN")]
    channel_changes_per_min: Option<u32>,
    /// Channels a user may be in [default: 10000].
    #[arg(long, env = "CHATGW_MAX_CHANNELS_PER_USER")]
    max_channels_per_user: Option<usize>,
    /// States of owned channels no connected member hosts, kept in memory
    /// per shard; past it the least recently used are dropped and read
    /// again from storage when next used [default: 100000].
    #[arg(long, env = "CHATGW_MAX_IDLE_CHANNELS_PER_SHARD")]
    max_idle_channels_per_shard: Option<usize>,
    /// Push records one shard's outbox holds; past it the oldest expire
    /// [default: 1000000].
    #[arg(long, env = "CHATGW_MAX_OUTBOX_PER_SHARD")]
    max_outbox_per_shard: Option<usize>,
    /// A connection whose socket takes nothing for this long while frames
    /// wait is closed as a slow consumer (1008) [default: 30000].
    #[arg(long, env = "CHATGW_WRITE_STALL_MS")]
    write_stall_ms: Option<u64>,
    /// Microseconds an idle shard spins before it parks, sparing the wake-up
    /// of a message that comes soon for a busy core [default: 0, park at
    /// once].
    #[arg(long, env = "CHATGW_SPIN_BEFORE_PARK_US")]
    spin_before_park_us: Option<u64>,
    /// Run each WebSocket session on the core that owns its user, handing
    /// the socket over from the core that accepted it (`false`: where it
    /// was accepted) [default: true].
    #[arg(long, env = "CHATGW_HAND_OFF")]
    hand_off: Option<bool>,
    /// A test aid: serve `GET /v1/echo`, a WebSocket without a token that
    /// sends back each message it gets, through the same frame reader,
    /// limits and close handling as `/v1/ws` (for WebSocket conformance
    /// suites such as Autobahn's). Off by default; never for production.
    #[arg(long)]
    conformance_echo: bool,
    /// A test aid: `POST /admin/v1/faults/panic` makes a shard panic (the
    /// process aborts). Hidden; never for production.
    #[arg(long, hide = true)]
    fault_hooks: bool,
    /// Test aid: wait this long after a message's commit before recording
    /// its pushes, so that a test can kill the process in between. Hidden;
    /// never for production.
    #[arg(long, hide = true, default_value_t = 0)]
    fault_push_check_delay_ms: u64,
    /// Test aid: milliseconds added to the clock the id generators read
    /// (negative: behind), as a host whose clock stepped would make it.
    /// Hidden; never for production.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    fault_id_clock_offset_ms: i64,
}

/// The `--config` file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    shards: Option<u16>,
    node: Option<String>,
    public_url: Option<String>,
    admin_token: Option<String>,
    jwt_secret: Option<String>,
    durability: Option<DurabilityArg>,
    push_webhook: Option<String>,
    push_webhook_ca: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    presence_grace_ms: Option<u64>,
    typing_ttl_ms: Option<u64>,
    edit_window_s: Option<u64>,
    receipt_members_max: Option<usize>,
    presence_scope: Option<PresenceScopeArg>,
    http_body_timeout_ms: Option<u64>,
    http_idle_timeout_ms: Option<u64>,
    max_http_connections: Option<usize>,
    max_http_connections_per_ip: Option<u32>,
    fd_reserve: Option<u64>,
    hash_threads: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<u32>,
    max_new_connections_per_ip_per_s: Option<u32>,
    max_devices_per_user: Option<u32>,
    max_signups_per_ip_per_min: Option<u32>,
    max_channel_members: Option<usize>,
    max_message_chars: Option<usize>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
    channel_changes_per_min: Option<u32>,
    max_channels_per_user: Option<usize>,
    max_idle_channels_per_shard: Option<usize>,
    max_outbox_per_shard: Option<usize>,
    write_stall_ms: Option<u64>,
    hand_off: Option<bool>,
    spin_before_park_us: Option<u64>,
}

fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let mut config = Config::default();
    macro_rules! pick {
        ($field:ident => $target:ident) => {
            if let Some(value) = args.$field.or(file.$field) {
                config.$target = value;
            }
        };
        ($field:ident => some $target:ident) => {
            if let Some(value) = args.$field.or(file.$field) {
                config.$target = Some(value);
            }
        };
    }
    pick!(listen => listen);
    pick!(data_dir => data_dir);
    pick!(shards => some shards);
    pick!(node => some node);
    pick!(public_url => some public_url);
    pick!(admin_token => some admin_token);
    if let Some(path) = &args.admin_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin token file {}", path.display()))?;
        config.admin_token = Some(token.trim_end_matches(['\n', '\r']).to_string());
    }
    pick!(jwt_secret => some jwt_secret);
    pick!(push_webhook => some push_webhook);
    pick!(push_webhook_ca => some push_webhook_ca);
    pick!(heartbeat_ms => heartbeat_ms);
    pick!(presence_grace_ms => presence_grace_ms);
    pick!(typing_ttl_ms => typing_ttl_ms);
    pick!(edit_window_s => edit_window_s);
    pick!(receipt_members_max => receipt_members_max);
    pick!(http_body_timeout_ms => http_body_timeout_ms);
    pick!(http_idle_timeout_ms => http_idle_timeout_ms);
    pick!(max_http_connections => max_http_connections);
    pick!(max_http_connections_per_ip => max_http_connections_per_ip);
    pick!(fd_reserve => fd_reserve);
    pick!(hash_threads => hash_threads);
    pick!(max_connections => some max_connections);
    pick!(max_connections_per_ip => max_connections_per_ip);
    pick!(max_new_connections_per_ip_per_s => max_new_connections_per_ip_per_s);
    pick!(max_devices_per_user => max_devices_per_user);
    pick!(max_signups_per_ip_per_min => max_signups_per_ip_per_min);
    pick!(max_channel_members => max_channel_members);
    pick!(max_message_chars => max_message_chars);
    pick!(rate_limit => rate_limit_per_s);
    pick!(rate_burst => rate_burst);
    pick!(channel_changes_per_min => channel_changes_per_min);
    pick!(max_channels_per_user => max_channels_per_user);
    pick!(max_idle_channels_per_shard => max_idle_channels_per_shard);
    pick!(max_outbox_per_shard => max_outbox_per_shard);
    pick!(write_stall_ms => write_stall_ms);
    pick!(hand_off => hand_off);
    pick!(spin_before_park_us => spin_before_park_us);
    config.fault_hooks = args.fault_hooks;
    config.conformance_echo = args.conformance_echo;
    config.fault_push_check_delay_ms = args.fault_push_check_delay_ms;
    config.fault_id_clock_offset_ms = args.fault_id_clock_offset_ms;
    if let Some(scope) = args.presence_scope.or(file.presence_scope) {
        config.presence_scope = match scope {
            PresenceScopeArg::All => PresenceScope::All,
            PresenceScopeArg::Shared => PresenceScope::Shared,
        };
    }
    if let Some(durability) = args.durability.or(file.durability) {
        config.durability = match durability {
            DurabilityArg::Wal => Durability::Wal,
            DurabilityArg::Fsync => Durability::Fsync,
        };
    }
    anyhow::ensure!(config.max_message_chars >= 1, "max-message-chars must be at least 1");
    anyhow::ensure!(config.max_channel_members >= 2, "max-channel-members must be at least 2");
    anyhow::ensure!(config.max_channels_per_user >= 1, "max-channels-per-user must be at least 1");
    anyhow::ensure!(config.max_idle_channels_per_shard >= 1, "max-idle-channels-per-shard must be at least 1");
    anyhow::ensure!(config.max_outbox_per_shard >= 1, "max-outbox-per-shard must be at least 1");
    anyhow::ensure!(config.write_stall_ms >= 100, "write-stall-ms must be at least 100");
    anyhow::ensure!(config.heartbeat_ms >= 100, "heartbeat-ms must be at least 100");
    anyhow::ensure!(
        (chatgw_gateway::limits::TYPING_TTL_MS_MIN..=chatgw_gateway::limits::TYPING_TTL_MS_MAX)
            .contains(&config.typing_ttl_ms),
        "typing-ttl-ms must be {} to {}",
        chatgw_gateway::limits::TYPING_TTL_MS_MIN,
        chatgw_gateway::limits::TYPING_TTL_MS_MAX
    );
    anyhow::ensure!(config.http_body_timeout_ms >= 100, "http-body-timeout-ms must be at least 100");
    anyhow::ensure!(config.http_idle_timeout_ms >= 100, "http-idle-timeout-ms must be at least 100");
    anyhow::ensure!((1..=64).contains(&config.hash_threads), "hash-threads must be 1 to 64");
    Ok(config)
}

/// Runs a node until SIGTERM or SIGINT, then stops gracefully and exits 0.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = resolve(args)?;
    // Files the server makes (the store, its secrets) are its owner's only.
    // SAFETY: umask only sets the process's file-mode mask.
    unsafe { libc::umask(0o077) };
    let handle = chatgw_gateway::start(config).context("starting the server")?;
    if handle.admin_token_generated {
        // Printed once, at the start that generated it.
        println!("admin token (generated, kept in the data dir): {}", handle.admin_token);
    }
    let stop = handle.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    tracing::info!(shards = handle.shards, "listening on {}", handle.local_addr());
    handle.join().context("serving")?;
    tracing::info!("stopped");
    Ok(())
}
