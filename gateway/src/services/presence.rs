//! Presence (protocol §3), held by each user's owner shard, as a plain
//! state machine: the shard feeds it what its own and other cores report
//! (with the time as an argument) and does what it answers; the glue that
//! moves these messages between cores is `shard::presence`.
//!
//! The core that holds a connection tells the user's owner when it comes
//! and goes, and once a second which of its users were active. The owner
//! counts the user's devices across cores: online from the first; after the
//! last goes, offline only once the grace period passes with no new one
//! (a reconnect within it changes nothing, so nothing flickers).
//!
//! Subscriptions work as channels do: a core that holds subscribers of a
//! user tells the owner once (a bit in the user's `watchers_mask`), and a
//! change is encoded once and sent to each such core: O(cores) cross-core
//! messages per change. Nothing fans presence out to a channel's members:
//! clients subscribe to whom they show, or ask with `presence.query`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use bytes::Bytes;
use chatgw_idgen::{ShardId, UserId};

/// A user's presence as its owner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The user.
    pub user_id: UserId,
    /// Online (a device connected, or within the grace period).
    pub online: bool,
    /// When a frame last came from any of the user's devices, ms since the
    /// Unix epoch; 0 if not seen since the server started.
    pub last_active_ms: u64,
}

impl Status {
    /// The status of a user the owner has never seen.
    pub fn unknown(user_id: UserId) -> Self {
        Status { user_id, online: false, last_active_ms: 0 }
    }
}

/// What cores tell a user's owner, and what it sends back.
#[derive(Debug)]
pub enum Msg {
    /// A device of a user this shard owns connected on the sender.
    Connected {
        /// The user.
        user_id: UserId,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
    /// A device of a user this shard owns went from the sender.
    Disconnected {
        /// The user.
        user_id: UserId,
        /// Its last frame, ms since the Unix epoch.
        last_active_ms: u64,
    },
    /// Users this shard owns were active on the sender (user, ms).
    Activity(Vec<(UserId, u64)>),
    /// The sender starts or stops holding presence subscribers of these
    /// users (owned here); answered with their statuses.
    Watch {
        /// The users.
        users: Vec<UserId>,
        /// Start (true) or stop.
        watch: bool,
    },
    /// The presence of users owned here; answered with their statuses.
    Query(Vec<UserId>),
    /// A presence event for the receiver's subscribers of a user.
    Event {
        /// The user whose presence changed.
        user_id: UserId,
        /// The encoded `presence` event.
        frame: Bytes,
    },
}

#[derive(Debug, Default)]
struct Entry {
    /// Connected devices, on every core.
    devices: u32,
    online: bool,
    last_active_ms: u64,
    /// Bumped whenever a pending offline must not happen any more.
    generation: u64,
    /// Bit `i`: core `i` holds subscribers of this user.
    watchers_mask: u128,
}

/// The presence a shard holds for the users it owns.
#[derive(Debug)]
pub struct Presence {
    grace_ms: u64,
    entries: HashMap<UserId, Entry>,
    /// Offlines due once their grace passes: (due ms, user, generation).
    pending: BinaryHeap<Reverse<(u64, UserId, u64)>>,
    /// Users some core holds subscribers of (a non-zero `watchers_mask`).
    watched: usize,
}

impl Presence {
    /// Presence with a grace period of `grace_ms` after a user's last device goes.
    pub fn new(grace_ms: u64) -> Self {
        Presence { grace_ms, entries: HashMap::new(), pending: BinaryHeap::new(), watched: 0 }
    }

    /// A device of `user` connected (on any core) at `at_ms`. True when
    /// the user turned online (publish it).
    pub fn connected(&mut self, user: UserId, at_ms: u64) -> bool {
        let entry = self.entries.entry(user).or_default();
        entry.devices += 1;
        entry.generation += 1;
        entry.last_active_ms = entry.last_active_ms.max(at_ms);
        !std::mem::replace(&mut entry.online, true)
    }

    /// A device of `user` went, last active at `last_active_ms`, noticed at
    /// `now_ms`. When it was the last, answers the time at which `expire`
    /// should run to turn the user offline (if no device comes back).
    pub fn disconnected(&mut self, user: UserId, last_active_ms: u64, now_ms: u64) -> Option<u64> {
        let entry = self.entries.entry(user).or_default();
        entry.devices = entry.devices.saturating_sub(1);
        entry.last_active_ms = entry.last_active_ms.max(last_active_ms);
        if entry.devices > 0 || !entry.online {
            return None;
        }
        entry.generation += 1;
        let due = now_ms.saturating_add(self.grace_ms);
        self.pending.push(Reverse((due, user, entry.generation)));
        Some(due)
    }

    /// Turns offline every user whose grace ended by `now_ms` with no
    /// device back; answers them (publish each).
    pub fn expire(&mut self, now_ms: u64) -> Vec<UserId> {
        let mut offline = Vec::new();
        while let Some(Reverse((due, user, generation))) = self.pending.peek().copied() {
            if due > now_ms {
                break;
            }
            self.pending.pop();
            if let Some(entry) = self.entries.get_mut(&user)
                && entry.generation == generation
                && entry.devices == 0
                && entry.online
            {
                entry.online = false;
                offline.push(user);
            }
        }
        offline
    }

    /// Users of this shard were active at these times (from one core).
    pub fn active(&mut self, activity: &[(UserId, u64)]) {
        for (user, at_ms) in activity {
            if let Some(entry) = self.entries.get_mut(user) {
                entry.last_active_ms = entry.last_active_ms.max(*at_ms);
            }
        }
    }

    /// Core `from` starts or stops holding subscribers of `users`; answers
    /// their presence.
    pub fn watch(&mut self, from: ShardId, users: &[UserId], watch: bool) -> Vec<Status> {
        let bit = 1u128 << from.0;
        for user in users {
            let entry = match (watch, self.entries.get_mut(user)) {
                (_, Some(entry)) => entry,
                (true, None) => self.entries.entry(*user).or_default(),
                (false, None) => continue,
            };
            let was_watched = entry.watchers_mask != 0;
            if watch {
                entry.watchers_mask |= bit;
            } else {
                entry.watchers_mask &= !bit;
            }
            match (was_watched, entry.watchers_mask != 0) {
                (false, true) => self.watched += 1,
                (true, false) => self.watched -= 1,
                _ => {}
            }
        }
        self.query(users)
    }

    /// Users of this shard that some core holds subscribers of.
    pub fn watched_users(&self) -> usize {
        self.watched
    }

    /// The presence of users this shard owns.
    pub fn query(&self, users: &[UserId]) -> Vec<Status> {
        users.iter().map(|user| self.status(*user)).collect()
    }

    /// One user's presence.
    pub fn status(&self, user: UserId) -> Status {
        let entry = self.entries.get(&user);
        Status {
            user_id: user,
            online: entry.is_some_and(|entry| entry.online),
            last_active_ms: entry.map_or(0, |entry| entry.last_active_ms),
        }
    }

    /// The cores holding subscribers of `user` (bit `i`: core `i`).
    pub fn watchers_mask(&self, user: UserId) -> u128 {
        self.entries.get(&user).map_or(0, |entry| entry.watchers_mask)
    }

    /// Whether `user` has a connected device now.
    pub fn has_device(&self, user: UserId) -> bool {
        self.entries.get(&user).is_some_and(|entry| entry.devices > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE_MS: u64 = 5_000;
    const ALICE: UserId = UserId(1);

    #[test]
    fn online_from_the_first_device_offline_after_the_grace() {
        let mut presence = Presence::new(GRACE_MS);
        assert!(presence.connected(ALICE, 1_000), "the first device turns the user online");
        assert!(!presence.connected(ALICE, 1_100), "a second device changes nothing");
        assert!(presence.has_device(ALICE));
        assert_eq!(presence.disconnected(ALICE, 1_500, 2_000), None, "one device is still there");
        let due = presence.disconnected(ALICE, 1_800, 3_000).expect("the last device went");
        assert_eq!(due, 3_000 + GRACE_MS);
        assert!(!presence.has_device(ALICE));
        assert!(presence.status(ALICE).online, "online within the grace");
        assert!(presence.expire(due - 1).is_empty(), "not before the grace ends");
        assert_eq!(presence.expire(due), vec![ALICE]);
        assert_eq!(presence.status(ALICE), Status { user_id: ALICE, online: false, last_active_ms: 1_800 });
        assert!(presence.expire(due + GRACE_MS).is_empty(), "an offline happens once");
    }

    #[test]
    fn a_reconnect_within_the_grace_never_flickers() {
        let mut presence = Presence::new(GRACE_MS);
        presence.connected(ALICE, 0);
        let first_due = presence.disconnected(ALICE, 0, 1_000).unwrap();
        // Flapping: back within the grace, gone again, back again.
        assert!(!presence.connected(ALICE, 2_000), "still online: no change to publish");
        let second_due = presence.disconnected(ALICE, 2_000, 3_000).unwrap();
        assert!(!presence.connected(ALICE, 4_000));
        assert!(presence.expire(first_due).is_empty(), "the first grace was overtaken");
        assert!(presence.expire(second_due).is_empty(), "and so was the second");
        assert!(presence.status(ALICE).online);
        // The device goes for good: offline once, a grace after that.
        let last_due = presence.disconnected(ALICE, 4_500, 9_000).unwrap();
        assert_eq!(presence.expire(last_due), vec![ALICE]);
    }

    #[test]
    fn graces_expire_in_due_order_across_users() {
        let mut presence = Presence::new(GRACE_MS);
        let bob = UserId(2);
        presence.connected(ALICE, 0);
        presence.connected(bob, 0);
        presence.disconnected(bob, 0, 2_000);
        presence.disconnected(ALICE, 0, 1_000);
        assert_eq!(presence.expire(1_000 + GRACE_MS), vec![ALICE]);
        assert_eq!(presence.expire(2_000 + GRACE_MS), vec![bob]);
    }

    #[test]
    fn subscriptions_are_a_mask_of_cores() {
        let mut presence = Presence::new(GRACE_MS);
        presence.connected(ALICE, 700);
        let answered = presence.watch(ShardId(3), &[ALICE, UserId(9)], true);
        assert_eq!(
            answered,
            vec![Status { user_id: ALICE, online: true, last_active_ms: 700 }, Status::unknown(UserId(9))]
        );
        presence.watch(ShardId(0), &[ALICE], true);
        assert_eq!(presence.watchers_mask(ALICE), 0b1001);
        presence.watch(ShardId(3), &[ALICE], false);
        assert_eq!(presence.watchers_mask(ALICE), 0b0001);
        assert_eq!(presence.watchers_mask(UserId(9)), 0b1000, "a user never seen can be watched");
        presence.watch(ShardId(7), &[UserId(10)], false);
        assert_eq!(presence.watchers_mask(UserId(10)), 0, "stopping what never started is a no-op");
        assert_eq!(presence.watched_users(), 2, "alice (core 0) and user 9 (core 3)");
        presence.watch(ShardId(0), &[ALICE], false);
        presence.watch(ShardId(0), &[ALICE], false);
        assert_eq!(presence.watched_users(), 1, "alice is watched no more, once");
    }

    #[test]
    fn activity_moves_last_active_forward_only() {
        let mut presence = Presence::new(GRACE_MS);
        presence.connected(ALICE, 1_000);
        presence.active(&[(ALICE, 3_000), (UserId(5), 4_000)]);
        assert_eq!(presence.status(ALICE).last_active_ms, 3_000);
        presence.active(&[(ALICE, 2_000)]);
        assert_eq!(presence.status(ALICE).last_active_ms, 3_000);
        assert_eq!(presence.status(UserId(5)), Status::unknown(UserId(5)), "activity alone does not make an entry");
    }
}
