//! The bit layout of a Snowflake id: its epoch and the widths of its fields.

/// The custom epoch: 2026-01-01T00:00:00Z, in milliseconds since the Unix
/// epoch. 41 bits of milliseconds from here last until the year 2095.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Bits of milliseconds since [`EPOCH_MS`].
pub const TIME_BITS: u32 = 41;
/// Bits of worker id (node bits plus shard bits).
pub const WORKER_BITS: u32 = 10;
/// Bits of per-millisecond sequence.
pub const SEQUENCE_BITS: u32 = 12;
/// Ids one worker can make in one millisecond.
pub const SEQUENCE_PER_MS: u64 = 1 << SEQUENCE_BITS;
/// The largest millisecond offset (from [`EPOCH_MS`]) an id can carry.
pub const TIME_MAX_MS: u64 = (1 << TIME_BITS) - 1;

const _: () = assert!(TIME_BITS + WORKER_BITS + SEQUENCE_BITS == 63);
