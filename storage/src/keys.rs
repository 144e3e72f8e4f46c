//! Key layout. Every shard key starts with a one-byte tag and, for keys that
//! belong to a channel or a user, that id in 8 big-endian bytes: the 9-byte
//! prefix the column family's prefix extractor and bloom filters work on.
//! Big-endian ids make a channel's history and a user's inbox each one
//! contiguous range ordered by id.

use chatgw_idgen::{ChannelId, MessageId, UserId};

use crate::error::{Result, StorageError};

/// The longest `client_msg_id` storage keys on, in bytes.
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 128;
/// The longest username storage keys on, in bytes.
pub const USERNAME_BYTES_MAX: usize = 64;

/// Refuses an empty or over-long variable key part.
pub(crate) fn check_key_part(what: &'static str, part: &str, max: usize) -> Result<()> {
    if part.is_empty() || part.len() > max {
        return Err(StorageError::InvalidKeyPart { what, len: part.len(), max });
    }
    Ok(())
}

/// Bytes of the prefix that the prefix extractor takes: tag and one id.
pub const PREFIX_BYTES: usize = 9;

/// Key tags. Changing one is a migration.
pub mod tag {
    /// `m | channel | message` → message record.
    pub const MESSAGE: u8 = b'm';
    /// `i | user | message` → channel id (8 bytes BE): the user's inbox.
    pub const INBOX: u8 = b'i';
    /// `c | channel` → channel record.
    pub const CHANNEL: u8 = b'c';
    /// `k | channel | user` → empty: channel membership.
    pub const MEMBER: u8 = b'k';
    /// `u | user | channel` → one flags byte: the channels of a user.
    pub const USER_CHANNEL: u8 = b'u';
    /// `U | user` → user record.
    pub const USER: u8 = b'U';
    /// `N | username` → user id (8 bytes BE).
    pub const USERNAME: u8 = b'N';
    /// `D | low user | high user` → channel id: the pair's direct channel.
    pub const DIRECT: u8 = b'D';
    /// `d | sender | client_msg_id` → dedupe record.
    pub const DEDUPE: u8 = b'd';
    /// `o | push id` → outbox record.
    pub const OUTBOX: u8 = b'o';
    /// `p | message` → channel id, sender id (8 bytes BE each): a message
    /// whose members' pushes are not all recorded yet.
    pub const PUSH_DUE: u8 = b'p';
    /// `v | user` → the user's token version (8 bytes BE): tokens minted
    /// before it was raised are revoked.
    pub const TOKEN_VERSION: u8 = b'v';
    /// `x | push id` → dead push record: one the webhook refused for good.
    pub const DEAD_PUSH: u8 = b'x';
    /// `e | channel | change` → the changed message's id (8 bytes BE) and
    /// the change's kind (1 byte: 1 edited, 2 deleted): a channel's edits
    /// and deletes, in the id order of messages.
    pub const CHANGE: u8 = b'e';
    /// `r | channel | user` → the last message id the member has read (8
    /// bytes BE): its read pointer, which only moves forward.
    pub const READ: u8 = b'r';
    /// `S | user` → the user's settings (one flags byte; bit 0: reads are
    /// private).
    pub const SETTINGS: u8 = b'S';
    /// `h` → the largest message id the shard has stored.
    pub const HIGH_WATER: u8 = b'h';
}

fn key2(tag: u8, first: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = tag;
    key[1..9].copy_from_slice(&first.to_be_bytes());
    key
}

fn key3(tag: u8, first: u64, second: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = tag;
    key[1..9].copy_from_slice(&first.to_be_bytes());
    key[9..17].copy_from_slice(&second.to_be_bytes());
    key
}

/// The key `tag | channel | id` of a channel's range (`message`,
/// `change`), for a range read of either.
pub fn channel_id_key(tag: u8, channel: ChannelId, id: MessageId) -> [u8; 17] {
    key3(tag, channel.0, id.0)
}

/// A message of a channel.
pub fn message(channel: ChannelId, message: MessageId) -> [u8; 17] {
    key3(tag::MESSAGE, channel.0, message.0)
}

/// A change of a channel's message.
pub fn change(channel: ChannelId, change: MessageId) -> [u8; 17] {
    key3(tag::CHANGE, channel.0, change.0)
}

/// A member's read pointer in a channel.
pub fn read_pointer(channel: ChannelId, user: UserId) -> [u8; 17] {
    key3(tag::READ, channel.0, user.0)
}

/// A user's settings.
pub fn settings(user: UserId) -> [u8; 9] {
    key2(tag::SETTINGS, user.0)
}

/// The inbox entry of a user for a message.
pub fn inbox(user: UserId, message: MessageId) -> [u8; 17] {
    key3(tag::INBOX, user.0, message.0)
}

/// A channel record.
pub fn channel(channel: ChannelId) -> [u8; 9] {
    key2(tag::CHANNEL, channel.0)
}

/// A member of a channel.
pub fn member(channel: ChannelId, user: UserId) -> [u8; 17] {
    key3(tag::MEMBER, channel.0, user.0)
}

/// A channel of a user.
pub fn user_channel(user: UserId, channel: ChannelId) -> [u8; 17] {
    key3(tag::USER_CHANNEL, user.0, channel.0)
}

/// A user record.
pub fn user(user: UserId) -> [u8; 9] {
    key2(tag::USER, user.0)
}

/// The username index.
pub fn username(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(tag::USERNAME);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The direct channel of a pair of users, in either order.
pub fn direct(first: UserId, second: UserId) -> [u8; 17] {
    let (low, high) = if first <= second { (first, second) } else { (second, first) };
    key3(tag::DIRECT, low.0, high.0)
}

/// A dedupe record.
pub fn dedupe(sender: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + client_msg_id.len());
    key.extend_from_slice(&key2(tag::DEDUPE, sender.0));
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// An outbox record.
pub fn outbox(push_id: u64) -> [u8; 9] {
    key2(tag::OUTBOX, push_id)
}

/// A dead push record.
pub fn dead_push(push_id: u64) -> [u8; 9] {
    key2(tag::DEAD_PUSH, push_id)
}

/// A user's token version.
pub fn token_version(user: UserId) -> [u8; 9] {
    key2(tag::TOKEN_VERSION, user.0)
}

/// A message's pending push check.
pub fn push_due(message: MessageId) -> [u8; 9] {
    key2(tag::PUSH_DUE, message.0)
}

/// The shard's message high-water mark.
pub fn high_water() -> [u8; 1] {
    [tag::HIGH_WATER]
}

/// The 9-byte prefix of every key of (tag, id): the start of its range.
pub fn prefix(tag: u8, id: u64) -> [u8; 9] {
    key2(tag, id)
}

/// The first key after every key of (tag, id): the exclusive end of its range.
pub fn prefix_end(tag: u8, id: u64) -> Vec<u8> {
    match id.checked_add(1) {
        Some(next) => key2(tag, next).to_vec(),
        None => vec![tag + 1],
    }
}

/// The trailing big-endian u64 of a 17-byte key.
pub fn suffix_id(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    (key.len() == 17).then(|| u64::from_be_bytes(tail))
}

/// Hex for error messages.
pub fn hex(key: &[u8]) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_keys_sort_by_channel_then_id() {
        let a = message(ChannelId(1), MessageId(u64::MAX >> 1));
        let b = message(ChannelId(2), MessageId(1));
        let c = message(ChannelId(2), MessageId(256));
        assert!(a < b && b < c);
        assert!(prefix(tag::MESSAGE, 2).as_slice() <= b.as_slice());
        assert!(c.as_slice() < prefix_end(tag::MESSAGE, 2).as_slice());
        assert_eq!(suffix_id(&c), Some(256));
        assert_eq!(suffix_id(&c[..16]), None);
    }

    #[test]
    fn direct_keys_ignore_order() {
        assert_eq!(direct(UserId(9), UserId(4)), direct(UserId(4), UserId(9)));
    }
}
