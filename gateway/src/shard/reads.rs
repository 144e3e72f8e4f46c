//! What a channel's owner does with `channel.read`: checks the member and
//! the message, moves the member's read pointer forward only (a write that
//! rides the owner's next group commit), and sends the `receipt` event to
//! the cores that host the channel: for the reader's other devices, and,
//! in a direct channel or a group of up to `receipt_members_max` members
//! whose reader does not keep reads private, for every member. And the
//! user's owner's side of the settings.

use std::rc::Rc;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{ChannelKind, Settings};

use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::protocol::shapes;
use crate::route::{Answer, ChannelMsg, ConnKey, ReadMove};
use crate::shard::commit::{WriteOp, storage_failed};
use crate::shard::state::Shard;

/// The owner's side of `channel.read`: the pointer as it is now.
pub async fn read(shard: &Rc<Shard>, read: ReadMove) -> Result<Answer, ApiError> {
    let ReadMove { channel_id, user_id, username, message_id, private, from } = read;
    let found = shard.with_channel(channel_id, |state| {
        (state.members.contains(&user_id), state.channel.kind, state.members.len())
    })?;
    let Some((is_member, kind, members)) = found else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such channel"));
    };
    if !is_member {
        return Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"));
    }
    if shard.store.message(shard.id, channel_id, message_id)?.is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such message in this channel"));
    }
    let key = (channel_id, user_id);
    let pending = shard.reads_in_flight.borrow().get(&key).copied();
    let stored = shard.store.read_pointer(shard.id, channel_id, user_id)?;
    let current = pending.max(stored).unwrap_or(MessageId(0));
    if message_id <= current {
        // Pointers only move forward: a late, older read changes nothing.
        return Ok(Answer::Read(current));
    }
    if pending.is_none() && shard.reads_in_flight.borrow().len() >= limits::READS_IN_FLIGHT_PER_SHARD_MAX {
        return Err(ApiError::new(ErrorCode::Overloaded, "too many reads being written on this core; try again"));
    }
    shard.reads_in_flight.borrow_mut().insert(key, message_id);
    let written =
        shard.committer.commit_riding(vec![WriteOp::ReadPointer(shard.id, channel_id, user_id, message_id)]).await;
    {
        let mut in_flight = shard.reads_in_flight.borrow_mut();
        if in_flight.get(&key) == Some(&message_id) {
            in_flight.remove(&key);
        }
    }
    written.map_err(storage_failed)?;
    let to_all = !private && (kind == ChannelKind::Direct || members <= shard.config.receipt_members_max);
    let frame = shapes::receipt_event_frame(channel_id, user_id, &username, message_id);
    let cores = shard.with_channel(channel_id, |state| state.cores_mask)?.unwrap_or(0);
    let only = (!to_all).then_some(user_id);
    shard.to_cores_soon(
        cores,
        || deliver_here(shard, channel_id, &frame, only, from),
        || ChannelMsg::Receipt { channel_id, frame: frame.clone(), only, skip: from },
    );
    Ok(Answer::Read(message_id))
}

/// Queues a `receipt` frame to this core's connections of `channel`: those
/// of `only` if given, never the reading connection `skip`.
pub fn deliver_here(
    shard: &Shard,
    channel: ChannelId,
    frame: &bytes::Bytes,
    only: Option<UserId>,
    skip: Option<(ShardId, ConnKey)>,
) {
    let skip_key = skip.filter(|(core, _)| *core == shard.id).map(|(_, key)| key);
    let queued = shard
        .registry
        .borrow()
        .deliver_to(channel, frame, |conn| only.is_none_or(|user| conn.user_id == user) && skip_key != Some(conn.key));
    shard.counters.receipt_deliveries.set(shard.counters.receipt_deliveries.get() + queued as u64);
}

/// The user's owner's side of `settings.set`.
pub async fn set_settings(shard: &Rc<Shard>, user: UserId, settings: Settings) -> Result<Answer, ApiError> {
    debug_assert_eq!(shard.owner(user.0), shard.id);
    shard.committer.commit(vec![WriteOp::Settings(shard.id, user, settings)]).await.map_err(storage_failed)?;
    Ok(Answer::Done)
}
