//! Reads any core may make of what other shards own: usernames, user ids,
//! direct channels (each cached per core, bounded), whether an account may
//! connect, and a channel's wire view. Storage is shared, so these are
//! reads, never messages.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use chatgw_idgen::{ChannelId, MessageId, UserId};
use chatgw_storage::Unread;
use serde_json::Value;

use crate::auth::AuthedUser;
use crate::error::{ApiError, ErrorCode};
use crate::limits::{self, LOOKUP_CACHE_ENTRIES_MAX};
use crate::placement;
use crate::protocol::shapes;
use crate::protocol::validate::valid_username;
use crate::shard::state::Shard;

/// Inserts into a bounded lookup cache, clearing it when full.
fn cache_insert<K: Hash + Eq, V>(cache: &RefCell<HashMap<K, V>>, key: K, value: V) {
    let mut cache = cache.borrow_mut();
    if cache.len() >= LOOKUP_CACHE_ENTRIES_MAX {
        cache.clear();
    }
    cache.insert(key, value);
}

impl Shard {
    /// A user's username (cached; read from the user's shard).
    pub fn username(&self, user: UserId) -> Result<Rc<str>, ApiError> {
        if let Some(name) = self.usernames.borrow().get(&user) {
            return Ok(name.clone());
        }
        let name: Rc<str> = match self.store.user(self.owner(user.0), user)? {
            Some(record) => record.username.into(),
            None => "".into(),
        };
        cache_insert(&self.usernames, user, name.clone());
        Ok(name)
    }

    /// What `channel` holds unread for `user` (named `username`): the
    /// messages after its read pointer that are not its own nor deleted,
    /// and those of them that mention it, reading at most
    /// `limits::UNREAD_COUNT_MAX` messages.
    pub fn unread(&self, channel: ChannelId, user: UserId, username: &str) -> Result<Unread, ApiError> {
        self.unread_within(channel, user, username, limits::UNREAD_COUNT_MAX)
    }

    fn unread_within(&self, channel: ChannelId, user: UserId, username: &str, max: usize) -> Result<Unread, ApiError> {
        let owner = self.owner(channel.0);
        let read = self.store.read_pointer(owner, channel, user)?.unwrap_or(MessageId(0));
        Ok(self.store.unread(owner, channel, user, username, read, max)?)
    }

    /// The user's unread messages over its channels, up to
    /// `limits::BADGE_MAX` and over its first `limits::BADGE_CHANNELS_MAX`
    /// channels (a push's `badge`): the count stops reading there, so a
    /// user in thousands of busy channels costs the push worker a bounded
    /// read.
    pub fn unread_total(&self, user: UserId, username: &str) -> Result<u64, ApiError> {
        let mut total = 0u64;
        for joined in self.store.user_channels(self.owner(user.0), user)?.into_iter().take(limits::BADGE_CHANNELS_MAX) {
            let left = limits::BADGE_MAX.saturating_sub(total as usize);
            if left == 0 {
                break;
            }
            total +=
                self.unread_within(joined.channel_id, user, username, left.min(limits::UNREAD_COUNT_MAX))?.messages;
        }
        Ok(total)
    }

    /// A user id by username (read from the username's shard).
    pub fn user_id(&self, username: &str) -> Result<Option<UserId>, ApiError> {
        if !valid_username(username) {
            return Ok(None);
        }
        if let Some(id) = self.user_ids.borrow().get(username) {
            return Ok(Some(*id));
        }
        let found = self.store.user_id_by_name(placement::username_owner(username, self.shard_count), username)?;
        if let Some(id) = found {
            cache_insert(&self.user_ids, username.into(), id);
        }
        Ok(found)
    }

    /// A user id by username; an unknown one is `not_found`.
    pub fn known_user(&self, username: &str) -> Result<UserId, ApiError> {
        self.user_id(username)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {username:?}")))
    }

    /// User ids for usernames, in order; an unknown one is `not_found`.
    pub fn known_users(&self, usernames: &[String]) -> Result<Vec<UserId>, ApiError> {
        usernames.iter().map(|name| self.known_user(name)).collect()
    }

    /// The direct channel of a pair, if made (cached; read from the pair's
    /// owner shard).
    pub fn direct_channel(&self, first: UserId, second: UserId) -> Result<Option<ChannelId>, ApiError> {
        let pair = (first.min(second), first.max(second));
        if let Some(channel) = self.directs.borrow().get(&pair) {
            return Ok(Some(*channel));
        }
        let now = placement::pair_owner(first, second, self.shard_count);
        let mut found = self.store.direct_channel(now, first, second)?;
        let legacy = placement::legacy_pair_owner(first, second, self.shard_count);
        if found.is_none() && legacy != now {
            // A pair made before pairs were owned by one of their users.
            found = self.store.direct_channel(legacy, first, second)?;
        }
        if let Some(channel) = found {
            cache_insert(&self.directs, pair, channel);
        }
        Ok(found)
    }

    /// Whether a token's user exists and is enabled, and the token is not
    /// revoked.
    ///
    /// On the user's owner (where its sessions run) this is read from
    /// memory once known: the owner makes every change to it and updates
    /// the memory after each commit, before its kick.
    pub fn may_connect(&self, user: &AuthedUser) -> Result<bool, ApiError> {
        let owner = self.owner(user.user_id.0);
        let known = if owner == self.id { self.accounts.borrow().get(&user.user_id).copied() } else { None };
        let (disabled, version) = match known {
            Some(state) => state,
            None => {
                let Some((record, version)) = self.store.user_and_token_version(owner, user.user_id)? else {
                    return Ok(false);
                };
                if owner == self.id {
                    cache_insert(&self.accounts, user.user_id, (record.disabled, version));
                }
                (record.disabled, version)
            }
        };
        // A token minted before the user's last logout or password change
        // is revoked.
        Ok(!disabled && user.token_version >= version)
    }

    /// What the owner remembers of a user it owns (after a commit that
    /// changed it).
    pub fn remember_account(&self, user: UserId, disabled: bool, token_version: u64) {
        debug_assert_eq!(self.owner(user.0), self.id);
        cache_insert(&self.accounts, user, (disabled, token_version));
    }

    /// A channel's `Channel` shape, read from storage.
    pub fn channel_view(&self, channel: ChannelId) -> Result<Value, ApiError> {
        let owner = self.owner(channel.0);
        let record =
            self.store.channel(owner, channel)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such channel"))?;
        // The first members only: one more than shown tells whether the
        // rest must be paged with `channel.members`.
        let shown = limits::CHANNEL_VIEW_MEMBERS_MAX;
        let mut ids = self.store.members_from(owner, channel, UserId(0), shown + 1)?;
        let more_members = ids.len() > shown;
        ids.truncate(shown);
        let members = ids
            .into_iter()
            .map(|member| self.username(member).map(|name| name.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let last = self.store.last_message_id(owner, channel)?;
        let mut view = shapes::channel_json(&record, &members, last);
        if more_members {
            view["more_members"] = Value::Bool(true);
        }
        Ok(view)
    }
}
