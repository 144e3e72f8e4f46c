//! Typed writes, gathered into one atomic batch: a group commit.

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use rocksdb::{DB, WriteBatch};

use crate::cf;
use crate::error::Result;
use crate::keys::{self, CLIENT_MSG_ID_BYTES_MAX, USERNAME_BYTES_MAX, check_key_part};
use crate::model::{
    Change, ChangeKind, Channel, ChannelKind, DeadPush, DedupeEntry, Message, OutboxEntry, PushDue, Settings, User,
};
use crate::record::{
    self, ChangedMessageRecord, ChannelRecord, DeadPushRecord, DedupeRecord, MessageRecord, OutboxRecord, UserRecord,
};

/// The ninth byte of an inbox entry for a change (an entry for a message
/// holds the channel id alone, 8 bytes).
pub(crate) const INBOX_CHANGE: u8 = b'e';

/// Writes to any shards of one store, applied all together by
/// `Store::write`. Each method names the shard whose column family gets
/// the key; that shard must be the key's owner (the gateway's rule).
pub struct Batch<'s> {
    db: &'s DB,
    shards: u16,
    inner: WriteBatch,
}

impl<'s> Batch<'s> {
    pub(crate) fn new(db: &'s DB, shards: u16) -> Self {
        Batch { db, shards, inner: WriteBatch::default() }
    }

    pub(crate) fn into_inner(self) -> WriteBatch {
        self.inner
    }

    /// Writes gathered so far.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether nothing was gathered.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes of the batch's representation (what goes to the WAL).
    pub fn size_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }

    fn put(&mut self, shard: ShardId, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = cf::shard_handle(self.db, self.shards, shard)?;
        self.inner.put_cf(cf, key, value);
        Ok(())
    }

    fn delete(&mut self, shard: ShardId, key: &[u8]) -> Result<()> {
        let cf = cf::shard_handle(self.db, self.shards, shard)?;
        self.inner.delete_cf(cf, key);
        Ok(())
    }

    /// Appends a message to its channel's history.
    pub fn put_message(&mut self, shard: ShardId, message: &Message) -> Result<()> {
        debug_assert!(message.id.0 != 0 && message.channel_id.0 != 0, "ids are set before the write");
        if let Some(client_msg_id) = &message.client_msg_id {
            check_key_part("client_msg_id", client_msg_id, CLIENT_MSG_ID_BYTES_MAX)?;
        }
        let value = if message.edited_at_ms.is_none() && message.deleted_at_ms.is_none() {
            record::encode(&MessageRecord {
                sender_id: message.sender_id.0,
                created_at_ms: message.created_at_ms,
                client_msg_id: message.client_msg_id.clone(),
                text: message.text.clone(),
            })?
        } else {
            record::encode_as(
                record::CHANGED_MESSAGE_VERSION,
                &ChangedMessageRecord {
                    sender_id: message.sender_id.0,
                    created_at_ms: message.created_at_ms,
                    client_msg_id: message.client_msg_id.clone(),
                    // A deleted message's text is not written at all.
                    text: if message.deleted_at_ms.is_some() { String::new() } else { message.text.clone() },
                    edited_at_ms: message.edited_at_ms.unwrap_or(0),
                    deleted_at_ms: message.deleted_at_ms.unwrap_or(0),
                },
            )?
        };
        self.put(shard, &keys::message(message.channel_id, message.id), &value)
    }

    /// Writes a change of a channel's message (its message is rewritten
    /// with [`Batch::put_message`] in the same batch).
    pub fn put_change(&mut self, shard: ShardId, change: &Change) -> Result<()> {
        let mut value = [0u8; 9];
        value[..8].copy_from_slice(&change.message_id.to_be_bytes());
        value[8] = match change.kind {
            ChangeKind::Edited => 1,
            ChangeKind::Deleted => 2,
        };
        self.put(shard, &keys::change(change.channel_id, change.id), &value)
    }

    /// Sets a member's read pointer in a channel (the caller keeps it
    /// moving forward only).
    pub fn put_read_pointer(
        &mut self,
        shard: ShardId,
        channel: ChannelId,
        user: UserId,
        read: MessageId,
    ) -> Result<()> {
        self.put(shard, &keys::read_pointer(channel, user), &read.to_be_bytes())
    }

    /// Sets a user's settings.
    pub fn put_settings(&mut self, shard: ShardId, user: UserId, settings: Settings) -> Result<()> {
        self.put(shard, &keys::settings(user), &[u8::from(settings.private_reads)])
    }

    /// Adds a change of a message to a user's inbox (fan-out on write): the
    /// channel id and one byte that says it is a change.
    pub fn put_inbox_change(
        &mut self,
        shard: ShardId,
        user: UserId,
        change: MessageId,
        channel: ChannelId,
    ) -> Result<()> {
        let mut value = [0u8; 9];
        value[..8].copy_from_slice(&channel.to_be_bytes());
        value[8] = INBOX_CHANGE;
        self.put(shard, &keys::inbox(user, change), &value)
    }

    /// Adds a message to a user's inbox (fan-out on write).
    pub fn put_inbox(&mut self, shard: ShardId, user: UserId, message: MessageId, channel: ChannelId) -> Result<()> {
        self.put(shard, &keys::inbox(user, message), &channel.to_be_bytes())
    }

    /// Raises the shard's high-water mark to `message` (callers pass the
    /// largest id of the batch).
    pub fn set_high_water(&mut self, shard: ShardId, message: MessageId) -> Result<()> {
        self.put(shard, &keys::high_water(), &message.to_be_bytes())
    }

    /// Remembers what a `client_msg_id` was answered with, for 24 hours.
    pub fn put_dedupe(
        &mut self,
        shard: ShardId,
        sender: UserId,
        client_msg_id: &str,
        entry: &DedupeEntry,
    ) -> Result<()> {
        check_key_part("client_msg_id", client_msg_id, CLIENT_MSG_ID_BYTES_MAX)?;
        let value = record::encode(&DedupeRecord {
            channel_id: entry.channel_id.0,
            message_id: entry.message_id.0,
            created_at_ms: entry.created_at_ms,
        })?;
        self.put(shard, &keys::dedupe(sender, client_msg_id), &value)
    }

    /// Creates or replaces a channel record.
    pub fn put_channel(&mut self, shard: ShardId, channel: &Channel) -> Result<()> {
        let value = record::encode(&ChannelRecord {
            name: channel.name.clone(),
            kind: match channel.kind {
                ChannelKind::Direct => 0,
                ChannelKind::Group => 1,
            },
            owner_id: channel.owner_id.0,
            created_at_ms: channel.created_at_ms,
            fan_out_on_read: channel.fan_out_on_read,
        })?;
        self.put(shard, &keys::channel(channel.id), &value)
    }

    /// Adds a member to a channel (the channel's shard).
    pub fn add_member(&mut self, shard: ShardId, channel: ChannelId, user: UserId) -> Result<()> {
        self.put(shard, &keys::member(channel, user), &[])
    }

    /// Removes a member from a channel (the channel's shard).
    pub fn remove_member(&mut self, shard: ShardId, channel: ChannelId, user: UserId) -> Result<()> {
        self.delete(shard, &keys::member(channel, user))
    }

    /// Records a channel among a user's channels (the user's shard).
    pub fn put_user_channel(
        &mut self,
        shard: ShardId,
        user: UserId,
        channel: ChannelId,
        fan_out_on_read: bool,
    ) -> Result<()> {
        self.put(shard, &keys::user_channel(user, channel), &[u8::from(fan_out_on_read)])
    }

    /// Drops a channel from a user's channels (the user's shard).
    pub fn remove_user_channel(&mut self, shard: ShardId, user: UserId, channel: ChannelId) -> Result<()> {
        self.delete(shard, &keys::user_channel(user, channel))
    }

    /// Records the direct channel of a pair of users.
    pub fn put_direct(&mut self, shard: ShardId, first: UserId, second: UserId, channel: ChannelId) -> Result<()> {
        self.put(shard, &keys::direct(first, second), &channel.to_be_bytes())
    }

    /// Creates or replaces a user record (the user's shard).
    pub fn put_user(&mut self, shard: ShardId, user: &User) -> Result<()> {
        let value = record::encode(&UserRecord {
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            password_hash: user.password_hash.clone(),
            created_at_ms: user.created_at_ms,
            disabled: user.disabled,
        })?;
        self.put(shard, &keys::user(user.id), &value)
    }

    /// Points a username at a user (the username's shard). Uniqueness is
    /// the caller's: the one shard that owns the name checks, then writes.
    pub fn put_username(&mut self, shard: ShardId, username: &str, user: UserId) -> Result<()> {
        check_key_part("username", username, USERNAME_BYTES_MAX)?;
        self.put(shard, &keys::username(username), &user.to_be_bytes())
    }

    /// Records a push owed to a user.
    pub fn put_outbox(&mut self, shard: ShardId, entry: &OutboxEntry) -> Result<()> {
        let value = record::encode(&OutboxRecord {
            user_id: entry.user_id.0,
            channel_id: entry.channel_id.0,
            message_id: entry.message_id.0,
            created_at_ms: entry.created_at_ms,
        })?;
        self.put(shard, &keys::outbox(entry.push_id), &value)
    }

    /// Sets a user's token version.
    pub fn put_token_version(&mut self, shard: ShardId, user: UserId, version: u64) -> Result<()> {
        self.put(shard, &keys::token_version(user), &version.to_be_bytes())
    }

    /// Records that a message's pushes are still to be recorded.
    pub fn put_push_due(&mut self, shard: ShardId, due: &PushDue) -> Result<()> {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&due.channel_id.to_be_bytes());
        value[8..].copy_from_slice(&due.sender_id.to_be_bytes());
        self.put(shard, &keys::push_due(due.message_id), &value)
    }

    /// Removes a message's pending push check once done.
    pub fn delete_push_due(&mut self, shard: ShardId, message: MessageId) -> Result<()> {
        self.delete(shard, &keys::push_due(message))
    }

    /// Keeps a push the webhook refused for good.
    pub fn put_dead_push(&mut self, shard: ShardId, dead: &DeadPush) -> Result<()> {
        let value = record::encode(&DeadPushRecord {
            user_id: dead.entry.user_id.0,
            channel_id: dead.entry.channel_id.0,
            message_id: dead.entry.message_id.0,
            created_at_ms: dead.entry.created_at_ms,
            failed_at_ms: dead.failed_at_ms,
            status: dead.status,
        })?;
        self.put(shard, &keys::dead_push(dead.entry.push_id), &value)
    }

    /// Removes a dead push (retried, or dropped by the operator).
    pub fn delete_dead_push(&mut self, shard: ShardId, push_id: u64) -> Result<()> {
        self.delete(shard, &keys::dead_push(push_id))
    }

    /// Removes a push once delivered.
    pub fn delete_outbox(&mut self, shard: ShardId, push_id: u64) -> Result<()> {
        self.delete(shard, &keys::outbox(push_id))
    }
}
