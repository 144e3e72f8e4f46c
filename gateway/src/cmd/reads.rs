//! `channel.read`, `counts` and the user's settings. A read takes a token
//! of the reader's rate limit, then moves the pointer at the channel's
//! owner (`shard::reads`); counts are read here, from storage; settings
//! are written by the user's owner.

use std::rc::Rc;

use chatgw_idgen::{ChannelId, MessageId};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::cmd::budget::ReplyBudget;
use crate::error::ApiError;
use crate::route::{Answer, Call, ReadMove};
use crate::shard::registry::Conn;
use crate::shard::state::Shard;
use crate::shard::{abuse, inbox};

/// `channel.read`: `{channel_id, read}`, the pointer as it is now.
pub async fn read(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    conn: Option<&Rc<Conn>>,
    channel_id: ChannelId,
    message_id: MessageId,
) -> Result<Value, ApiError> {
    abuse::check_command(shard, user.user_id).await?;
    let private = shard.store.settings(shard.owner(user.user_id.0), user.user_id)?.private_reads;
    let read = ReadMove {
        channel_id,
        user_id: user.user_id,
        username: user.username.clone(),
        message_id,
        private,
        from: conn.map(|conn| (shard.id, conn.key)),
    };
    match inbox::call(shard, shard.owner(channel_id.0), Call::Read(Box::new(read))).await? {
        Answer::Read(read) => Ok(json!({ "channel_id": channel_id.to_string(), "read": read.to_string() })),
        other => Err(ApiError::internal(format!("channel.read answered {other:?}"))),
    }
}

/// `counts`: the caller's unread messages and mentions over all its
/// channels, and how many channels have any.
pub async fn counts(shard: &Rc<Shard>, user: &AuthedUser) -> Result<Value, ApiError> {
    // It reads up to a thousand records a channel: a token of the rate
    // limit each, so a loop of them is bounded like sends.
    abuse::check_command(shard, user.user_id).await?;
    let (mut unread, mut mentions, mut channels) = (0u64, 0u64, 0u64);
    let mut budget = ReplyBudget::default();
    for joined in shard.store.user_channels(shard.owner(user.user_id.0), user.user_id)? {
        let counted = shard.unread(joined.channel_id, user.user_id, &user.username)?;
        unread += counted.messages;
        mentions += counted.mentions;
        channels += u64::from(counted.messages > 0);
        budget.worked(1 + counted.messages as usize / 64, 0).await;
    }
    Ok(json!({ "unread": unread, "unread_mentions": mentions, "channels_unread": channels }))
}

/// `settings.get`.
pub fn settings(shard: &Shard, user: &AuthedUser) -> Result<Value, ApiError> {
    let settings = shard.store.settings(shard.owner(user.user_id.0), user.user_id)?;
    Ok(json!({ "private_reads": settings.private_reads }))
}

/// `settings.set`: the fields given change, the others stay.
pub async fn set_settings(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    private_reads: Option<bool>,
) -> Result<Value, ApiError> {
    // A write at the user's owner: it takes a token of the rate limit too.
    abuse::check_command(shard, user.user_id).await?;
    let owner = shard.owner(user.user_id.0);
    let mut settings = shard.store.settings(owner, user.user_id)?;
    let Some(private_reads) = private_reads else {
        // Nothing to change: nothing written, so no older read of the
        // settings is written back over a change made meanwhile.
        return Ok(json!({ "private_reads": settings.private_reads }));
    };
    settings.private_reads = private_reads;
    inbox::call(shard, owner, Call::SetSettings { user_id: user.user_id, settings }).await?;
    Ok(json!({ "private_reads": settings.private_reads }))
}
