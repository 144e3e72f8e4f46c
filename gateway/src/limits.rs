//! Every bound in the gateway, in one place, checked against each other at
//! compile time. Each queue, buffer and loop names its limit here, and the
//! code says what happens at it.

use std::time::Duration;

/// Shards (cores) per node: the channel's subscriber set is a `u128` mask.
pub const SHARDS_MAX: usize = 128;

/// The largest WebSocket frame or reassembled message accepted (protocol
/// default): a text of 100,000 chars in any valid JSON escaping fits.
/// Above it the connection closes with 1009.
pub const FRAME_BYTES_MAX: usize = 2 << 20;
/// The per-core scratch buffer sockets are read through. No connection
/// holds a read buffer while idle; only a partial frame's bytes are kept.
pub const READ_SCRATCH_BYTES: usize = 64 << 10;
/// Submission entries of each io_uring ring of a shard. The kernel sizes
/// its table of pending polls (one per idle connection) from the ring: at
/// glommio's default (128) it has 8 buckets, and every cancellation walks
/// one, so 10,000 connections made each cancel scan about 1,250 entries.
/// At 4096 the table has its maximum of 256 buckets.
pub const IO_URING_DEPTH: usize = 4096;
/// Bytes queued to one connection before it counts as a slow consumer and
/// is closed with 1008 (one frame alone is always accepted, however large).
pub const OUTBOUND_QUEUE_BYTES_MAX: usize = 4 << 20;
/// Commands of one connection in flight at once; past it the session stops
/// reading its socket (TCP backpressure) until one finishes.
pub const COMMANDS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;
/// Socket reads a session handles in one poll before yielding to the other
/// connections of its core.
pub const READS_PER_POLL_MAX: usize = 16;
/// How long a session that used its share (`READS_PER_POLL_MAX`) pauses,
/// on a timer, before it goes on: the core polls its sockets meanwhile.
pub const SESSION_PAUSE: Duration = Duration::from_micros(50);

/// Slots in each cross-core call queue (commands that await storage at an owner).
pub const MESH_CALL_CAPACITY: usize = 1024;
/// Slots in each cross-core control queue (replies, deliveries,
/// subscriptions: handled without awaiting, so never a cycle).
pub const MESH_CONTROL_CAPACITY: usize = 8192;
/// Calls from other shards a shard works on at once by default
/// (`Config::calls_in_flight_per_shard_max`); its mesh readers wait past it.
pub const CALLS_IN_FLIGHT_PER_SHARD_MAX: usize = 4096;
/// How long a core waits for another core's answer to a call or an ask
/// (room in the queue included) before it answers `overloaded`.
pub const MESH_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a word every core must hear (a kick, a revocation's
/// kick, a banned-words change) is sent to a core that did not answer
/// within `MESH_ANSWER_TIMEOUT`, first try included.
pub const MESH_ASK_ROUNDS: u32 = 3;
/// How often a core looks for calls and asks past their deadline.
pub const MESH_ANSWER_SWEEP: Duration = Duration::from_millis(100);
/// Channels one subscribe word to an owner carries at most: a connection
/// whose user is in more channels than this sends its owner several
/// words, all at once (so the owner's work per word stays bounded).
pub const SUBSCRIBES_PER_WORD_MAX: usize = 1024;
/// How often a node whose storage writes fail tries a small write, to
/// learn that the disk is back.
pub const WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How far past the frontier that asked for it a new id lease reaches
/// (`frontier`: a sync cursor is never handed out past the stored lease,
/// and a restart resumes the generators above it). A continuously syncing
/// node writes one lease a second or so, not one per sync.
pub const ID_LEASE_AHEAD_MS: u64 = 2_000;
/// A frontier this close to the lease has it raised in the background, so
/// that a sync seldom waits for the write.
pub const ID_LEASE_RENEW_MARGIN_MS: u64 = 1_000;
const _: () = assert!(ID_LEASE_RENEW_MARGIN_MS < ID_LEASE_AHEAD_MS, "a fresh lease is not due at once");
/// Push records one user keeps in the outbox; a newer one coalesces the
/// oldest away (the push carries the newest message anyway).
pub const OUTBOX_PER_USER_MAX: usize = 100;
/// Writes one group commit takes at most; the rest wait for the next.
pub const GROUP_COMMIT_WRITES_MAX: usize = 4096;
/// How long a riding write (`Committer::commit_riding`: a message's
/// pending push check removed) waits for a group commit to ride in before
/// it makes one of its own.
pub const RIDER_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// How long a members' owner gathers its answers to another core's push
/// checks before sending them in one message (`Control::Replies`): only
/// the check's own task waits for them, never an ack or a delivery.
pub const PUSH_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
/// The most push-check answers one message carries; a batch this full goes
/// at once.
pub const PUSH_ANSWERS_PER_MESSAGE_MAX: usize = 512;

/// Members up to which a channel's messages are also written to each
/// member's inbox (fan-out on write); above it, members read the channel
/// at sync time (fan-out on read).
///
/// Direct channels and small groups only: every inbox entry is a storage
/// write, and a group of 100 made each message 101 writes (at 4,000
/// messages/s the shard spent most of its time in memtable inserts and
/// compaction). Reading a channel at sync time costs one seek per large
/// channel of the user, and syncs are rare next to messages.
pub const INBOX_FAN_OUT_MEMBERS_MAX: usize = 8;
/// `history` limit bounds and default (protocol).
pub const HISTORY_LIMIT_MAX: usize = 200;
/// Default `history` limit.
pub const HISTORY_LIMIT_DEFAULT: usize = 50;
/// `sync` limit bounds and default (protocol).
pub const SYNC_LIMIT_MAX: usize = 1000;
/// Default `sync` limit.
pub const SYNC_LIMIT_DEFAULT: usize = 500;
/// Encoded JSON bytes of the messages one `history` or `sync` reply
/// carries at most (at least one message always; one of the longest texts
/// in the costliest escaping is 600 KB): past it the reply is cut short
/// (`has_more` for `sync`) and the client pages on. It leaves room for the
/// envelope, so a reply frame stays under `FRAME_BYTES_MAX`, the limit
/// clients are told to accept. A read loads its messages one at a time
/// and stops once this is spent, so it never loads more than it returns
/// (plus the one that did not fit).
pub const READ_REPLY_BYTES_MAX: usize = FRAME_BYTES_MAX - (64 << 10);
/// A read yields to the other tasks of its core after this many message
/// bytes loaded...
pub const READ_CHUNK_BYTES: usize = 256 << 10;
/// ...or this many messages (or, for `sync`, large channels' key scans).
pub const READ_CHUNK_ITEMS: usize = 64;
/// How long a read pauses between chunks: a timer, so the read is not
/// ready again until the core has polled its sockets (and the frames of
/// its other connections have run).
pub const READ_PAUSE: Duration = Duration::from_micros(50);

/// How long a closing session waits for the client's close or EOF.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Members named in one channel command (and users in one presence command).
pub const MEMBERS_PER_COMMAND_MAX: usize = 1000;
/// Users one connection may watch the presence of at once.
pub const PRESENCE_WATCHES_PER_CONNECTION_MAX: usize = 1000;
/// Longest channel name, in chars.
pub const CHANNEL_NAME_CHARS_MAX: usize = 100;
/// Longest `client_msg_id`, in bytes (storage keys on it).
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 128;

/// Shortest username, in bytes (`a-z 0-9 _`, so bytes are chars).
pub const USERNAME_BYTES_MIN: usize = 3;
/// Longest username, in bytes (storage keys on it).
pub const USERNAME_BYTES_MAX: usize = 32;
/// Longest device name, in bytes (`A-Z a-z 0-9 _ -`).
pub const DEVICE_BYTES_MAX: usize = 64;
/// Shortest password accepted, in chars.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted, in bytes (hashing cost is bounded by it).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Longest display name, in chars.
pub const DISPLAY_NAME_CHARS_MAX: usize = 64;
/// Entries each per-core lookup cache (usernames, user ids, direct pairs)
/// holds before it is cleared; a storage read refills what is used again.
pub const LOOKUP_CACHE_ENTRIES_MAX: usize = 100_000;

/// Identical texts a user may send within `FLOOD_WINDOW`.
pub const FLOOD_REPEATS_MAX: u32 = 5;
/// The window of the flood check.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(30);
/// Sends per user the flood check remembers within `FLOOD_WINDOW` (16
/// bytes each, for users who sent in the last window only): a text more
/// than `FLOOD_REPEATS_MAX` times among them is a flood, whatever else was
/// sent in between.
pub const FLOOD_LOG_MAX: usize = 64;

/// Banned-word entries the list may hold.
pub const BANNED_ENTRIES_MAX: usize = 10_000;
/// Chars a banned-word entry may hold.
pub const BANNED_ENTRY_CHARS_MAX: usize = 100;

/// Connections one admin page holds at most.
pub const CONNECTIONS_PAGE_MAX: usize = 1000;
/// Connections one admin page holds when no limit is asked.
pub const CONNECTIONS_PAGE_DEFAULT: usize = 100;

/// Largest HTTP request body (a 100,000-char message in any JSON escaping).
pub const HTTP_BODY_BYTES_MAX: usize = FRAME_BYTES_MAX;
/// Descriptors kept below the open-file limit by default (`--fd-reserve`):
/// client connections never take them, so storage, the listeners and the
/// webhook can always open files and sockets; the default WebSocket cap
/// (`--max-connections`) is the limit less as many.
pub const FD_RESERVE_DEFAULT: u64 = 1_024;
/// A request head must be complete this long after its first byte
/// (against slowloris: trickling a byte at a time does not keep it open).
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to drain after close 1001.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

const _: () = assert!(OUTBOUND_QUEUE_BYTES_MAX >= FRAME_BYTES_MAX);
const _: () = assert!(READ_SCRATCH_BYTES >= 14, "a whole frame header fits the scratch buffer");
const _: () = assert!(HISTORY_LIMIT_MAX <= chatgw_storage::READ_LIMIT_MAX);
const _: () = assert!(SYNC_LIMIT_MAX < chatgw_storage::READ_LIMIT_MAX);
const _: () = assert!(CLIENT_MSG_ID_BYTES_MAX <= chatgw_storage::CLIENT_MSG_ID_BYTES_MAX);
const _: () = assert!(USERNAME_BYTES_MIN <= USERNAME_BYTES_MAX);
const _: () = assert!(USERNAME_BYTES_MAX <= chatgw_storage::USERNAME_BYTES_MAX, "storage keys on usernames");
const _: () = assert!(CONNECTIONS_PAGE_DEFAULT <= CONNECTIONS_PAGE_MAX);
const _: () = assert!(CALLS_IN_FLIGHT_PER_SHARD_MAX >= MESH_CALL_CAPACITY);

/// Channels of up to this many members get pushes for offline members
/// (larger ones are read on open, as with fan-out on read).
pub const PUSH_CHANNEL_MEMBERS_MAX: usize = 1_000;
/// Pushes to one user within this window of the first go as one, carrying
/// the newest message and a count; a push waits this long before it goes.
pub const PUSH_COALESCE: Duration = Duration::from_secs(1);
/// Outbox records a push worker reads at a time.
pub const PUSH_BATCH_MAX: usize = 512;
/// Pages of the outbox one round of the push worker reads at most (a
/// failing user's records are skipped, not waited on).
pub const PUSH_PAGES_PER_ROUND: usize = 16;
/// Retry backoff after a failed push: doubled per failure from the first,
/// up to the cap, each with jitter (half to all of it).
pub const PUSH_BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between push retries.
pub const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Tries, the first included, at a message's push check (its members'
/// owners recording pushes, then the pending record's removal) while the
/// server runs, each after a wait from `PUSH_BACKOFF_FIRST` doubling up
/// to `PUSH_BACKOFF_MAX` (about 2.5 minutes in all); past them the next
/// start checks again.
pub const PUSH_CHECK_TRIES: u32 = 10;
/// How long one webhook POST may take.
pub const PUSH_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Failed logins an account may have before each further try waits.
pub const LOGIN_FAILURES_FREE_PER_ACCOUNT: u32 = 5;
/// Failed logins one client IP may have (over any accounts) before each
/// further try waits.
pub const LOGIN_FAILURES_FREE_PER_IP: u32 = 20;
/// The first wait past the allowance; each further failure doubles it.
pub const LOGIN_BACKOFF_FIRST_MS: u64 = 1_000;
/// The longest wait, and how long a quiet key is remembered.
pub const LOGIN_BACKOFF_MAX_MS: u64 = 15 * 60 * 1_000;
/// Accounts and IPs the login throttle tracks at most (about 100 bytes
/// each), and addresses the signup throttle tracks at most.
pub const LOGIN_THROTTLE_KEYS_MAX: usize = 100_000;
/// Bytes each of the login and signup throttles' tables holds at most
/// (keys, values and their slots, estimated); the login throttle only
/// ever sees valid usernames (at most `USERNAME_BYTES_MAX`), so its count
/// bound comes first, and this one holds whatever its keys are.
pub const LOGIN_THROTTLE_BYTES_MAX: usize = 16 << 20;
/// Password hashes waiting for a hashing thread at most; past it a signup or
/// login is answered `overloaded`.
pub const HASH_QUEUE_MAX: usize = 64;

/// Channels in one `channel.list` page when the client names no `limit`.
pub const CHANNEL_LIST_DEFAULT: usize = 500;
/// Channels in one `channel.list` page at most.
pub const CHANNEL_LIST_MAX: usize = 1_000;
const _: () = assert!(CHANNEL_LIST_MAX < chatgw_storage::READ_LIMIT_MAX, "one more than a page is read");

/// Members a `Channel` shape lists at most (the lowest user ids); a
/// channel with more says `more_members: true`, and `channel.members`
/// pages through them all. 1,000 usernames of 32 chars are about 35 KB,
/// so any one channel's shape fits a reply many times over.
pub const CHANNEL_VIEW_MEMBERS_MAX: usize = 1_000;
/// Members in one `channel.members` page when the client names no `limit`.
pub const CHANNEL_MEMBERS_DEFAULT: usize = 500;
/// Members in one `channel.members` page at most.
pub const CHANNEL_MEMBERS_MAX: usize = 1_000;
const _: () = assert!(CHANNEL_VIEW_MEMBERS_MAX < chatgw_storage::READ_LIMIT_MAX, "one more than shown is read");
const _: () = assert!(CHANNEL_MEMBERS_MAX < chatgw_storage::READ_LIMIT_MAX, "one more than a page is read");
const _: () =
    assert!(CHANNEL_MEMBERS_MAX * (USERNAME_BYTES_MAX + 3) < READ_REPLY_BYTES_MAX, "a page of members fits a reply");

/// A configured JWT secret's shortest length (HS256 wants 256 bits).
pub const JWT_SECRET_BYTES_MIN: usize = 32;
/// A configured admin token's shortest length.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 16;

/// Dead pushes one admin retry moves back into each shard's outbox at most.
pub const DEAD_PUSH_RETRY_MAX: usize = 10_000;
/// Dead pushes one shard keeps at most: past it the oldest are dropped
/// (`chatgw_dead_pushes_dropped_total`), so a webhook that refuses
/// everything for weeks cannot fill the disk with them.
pub const DEAD_PUSHES_PER_SHARD_MAX: usize = 100_000;

/// People typing (a channel and a user each) one shard tracks for the
/// channels it owns, at most (about 100 bytes each); past it a new
/// `typing` start is answered `overloaded`. Each user's `typing` takes a
/// token of its rate limit, so a user fills at most its bucket's worth.
pub const TYPING_TRACKED_PER_SHARD_MAX: usize = 100_000;
/// The shortest `--typing-ttl-ms`: the expiry's timer wakes at most this
/// often.
pub const TYPING_TTL_MS_MIN: u64 = 100;
/// The longest `--typing-ttl-ms`: an hour (typing is seconds; the bound
/// keeps an expiry's instant from overflowing).
pub const TYPING_TTL_MS_MAX: u64 = 3_600_000;
/// Channels a push's `badge` reads at most (with `BADGE_MAX` messages).
pub const BADGE_CHANNELS_MAX: usize = 1_000;

/// Messages after a member's read pointer counted per channel at most
/// (`unread` and `unread_mentions` stop there: "1000+").
pub const UNREAD_COUNT_MAX: usize = 1_000;
/// A push's `badge` (the user's unread messages over all its channels)
/// counts up to this many, reading no more.
pub const BADGE_MAX: usize = 10_000;
const _: () = assert!(UNREAD_COUNT_MAX <= chatgw_storage::READ_LIMIT_MAX && BADGE_MAX >= UNREAD_COUNT_MAX);
/// Read pointers being written at once per shard, at most (each a write
/// riding the next group commit); past it a `channel.read` is answered
/// `overloaded`.
pub const READS_IN_FLIGHT_PER_SHARD_MAX: usize = 100_000;
