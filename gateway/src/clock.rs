//! Wall-clock time as the gateway reads it. Services never call it: they
//! take the time as an argument, so tests drive them with any clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The clock the shards' id generators read: the system's, moved by
/// `Config::fault_id_clock_offset_ms` (a test aid, 0 in production: a test
/// restarts a server with its clock behind).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdClock {
    /// Milliseconds added to the system clock (negative: behind it).
    pub offset_ms: i64,
}

impl chatgw_idgen::Clock for IdClock {
    fn now_unix_ms(&mut self) -> u64 {
        now_ms().saturating_add_signed(self.offset_ms)
    }
}
