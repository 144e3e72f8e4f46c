//! The clock a [`crate::Generator`] reads, injectable for tests.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// The generator never trusts it to be monotonic: it may step back, stand
/// still, or jump ahead.
pub trait Clock {
    /// Milliseconds since the Unix epoch, now.
    fn now_unix_ms(&mut self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&mut self) -> u64 {
        // A clock before 1970 reads as 0; the generator then runs on its
        // logical clock until the wall clock is sane again.
        SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
    }
}

impl<F: FnMut() -> u64> Clock for F {
    fn now_unix_ms(&mut self) -> u64 {
        self()
    }
}
