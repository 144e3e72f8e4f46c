//! Push to offline members (protocol §4): what the outbox worker decides,
//! as plain functions. The worker itself, the outbox writes and the
//! webhook POSTs are `shard::push`.
//!
//! Once a message is stored and fanned out, its channel's owner sends each
//! member's owner shard the members it owns (`Check`, O(cores) messages).
//! That shard knows the member's presence: for each member with no
//! connected device it writes an outbox record through its group commit.
//! Its worker reads the outbox in order, coalesces one user's records
//! within `PUSH_COALESCE` into one push (the newest message and a count),
//! POSTs it with an `Idempotency-Key` of recipient and newest message, and
//! deletes the records only after a 2xx. Failures back off exponentially
//! with jitter. Records live in RocksDB: a restart, or a kill -9, resends
//! what was not confirmed.
//!
//! The outbox is bounded: a user keeps at most `OUTBOX_PER_USER_MAX`
//! records (a newer one coalesces the oldest away: the user's push carries
//! the newest message anyway), and a shard at most `--max-outbox-per-shard`
//! (past it the shard's oldest records expire). Both are counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chatgw_idgen::{ChannelId, MessageId, UserId};
use chatgw_storage::OutboxEntry;

use crate::limits;

/// A message was stored in a channel with these members (owned by the
/// receiver): record a push for each with no connected device.
#[derive(Debug)]
pub struct Check {
    /// The channel.
    pub channel_id: ChannelId,
    /// The message.
    pub message_id: MessageId,
    /// Members owned by the receiver (the sender left out).
    pub members: Vec<UserId>,
}

/// The push ids each user has in one shard's outbox, oldest first: what
/// the bounds are enforced with (built from the outbox at start).
#[derive(Debug, Default)]
pub struct OutboxIndex {
    by_user: HashMap<UserId, VecDeque<u64>>,
    len: usize,
}

impl OutboxIndex {
    /// Adds a record (push ids grow, so it goes last unless it is an old
    /// one coming back, a dead push retried).
    pub fn insert(&mut self, user: UserId, push_id: u64) {
        let ids = self.by_user.entry(user).or_default();
        match ids.back() {
            Some(last) if *last > push_id => {
                let at = ids.partition_point(|id| *id < push_id);
                ids.insert(at, push_id);
            }
            _ => ids.push_back(push_id),
        }
        self.len += 1;
    }

    /// Removes a record; false if it was not there.
    pub fn remove(&mut self, user: UserId, push_id: u64) -> bool {
        let Some(ids) = self.by_user.get_mut(&user) else { return false };
        let Some(at) = ids.iter().position(|id| *id == push_id) else { return false };
        ids.remove(at);
        if ids.is_empty() {
            self.by_user.remove(&user);
        }
        self.len -= 1;
        true
    }

    /// Takes out the oldest records of `user` that must go so that one
    /// more fits under `per_user_max`; returns their push ids.
    pub fn make_room(&mut self, user: UserId, per_user_max: usize) -> Vec<u64> {
        let Some(ids) = self.by_user.get_mut(&user) else { return Vec::new() };
        let over = (ids.len() + 1).saturating_sub(per_user_max.max(1));
        let dropped: Vec<u64> = ids.drain(..over).collect();
        if ids.is_empty() {
            self.by_user.remove(&user);
        }
        self.len -= dropped.len();
        dropped
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records `user` has.
    pub fn of(&self, user: UserId) -> usize {
        self.by_user.get(&user).map_or(0, VecDeque::len)
    }
}

/// One push: a user's records coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The recipient.
    pub user_id: UserId,
    /// The newest message's record.
    pub newest: OutboxEntry,
    /// Every record it stands for.
    pub push_ids: Vec<u64>,
}

/// Groups records (in outbox order) into pushes: one user's records within
/// `window_ms` of that user's first. Only records at least `window_ms` old
/// at `now_ms` go (a push waits for what may coalesce with it); the rest,
/// and everything after a user's first held record, wait for a later round
/// so that order per user holds.
pub fn coalesce(entries: &[OutboxEntry], now_ms: u64, window_ms: u64) -> Vec<Push> {
    let mut pushes: Vec<Push> = Vec::new();
    // User → (its push's index, when its first record was made).
    let mut open: HashMap<UserId, (usize, u64)> = HashMap::new();
    let mut held: HashSet<UserId> = HashSet::new();
    for entry in entries {
        if held.contains(&entry.user_id) {
            continue;
        }
        match open.get(&entry.user_id) {
            Some(&(index, first_at)) if entry.created_at_ms <= first_at + window_ms => {
                let push = &mut pushes[index];
                if entry.message_id >= push.newest.message_id {
                    push.newest = *entry;
                }
                push.push_ids.push(entry.push_id);
            }
            // Past the push's window: a push of its own, in a later round.
            Some(_) => {
                held.insert(entry.user_id);
            }
            // Too young: wait for what may coalesce with it.
            None if now_ms < entry.created_at_ms + window_ms => {
                held.insert(entry.user_id);
            }
            None => {
                open.insert(entry.user_id, (pushes.len(), entry.created_at_ms));
                pushes.push(Push { user_id: entry.user_id, newest: *entry, push_ids: vec![entry.push_id] });
            }
        }
    }
    pushes
}

/// The key a receiver dedupes on: the recipient and the newest message.
pub fn idempotency_key(push: &Push) -> String {
    format!("{}-{}", push.user_id, push.newest.message_id)
}

/// Waits before retry `failures` (1 for the first): doubling from
/// `PUSH_BACKOFF_FIRST` up to `PUSH_BACKOFF_MAX`, jittered to half or more.
pub fn backoff(failures: u32) -> Duration {
    let full = limits::PUSH_BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = full.min(limits::PUSH_BACKOFF_MAX);
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    let fraction = 0.5 + f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) / 2.0;
    full.mul_f64(fraction)
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn the_index_keeps_order_and_makes_room_from_the_oldest() {
        let mut index = OutboxIndex::default();
        let (alice, bob) = (UserId(1), UserId(2));
        for id in [10, 20, 30] {
            index.insert(alice, id);
        }
        index.insert(bob, 25);
        index.insert(alice, 15);
        assert_eq!((index.len(), index.of(alice)), (5, 4));
        assert_eq!(index.make_room(alice, 3), vec![10, 15], "two go so that a third fits");
        assert_eq!(index.make_room(alice, 3), Vec::<u64>::new(), "room for one already");
        assert!(index.remove(alice, 30) && !index.remove(alice, 30));
        assert!(index.remove(bob, 25));
        assert_eq!((index.len(), index.of(alice), index.of(bob)), (1, 1, 0));
        assert_eq!(index.make_room(alice, 1), vec![20]);
        assert!(index.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(push_id: u64, user: u64, message: u64, at: u64) -> OutboxEntry {
        OutboxEntry {
            push_id,
            user_id: UserId(user),
            channel_id: ChannelId(9),
            message_id: MessageId(message),
            created_at_ms: at,
        }
    }

    #[test]
    fn one_users_records_within_the_window_go_as_one_push() {
        let entries = [entry(1, 7, 100, 1_000), entry(2, 8, 101, 1_100), entry(3, 7, 102, 1_500)];
        let pushes = coalesce(&entries, 5_000, 1_000);
        assert_eq!(pushes.len(), 2);
        assert_eq!(
            (pushes[0].user_id, pushes[0].newest.message_id, &pushes[0].push_ids),
            (UserId(7), MessageId(102), &vec![1, 3])
        );
        assert_eq!((pushes[1].user_id, &pushes[1].push_ids), (UserId(8), &vec![2]));
        assert_eq!(idempotency_key(&pushes[0]), "7-102");
    }

    #[test]
    fn records_wait_for_their_window_and_order_holds_per_user() {
        let entries = [entry(1, 7, 100, 1_000), entry(2, 7, 101, 2_500), entry(3, 8, 102, 4_800)];
        let pushes = coalesce(&entries, 5_000, 1_000);
        assert_eq!(pushes.len(), 1, "user 7's second record is past the window; user 8's is too young");
        assert_eq!(pushes[0].push_ids, vec![1]);
        let later = coalesce(&entries[1..], 6_000, 1_000);
        assert_eq!(later.iter().map(|push| push.push_ids.clone()).collect::<Vec<_>>(), vec![vec![2], vec![3]]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        for failures in 1..40 {
            let full =
                limits::PUSH_BACKOFF_FIRST.saturating_mul(1 << (failures - 1).min(16)).min(limits::PUSH_BACKOFF_MAX);
            let wait = backoff(failures);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?} vs {full:?}");
        }
    }
}
