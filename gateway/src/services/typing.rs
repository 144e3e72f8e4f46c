//! Who is typing in the channels a shard owns: an entry per (channel,
//! user), each with the moment the server ends it by itself. Ephemeral:
//! nothing of it is stored, and a restart forgets it (the stop events it
//! would have sent are then moot: every connection closed). The table
//! takes the time as an argument and tells its caller which changes are
//! worth an event: a first `start`, a `stop` of someone typing, and each
//! expiry. A `start` while already typing only moves the expiry.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chatgw_idgen::{ChannelId, UserId};

use crate::error::{ApiError, ErrorCode};

/// What a `start` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The user was not typing here: the others hear `start`.
    New,
    /// The user was typing already: only its expiry moved.
    Renewed,
}

/// One typist's entry: when it ends, and the name its events carry.
#[derive(Debug)]
struct Typist {
    ends: Instant,
    username: Box<str>,
}

/// A shard's typists, bounded.
#[derive(Debug)]
pub struct TypingTable {
    ttl: Duration,
    max: usize,
    typists: HashMap<(ChannelId, UserId), Typist>,
    /// The same entries by when they end, for the expiry.
    by_end: BTreeSet<(Instant, ChannelId, UserId)>,
}

impl TypingTable {
    /// A table whose entries end `ttl` after their last `start`, holding
    /// at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Self {
        TypingTable { ttl, max, typists: HashMap::new(), by_end: BTreeSet::new() }
    }

    /// `user` (named `username`) typing in `channel` at `now`. Refused
    /// with `overloaded` when the table is full and the user is not in it.
    pub fn start(
        &mut self,
        channel: ChannelId,
        user: UserId,
        username: &str,
        now: Instant,
    ) -> Result<Started, ApiError> {
        // An instant past the clock's range (a huge ttl) ends at the end.
        let ends = now.checked_add(self.ttl).unwrap_or(now + std::time::Duration::from_secs(86_400));
        if let Some(typist) = self.typists.get_mut(&(channel, user)) {
            self.by_end.remove(&(typist.ends, channel, user));
            typist.ends = ends;
            self.by_end.insert((ends, channel, user));
            return Ok(Started::Renewed);
        }
        if self.typists.len() >= self.max {
            return Err(ApiError::new(ErrorCode::Overloaded, "too many people typing on this core; try again later"));
        }
        self.typists.insert((channel, user), Typist { ends, username: username.into() });
        self.by_end.insert((ends, channel, user));
        Ok(Started::New)
    }

    /// `user` stops typing in `channel`; whether it was typing there (so
    /// that the others hear `stop`).
    pub fn stop(&mut self, channel: ChannelId, user: UserId) -> bool {
        match self.typists.remove(&(channel, user)) {
            Some(typist) => {
                self.by_end.remove(&(typist.ends, channel, user));
                true
            }
            None => false,
        }
    }

    /// Removes and returns the entries that ended by `now`: (channel,
    /// user, username), earliest first.
    pub fn expire(&mut self, now: Instant) -> Vec<(ChannelId, UserId, Box<str>)> {
        let mut ended = Vec::new();
        while let Some(&(ends, channel, user)) = self.by_end.first() {
            if ends > now {
                break;
            }
            self.by_end.pop_first();
            if let Some(typist) = self.typists.remove(&(channel, user)) {
                ended.push((channel, user, typist.username));
            }
        }
        ended
    }

    /// When the next entry ends, if any.
    pub fn next_end(&self) -> Option<Instant> {
        self.by_end.first().map(|(ends, _, _)| *ends)
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.typists.len()
    }

    /// Whether nobody types.
    pub fn is_empty(&self) -> bool {
        self.typists.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn a_start_is_new_once_then_only_renews_its_expiry() {
        let mut table = TypingTable::new(TTL, 10);
        let now = Instant::now();
        let (channel, user) = (ChannelId(7), UserId(1));
        assert_eq!(table.start(channel, user, "ann", now).unwrap(), Started::New);
        assert_eq!(table.start(channel, user, "ann", now + Duration::from_secs(3)).unwrap(), Started::Renewed);
        assert_eq!(table.next_end(), Some(now + Duration::from_secs(8)), "the last start counts");
        assert!(table.expire(now + Duration::from_secs(6)).is_empty(), "renewed past the first start's end");
        let ended = table.expire(now + Duration::from_secs(8));
        assert_eq!(ended, vec![(channel, user, "ann".into())]);
        assert!(table.is_empty());
        assert_eq!(table.next_end(), None);
        assert_eq!(table.start(channel, user, "ann", now + Duration::from_secs(9)).unwrap(), Started::New);
    }

    #[test]
    fn a_stop_ends_typing_once_and_leaves_nothing_to_expire() {
        let mut table = TypingTable::new(TTL, 10);
        let now = Instant::now();
        table.start(ChannelId(1), UserId(1), "ann", now).unwrap();
        table.start(ChannelId(2), UserId(1), "ann", now).unwrap();
        assert!(table.stop(ChannelId(1), UserId(1)));
        assert!(!table.stop(ChannelId(1), UserId(1)), "not typing any more");
        assert!(!table.stop(ChannelId(3), UserId(2)), "never typed");
        let ended = table.expire(now + TTL);
        assert_eq!(ended, vec![(ChannelId(2), UserId(1), "ann".into())], "only the channel still typed in");
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn expiry_goes_earliest_first_and_stops_at_now() {
        let mut table = TypingTable::new(TTL, 10);
        let now = Instant::now();
        for n in 0..4u64 {
            table.start(ChannelId(1), UserId(n), &format!("u{n}"), now + Duration::from_secs(n)).unwrap();
        }
        let ended = table.expire(now + TTL + Duration::from_secs(1));
        let users: Vec<UserId> = ended.iter().map(|(_, user, _)| *user).collect();
        assert_eq!(users, vec![UserId(0), UserId(1)]);
        assert_eq!(table.next_end(), Some(now + TTL + Duration::from_secs(2)));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_full_table_refuses_newcomers_but_renews_its_own() {
        let mut table = TypingTable::new(TTL, 2);
        let now = Instant::now();
        table.start(ChannelId(1), UserId(1), "a", now).unwrap();
        table.start(ChannelId(1), UserId(2), "b", now).unwrap();
        let refused = table.start(ChannelId(1), UserId(3), "c", now).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Overloaded);
        assert_eq!(table.start(ChannelId(1), UserId(1), "a", now).unwrap(), Started::Renewed);
        assert!(table.stop(ChannelId(1), UserId(2)));
        assert_eq!(table.start(ChannelId(1), UserId(3), "c", now).unwrap(), Started::New, "room again");
    }
}
