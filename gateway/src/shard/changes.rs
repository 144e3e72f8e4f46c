//! What a channel's owner does with an edit or a delete of one of its
//! messages: checks who asks (the sender edits, within the edit window;
//! the sender or a group's owner deletes), rewrites the message (a deleted
//! one keeps no text at all) and writes the change, a record with an id of
//! its own from the messages' generator, in one group commit, with an
//! inbox entry for each member of a small channel, as a message has; then
//! the `message_edited` or `message_deleted` event goes to every core that
//! hosts the channel, in its turn among the channel's messages.
//!
//! Sync carries changes by their own ids (see `cmd::history`), so a device
//! offline during an edit of an old message still gets it from its cursor.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use chatgw_idgen::{ChannelId, MessageId, UserId};
use chatgw_storage::{Change, ChangeKind, ChannelKind};

use crate::clock::now_ms;
use crate::error::{ApiError, ErrorCode};
use crate::protocol::shapes;
use crate::route::Answer;
use crate::shard::commit::{WriteOp, storage_failed};
use crate::shard::state::Shard;

/// Edits (`edit` is the new text) or deletes message `message_id` of
/// the owned channel `channel_id` for `by`; answers the message as it is
/// now.
pub async fn change_message(
    shard: &Rc<Shard>,
    channel_id: ChannelId,
    message_id: MessageId,
    by: UserId,
    edit: Option<String>,
) -> Result<Answer, ApiError> {
    let taken_at = Instant::now();
    let place = shard.message_changes.join(channel_id);
    place.turn().await;
    let found = shard.with_channel(channel_id, |state| {
        (
            state.members.contains(&by),
            state.channel.kind,
            state.channel.owner_id,
            state.channel.fan_out_on_read,
            state.members.iter().copied().collect::<Vec<_>>(),
            state.fan_outs.clone(),
        )
    })?;
    let Some((is_member, kind, channel_owner, fan_out_on_read, members, fan_outs)) = found else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such channel"));
    };
    if !is_member {
        return Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"));
    }
    let mut message = match shard.store.message(shard.id, channel_id, message_id)? {
        Some(message) if message.deleted_at_ms.is_none() => message,
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such message")),
    };
    let now = now_ms();
    match &edit {
        Some(_) if message.sender_id != by => {
            return Err(ApiError::new(ErrorCode::Forbidden, "only its sender edits a message"));
        }
        Some(_) => {
            let window_s = shard.config.edit_window_s;
            if now.saturating_sub(message.created_at_ms) > window_s.saturating_mul(1000) {
                return Err(ApiError::bad_request(format!(
                    "a message can be edited only within {window_s} s of its sending"
                )));
            }
        }
        None if message.sender_id != by && !(kind == ChannelKind::Group && channel_owner == by) => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only its sender or the channel's owner deletes a message",
            ));
        }
        None => {}
    }
    let change_kind = match edit {
        Some(text) => {
            message.text = text;
            message.edited_at_ms = Some(now);
            ChangeKind::Edited
        }
        None => {
            message.text = String::new();
            message.deleted_at_ms = Some(now);
            ChangeKind::Deleted
        }
    };
    // The ticket and the id together, with no await between: the event
    // goes in id order among the channel's messages.
    let ticket = fan_outs.ticket();
    let change = Change { id: MessageId(shard.next_message_id()), channel_id, message_id, kind: change_kind };
    let mut ops = Vec::with_capacity(2 + if fan_out_on_read { 0 } else { members.len() });
    ops.push(WriteOp::Change(shard.id, change));
    ops.push(WriteOp::Message(shard.id, message.clone()));
    if !fan_out_on_read {
        for member in &members {
            ops.push(WriteOp::InboxChange(shard.owner(member.0), *member, change.id, channel_id));
        }
    }
    shard.committer.commit(ops).await.map_err(storage_failed)?;
    let frame = match change_kind {
        ChangeKind::Edited => shapes::message_edited_frame(&message, &shard.username(message.sender_id)?),
        ChangeKind::Deleted => shapes::message_deleted_frame(&message),
    };
    ticket.turn().await;
    let cores = shard.with_channel(channel_id, |state| state.cores_mask)?.unwrap_or(0);
    shard.fan_out(channel_id, cores, frame, taken_at, HashMap::new()).await;
    drop(ticket);
    drop(place);
    Ok(Answer::Sent { message: Box::new(message), duplicate: false })
}
