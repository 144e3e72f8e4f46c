//! A token bucket: `per_s` tokens a second, up to `burst`, taken one at a
//! time. The time is an argument, so tests step it.

use std::time::Instant;

/// A bucket's rate and size; a rate of 0 turns it off (every take passes).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Tokens a second.
    pub per_s: f64,
    /// The most tokens the bucket holds (at least 1).
    pub burst: f64,
}

impl Rate {
    /// `per_s` a second with bursts of `burst`.
    pub fn new(per_s: f64, burst: f64) -> Self {
        Rate { per_s, burst: burst.max(1.0) }
    }

    /// Whether the rate limits anything.
    pub fn is_on(&self) -> bool {
        self.per_s > 0.0
    }
}

/// One bucket's level.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Bucket { tokens: rate.burst, refilled: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_s).min(rate.burst);
        self.refilled = now;
    }

    /// Whether a token is there now (without taking it); `Err` holds the
    /// milliseconds until the next one.
    pub fn ready(&mut self, rate: Rate, now: Instant) -> Result<(), u64> {
        if !rate.is_on() {
            return Ok(());
        }
        self.refill(rate, now);
        if self.tokens < 1.0 {
            return Err(((1.0 - self.tokens) / rate.per_s * 1000.0).ceil() as u64);
        }
        Ok(())
    }

    /// Takes a token (after `ready` said there is one).
    pub fn take(&mut self, rate: Rate) {
        if rate.is_on() {
            self.tokens -= 1.0;
        }
    }

    /// Whether the bucket is full again by `now` (so it can be forgotten).
    pub fn is_full(&self, rate: Rate, now: Instant) -> bool {
        !rate.is_on()
            || self.tokens + now.saturating_duration_since(self.refilled).as_secs_f64() * rate.per_s >= rate.burst
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_full_again() {
        let rate = Rate::new(10.0, 3.0);
        let start = Instant::now();
        let mut bucket = Bucket::full(rate, start);
        for _ in 0..3 {
            bucket.ready(rate, start).unwrap();
            bucket.take(rate);
        }
        assert_eq!(bucket.ready(rate, start), Err(100), "one token comes every 100 ms");
        assert!(!bucket.is_full(rate, start + Duration::from_millis(200)));
        assert!(bucket.ready(rate, start + Duration::from_millis(100)).is_ok());
        assert!(bucket.is_full(rate, start + Duration::from_millis(300)));
    }

    #[test]
    fn a_rate_of_zero_lets_everything_pass() {
        let rate = Rate::new(0.0, 0.0);
        let now = Instant::now();
        let mut bucket = Bucket::full(rate, now);
        for _ in 0..1_000 {
            bucket.ready(rate, now).unwrap();
            bucket.take(rate);
        }
        assert!(bucket.is_full(rate, now));
    }
}
