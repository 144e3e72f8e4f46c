//! `history` and `sync`: reads on the caller's core, straight from
//! storage. History reads one channel; sync merges the user's inbox (small
//! channels, fan-out on write) with a per-channel read of each large
//! channel (fan-out on read), in id order.
//!
//! A read has a budget before it loads (`cmd::budget`): it picks its
//! message ids from keys alone (inbox entries, message keys), then loads
//! messages one at a time, nearest its anchor first, until the reply's
//! encoded size would pass `limits::READ_REPLY_BYTES_MAX`. Every chunk of
//! work it pauses, so a large read never holds the other connections of
//! its core.

use std::collections::BTreeMap;

use chatgw_idgen::{ChannelId, MessageId, ShardId};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::cmd::budget::ReplyBudget;
use crate::error::{ApiError, ErrorCode};
use crate::protocol::command::HistoryAnchor;
use crate::protocol::shapes;
use crate::shard::state::Shard;

/// Checks that `channel` exists and `user` may read it.
pub fn readable(shard: &Shard, user: &AuthedUser, channel: ChannelId) -> Result<(), ApiError> {
    let owner = shard.owner(channel.0);
    if shard.store.is_member(owner, channel, user.user_id)? {
        return Ok(());
    }
    if shard.store.channel(owner, channel)?.is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such channel"));
    }
    Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"))
}

/// Loads message `id` into `budget` if it fits the reply (the first
/// always does). `Ok(None)`: it is not stored (passed over);
/// `Ok(Some(false))`: the budget is spent and nothing was taken.
async fn load(
    budget: &mut ReplyBudget,
    shard: &Shard,
    owner: ShardId,
    channel: ChannelId,
    id: MessageId,
) -> Result<Option<bool>, ApiError> {
    let Some(message) = shard.store.message(owner, channel, id)? else { return Ok(None) };
    let taken = budget.take(shapes::message_json(&message, &shard.username(message.sender_id)?));
    budget.worked(1, message.text.len()).await;
    Ok(Some(taken))
}

/// Loads change `id` into `budget` as sync's `changes` carry it (the
/// change, and its message as it is now), like [`load`].
async fn load_change(
    budget: &mut ReplyBudget,
    shard: &Shard,
    owner: ShardId,
    channel: ChannelId,
    id: MessageId,
) -> Result<Option<bool>, ApiError> {
    let Some(change) = shard.store.change(owner, channel, id)? else { return Ok(None) };
    let Some(message) = shard.store.message(owner, channel, change.message_id)? else { return Ok(None) };
    let now = shapes::message_json(&message, &shard.username(message.sender_id)?);
    let taken = budget.take(shapes::change_json(&change, now));
    budget.worked(1, message.text.len()).await;
    Ok(Some(taken))
}

/// `history`.
pub async fn history(
    shard: &Shard,
    user: &AuthedUser,
    channel: ChannelId,
    anchor: HistoryAnchor,
    limit: usize,
) -> Result<Value, ApiError> {
    readable(shard, user, channel)?;
    let owner = shard.owner(channel.0);
    let (first, last) = (MessageId(0), MessageId(u64::MAX));
    // The ids, nearest the anchor first: the newest for latest and before
    // (read downward), the oldest for after and around. A reply cut short
    // keeps the nearest.
    let (ids, downward) = match anchor {
        HistoryAnchor::Latest => (shard.store.message_ids(owner, channel, last, first, limit)?, true),
        HistoryAnchor::Before(id) => match id.0.checked_sub(1) {
            Some(start) => (shard.store.message_ids(owner, channel, MessageId(start), first, limit)?, true),
            None => (Vec::new(), true),
        },
        HistoryAnchor::After(id) => match id.0.checked_add(1) {
            Some(start) => (shard.store.message_ids(owner, channel, MessageId(start), last, limit)?, false),
            None => (Vec::new(), false),
        },
        HistoryAnchor::Around(id) => (shard.store.ids_around(owner, channel, id, limit)?, false),
    };
    let mut budget = ReplyBudget::default();
    for id in ids {
        if load(&mut budget, shard, owner, channel, id).await? == Some(false) {
            break;
        }
    }
    let mut messages = budget.items;
    if downward {
        messages.reverse();
    }
    Ok(json!({ "messages": messages }))
}

/// `sync`: the messages of the user's channels above `since` and at or below
/// the node's commit frontier, and the changes (edits, deletes) of their
/// messages in the same range, whatever the changed message's own id, with
/// the cursor to sync from next.
///
/// A change has an id of its own from the messages' generator, written with
/// an inbox entry per member like a message (or read per channel for a
/// large one), so one cursor covers both and the frontier's rule holds for
/// changes as for messages. Each change carries its message as it is now,
/// so applying them in order gives what `history` shows.
///
/// The frontier is taken before anything is read: every message at or below
/// it that will ever be stored is stored by then, so the read sees all of
/// them, and a larger id that is already stored waits for the next sync
/// rather than letting the cursor pass a smaller one still being written
/// (see `crate::frontier`). `next_since` is the last id returned when there
/// is more, and otherwise the frontier itself (never below `since`). The
/// frontier is capped by the stored id lease, which a restart resumes the
/// generators above: no later id falls at or below a cursor handed out.
pub async fn sync(shard: &Shard, user: &AuthedUser, since: MessageId, limit: usize) -> Result<Value, ApiError> {
    let frontier = MessageId(shard.shared.sync_frontier(&shard.store).await);
    let user_shard = shard.owner(user.user_id.0);
    // One more than asked tells whether there is more.
    let wanted = limit + 1;
    let mut budget = ReplyBudget::default();
    // The `wanted` smallest ids above `since` and at or below the frontier,
    // from keys alone.
    // Each id with its channel, and whether it is a change's.
    let mut found: BTreeMap<MessageId, (ChannelId, bool)> = BTreeMap::new();
    if since < frontier {
        for entry in shard.store.inbox_after(user_shard, user.user_id, since, wanted)? {
            if entry.message_id <= frontier {
                found.insert(entry.message_id, (entry.channel_id, entry.change));
            }
        }
        for joined in shard.store.user_channels(user_shard, user.user_id)? {
            if !joined.fan_out_on_read {
                continue;
            }
            // Once `wanted` ids are found, only smaller ones can make the page.
            let bound = match found.last_key_value() {
                Some((largest, _)) if found.len() >= wanted => MessageId(largest.0 - 1).min(frontier),
                _ => frontier,
            };
            let start = MessageId(since.0 + 1);
            if start > bound {
                continue;
            }
            let owner = shard.owner(joined.channel_id.0);
            let ids = shard.store.message_ids(owner, joined.channel_id, start, bound, wanted)?;
            let changes = shard.store.change_ids(owner, joined.channel_id, start, bound, wanted)?;
            budget.worked(1 + (ids.len() + changes.len()) / 256, 0).await;
            found.extend(ids.into_iter().map(|id| (id, (joined.channel_id, false))));
            found.extend(changes.into_iter().map(|id| (id, (joined.channel_id, true))));
            while found.len() > wanted {
                found.pop_last();
            }
        }
    }
    let mut has_more = found.len() > limit;
    let mut last = since;
    // Which of the budget's items are changes, in the order taken.
    let mut is_change = Vec::new();
    for (id, (channel, change)) in found.into_iter().take(limit) {
        let owner = shard.owner(channel.0);
        let loaded = if change {
            load_change(&mut budget, shard, owner, channel, id).await?
        } else {
            load(&mut budget, shard, owner, channel, id).await?
        };
        match loaded {
            Some(false) => {
                has_more = true;
                break;
            }
            Some(true) => is_change.push(change),
            // An inbox entry whose message is gone is passed too.
            None => {}
        }
        last = id;
    }
    let next_since = if has_more { last } else { frontier.max(since) };
    let (mut messages, mut changes) = (Vec::new(), Vec::new());
    for (item, change) in budget.items.into_iter().zip(is_change) {
        if change { changes.push(item) } else { messages.push(item) }
    }
    let mut reply = json!({
        "messages": messages,
        "has_more": has_more,
        "next_since": next_since.to_string(),
    });
    // Only when there are any: a reply without changes keeps the shape it
    // always had.
    if !changes.is_empty() {
        reply["changes"] = Value::Array(changes);
    }
    Ok(reply)
}
