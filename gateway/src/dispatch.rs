//! The one dispatch behind WebSocket commands (and HTTP `/v1/rpc`): runs on
//! the caller's core. Reads go straight to storage (any core may read);
//! writes go to the owning shard, by a local call or the router.

use std::collections::BTreeMap;
use std::rc::Rc;

use chatgw_idgen::{ChannelId, MessageId, UserId};
use chatgw_storage::{ChannelKind, Message};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::core::{Core, now_ms};
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::owner;
use crate::presence;
use crate::protocol::{self, Command, HistoryAnchor, SendTarget};
use crate::registry::Conn;
use crate::route::{Request, Response};
use crate::shard;

/// Runs one command for `user`, from `conn` when it came over a WebSocket
/// (`None` over HTTP); the value is the reply's `result`.
pub async fn dispatch(
    core: &Rc<Core>,
    user: &AuthedUser,
    conn: Option<&Rc<Conn>>,
    command: Command,
) -> Result<Value, ApiError> {
    match command {
        Command::Send { target, text, client_msg_id } => send(core, user, target, text, client_msg_id).await,
        Command::History { channel_id, anchor, limit } => history(core, user, channel_id, anchor, limit),
        Command::Sync { since, limit } => sync(core, user, since, limit),
        Command::ChannelCreate { name, members } => create(core, user, name, members).await,
        Command::ChannelAddMembers { channel_id, members } => {
            let add = resolve(core, &members)?;
            change_members(core, user, channel_id, add, Vec::new()).await
        }
        Command::ChannelRemoveMembers { channel_id, members } => {
            let remove = resolve(core, &members)?;
            change_members(core, user, channel_id, Vec::new(), remove).await
        }
        Command::ChannelLeave { channel_id } => {
            change_members(core, user, channel_id, Vec::new(), vec![user.user_id]).await?;
            Ok(json!({}))
        }
        Command::ChannelInfo { channel_id } => {
            readable(core, user, channel_id)?;
            Ok(json!({ "channel": channel_view(core, channel_id)? }))
        }
        Command::ChannelList => {
            let joined = core.store.user_channels(core.owner(user.user_id.0), user.user_id)?;
            let channels =
                joined.iter().map(|entry| channel_view(core, entry.channel_id)).collect::<Result<Vec<_>, _>>()?;
            Ok(json!({ "channels": channels }))
        }
        Command::Heartbeat => Ok(json!({})),
        Command::PresenceQuery { users } => {
            let ids = resolve(core, &users)?;
            let statuses = presence::query(core, &ids).await?;
            Ok(json!({ "presence": presence_json(&users, &statuses) }))
        }
        Command::PresenceSubscribe { users } => {
            let conn = conn.ok_or_else(|| ApiError::bad_request("presence.subscribe needs a WebSocket connection"))?;
            let ids = resolve(core, &users)?;
            for id in &ids {
                core.registry.borrow_mut().watch(conn, *id);
            }
            // The owners set this core's bit (idempotent) and answer the
            // presence now; later changes come as events.
            let statuses = presence::watch(core, &ids, true).await?;
            Ok(json!({ "presence": presence_json(&users, &statuses) }))
        }
        Command::PresenceUnsubscribe { users } => {
            let conn =
                conn.ok_or_else(|| ApiError::bad_request("presence.unsubscribe needs a WebSocket connection"))?;
            let ids = resolve(core, &users)?;
            let last: Vec<UserId> =
                ids.into_iter().filter(|id| core.registry.borrow_mut().unwatch(conn, *id)).collect();
            if !last.is_empty() {
                presence::watch(core, &last, false).await?;
            }
            Ok(json!({}))
        }
    }
}

fn presence_json(usernames: &[String], statuses: &[presence::Status]) -> Vec<Value> {
    usernames.iter().zip(statuses).map(|(username, status)| status.to_json(username)).collect()
}

/// Sends a request to the owner: a local call on the same core.
pub async fn request(core: &Rc<Core>, to: chatgw_idgen::ShardId, request: Request) -> Result<Response, ApiError> {
    if to == core.shard { owner::handle(core, request).await } else { core.router.request(to, request).await }
}

async fn send(
    core: &Rc<Core>,
    user: &AuthedUser,
    target: SendTarget,
    text: String,
    client_msg_id: Option<String>,
) -> Result<Value, ApiError> {
    protocol::check_text(&text, core.config.max_message_chars)?;
    core.banned().check(&text)?;
    crate::abuse::check_send(core, user.user_id, &text, client_msg_id.as_deref()).await?;
    let channel_id = match target {
        SendTarget::Channel(channel) => channel,
        SendTarget::User(username) => direct_channel(core, user, &username).await?,
    };
    let request =
        Request::Send { channel_id, sender_id: user.user_id, sender: user.username.clone(), text, client_msg_id };
    match request_to_owner(core, channel_id, request).await? {
        Response::Sent { message, duplicate } => Ok(json!({
            "message_id": message.id.to_string(),
            "channel_id": message.channel_id.to_string(),
            "created_at": message.created_at_ms,
            "duplicate": duplicate,
        })),
        other => Err(ApiError::internal(format!("send answered {other:?}"))),
    }
}

async fn request_to_owner(core: &Rc<Core>, channel: ChannelId, body: Request) -> Result<Response, ApiError> {
    request(core, core.owner(channel.0), body).await
}

/// The direct channel of `user` and `username`, made on first use.
async fn direct_channel(core: &Rc<Core>, user: &AuthedUser, username: &str) -> Result<ChannelId, ApiError> {
    let other =
        core.user_id(username)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {username:?}")))?;
    if other == user.user_id {
        return Err(ApiError::bad_request("to_user must be another user"));
    }
    if let Some(channel) = core.direct_channel(user.user_id, other)? {
        return Ok(channel);
    }
    let pair_owner = shard::pair_owner(user.user_id, other, core.shards);
    let names = (user.username.clone(), username.to_string());
    match request(core, pair_owner, Request::Direct { first: user.user_id, second: other, names }).await? {
        Response::Channel(channel) => Ok(channel),
        other => Err(ApiError::internal(format!("direct answered {other:?}"))),
    }
}

/// Checks that `channel` exists and `user` may read it.
fn readable(core: &Core, user: &AuthedUser, channel: ChannelId) -> Result<(), ApiError> {
    let owner = core.owner(channel.0);
    if core.store.is_member(owner, channel, user.user_id)? {
        return Ok(());
    }
    if core.store.channel(owner, channel)?.is_none() {
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

fn messages_json(core: &Core, messages: &[Message]) -> Result<Vec<Value>, ApiError> {
    messages.iter().map(|message| Ok(protocol::message_json(message, &core.username(message.sender_id)?))).collect()
}

fn history(
    core: &Core,
    user: &AuthedUser,
    channel: ChannelId,
    anchor: HistoryAnchor,
    limit: usize,
) -> Result<Value, ApiError> {
    readable(core, user, channel)?;
    let owner = core.owner(channel.0);
    let mut messages = match anchor {
        HistoryAnchor::Latest => core.store.latest(owner, channel, limit)?,
        HistoryAnchor::Before(id) => core.store.before(owner, channel, id, limit)?,
        HistoryAnchor::After(id) => core.store.after(owner, channel, id, limit)?,
        HistoryAnchor::Around(id) => core.store.around(owner, channel, id, limit)?,
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
    Ok(json!({ "messages": messages_json(core, &messages)? }))
}

/// Every message of the user's channels above `since`: the inbox (small
/// channels, fan-out on write) merged with a per-channel read of each large
/// channel (fan-out on read), in id order.
fn sync(core: &Core, user: &AuthedUser, since: MessageId, limit: usize) -> Result<Value, ApiError> {
    let user_shard = core.owner(user.user_id.0);
    // One more than asked tells whether there is more.
    let wanted = limit + 1;
    let mut found: BTreeMap<MessageId, ChannelId> = BTreeMap::new();
    for entry in core.store.inbox_after(user_shard, user.user_id, since, wanted)? {
        found.insert(entry.message_id, entry.channel_id);
    }
    let mut read: BTreeMap<MessageId, Message> = BTreeMap::new();
    for joined in core.store.user_channels(user_shard, user.user_id)? {
        if !joined.fan_out_on_read {
            continue;
        }
        for message in core.store.after(core.owner(joined.channel_id.0), joined.channel_id, since, wanted)? {
            found.insert(message.id, message.channel_id);
            read.insert(message.id, message);
        }
    }
    let mut has_more = found.len() > limit;
    let mut messages = Vec::with_capacity(found.len().min(limit));
    let mut text_bytes = 0;
    for (id, channel) in found.into_iter().take(limit) {
        let message = match read.remove(&id) {
            Some(message) => Some(message),
            None => core.store.message(core.owner(channel.0), channel, id)?,
        };
        if let Some(message) = message {
            text_bytes += message.text.len();
            if text_bytes > limits::REPLY_TEXT_BYTES_MAX && !messages.is_empty() {
                has_more = true;
                break;
            }
            messages.push(message);
        }
    }
    Ok(json!({ "messages": messages_json(core, &messages)?, "has_more": has_more }))
}

/// User ids for usernames; an unknown one is `not_found`.
fn resolve(core: &Core, usernames: &[String]) -> Result<Vec<UserId>, ApiError> {
    usernames
        .iter()
        .map(|name| core.user_id(name)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {name:?}"))))
        .collect()
}

async fn create(core: &Rc<Core>, user: &AuthedUser, name: String, members: Vec<String>) -> Result<Value, ApiError> {
    let mut ids = resolve(core, &members)?;
    ids.push(user.user_id);
    ids.sort();
    ids.dedup();
    let max = core.config.max_channel_members;
    if ids.len() > max {
        return Err(ApiError::new(ErrorCode::ChannelFull, format!("a channel holds at most {max} members")));
    }
    let channel = chatgw_storage::Channel {
        id: ChannelId(core.next_id()),
        name,
        kind: ChannelKind::Group,
        owner_id: user.user_id,
        created_at_ms: now_ms(),
        fan_out_on_read: false,
    };
    let id = channel.id;
    request_to_owner(core, id, Request::Create { channel, members: ids }).await?;
    Ok(json!({ "channel": channel_view(core, id)? }))
}

async fn change_members(
    core: &Rc<Core>,
    user: &AuthedUser,
    channel_id: ChannelId,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<Value, ApiError> {
    request_to_owner(core, channel_id, Request::Members { channel_id, by: user.user_id, add, remove }).await?;
    if core.store.is_member(core.owner(channel_id.0), channel_id, user.user_id)? {
        Ok(json!({ "channel": channel_view(core, channel_id)? }))
    } else {
        Ok(json!({}))
    }
}

/// A channel's `Channel` shape, read from storage.
pub fn channel_view(core: &Core, channel: ChannelId) -> Result<Value, ApiError> {
    let owner = core.owner(channel.0);
    let record =
        core.store.channel(owner, channel)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such channel"))?;
    let members = core
        .store
        .members(owner, channel)?
        .into_iter()
        .map(|member| core.username(member).map(|name| name.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let last = core.store.last_message_id(owner, channel)?;
    Ok(protocol::channel_json(&record, &members, last))
}
