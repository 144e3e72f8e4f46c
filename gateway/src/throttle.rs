//! Login throttling against password guessing: failures are counted per
//! account and per client IP; past a free allowance each key must wait
//! before its next try, twice as long after each further failure (1 s, 2 s,
//! 4 s, … up to 15 min). A success clears the account's count (the IP's
//! stays: one account of its own must not reset an attacker's count). A
//! plain state machine; the time is an argument. The node keeps one, under
//! a lock: logins are rare next to messages, and a guesser spreads its
//! connections over every core.
//!
//! The check and the count are one step: [`LoginThrottle::begin`] checks
//! both keys and, in the same call (one lock acquisition for the node),
//! reserves the attempt as *pending*, which counts as a failure until
//! [`LoginThrottle::finish`] says how the hash came out. So guesses sent at
//! once cannot all pass while their hashes run: past the allowance a key
//! has at most one attempt in flight, and only once its wait is over.
//!
//! Both tables are bounded by count and by bytes (`limits`): past either
//! bound the quiet keys go first, then the quietest half.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::limits::{
    LOGIN_BACKOFF_FIRST_MS, LOGIN_BACKOFF_MAX_MS, LOGIN_FAILURES_FREE_PER_ACCOUNT, LOGIN_FAILURES_FREE_PER_IP,
    LOGIN_THROTTLE_BYTES_MAX, LOGIN_THROTTLE_KEYS_MAX,
};

/// Who a failure counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Account(Box<str>),
}

impl Key {
    /// What the key holds on the heap besides its table slot.
    fn heap_bytes(&self) -> usize {
        match self {
            Key::Ip(_) => 0,
            Key::Account(name) => name.len(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failed attempts counted.
    count: u32,
    /// Attempts let through whose outcome is not known yet: each counts as
    /// a failure until it is.
    pending: u32,
    /// No try before this (ms since the Unix epoch).
    blocked_until_ms: u64,
    last_ms: u64,
}

impl Failures {
    /// How long a new attempt must wait at `now_ms` (0: it may go).
    fn wait_ms(&self, free: u32, now_ms: u64) -> u64 {
        let blocked = self.blocked_until_ms.saturating_sub(now_ms);
        if blocked > 0 {
            return blocked;
        }
        // The attempts in flight count as failures: past the allowance,
        // one at a time. The wait told is the one the key will have if
        // they all fail.
        let counted = self.count.saturating_add(self.pending);
        if self.pending > 0 && counted > free { backoff_ms(counted, free).max(1) } else { 0 }
    }

    /// Whether the entry says nothing any more (it can be forgotten).
    fn is_empty(&self, now_ms: u64) -> bool {
        self.count == 0 && self.pending == 0 && self.blocked_until_ms <= now_ms
    }
}

/// A table slot's bytes, an estimate: the key and value inline, plus a
/// word of the map's own (control byte, load-factor slack).
const ENTRY_BYTES: usize = std::mem::size_of::<(Key, Failures)>() + 8;

/// How an attempt [`LoginThrottle::begin`] let through ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The password was wrong (or the attempt was abandoned while its
    /// hash ran): a failure for both keys.
    Failed,
    /// The password was right: the account's count is cleared, the IP's
    /// stays, less this attempt.
    Succeeded,
    /// No password was checked (the hashing queue was full, storage
    /// failed): the attempt counts for nothing.
    Untested,
}

/// The node's login throttle.
#[derive(Debug)]
pub struct LoginThrottle {
    failures: HashMap<Key, Failures>,
    /// Bytes the table holds, by [`ENTRY_BYTES`] per key plus its heap.
    bytes: usize,
    keys_max: usize,
    bytes_max: usize,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::with_bounds(LOGIN_THROTTLE_KEYS_MAX, LOGIN_THROTTLE_BYTES_MAX)
    }
}

/// The wait after `count` failures of a key allowed `free` of them.
fn backoff_ms(count: u32, free: u32) -> u64 {
    match count.checked_sub(free) {
        None | Some(0) => 0,
        Some(over) => LOGIN_BACKOFF_FIRST_MS.saturating_mul(1u64 << (over - 1).min(20)).min(LOGIN_BACKOFF_MAX_MS),
    }
}

impl LoginThrottle {
    /// An empty throttle holding at most `keys_max` keys and `bytes_max`
    /// bytes.
    pub fn with_bounds(keys_max: usize, bytes_max: usize) -> Self {
        LoginThrottle { failures: HashMap::new(), bytes: 0, keys_max: keys_max.max(2), bytes_max }
    }

    fn keys(ip: IpAddr, account: &str) -> [(Key, u32); 2] {
        [(Key::Ip(ip), LOGIN_FAILURES_FREE_PER_IP), (Key::Account(account.into()), LOGIN_FAILURES_FREE_PER_ACCOUNT)]
    }

    /// Checks whether a login from `ip` as `account` may be tried at
    /// `now_ms` and, if so, reserves it: the attempt counts as a failure
    /// until [`finish`](Self::finish) is called with its outcome (exactly
    /// once). `Err(wait_ms)` if one of the keys must wait first, or if the
    /// table is full of attempts in flight.
    pub fn begin(&mut self, ip: IpAddr, account: &str, now_ms: u64) -> Result<(), u64> {
        let keys = Self::keys(ip, account);
        let wait = keys
            .iter()
            .filter_map(|(key, free)| self.failures.get(key).map(|failures| failures.wait_ms(*free, now_ms)))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Err(wait);
        }
        let adding: usize = keys
            .iter()
            .filter(|(key, _)| !self.failures.contains_key(key))
            .map(|(key, _)| ENTRY_BYTES + key.heap_bytes())
            .sum();
        if adding > 0 && !self.make_room(adding, now_ms) {
            return Err(LOGIN_BACKOFF_FIRST_MS);
        }
        for (key, _) in keys {
            let heap = key.heap_bytes();
            let entry = self.failures.entry(key).or_insert_with(|| {
                self.bytes += ENTRY_BYTES + heap;
                Failures { count: 0, pending: 0, blocked_until_ms: 0, last_ms: now_ms }
            });
            entry.pending = entry.pending.saturating_add(1);
            entry.last_ms = now_ms;
        }
        Ok(())
    }

    /// Ends an attempt [`begin`](Self::begin) let through, at `now_ms`.
    pub fn finish(&mut self, ip: IpAddr, account: &str, outcome: Outcome, now_ms: u64) {
        for (key, free) in Self::keys(ip, account) {
            if outcome == Outcome::Failed && !self.failures.contains_key(&key) {
                // Pruned while in flight: the failure still counts.
                if !self.make_room(ENTRY_BYTES + key.heap_bytes(), now_ms) {
                    continue;
                }
                self.bytes += ENTRY_BYTES + key.heap_bytes();
                self.failures
                    .insert(key.clone(), Failures { count: 0, pending: 1, blocked_until_ms: 0, last_ms: now_ms });
            }
            let Some(entry) = self.failures.get_mut(&key) else { continue };
            entry.pending = entry.pending.saturating_sub(1);
            entry.last_ms = now_ms;
            match (outcome, &key) {
                (Outcome::Failed, _) => {
                    entry.count = entry.count.saturating_add(1);
                    entry.blocked_until_ms = entry.blocked_until_ms.max(now_ms + backoff_ms(entry.count, free));
                }
                (Outcome::Succeeded, Key::Account(_)) => {
                    entry.count = 0;
                    entry.blocked_until_ms = 0;
                }
                (Outcome::Succeeded, Key::Ip(_)) | (Outcome::Untested, _) => {}
            }
            if entry.is_empty(now_ms) {
                self.failures.remove(&key);
                self.bytes -= ENTRY_BYTES + key.heap_bytes();
            }
        }
    }

    /// Makes room for `adding` bytes and two keys: forgets keys quiet for
    /// the longest wait; if that is not enough, the quietest half. Keys
    /// with attempts in flight stay. False if there is still no room.
    fn make_room(&mut self, adding: usize, now_ms: u64) -> bool {
        let fits = |this: &Self| this.failures.len() + 2 <= this.keys_max && this.bytes + adding <= this.bytes_max;
        if fits(self) {
            return true;
        }
        self.retain(|failures| failures.pending > 0 || now_ms.saturating_sub(failures.last_ms) < LOGIN_BACKOFF_MAX_MS);
        if !fits(self) {
            let mut lasts: Vec<u64> = self
                .failures
                .values()
                .filter(|failures| failures.pending == 0)
                .map(|failures| failures.last_ms)
                .collect();
            if !lasts.is_empty() {
                let middle = lasts.len() / 2;
                let (_, cut, _) = lasts.select_nth_unstable(middle);
                let cut = *cut;
                self.retain(|failures| failures.pending > 0 || failures.last_ms > cut);
            }
        }
        fits(self)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Failures) -> bool) {
        let mut freed = 0;
        self.failures.retain(|key, failures| {
            let kept = keep(failures);
            if !kept {
                freed += ENTRY_BYTES + key.heap_bytes();
            }
            kept
        });
        self.bytes -= freed;
        if self.failures.capacity() > 4 * self.failures.len().max(64) {
            self.failures.shrink_to_fit();
        }
    }

    /// Keys (accounts and IPs) tracked now.
    pub fn keys_tracked(&self) -> usize {
        self.failures.len()
    }

    /// Bytes the table holds now (its estimate, which its bound is held to).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A signup bucket: tokens left and when they were counted.
type Bucket = (f64, u64);

/// A table slot's bytes in the signup throttle (fixed: its keys are IPs).
const BUCKET_ENTRY_BYTES: usize = std::mem::size_of::<(IpAddr, Bucket)>() + 8;

/// Signups per client IP: a token bucket of `per_minute` tokens, refilled
/// at that rate (0: no limit). Keys with a full bucket are forgotten first
/// when the table is full, then the quietest half; so it stays within its
/// count (`LOGIN_THROTTLE_KEYS_MAX`) and bytes (`LOGIN_THROTTLE_BYTES_MAX`)
/// however many addresses sign up.
#[derive(Debug)]
pub struct SignupThrottle {
    per_minute: u32,
    buckets: HashMap<IpAddr, Bucket>,
    keys_max: usize,
}

impl SignupThrottle {
    /// A throttle of `per_minute` signups per IP (0: none).
    pub fn new(per_minute: u32) -> Self {
        Self::with_bounds(per_minute, LOGIN_THROTTLE_KEYS_MAX, LOGIN_THROTTLE_BYTES_MAX)
    }

    /// A throttle of `per_minute` signups per IP holding at most `keys_max`
    /// addresses and `bytes_max` bytes.
    pub fn with_bounds(per_minute: u32, keys_max: usize, bytes_max: usize) -> Self {
        let keys_max = keys_max.min(bytes_max / BUCKET_ENTRY_BYTES).max(1);
        SignupThrottle { per_minute, buckets: HashMap::new(), keys_max }
    }

    /// Takes a signup from `ip` at `now_ms`, or answers how long to wait.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let burst = f64::from(self.per_minute);
        let per_ms = burst / 60_000.0;
        if self.buckets.len() >= self.keys_max && !self.buckets.contains_key(&ip) {
            self.buckets.retain(|_, (tokens, at)| *tokens + now_ms.saturating_sub(*at) as f64 * per_ms < burst);
            if self.buckets.len() >= self.keys_max {
                let mut ats: Vec<u64> = self.buckets.values().map(|(_, at)| *at).collect();
                let middle = ats.len() / 2;
                let (_, cut, _) = ats.select_nth_unstable(middle);
                let cut = *cut;
                self.buckets.retain(|_, (_, at)| *at > cut);
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now_ms));
        *tokens = (*tokens + now_ms.saturating_sub(*at) as f64 * per_ms).min(burst);
        *at = now_ms;
        if *tokens < 1.0 {
            return Err(((1.0 - *tokens) / per_ms).ceil() as u64);
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Bytes the table holds now (an estimate, as the login throttle's).
    pub fn bytes(&self) -> usize {
        self.buckets.len() * BUCKET_ENTRY_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    /// One attempt, begun and finished at once (no other in flight).
    fn attempt(throttle: &mut LoginThrottle, ip: IpAddr, account: &str, outcome: Outcome, now: u64) -> Result<(), u64> {
        throttle.begin(ip, account, now)?;
        throttle.finish(ip, account, outcome, now);
        Ok(())
    }

    #[test]
    fn an_account_waits_longer_after_each_failure_past_its_allowance() {
        let mut throttle = LoginThrottle::default();
        let mut now = 1_000_000;
        for _ in 0..LOGIN_FAILURES_FREE_PER_ACCOUNT {
            assert_eq!(attempt(&mut throttle, IP, "alice", Outcome::Failed, now), Ok(()));
        }
        assert_eq!(attempt(&mut throttle, IP, "alice", Outcome::Failed, now), Ok(()), "the allowance is free");
        assert_eq!(throttle.begin(IP, "alice", now), Err(LOGIN_BACKOFF_FIRST_MS));
        now += LOGIN_BACKOFF_FIRST_MS;
        attempt(&mut throttle, IP, "alice", Outcome::Failed, now).unwrap();
        assert_eq!(throttle.begin(IP, "alice", now), Err(2 * LOGIN_BACKOFF_FIRST_MS), "doubled");
        assert!(
            throttle.begin(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)), "alice", now).is_err(),
            "the account waits from any IP"
        );
        assert_eq!(attempt(&mut throttle, IP, "bob", Outcome::Failed, now), Ok(()), "the IP has failures to spare");
        now += 2 * LOGIN_BACKOFF_FIRST_MS;
        attempt(&mut throttle, IP, "alice", Outcome::Succeeded, now).unwrap();
        assert_eq!(attempt(&mut throttle, IP, "alice", Outcome::Failed, now), Ok(()), "a success cleared the count");
    }

    #[test]
    fn concurrent_attempts_count_as_failures_until_they_end() {
        let mut throttle = LoginThrottle::default();
        let now = 2_000_000;
        // Guesses sent at once: the allowance and one more go; the rest
        // wait as if those had failed already.
        let free = LOGIN_FAILURES_FREE_PER_ACCOUNT;
        let mut let_through = 0;
        let mut refused = Vec::new();
        for n in 0..64 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n as u32)));
            match throttle.begin(ip, "victim", now) {
                Ok(()) => let_through += 1,
                Err(wait) => refused.push(wait),
            }
        }
        assert_eq!(let_through, free + 1);
        assert_eq!(refused.len(), 64 - (free as usize + 1));
        assert!(refused.iter().all(|wait| *wait == LOGIN_BACKOFF_FIRST_MS), "{refused:?}");
        // They fail: the account waits, as after that many failures in turn.
        for n in 0..let_through {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n)));
            throttle.finish(ip, "victim", Outcome::Failed, now);
        }
        assert_eq!(throttle.begin(IP, "victim", now), Err(LOGIN_BACKOFF_FIRST_MS));
        // Past the allowance, one at a time even after the wait.
        let later = now + LOGIN_BACKOFF_FIRST_MS;
        throttle.begin(IP, "victim", later).unwrap();
        assert_eq!(throttle.begin(IP, "victim", later), Err(2 * LOGIN_BACKOFF_FIRST_MS));
        // A success ends the reservation and clears the account.
        throttle.finish(IP, "victim", Outcome::Succeeded, later);
        throttle.begin(IP, "victim", later).unwrap();
        throttle.finish(IP, "victim", Outcome::Untested, later);
    }

    #[test]
    fn successes_and_untested_attempts_leave_nothing_behind() {
        let mut throttle = LoginThrottle::default();
        for n in 0..100 {
            attempt(&mut throttle, IP, &format!("user{n}"), Outcome::Succeeded, 1_000).unwrap();
            attempt(&mut throttle, IP, &format!("user{n}"), Outcome::Untested, 1_000).unwrap();
        }
        assert_eq!(throttle.keys_tracked(), 0);
        assert_eq!(throttle.bytes(), 0);
        // 100 successes from one IP, and in flight at once: within the IP's
        // allowance only, as failures would be.
        let let_through = (0..100).filter(|n| throttle.begin(IP, &format!("user{n}"), 1_000).is_ok()).count();
        assert_eq!(let_through, LOGIN_FAILURES_FREE_PER_IP as usize + 1);
    }

    #[test]
    fn an_ip_spraying_accounts_is_throttled_and_waits_are_capped() {
        let mut throttle = LoginThrottle::default();
        let now = 5_000_000;
        for n in 0..LOGIN_FAILURES_FREE_PER_IP + 1 {
            attempt(&mut throttle, IP, &format!("user{n}"), Outcome::Failed, now).unwrap();
        }
        assert_eq!(throttle.begin(IP, "someone", now), Err(LOGIN_BACKOFF_FIRST_MS));
        assert_eq!(backoff_ms(1_000, 0), LOGIN_BACKOFF_MAX_MS);
    }

    #[test]
    fn signups_per_ip_come_at_their_rate_after_a_burst() {
        let mut throttle = SignupThrottle::new(6);
        for _ in 0..6 {
            throttle.take(IP, 0).unwrap();
        }
        assert_eq!(throttle.take(IP, 0), Err(10_000), "one every 10 s");
        throttle.take(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)), 0).unwrap();
        throttle.take(IP, 10_000).unwrap();
        let mut off = SignupThrottle::new(0);
        for _ in 0..1_000 {
            off.take(IP, 0).unwrap();
        }
    }

    #[test]
    fn the_table_stays_bounded_by_count() {
        let mut throttle = LoginThrottle::default();
        for n in 0..LOGIN_THROTTLE_KEYS_MAX as u64 + 10 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n)));
            attempt(&mut throttle, ip, &format!("user{n}"), Outcome::Failed, 1_000 + n).unwrap();
        }
        assert!(throttle.keys_tracked() <= LOGIN_THROTTLE_KEYS_MAX, "{}", throttle.keys_tracked());
        assert!(throttle.bytes() <= LOGIN_THROTTLE_BYTES_MAX);
    }

    #[test]
    fn the_table_stays_bounded_by_bytes_whatever_the_keys_hold() {
        // Before: 200 failed logins with 1.9 MB names grew the table by
        // 380 MB. Long keys now meet the byte bound long before the count.
        let bytes_max = 1 << 20;
        let mut throttle = LoginThrottle::with_bounds(100_000, bytes_max);
        let long = "x".repeat(64 << 10);
        for n in 0..200u64 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n)));
            let account = format!("{n}{long}");
            attempt(&mut throttle, ip, &account, Outcome::Failed, 1_000 + n).unwrap();
            assert!(throttle.bytes() <= bytes_max, "{} bytes after {n}", throttle.bytes());
        }
        assert!(
            throttle.keys_tracked() < 2 * 16,
            "at most 16 names of 64 KiB fit in 1 MiB: {}",
            throttle.keys_tracked()
        );
        let held: usize = throttle.failures.keys().map(|key| ENTRY_BYTES + key.heap_bytes()).sum();
        assert_eq!(held, throttle.bytes(), "the count of bytes is exact");
        // An attempt in flight is never pruned; a full table of them refuses.
        let mut full = LoginThrottle::with_bounds(3, usize::MAX);
        full.begin(IP, "one", 0).unwrap();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(full.begin(other, "two", 0), Err(LOGIN_BACKOFF_FIRST_MS));
        full.finish(IP, "one", Outcome::Failed, 0);
        full.begin(other, "two", LOGIN_BACKOFF_MAX_MS).unwrap();
    }

    #[test]
    fn the_signup_table_stays_bounded() {
        let mut throttle = SignupThrottle::with_bounds(1, 1_000, usize::MAX);
        for n in 0..10_000u64 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n)));
            // One signup each within the same minute: no bucket is full
            // again, so only the quietest-half cut keeps the bound.
            throttle.take(ip, n).unwrap();
            assert!(throttle.len() <= 1_000, "{} after {n}", throttle.len());
        }
        let by_bytes = SignupThrottle::with_bounds(1, usize::MAX, 100 * BUCKET_ENTRY_BYTES);
        assert_eq!(by_bytes.keys_max, 100);
    }
}
