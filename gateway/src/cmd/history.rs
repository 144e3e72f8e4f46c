//! `history` and `sync`: reads on the caller's core, straight from
//! storage. History reads one channel; sync merges the user's inbox (small
//! channels, fan-out on write) with a per-channel read of each large
//! channel (fan-out on read), in id order.

use std::collections::BTreeMap;

use chatgw_idgen::{ChannelId, MessageId};
use chatgw_storage::Message;
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
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

/// How many of `messages`, from the first, fit one reply's text bytes (at
/// least one).
fn within_reply_bytes(messages: &[Message]) -> usize {
    let mut bytes = 0;
    messages
        .iter()
        .position(|message| {
            bytes += message.text.len();
            bytes > limits::REPLY_TEXT_BYTES_MAX
        })
        .map_or(messages.len(), |over| over.max(1))
}

fn messages_json(shard: &Shard, messages: &[Message]) -> Result<Vec<Value>, ApiError> {
    messages.iter().map(|message| Ok(shapes::message_json(message, &shard.username(message.sender_id)?))).collect()
}

/// `history`.
pub fn history(
    shard: &Shard,
    user: &AuthedUser,
    channel: ChannelId,
    anchor: HistoryAnchor,
    limit: usize,
) -> Result<Value, ApiError> {
    readable(shard, user, channel)?;
    let owner = shard.owner(channel.0);
    let mut messages = match anchor {
        HistoryAnchor::Latest => shard.store.latest(owner, channel, limit)?,
        HistoryAnchor::Before(id) => shard.store.before(owner, channel, id, limit)?,
        HistoryAnchor::After(id) => shard.store.after(owner, channel, id, limit)?,
        HistoryAnchor::Around(id) => shard.store.around(owner, channel, id, limit)?,
    };
    // Bound the reply: keep the messages nearest the anchor (the newest for
    // latest and before, the oldest for after and around).
    if matches!(anchor, HistoryAnchor::Latest | HistoryAnchor::Before(_)) {
        messages.reverse();
        messages.truncate(within_reply_bytes(&messages));
        messages.reverse();
    } else {
        messages.truncate(within_reply_bytes(&messages));
    }
    Ok(json!({ "messages": messages_json(shard, &messages)? }))
}

/// `sync`: the messages of the user's channels above `since` and at or below
/// the node's commit frontier, with the cursor to sync from next.
///
/// The frontier is taken before anything is read: every message at or below
/// it that will ever be stored is stored by then, so the read sees all of
/// them, and a larger id that is already stored waits for the next sync
/// rather than letting the cursor pass a smaller one still being written
/// (see `crate::frontier`). `next_since` is the last id returned when there
/// is more, and otherwise the frontier itself (never below `since`).
pub fn sync(shard: &Shard, user: &AuthedUser, since: MessageId, limit: usize) -> Result<Value, ApiError> {
    let frontier = MessageId(shard.shared.frontier());
    let user_shard = shard.owner(user.user_id.0);
    // One more than asked tells whether there is more.
    let wanted = limit + 1;
    let mut found: BTreeMap<MessageId, ChannelId> = BTreeMap::new();
    let mut read: BTreeMap<MessageId, Message> = BTreeMap::new();
    if since < frontier {
        for entry in shard.store.inbox_after(user_shard, user.user_id, since, wanted)? {
            if entry.message_id <= frontier {
                found.insert(entry.message_id, entry.channel_id);
            }
        }
        for joined in shard.store.user_channels(user_shard, user.user_id)? {
            if !joined.fan_out_on_read {
                continue;
            }
            let owner = shard.owner(joined.channel_id.0);
            for message in shard.store.after(owner, joined.channel_id, since, wanted)? {
                if message.id <= frontier {
                    found.insert(message.id, message.channel_id);
                    read.insert(message.id, message);
                }
            }
        }
    }
    let mut has_more = found.len() > limit;
    let mut messages = Vec::with_capacity(found.len().min(limit));
    let mut last = since;
    let mut text_bytes = 0;
    for (id, channel) in found.into_iter().take(limit) {
        let message = match read.remove(&id) {
            Some(message) => Some(message),
            None => shard.store.message(shard.owner(channel.0), channel, id)?,
        };
        if let Some(message) = message {
            text_bytes += message.text.len();
            if text_bytes > limits::REPLY_TEXT_BYTES_MAX && !messages.is_empty() {
                has_more = true;
                break;
            }
            messages.push(message);
        }
        // An inbox entry whose message is gone is passed too.
        last = id;
    }
    let next_since = if has_more { last } else { frontier.max(since) };
    Ok(json!({
        "messages": messages_json(shard, &messages)?,
        "has_more": has_more,
        "next_since": next_since.to_string(),
    }))
}
