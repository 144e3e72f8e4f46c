//! Snowflake ids for chatgw, and the typed ids that ride on them.
//!
//! A Snowflake id is a 63-bit integer (the sign bit stays zero so that every
//! id also fits an `i64`):
//!
//! ```text
//!  63        22 21       12 11          0
//! +-----------+-----------+-------------+
//! | 41 bits ms | 10 bits    | 12 bits     |
//! | since      | worker     | sequence    |
//! | EPOCH_MS   | node|shard |             |
//! +-----------+-----------+-------------+
//! ```
//!
//! Sorting ids sorts them by creation time; ids from one [`Generator`] are
//! strictly increasing and never repeat, also when the wall clock steps back.
//! This crate does no I/O beyond reading the clock.

mod clock;
mod ids;
mod layout;
mod snowflake;

pub use clock::{Clock, SystemClock};
pub use ids::{ChannelId, IdParseError, MessageId, ShardId, UserId};
pub use layout::{Decoded, Layout, LayoutError, WorkerId, max_id_at, min_id_at};
pub use snowflake::Generator;

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
