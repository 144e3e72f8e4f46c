//! Rate limits and flood control for `send` (protocol §5), and the rate of
//! channel changes (`channel.create`, `channel.add_members`), kept by each
//! user's owner shard, so that they hold across the user's devices and the
//! HTTP API whichever cores those land on. A send or change from another
//! core costs one control round trip to the owner before it goes on
//! (`Check`, moved by `shard::abuse`). The limiter takes the time as an
//! argument.
//!
//! - Channel changes: a token bucket per user of `--channel-changes-per-min`
//!   a minute, bursts of as many; past it `rate_limited` with
//!   `retry_after_ms`.
//!
//! - A token bucket per user: `--rate-limit` tokens a second up to
//!   `--rate-burst`; a send takes one (and so does `typing`,
//!   `check_command`), and with none left is refused with
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
use crate::services::bucket::{Bucket, Rate};

/// What a user (owned by the receiver) asks to do now; answered with
/// `Done` or `rate_limited`.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// Send a text of this hash.
    Send {
        /// The sender.
        user_id: UserId,
        /// `text_hash` of the text.
        text_hash: u64,
        /// `text_hash` of its `client_msg_id`, if any.
        client_msg_id_hash: Option<u64>,
    },
    /// Create a channel or add members to one.
    ChannelChange {
        /// Who asks.
        user_id: UserId,
    },
    /// Any other command that counts toward the user's rate limit
    /// (`typing`): a token of the send bucket, no flood check.
    Command {
        /// Who asks.
        user_id: UserId,
    },
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
    bucket: Bucket,
    /// The last sends within `FLOOD_WINDOW`, oldest first, at most
    /// `FLOOD_LOG_MAX`.
    recent: VecDeque<Sent>,
}

/// One core's limiter.
#[derive(Debug)]
pub struct Limiter {
    sends: Rate,
    senders: RefCell<HashMap<UserId, Sender>>,
    changes: Rate,
    changers: RefCell<HashMap<UserId, Bucket>>,
}

/// `user`'s entry in the send bucket's table (made full if new), once its
/// bucket holds a token at `now`; else `rate_limited`, saying "at most N
/// `what` a second". The token is not taken yet.
fn ready_sender<'a>(
    senders: &'a mut HashMap<UserId, Sender>,
    rate: Rate,
    user: UserId,
    now: Instant,
    what: &str,
) -> Result<&'a mut Sender, ApiError> {
    let sender =
        senders.entry(user).or_insert_with(|| Sender { bucket: Bucket::full(rate, now), recent: VecDeque::new() });
    if let Err(wait_ms) = sender.bucket.ready(rate, now) {
        return Err(ApiError::rate_limited(
            format!("at most {} {what} a second (bursts of {})", rate.per_s, rate.burst),
            wait_ms,
        ));
    }
    Ok(sender)
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
        Limiter {
            sends: Rate::new(f64::from(per_s), f64::from(burst)),
            senders: RefCell::new(HashMap::new()),
            changes: Rate::new(0.0, 1.0),
            changers: RefCell::new(HashMap::new()),
        }
    }

    /// The same, with channel changes limited to `per_min` a minute (bursts
    /// of as many; 0 for no limit).
    pub fn with_channel_changes(mut self, per_min: u32) -> Self {
        self.changes = Rate::new(f64::from(per_min) / 60.0, f64::from(per_min));
        self
    }

    /// Takes a token for `user` creating a channel or adding members at
    /// `now`, or says why not.
    pub fn check_channel_change(&self, user: UserId, now: Instant) -> Result<(), ApiError> {
        let rate = self.changes;
        let mut changers = self.changers.borrow_mut();
        let bucket = changers.entry(user).or_insert_with(|| Bucket::full(rate, now));
        if let Err(wait_ms) = bucket.ready(rate, now) {
            return Err(ApiError::rate_limited(
                format!("at most {} channel creations and member additions a minute", rate.burst),
                wait_ms,
            ));
        }
        bucket.take(rate);
        Ok(())
    }

    /// Takes a token for `user` sending a text of hash `hash` (`text_hash`),
    /// with a `client_msg_id` of hash `id`, at `now`, or says why not.
    pub fn check(&self, user: UserId, hash: u64, id: Option<u64>, now: Instant) -> Result<(), ApiError> {
        let mut senders = self.senders.borrow_mut();
        let rate = self.sends;
        let sender = ready_sender(&mut senders, rate, user, now, "messages")?;
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
        sender.bucket.take(rate);
        Ok(())
    }

    /// Takes a token of `user`'s send bucket for a command that is not a
    /// send (`typing`) at `now`, or says why not. No flood check: there is
    /// no text.
    pub fn check_command(&self, user: UserId, now: Instant) -> Result<(), ApiError> {
        let mut senders = self.senders.borrow_mut();
        let rate = self.sends;
        ready_sender(&mut senders, rate, user, now, "messages and commands")?.bucket.take(rate);
        Ok(())
    }

    /// Forgets users whose bucket is full again and who have no text in a
    /// flood window (so the map holds recent senders only).
    pub fn prune(&self, now: Instant) {
        self.changers.borrow_mut().retain(|_, bucket| !bucket.is_full(self.changes, now));
        self.senders.borrow_mut().retain(|_, sender| {
            let full = sender.bucket.is_full(self.sends, now);
            let flooding = sender.recent.iter().any(|sent| now.saturating_duration_since(sent.at) < FLOOD_WINDOW);
            !full || flooding
        });
    }

    /// Users tracked now.
    pub fn tracked(&self) -> usize {
        self.senders.borrow().len() + self.changers.borrow().len()
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
    fn other_commands_take_tokens_of_the_send_bucket() {
        let limiter = Limiter::new(10, 3);
        let start = Instant::now();
        let user = UserId(1);
        limiter.check_command(user, start).unwrap();
        limiter.check_command(user, start).unwrap();
        limiter.check(user, text_hash("one send left"), None, start).unwrap();
        let refused = limiter.check_command(user, start).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_ms, Some(100));
        assert!(limiter.check(user, text_hash("nor a send"), None, start).is_err(), "one bucket for both");
        limiter.check_command(user, start + Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn channel_changes_have_a_bucket_of_their_own() {
        let limiter = Limiter::new(0, 1).with_channel_changes(6);
        let start = Instant::now();
        let user = UserId(1);
        for _ in 0..6 {
            limiter.check_channel_change(user, start).unwrap();
        }
        let refused = limiter.check_channel_change(user, start).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_ms, Some(10_000), "six a minute: one every 10 s");
        limiter.check(user, text_hash("sends are counted apart"), None, start).unwrap();
        limiter.check_channel_change(UserId(2), start).unwrap();
        limiter.check_channel_change(user, start + Duration::from_secs(10)).unwrap();
        limiter.prune(start + Duration::from_secs(120));
        assert_eq!(limiter.tracked(), 0, "full buckets and quiet senders are forgotten");
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
