//! The values storage hands out and takes in: plain Rust types, separate
//! from the on-disk records.

use chatgw_idgen::{ChannelId, MessageId, UserId};

/// A stored chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its Snowflake id.
    pub id: MessageId,
    /// The channel it was sent to.
    pub channel_id: ChannelId,
    /// Who sent it.
    pub sender_id: UserId,
    /// When it was accepted, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The sender's own id for it, if given (for dedupe).
    pub client_msg_id: Option<String>,
    /// The text (empty once deleted: the text is gone from storage).
    pub text: String,
    /// When its sender last edited it, ms since the Unix epoch.
    pub edited_at_ms: Option<u64>,
    /// When it was deleted, ms since the Unix epoch: a tombstone, whose
    /// text is gone.
    pub deleted_at_ms: Option<u64>,
}

/// Direct (1:1) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// The one channel of a pair of users.
    Direct,
    /// A named channel with an owner.
    Group,
}

/// A channel without its members (see [`crate::Store::members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Its id.
    pub id: ChannelId,
    /// Its name (for a direct channel, made from the pair).
    pub name: String,
    /// Direct or group.
    pub kind: ChannelKind,
    /// The user who made it and alone changes its members.
    pub owner_id: UserId,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether the channel is (or ever was) too large for inbox fan-out:
    /// its members read it per channel at sync time. Never goes back.
    pub fan_out_on_read: bool,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Its unique name.
    pub username: String,
    /// The name shown to people.
    pub display_name: String,
    /// The password hash (PHC string); never the password.
    pub password_hash: String,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// A disabled account may not log in or connect.
    pub disabled: bool,
}

/// One of a user's channels, as the user's side records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserChannel {
    /// The channel.
    pub channel_id: ChannelId,
    /// Whether the channel is read per channel at sync time (fan-out on
    /// read) rather than through the user's inbox (fan-out on write).
    pub fan_out_on_read: bool,
}

/// An inbox entry: a message of a small channel, written for each member,
/// or a change of one (an edit, a delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxEntry {
    /// The message, or the change's own id.
    pub message_id: MessageId,
    /// Its channel.
    pub channel_id: ChannelId,
    /// Whether the id is a change's (see [`Change`]) rather than a message's.
    pub change: bool,
}

/// A user's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// The user's reads are told to its own devices only, never to the
    /// other members.
    pub private_reads: bool,
}

/// What the messages of a channel after a member's read pointer hold for
/// that member: the unread ones (not the member's own, not deleted), and
/// those of them that mention the member (`@username`), each counted up
/// to a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unread {
    /// Messages after the pointer, not the member's, not deleted.
    pub messages: u64,
    /// Those of them whose text mentions the member.
    pub mentions: u64,
}

/// What a change did to its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Its text was replaced.
    Edited,
    /// It was deleted (its text is gone).
    Deleted,
}

/// A change of a stored message: an id of its own, taken from the same
/// generator as messages, so that a change sorts among messages and a sync
/// cursor covers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The change's own id.
    pub id: MessageId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The message it changed.
    pub message_id: MessageId,
    /// What it did.
    pub kind: ChangeKind,
}

/// What a `client_msg_id` was first answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeEntry {
    /// The channel of the first message.
    pub channel_id: ChannelId,
    /// The first message's id.
    pub message_id: MessageId,
    /// When the first message was accepted, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// A message whose members' pushes are still to be recorded: written with
/// the message, removed once every member's owner has recorded its pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushDue {
    /// The message.
    pub message_id: MessageId,
    /// Its channel.
    pub channel_id: ChannelId,
    /// Its sender (who gets no push for it).
    pub sender_id: UserId,
}

/// A push the webhook refused for good, kept for the operator to see and
/// retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadPush {
    /// The record as it was in the outbox.
    pub entry: OutboxEntry,
    /// When the webhook refused it, ms since the Unix epoch.
    pub failed_at_ms: u64,
    /// The HTTP status it answered.
    pub status: u16,
}

/// A push notification owed to a user with no connected device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The record's own id, which orders the outbox (a Snowflake id).
    pub push_id: u64,
    /// The recipient.
    pub user_id: UserId,
    /// The message's channel.
    pub channel_id: ChannelId,
    /// The message.
    pub message_id: MessageId,
    /// When the push was recorded, ms since the Unix epoch.
    pub created_at_ms: u64,
}
