//! Rate limits and flood control for `send` (protocol §5), kept by each
//! user's owner shard, so that they hold across the user's devices and the
//! HTTP API whichever cores those land on. A send from another core costs
//! one control round trip to the owner before it goes on (`Check`, moved by
//! `shard::abuse`). The limiter takes the time as an argument.
//!
//! - A token bucket per user: `--rate-limit` tokens a second up to
//!   `--rate-burst`; a send takes one, and with none left is refused with
//!   `rate_limited` and `retry_after_ms` (when the next token comes).
//! - Flooding: a user's same text more than `FLOOD_REPEATS_MAX` times within
//!   `FLOOD_WINDOW` is refused with `rate_limited` until the oldest of them
//!   leaves the window. The check counts over the user's last
//!   `FLOOD_LOG_MAX` sends in the window, whatever they were, so rotating
//!   among a few texts counts each of them (tracking a handful of distinct
//!   texts let a rotation of one more than that pass forever). A retry of
//!   one send (same text, same `client_msg_id`) is not a repeat: it gets its
//!   `duplicate` answer.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use chatgw_idgen::UserId;

use crate::error::ApiError;
use crate::limits::{FLOOD_LOG_MAX, FLOOD_REPEATS_MAX, FLOOD_WINDOW};

/// May this user (owned by the receiver) send a text of this hash now?
/// Answered with `Done` or `rate_limited`.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The sender.
    pub user_id: UserId,
    /// `text_hash` of the text.
    pub text_hash: u64,
    /// `text_hash` of its `client_msg_id`, if any.
    pub client_msg_id_hash: Option<u64>,
}

/// One send in a user's flood log.
#[derive(Debug, Clone, Copy)]
struct Sent {
    hash: u64,
    at: Instant,
    /// Its `client_msg_id` (hashed): a retry of the same send is not a
    /// repeat.
    id: Option<u64>,
}

#[derive(Debug)]
struct Sender {
    tokens: f64,
    refilled: Instant,
    /// The last sends within `FLOOD_WINDOW`, oldest first, at most
    /// `FLOOD_LOG_MAX`.
    recent: VecDeque<Sent>,
}

/// One core's limiter.
#[derive(Debug)]
pub struct Limiter {
    per_s: f64,
    burst: f64,
    senders: RefCell<HashMap<UserId, Sender>>,
}

/// The hash the flood check compares texts by.
pub fn text_hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

impl Limiter {
    /// A limiter of `per_s` sends a second with bursts of `burst`; a rate
    /// of 0 turns the bucket off (the flood check stays).
    pub fn new(per_s: u32, burst: u32) -> Self {
        Limiter { per_s: f64::from(per_s), burst: f64::from(burst.max(1)), senders: RefCell::new(HashMap::new()) }
    }

    /// Takes a token for `user` sending a text of hash `hash` (`text_hash`),
    /// with a `client_msg_id` of hash `id`, at `now`, or says why not.
    pub fn check(&self, user: UserId, hash: u64, id: Option<u64>, now: Instant) -> Result<(), ApiError> {
        let mut senders = self.senders.borrow_mut();
        let sender = senders.entry(user).or_insert_with(|| Sender {
            tokens: self.burst,
            refilled: now,
            recent: VecDeque::new(),
        });
        if self.per_s > 0.0 {
            let elapsed = now.saturating_duration_since(sender.refilled).as_secs_f64();
            sender.tokens = (sender.tokens + elapsed * self.per_s).min(self.burst);
            sender.refilled = now;
            if sender.tokens < 1.0 {
                let wait_ms = ((1.0 - sender.tokens) / self.per_s * 1000.0).ceil() as u64;
                return Err(ApiError::rate_limited(
                    format!("at most {} messages a second (bursts of {})", self.per_s, self.burst),
                    wait_ms,
                ));
            }
        }
        while sender.recent.front().is_some_and(|sent| now.saturating_duration_since(sent.at) >= FLOOD_WINDOW) {
            sender.recent.pop_front();
        }
        let retry = id.is_some() && sender.recent.iter().any(|sent| sent.hash == hash && sent.id == id);
        if !retry {
            let mut same = sender.recent.iter().filter(|sent| sent.hash == hash);
            if let Some(oldest) = same.next()
                && same.count() + 1 >= FLOOD_REPEATS_MAX as usize
            {
                let ends = oldest.at + FLOOD_WINDOW;
                return Err(ApiError::rate_limited(
                    format!("the same text at most {FLOOD_REPEATS_MAX} times in {} s", FLOOD_WINDOW.as_secs()),
                    ends.saturating_duration_since(now).as_millis() as u64,
                ));
            }
            if sender.recent.len() == FLOOD_LOG_MAX {
                sender.recent.pop_front();
            }
            sender.recent.push_back(Sent { hash, at: now, id });
        }
        if self.per_s > 0.0 {
            sender.tokens -= 1.0;
        }
        Ok(())
    }

    /// Forgets users whose bucket is full again and who have no text in a
    /// flood window (so the map holds recent senders only).
    pub fn prune(&self, now: Instant) {
        self.senders.borrow_mut().retain(|_, sender| {
            let full = self.per_s <= 0.0
                || sender.tokens + now.saturating_duration_since(sender.refilled).as_secs_f64() * self.per_s
                    >= self.burst;
            let flooding = sender.recent.iter().any(|sent| now.saturating_duration_since(sent.at) < FLOOD_WINDOW);
            !full || flooding
        });
    }

    /// Users tracked now.
    pub fn tracked(&self) -> usize {
        self.senders.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let limiter = Limiter::new(10, 3);
        let start = Instant::now();
        let user = UserId(1);
        for n in 0..3 {
            limiter.check(user, text_hash(&format!("m{n}")), None, start).unwrap();
        }
        let refused = limiter.check(user, text_hash("m3"), None, start).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_ms, Some(100), "one token comes every 100 ms");
        limiter.check(user, text_hash("m4"), None, start + Duration::from_millis(100)).unwrap();
        assert!(limiter.check(user, text_hash("m5"), None, start + Duration::from_millis(120)).is_err());
        limiter.check(UserId(2), text_hash("other user"), None, start).unwrap();
    }

    #[test]
    fn the_same_text_too_often_is_a_flood() {
        let limiter = Limiter::new(0, 1);
        let start = Instant::now();
        let user = UserId(1);
        for n in 0..FLOOD_REPEATS_MAX {
            limiter.check(user, text_hash("buy now"), None, start + Duration::from_secs(u64::from(n))).unwrap();
        }
        let refused = limiter.check(user, text_hash("buy now"), None, start + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_ms, Some(20_000), "until the window from the first ends");
        limiter.check(user, text_hash("something else"), None, start + Duration::from_secs(10)).unwrap();
        limiter.check(user, text_hash("buy now"), None, start + FLOOD_WINDOW).unwrap();
        // Retries of one send (same client_msg_id) are not repeats.
        for _ in 0..10 {
            let retry = Some(text_hash("c-1"));
            limiter.check(user, text_hash("retried"), retry, start + FLOOD_WINDOW).unwrap();
        }
        assert!(limiter.check(user, text_hash("retried"), Some(text_hash("c-2")), start + FLOOD_WINDOW).is_ok());
    }

    #[test]
    fn rotating_among_a_few_texts_is_a_flood_too() {
        let limiter = Limiter::new(0, 1);
        let start = Instant::now();
        let user = UserId(1);
        let texts: Vec<u64> = (0..5).map(|n| text_hash(&format!("ad {n}"))).collect();
        let mut sent = 0;
        let refused = loop {
            let at = start + Duration::from_millis(sent * 100);
            match limiter.check(user, texts[sent as usize % texts.len()], None, at) {
                Ok(()) => sent += 1,
                Err(error) => break error,
            }
            assert!(sent < 100, "a rotation of five texts was never flagged");
        };
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(sent, 5 * u64::from(FLOOD_REPEATS_MAX), "each text of the rotation counts");
    }

    #[test]
    fn pruning_forgets_quiet_users_only() {
        let limiter = Limiter::new(10, 2);
        let start = Instant::now();
        limiter.check(UserId(1), text_hash("a"), None, start).unwrap();
        limiter.check(UserId(2), text_hash("b"), None, start).unwrap();
        limiter.prune(start + Duration::from_secs(5));
        assert_eq!(limiter.tracked(), 2, "both have a text in the flood window");
        limiter.prune(start + FLOOD_WINDOW + Duration::from_secs(1));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn the_bucket_refills_up_to_the_burst_only() {
        let limiter = Limiter::new(10, 2);
        let start = Instant::now();
        let user = UserId(1);
        limiter.check(user, text_hash("first"), None, start).unwrap();
        // A long quiet spell refills up to two tokens, not a minute's worth.
        let later = start + Duration::from_secs(60);
        for n in 0..2 {
            limiter.check(user, text_hash(&format!("m{n}")), None, later).unwrap();
        }
        let refused = limiter.check(user, text_hash("m2"), None, later).unwrap_err();
        assert_eq!(refused.retry_after_ms, Some(100));
        // Half a token after 50 ms is not a send; a whole one after 100 ms is.
        assert!(limiter.check(user, text_hash("m3"), None, later + Duration::from_millis(50)).is_err());
        limiter.check(user, text_hash("m4"), None, later + Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn a_rate_of_zero_turns_the_bucket_off_but_not_the_flood_check() {
        let limiter = Limiter::new(0, 1);
        let now = Instant::now();
        for n in 0..100 {
            limiter.check(UserId(1), text_hash(&format!("m{n}")), None, now).unwrap();
        }
        for _ in 0..FLOOD_REPEATS_MAX {
            limiter.check(UserId(1), text_hash("same"), None, now).unwrap();
        }
        assert!(limiter.check(UserId(1), text_hash("same"), None, now).is_err());
    }
}
