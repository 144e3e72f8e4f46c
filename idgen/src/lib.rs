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

mod bits;
mod clock;
mod ids;
mod layout;
mod snowflake;

pub use bits::{EPOCH_MS, SEQUENCE_BITS, SEQUENCE_PER_MS, TIME_BITS, TIME_MAX_MS, WORKER_BITS};
pub use clock::{Clock, SystemClock};
pub use ids::{ChannelId, IdParseError, MessageId, ShardId, UserId};
pub use layout::{Decoded, Layout, LayoutError, WorkerId, max_id_at, min_id_at};
pub use snowflake::Generator;
