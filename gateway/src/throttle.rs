//! Login throttling against password guessing: failures are counted per
//! account and per client IP; past a free allowance each key must wait
//! before its next try, twice as long after each further failure (1 s, 2 s,
//! 4 s, … up to 15 min). A success clears the account's count (the IP's
//! stays: one account of its own must not reset an attacker's count). A
//! plain state machine; the time is an argument. The node keeps one, under
//! a lock: logins are rare next to messages, and a guesser spreads its
//! connections over every core.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::limits::{
    LOGIN_BACKOFF_FIRST_MS, LOGIN_BACKOFF_MAX_MS, LOGIN_FAILURES_FREE_PER_ACCOUNT, LOGIN_FAILURES_FREE_PER_IP,
    LOGIN_THROTTLE_KEYS_MAX,
};

/// Who a failure counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Account(Box<str>),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// No try before this (ms since the Unix epoch).
    blocked_until_ms: u64,
    last_ms: u64,
}

/// The node's login throttle.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: HashMap<Key, Failures>,
}

/// The wait after `count` failures of a key allowed `free` of them.
fn backoff_ms(count: u32, free: u32) -> u64 {
    match count.checked_sub(free) {
        None | Some(0) => 0,
        Some(over) => LOGIN_BACKOFF_FIRST_MS.saturating_mul(1u64 << (over - 1).min(20)).min(LOGIN_BACKOFF_MAX_MS),
    }
}

impl LoginThrottle {
    /// Whether a login from `ip` as `account` may be tried at `now_ms`;
    /// `Err(wait_ms)` if one of them must wait.
    pub fn check(&self, ip: IpAddr, account: &str, now_ms: u64) -> Result<(), u64> {
        let wait = [Key::Ip(ip), Key::Account(account.into())]
            .iter()
            .filter_map(|key| self.failures.get(key))
            .map(|failures| failures.blocked_until_ms.saturating_sub(now_ms))
            .max()
            .unwrap_or(0);
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    /// Counts a failed login from `ip` as `account` at `now_ms`.
    pub fn failed(&mut self, ip: IpAddr, account: &str, now_ms: u64) {
        if self.failures.len() + 2 > LOGIN_THROTTLE_KEYS_MAX {
            self.prune(now_ms);
        }
        for (key, free) in
            [(Key::Ip(ip), LOGIN_FAILURES_FREE_PER_IP), (Key::Account(account.into()), LOGIN_FAILURES_FREE_PER_ACCOUNT)]
        {
            let entry = self.failures.entry(key).or_insert(Failures { count: 0, blocked_until_ms: 0, last_ms: now_ms });
            entry.count = entry.count.saturating_add(1);
            entry.last_ms = now_ms;
            entry.blocked_until_ms = now_ms + backoff_ms(entry.count, free);
        }
    }

    /// Clears `account`'s failures after a good login.
    pub fn succeeded(&mut self, account: &str) {
        self.failures.remove(&Key::Account(account.into()));
    }

    /// Forgets keys quiet for the longest wait; if that frees nothing, the
    /// quietest half (so the table stays bounded under a spray of keys).
    fn prune(&mut self, now_ms: u64) {
        self.failures.retain(|_, failures| now_ms.saturating_sub(failures.last_ms) < LOGIN_BACKOFF_MAX_MS);
        if self.failures.len() + 2 > LOGIN_THROTTLE_KEYS_MAX {
            let mut lasts: Vec<u64> = self.failures.values().map(|failures| failures.last_ms).collect();
            let middle = lasts.len() / 2;
            let (_, cut, _) = lasts.select_nth_unstable(middle);
            let cut = *cut;
            self.failures.retain(|_, failures| failures.last_ms > cut);
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Signups per client IP: a token bucket of `per_minute` tokens, refilled
/// at that rate (0: no limit). Keys with a full bucket are forgotten.
#[derive(Debug)]
pub struct SignupThrottle {
    per_minute: u32,
    buckets: HashMap<IpAddr, (f64, u64)>,
}

impl SignupThrottle {
    /// A throttle of `per_minute` signups per IP (0: none).
    pub fn new(per_minute: u32) -> Self {
        SignupThrottle { per_minute, buckets: HashMap::new() }
    }

    /// Takes a signup from `ip` at `now_ms`, or answers how long to wait.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let burst = f64::from(self.per_minute);
        let per_ms = burst / 60_000.0;
        if self.buckets.len() >= LOGIN_THROTTLE_KEYS_MAX {
            self.buckets.retain(|_, (tokens, at)| *tokens + now_ms.saturating_sub(*at) as f64 * per_ms < burst);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn an_account_waits_longer_after_each_failure_past_its_allowance() {
        let mut throttle = LoginThrottle::default();
        let mut now = 1_000_000;
        for _ in 0..LOGIN_FAILURES_FREE_PER_ACCOUNT {
            assert_eq!(throttle.check(IP, "alice", now), Ok(()));
            throttle.failed(IP, "alice", now);
        }
        assert_eq!(throttle.check(IP, "alice", now), Ok(()), "the allowance is free");
        throttle.failed(IP, "alice", now);
        assert_eq!(throttle.check(IP, "alice", now), Err(LOGIN_BACKOFF_FIRST_MS));
        now += LOGIN_BACKOFF_FIRST_MS;
        throttle.failed(IP, "alice", now);
        assert_eq!(throttle.check(IP, "alice", now), Err(2 * LOGIN_BACKOFF_FIRST_MS), "doubled");
        assert!(
            throttle.check(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)), "alice", now).is_err(),
            "the account waits from any IP"
        );
        assert_eq!(throttle.check(IP, "bob", now), Ok(()), "the IP has failures to spare");
        throttle.succeeded("alice");
        assert_eq!(throttle.check(IP, "alice", now), Ok(()));
    }

    #[test]
    fn an_ip_spraying_accounts_is_throttled_and_waits_are_capped() {
        let mut throttle = LoginThrottle::default();
        let now = 5_000_000;
        for n in 0..LOGIN_FAILURES_FREE_PER_IP + 1 {
            throttle.failed(IP, &format!("user{n}"), now);
        }
        assert_eq!(throttle.check(IP, "someone", now), Err(LOGIN_BACKOFF_FIRST_MS));
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
    fn the_table_stays_bounded() {
        let mut throttle = LoginThrottle::default();
        for n in 0..LOGIN_THROTTLE_KEYS_MAX as u64 + 10 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n)));
            throttle.failed(ip, "x", 1_000 + n);
        }
        assert!(throttle.len() <= LOGIN_THROTTLE_KEYS_MAX, "{}", throttle.len());
    }
}
