//! What a shard does with requests for what it owns: store a message and
//! fan it out, make channels and direct channels, change members, create
//! accounts. Each runs on the owner's core only, so read-then-write is safe.

use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{Channel, ChannelKind, DedupeEntry, Message, User};
use serde_json::json;

use crate::commit::WriteOp;
use crate::core::{Core, now_ms};
use crate::error::{ApiError, ErrorCode};
use crate::frame;
use crate::limits;
use crate::protocol;
use crate::route::{Control, Request, Response};
use crate::shard;
use crate::single_flight::Turn;

/// Handles a request at the shard that owns its subject.
pub async fn handle(core: &Rc<Core>, request: Request) -> Result<Response, ApiError> {
    match request {
        Request::Send { channel_id, sender_id, sender, text, client_msg_id } => {
            send(core, channel_id, sender_id, &sender, text, client_msg_id, None).await
        }
        Request::Direct { first, second, names } => direct(core, first, second, names).await,
        Request::Create { channel, members } => create(core, channel, members).await,
        Request::Members { channel_id, by, add, remove } => members(core, channel_id, by, add, remove).await,
        Request::Signup { username, display_name, password_hash } => {
            signup(core, username, display_name, password_hash).await
        }
        Request::SetDisabled { user_id, disabled } => set_disabled(core, user_id, disabled).await,
        Request::BannedWords(change) => {
            if core.shard != ShardId(0) {
                return Err(ApiError::internal("banned words change at a shard other than 0"));
            }
            crate::admin::apply_banned_change(core, change).await.map(Response::Banned)
        }
    }
}

/// Handles a request that came from another shard over the mesh and sends
/// its answer back. A new message is answered before its fan-out: the
/// sender's core then takes the reply before the event, and the sender's
/// connection gets both in one write (one packet, one read for the client).
pub async fn handle_remote(core: &Rc<Core>, from: ShardId, request_id: u64, request: Request) {
    let early = EarlyReply { to: from, request_id, sent: Cell::new(false) };
    let result = match request {
        Request::Send { channel_id, sender_id, sender, text, client_msg_id } => {
            send(core, channel_id, sender_id, &sender, text, client_msg_id, Some(&early)).await
        }
        other => handle(core, other).await,
    };
    if !early.sent.get() {
        core.router.send_control(from, request_id, Control::Reply(result)).await;
    }
}

/// Where to answer a remote send as soon as it is stored, and whether that
/// answer went.
struct EarlyReply {
    to: ShardId,
    request_id: u64,
    sent: Cell<bool>,
}

fn storage_failed(error: String) -> ApiError {
    ApiError::internal(format!("write failed: {error}"))
}

async fn send(
    core: &Rc<Core>,
    channel_id: ChannelId,
    sender_id: UserId,
    sender: &str,
    text: String,
    client_msg_id: Option<String>,
    early: Option<&EarlyReply>,
) -> Result<Response, ApiError> {
    let Some(client_msg_id) = client_msg_id else {
        return store_and_fan_out(core, channel_id, sender_id, sender, text, None, early)
            .await
            .map(|message| Response::Sent { message: Box::new(message), duplicate: false });
    };
    // One send per (sender, client_msg_id) at a time: a retry that arrives
    // while the first is being written gets the first's answer.
    let key = (sender_id, client_msg_id.clone());
    match core.sends_in_flight.start(&key) {
        Turn::Follow(first) => {
            let message = first.await.map_err(|_| ApiError::internal("first send vanished"))??;
            Ok(Response::Sent { message: Box::new(message), duplicate: true })
        }
        Turn::Lead => {
            let outcome = match core.store.dedupe(core.shard, sender_id, &client_msg_id, now_ms()) {
                Err(error) => Err(error.into()),
                Ok(Some(first)) => core
                    .store
                    .message(core.shard, first.channel_id, first.message_id)
                    .map_err(ApiError::from)
                    .and_then(|found| found.ok_or_else(|| ApiError::internal("dedupe record without its message")))
                    .map(|message| (message, true)),
                Ok(None) => store_and_fan_out(core, channel_id, sender_id, sender, text, Some(client_msg_id), early)
                    .await
                    .map(|message| (message, false)),
            };
            core.sends_in_flight
                .finish(&key, &outcome.as_ref().map(|(message, _)| message.clone()).map_err(Clone::clone));
            outcome.map(|(message, duplicate)| Response::Sent { message: Box::new(message), duplicate })
        }
    }
}

/// Checks membership, takes an id, writes the message (and inbox entries
/// for a small channel) in the group commit, answers a remote sender
/// (`early`), then hands one encoded frame to each core that hosts a member.
async fn store_and_fan_out(
    core: &Rc<Core>,
    channel_id: ChannelId,
    sender_id: UserId,
    sender: &str,
    text: String,
    client_msg_id: Option<String>,
    early: Option<&EarlyReply>,
) -> Result<Message, ApiError> {
    let taken_at = Instant::now();
    let found = core.with_channel(channel_id, |state| {
        (
            state.members.contains(&sender_id),
            state.channel.fan_out_on_read,
            state.members.iter().copied().collect::<Vec<_>>(),
        )
    })?;
    let Some((is_member, fan_out_on_read, members)) = found else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such channel"));
    };
    if !is_member {
        return Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"));
    }
    let now = now_ms();
    let id = MessageId(core.next_id());
    let message = Message { id, channel_id, sender_id, created_at_ms: now, client_msg_id: client_msg_id.clone(), text };
    let mut ops = Vec::with_capacity(2 + if fan_out_on_read { 0 } else { members.len() });
    ops.push(WriteOp::Message(core.shard, message.clone()));
    if let Some(client_msg_id) = client_msg_id {
        let entry = DedupeEntry { channel_id, message_id: id, created_at_ms: now };
        ops.push(WriteOp::Dedupe(core.shard, sender_id, client_msg_id, entry));
    }
    if !fan_out_on_read {
        for member in &members {
            ops.push(WriteOp::Inbox(core.owner(member.0), *member, id, channel_id));
        }
    }
    core.committer.commit(ops).await.map_err(storage_failed)?;
    core.counters.messages_stored.set(core.counters.messages_stored.get() + 1);
    if let Some(early) = early {
        let reply = Response::Sent { message: Box::new(message.clone()), duplicate: false };
        core.router.send_control(early.to, early.request_id, Control::Reply(Ok(reply))).await;
        early.sent.set(true);
    }

    // Encode once; every core hosting a member gets the same bytes.
    let event = frame::text(&protocol::event_json("message", &protocol::message_json(&message, sender)));
    let cores = core.with_channel(channel_id, |state| state.cores)?.unwrap_or(0);
    core.fan_out(channel_id, cores, event, taken_at).await;
    crate::push::check_members(core, channel_id, id, sender_id, &members).await;
    Ok(message)
}

async fn direct(core: &Rc<Core>, first: UserId, second: UserId, names: (String, String)) -> Result<Response, ApiError> {
    debug_assert_eq!(shard::pair_owner(first, second, core.shards), core.shard);
    let key = if first <= second { (first, second) } else { (second, first) };
    match core.directs_in_flight.start(&key) {
        Turn::Follow(made) => {
            made.await.map_err(|_| ApiError::internal("direct channel vanished"))?.map(Response::Channel)
        }
        Turn::Lead => {
            let outcome = find_or_make_direct(core, first, second, names).await;
            core.directs_in_flight.finish(&key, &outcome);
            outcome.map(Response::Channel)
        }
    }
}

async fn find_or_make_direct(
    core: &Rc<Core>,
    first: UserId,
    second: UserId,
    names: (String, String),
) -> Result<ChannelId, ApiError> {
    if let Some(channel) = core.store.direct_channel(core.shard, first, second)? {
        return Ok(channel);
    }
    let (low, high) = if names.0 <= names.1 { (names.0, names.1) } else { (names.1, names.0) };
    let channel = Channel {
        id: ChannelId(core.next_id()),
        name: format!("{low},{high}"),
        kind: ChannelKind::Direct,
        owner_id: first,
        created_at_ms: now_ms(),
        fan_out_on_read: false,
    };
    let id = channel.id;
    // The channel first, then the pair's index: a crash between leaves an
    // unused channel, never an index to a channel that does not exist.
    let owner = core.owner(id.0);
    if owner == core.shard {
        Box::pin(create(core, channel, vec![first, second])).await?;
    } else {
        core.router.request(owner, Request::Create { channel, members: vec![first, second] }).await?;
    }
    core.committer.commit(vec![WriteOp::Direct(core.shard, first, second, id)]).await.map_err(storage_failed)?;
    Ok(id)
}

/// Writes a new channel with its members, then tells every core so that
/// members' connections join it before the answer goes back.
async fn create(core: &Rc<Core>, channel: Channel, members: Vec<UserId>) -> Result<Response, ApiError> {
    let id = channel.id;
    let members: HashSet<UserId> = members.into_iter().collect();
    let mut channel = channel;
    channel.fan_out_on_read = members.len() > limits::INBOX_FAN_OUT_MEMBERS_MAX;
    let mut ops = vec![WriteOp::Channel(core.shard, channel.clone())];
    for member in &members {
        ops.push(WriteOp::AddMember(core.shard, id, *member));
        ops.push(WriteOp::UserChannel(core.owner(member.0), *member, id, channel.fan_out_on_read));
    }
    core.committer.commit(ops).await.map_err(storage_failed)?;
    let added: Vec<UserId> = members.iter().copied().collect();
    core.insert_channel(channel, members);
    announce(core, id, added, Vec::new()).await?;
    Ok(Response::Channel(id))
}

/// The `channel` event for one kind of change.
fn channel_event(core: &Core, channel: ChannelId, kind: &str) -> Result<bytes::Bytes, ApiError> {
    let view = crate::dispatch::channel_view(core, channel)?;
    Ok(frame::text(&protocol::event_json("channel", &json!({ "kind": kind, "channel": view }))))
}

/// Tells every core about members who joined or left; each answers whether
/// it now hosts the channel, which sets the owner's core mask.
async fn announce(
    core: &Rc<Core>,
    channel: ChannelId,
    added: Vec<UserId>,
    removed: Vec<UserId>,
) -> Result<(), ApiError> {
    let added_frame = if added.is_empty() { None } else { Some(channel_event(core, channel, "added")?) };
    let removed_frame = if removed.is_empty() { None } else { Some(channel_event(core, channel, "removed")?) };
    let mut waits = Vec::new();
    let mut mask = 0u128;
    for target in 0..core.shards {
        let target = ShardId(target);
        if target == core.shard {
            if core.on_membership(channel, &added, &removed, added_frame.as_ref(), removed_frame.as_ref()) {
                mask |= 1u128 << target.0;
            }
        } else {
            let control = Control::Membership {
                channel_id: channel,
                added: added.clone(),
                removed: removed.clone(),
                added_frame: added_frame.clone(),
                removed_frame: removed_frame.clone(),
            };
            waits.push((target, core.router.ask(target, control)));
        }
    }
    for (target, wait) in waits {
        if let Ok(Response::Subscribed(true)) = wait.await {
            mask |= 1u128 << target.0;
        }
    }
    core.with_channel(channel, |state| state.cores = mask)?;
    Ok(())
}

async fn members(
    core: &Rc<Core>,
    channel_id: ChannelId,
    by: UserId,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<Response, ApiError> {
    let max = core.config.max_channel_members;
    let plan = core.with_channel(channel_id, |state| {
        let leaving_self = add.is_empty() && remove == [by];
        if !state.members.contains(&by) {
            return Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"));
        }
        if state.channel.kind == ChannelKind::Direct {
            return Err(ApiError::new(ErrorCode::Forbidden, "a direct channel's members do not change"));
        }
        if !leaving_self && state.channel.owner_id != by {
            return Err(ApiError::new(ErrorCode::Forbidden, "only the channel's owner changes its members"));
        }
        if leaving_self && state.channel.owner_id == by && state.members.len() > 1 {
            return Err(ApiError::new(ErrorCode::Forbidden, "the owner cannot leave a channel that has other members"));
        }
        let to_add: Vec<UserId> = add
            .iter()
            .copied()
            .filter(|user| !state.members.contains(user))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let to_remove: Vec<UserId> = remove
            .iter()
            .copied()
            .filter(|user| state.members.contains(user))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if state.members.len() + to_add.len() - to_remove.len().min(state.members.len() + to_add.len()) > max {
            return Err(ApiError::new(ErrorCode::ChannelFull, format!("a channel holds at most {max} members")));
        }
        let grows_large = !state.channel.fan_out_on_read
            && state.members.len() + to_add.len() - to_remove.len() > limits::INBOX_FAN_OUT_MEMBERS_MAX;
        Ok((to_add, to_remove, grows_large, state.channel.clone(), state.members.iter().copied().collect::<Vec<_>>()))
    })?;
    let Some(plan) = plan else { return Err(ApiError::new(ErrorCode::NotFound, "no such channel")) };
    let (to_add, to_remove, grows_large, mut channel, current) = plan?;
    if to_add.is_empty() && to_remove.is_empty() {
        return Ok(Response::Done);
    }
    let mut ops = Vec::new();
    if grows_large {
        // Once large, always large: every member reads it per channel now.
        channel.fan_out_on_read = true;
        ops.push(WriteOp::Channel(core.shard, channel.clone()));
        for member in &current {
            ops.push(WriteOp::UserChannel(core.owner(member.0), *member, channel_id, true));
        }
    }
    for user in &to_add {
        ops.push(WriteOp::AddMember(core.shard, channel_id, *user));
        ops.push(WriteOp::UserChannel(core.owner(user.0), *user, channel_id, channel.fan_out_on_read));
    }
    for user in &to_remove {
        ops.push(WriteOp::RemoveMember(core.shard, channel_id, *user));
        ops.push(WriteOp::RemoveUserChannel(core.owner(user.0), *user, channel_id));
    }
    core.committer.commit(ops).await.map_err(storage_failed)?;
    core.with_channel(channel_id, |state| {
        state.channel = channel;
        state.members.extend(to_add.iter().copied());
        for user in &to_remove {
            state.members.remove(user);
        }
    })?;
    announce(core, channel_id, to_add, to_remove).await?;
    Ok(Response::Done)
}

async fn signup(
    core: &Rc<Core>,
    username: String,
    display_name: String,
    password_hash: String,
) -> Result<Response, ApiError> {
    debug_assert_eq!(shard::username_owner(&username, core.shards), core.shard);
    let taken = || ApiError::new(ErrorCode::UsernameTaken, format!("username {username:?} is taken"));
    match core.signups_in_flight.start(&username) {
        // Whoever was first gets the name, whatever its outcome.
        Turn::Follow(_) => Err(taken()),
        Turn::Lead => {
            let outcome = async {
                if core.store.user_id_by_name(core.shard, &username)?.is_some() {
                    return Err(taken());
                }
                let id = UserId(core.next_id());
                let user = User {
                    id,
                    username: username.clone(),
                    display_name,
                    password_hash,
                    created_at_ms: now_ms(),
                    disabled: false,
                };
                let ops =
                    vec![WriteOp::User(core.owner(id.0), user), WriteOp::Username(core.shard, username.clone(), id)];
                core.committer.commit(ops).await.map_err(storage_failed)?;
                Ok(id)
            }
            .await;
            core.signups_in_flight.finish(&username, &outcome);
            outcome.map(Response::User)
        }
    }
}

/// Disables or enables an account, at the user's owner.
async fn set_disabled(core: &Rc<Core>, user_id: UserId, disabled: bool) -> Result<Response, ApiError> {
    debug_assert_eq!(core.owner(user_id.0), core.shard);
    let mut user =
        core.store.user(core.shard, user_id)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
    if user.disabled != disabled {
        user.disabled = disabled;
        core.committer.commit(vec![WriteOp::User(core.shard, user)]).await.map_err(storage_failed)?;
    }
    Ok(Response::Done)
}
