//! What a shard does for the channels it owns: store a message and fan it
//! out, make channels and direct channels, change members and announce it
//! to every core. Each runs on the owner's core only, so read-then-write is
//! safe.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{Channel, ChannelKind, DedupeEntry, Message, PushDue};
use futures_util::future::join_all;

use crate::clock::now_ms;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::placement;
use crate::protocol::shapes;
use crate::route::{Answer, ChannelMsg, Control, DeliverWith};
use crate::services::push::Check;
use crate::shard::commit::{WriteOp, storage_failed};
use crate::shard::connections::{on_membership, on_subscribe};
use crate::shard::push::{all_here_and_connected, members_by_owner, owes_pushes, recheck_here, spawn_check};
use crate::shard::state::Shard;
use crate::shard::typing;
use crate::single_flight::Turn;

/// Where to answer a remote send as soon as it is stored, and whether that
/// answer went.
pub struct EarlyReply {
    /// The sender's shard.
    pub to: ShardId,
    /// The sender's request id.
    pub request_id: u64,
    /// Set once the answer went.
    pub sent: Cell<bool>,
}

/// Stores a message of an owned channel and fans it out (one send per
/// sender and `client_msg_id` at a time; a retry gets the first's answer).
pub async fn send(
    shard: &Rc<Shard>,
    channel_id: ChannelId,
    sender_id: UserId,
    sender: &str,
    text: String,
    client_msg_id: Option<String>,
    early: Option<&EarlyReply>,
) -> Result<Answer, ApiError> {
    let Some(client_msg_id) = client_msg_id else {
        return store_and_fan_out(shard, channel_id, sender_id, sender, text, None, early)
            .await
            .map(|message| Answer::Sent { message: Box::new(message), duplicate: false });
    };
    // One send per (sender, client_msg_id) at a time: a retry that arrives
    // while the first is being written gets the first's answer. The record
    // is the sender's, kept by the sender's owner, so that the scope is the
    // user's, whichever channel a retry names (protocol §2).
    let key = (sender_id, client_msg_id.clone());
    let records = shard.owner(sender_id.0);
    match shard.sends_in_flight.start(&key) {
        Turn::Follow(first) => {
            let message = first.await.map_err(|_| ApiError::internal("first send vanished"))??;
            Ok(Answer::Sent { message: Box::new(message), duplicate: true })
        }
        Turn::Lead(lead) => {
            let outcome = match shard.store.dedupe(records, sender_id, &client_msg_id, now_ms()) {
                Err(error) => Err(error.into()),
                Ok(Some(first)) => shard
                    .store
                    .message(shard.owner(first.channel_id.0), first.channel_id, first.message_id)
                    .map_err(ApiError::from)
                    .and_then(|found| found.ok_or_else(|| ApiError::internal("dedupe record without its message")))
                    .map(|message| (message, true)),
                Ok(None) => store_and_fan_out(shard, channel_id, sender_id, sender, text, Some(client_msg_id), early)
                    .await
                    .map(|message| (message, false)),
            };
            lead.finish(&outcome.as_ref().map(|(message, _)| message.clone()).map_err(Clone::clone));
            outcome.map(|(message, duplicate)| Answer::Sent { message: Box::new(message), duplicate })
        }
    }
}

/// Checks membership, takes an id, writes the message (and inbox entries
/// for a small channel) in the group commit, answers a remote sender
/// (`early`), then hands one encoded frame to each shard that hosts a member.
async fn store_and_fan_out(
    shard: &Rc<Shard>,
    channel_id: ChannelId,
    sender_id: UserId,
    sender: &str,
    text: String,
    client_msg_id: Option<String>,
    early: Option<&EarlyReply>,
) -> Result<Message, ApiError> {
    let taken_at = Instant::now();
    let found = shard.with_channel(channel_id, |state| {
        (
            state.members.contains(&sender_id),
            state.channel.fan_out_on_read,
            state.members.iter().copied().collect::<Vec<_>>(),
            state.fan_outs.clone(),
        )
    })?;
    let Some((is_member, fan_out_on_read, members, fan_outs)) = found else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such channel"));
    };
    if !is_member {
        return Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"));
    }
    let now = now_ms();
    // The ticket and the id together, with no await between: the
    // channel's fan-outs go in id order.
    let ticket = fan_outs.ticket();
    let id = MessageId(shard.next_message_id());
    let message = Message {
        id,
        channel_id,
        sender_id,
        created_at_ms: now,
        client_msg_id: client_msg_id.clone(),
        text,
        edited_at_ms: None,
        deleted_at_ms: None,
    };
    let mut ops = Vec::with_capacity(2 + if fan_out_on_read { 0 } else { members.len() });
    ops.push(WriteOp::Message(shard.id, message.clone()));
    if let Some(client_msg_id) = client_msg_id {
        let entry = DedupeEntry { channel_id, message_id: id, created_at_ms: now };
        ops.push(WriteOp::Dedupe(shard.owner(sender_id.0), sender_id, client_msg_id, entry));
    }
    if !fan_out_on_read {
        for member in &members {
            ops.push(WriteOp::Inbox(shard.owner(member.0), *member, id, channel_id));
        }
    }
    // The pushes this message owes are recorded by the members' owners
    // after this commit; the pending check goes in the same batch as the
    // message, so a kill in between loses no push (the next start checks
    // again).
    // Unless every member but the sender is this core's and connected to
    // it: then no push is owed (the frame goes to them below).
    let owes = owes_pushes(&members, sender_id);
    let all_here = owes && all_here_and_connected(shard, &members, sender_id);
    let due = (owes && !all_here).then_some(PushDue { message_id: id, channel_id, sender_id });
    if let Some(due) = due {
        ops.push(WriteOp::PushDue(shard.id, due));
    }
    shard.committer.commit(ops).await.map_err(storage_failed)?;
    shard.counters.messages_stored.set(shard.counters.messages_stored.get() + 1);
    typing::on_message(shard, channel_id, sender_id);
    let hosts = |cores: u128, core: ShardId| cores & (1u128 << core.0) != 0;
    // A remote sender's answer rides with the message's frame to its core
    // when that core hosts the channel (one message instead of two), else
    // it goes now, before the turn.
    let mut answer_rides = None;
    if let Some(early) = early {
        let delay = shard.config.fault_early_reply_delay_ms;
        let cores = shard.with_channel(channel_id, |state| state.cores_mask)?.unwrap_or(0);
        if delay == 0 && hosts(cores, early.to) {
            answer_rides = Some(early);
        } else {
            if delay > 0 {
                glommio::timer::sleep(std::time::Duration::from_millis(delay)).await;
            }
            let reply = Answer::Sent { message: Box::new(message.clone()), duplicate: false };
            shard.router.send_control(early.to, early.request_id, Control::Reply(Ok(reply))).await;
            early.sent.set(true);
        }
    }

    // Encode once; every shard hosting a member gets the same bytes. The
    // answer to a remote sender above may have waited for room on its
    // core while a later message of the channel was ready: the turn keeps
    // deliveries in id order.
    let event = shapes::message_event_frame(&message, sender);
    ticket.turn().await;
    let cores = shard.with_channel(channel_id, |state| state.cores_mask)?.unwrap_or(0);
    let mut with: HashMap<ShardId, (u64, DeliverWith)> = HashMap::new();
    if let Some(early) = answer_rides {
        let reply = Answer::Sent { message: Box::new(message.clone()), duplicate: false };
        if hosts(cores, early.to) {
            with.insert(early.to, (early.request_id, DeliverWith { reply: Some(reply), push: None }));
        } else {
            // The core stopped hosting the channel while the turn came.
            shard.router.send_control(early.to, early.request_id, Control::Reply(Ok(reply))).await;
        }
        early.sent.set(true);
    }
    // The push check of members owned by a core the frame goes to rides
    // with it too (unless a test slows the checks down); the others are
    // asked by the check's task.
    let mut riding = HashMap::new();
    let by_owner = due.as_ref().map(|due| members_by_owner(shard, due, &members));
    if let Some(by_owner) = &by_owner
        && shard.config.fault_push_check_delay_ms == 0
    {
        for (&owner, owned) in by_owner {
            if owner == shard.id || !hosts(cores, owner) {
                continue;
            }
            let (request_id, wait) = shard.router.expect_answer(owner);
            let check = Check { channel_id, message_id: id, members: owned.clone() };
            with.entry(owner).or_insert_with(|| (0, DeliverWith::default())).1.push = Some((request_id, check));
            riding.insert(owner, wait);
        }
    }
    shard.fan_out(channel_id, cores, event, taken_at, with).await;
    drop(ticket);
    if let (Some(due), Some(by_owner)) = (due, by_owner) {
        spawn_check(shard, due, by_owner, riding);
    }
    if all_here {
        shard.counters.push_checks_skipped.set(shard.counters.push_checks_skipped.get() + 1);
        recheck_here(shard, channel_id, id, &members, sender_id);
    }
    Ok(message)
}

/// Finds or makes the direct channel of a pair, at the pair's owner.
pub async fn direct(
    shard: &Rc<Shard>,
    first: UserId,
    second: UserId,
    names: (String, String),
) -> Result<Answer, ApiError> {
    debug_assert_eq!(placement::pair_owner(first, second, shard.shard_count), shard.id);
    let key = if first <= second { (first, second) } else { (second, first) };
    match shard.directs_in_flight.start(&key) {
        Turn::Follow(made) => {
            made.await.map_err(|_| ApiError::internal("direct channel vanished"))?.map(Answer::Channel)
        }
        Turn::Lead(lead) => {
            let outcome = find_or_make_direct(shard, first, second, names).await;
            lead.finish(&outcome);
            outcome.map(Answer::Channel)
        }
    }
}

async fn find_or_make_direct(
    shard: &Rc<Shard>,
    first: UserId,
    second: UserId,
    names: (String, String),
) -> Result<ChannelId, ApiError> {
    if let Some(channel) = shard.store.direct_channel(shard.id, first, second)? {
        return Ok(channel);
    }
    // A pair made before pairs were owned by one of their users is indexed
    // where a hash of both ids put it: found there, the index is copied
    // here, and the pair keeps its channel (and its history).
    let legacy = placement::legacy_pair_owner(first, second, shard.shard_count);
    if legacy != shard.id
        && let Some(channel) = shard.store.direct_channel(legacy, first, second)?
    {
        shard
            .committer
            .commit(vec![WriteOp::Direct(shard.id, first, second, channel)])
            .await
            .map_err(storage_failed)?;
        return Ok(channel);
    }
    let (low, high) = if names.0 <= names.1 { (names.0, names.1) } else { (names.1, names.0) };
    let channel = Channel {
        // An id this shard owns: the pair's owner makes the channel itself,
        // with no call to another owner while it holds a call permit.
        id: ChannelId(shard.next_owned_id()),
        name: format!("{low},{high}"),
        kind: ChannelKind::Direct,
        owner_id: first,
        created_at_ms: now_ms(),
        fan_out_on_read: false,
    };
    let id = channel.id;
    // The channel first, then the pair's index: a crash between leaves an
    // unused channel, never an index to a channel that does not exist.
    Box::pin(create(shard, channel, vec![first, second])).await?;
    shard.committer.commit(vec![WriteOp::Direct(shard.id, first, second, id)]).await.map_err(storage_failed)?;
    Ok(id)
}

/// Writes a new channel with its members, then tells every shard so that
/// members' connections join it before the answer goes back.
pub async fn create(shard: &Rc<Shard>, channel: Channel, members: Vec<UserId>) -> Result<Answer, ApiError> {
    let id = channel.id;
    let members: HashSet<UserId> = members.into_iter().collect();
    let mut channel = channel;
    channel.fan_out_on_read = members.len() > limits::INBOX_FAN_OUT_MEMBERS_MAX;
    let mut ops = vec![WriteOp::Channel(shard.id, channel.clone())];
    for member in &members {
        ops.push(WriteOp::AddMember(shard.id, id, *member));
        ops.push(WriteOp::UserChannel(shard.owner(member.0), *member, id, channel.fan_out_on_read));
    }
    shard.committer.commit(ops).await.map_err(storage_failed)?;
    let added: Vec<UserId> = members.iter().copied().collect();
    shard.insert_channel(channel, members);
    announce(shard, id, added, Vec::new()).await?;
    Ok(Answer::Channel(id))
}

/// The `channel` event for one kind of change.
fn channel_event(shard: &Shard, channel: ChannelId, kind: &str) -> Result<bytes::Bytes, ApiError> {
    let view = shard.channel_view(channel)?;
    Ok(shapes::event_frame("channel", &shapes::channel_event_json(kind, &view)))
}

/// Tells every shard about members who joined or left; each answers whether
/// it now hosts the channel, which sets the owner's mask of cores.
async fn announce(
    shard: &Rc<Shard>,
    channel: ChannelId,
    added: Vec<UserId>,
    removed: Vec<UserId>,
) -> Result<(), ApiError> {
    let added_frame = if added.is_empty() { None } else { Some(channel_event(shard, channel, "added")?) };
    let removed_frame = if removed.is_empty() { None } else { Some(channel_event(shard, channel, "removed")?) };
    // Each core's answer is applied as it comes, by that core's epoch: a
    // subscribe from a core that arrives meanwhile is newer and stays.
    let mut waits = Vec::new();
    for target in 0..shard.shard_count {
        let target = ShardId(target);
        if target == shard.id {
            let hosts = on_membership(shard, channel, &added, &removed, added_frame.as_ref(), removed_frame.as_ref());
            on_subscribe(shard, target, channel, hosts, shard.next_subscription_epoch());
        } else {
            let membership = ChannelMsg::Membership {
                channel_id: channel,
                added: added.clone(),
                removed: removed.clone(),
                added_frame: added_frame.clone(),
                removed_frame: removed_frame.clone(),
            };
            let router = &shard.router;
            waits.push(async move { (target, router.ask(target, Control::Channel(membership)).await) });
        }
    }
    // All in flight at once (an `ask` sends only once polled).
    for (target, answer) in join_all(waits).await {
        match answer {
            Ok(Answer::Subscribed { hosts, epoch }) => on_subscribe(shard, target, channel, hosts, epoch),
            Ok(other) => tracing::warn!(?other, "membership answered"),
            Err(error) => tracing::warn!(%error, core = target.0, "membership change not confirmed"),
        }
    }
    Ok(())
}

/// Changes an owned channel's members, for `by` (its owner, or a member
/// leaving).
pub async fn members(
    shard: &Rc<Shard>,
    channel_id: ChannelId,
    by: UserId,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<Answer, ApiError> {
    // One change of the channel at a time, planned once the one before is
    // committed, applied and announced: the cap and the fan-out mode are
    // checked on the state this change applies to, and every core hears
    // the changes in the order they were made.
    let place = shard.member_changes.join(channel_id);
    place.turn().await;
    let max = shard.config.max_channel_members;
    let plan = shard.with_channel(channel_id, |state| {
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
        return Ok(Answer::Done);
    }
    let mut ops = Vec::new();
    if grows_large {
        // Once large, always large: every member reads it per channel now.
        channel.fan_out_on_read = true;
        ops.push(WriteOp::Channel(shard.id, channel.clone()));
        for member in &current {
            ops.push(WriteOp::UserChannel(shard.owner(member.0), *member, channel_id, true));
        }
    }
    // A member added to a channel with history has read it: its unread
    // messages are those after it joined.
    let last = shard.store.last_message_id(shard.id, channel_id)?;
    for user in &to_add {
        if let Some(last) = last {
            ops.push(WriteOp::ReadPointer(shard.id, channel_id, *user, last));
        }
        ops.push(WriteOp::AddMember(shard.id, channel_id, *user));
        ops.push(WriteOp::UserChannel(shard.owner(user.0), *user, channel_id, channel.fan_out_on_read));
    }
    for user in &to_remove {
        ops.push(WriteOp::RemoveMember(shard.id, channel_id, *user));
        ops.push(WriteOp::RemoveUserChannel(shard.owner(user.0), *user, channel_id));
    }
    shard.committer.commit(ops).await.map_err(storage_failed)?;
    shard.with_channel(channel_id, |state| {
        state.channel = channel;
        state.members.extend(to_add.iter().copied());
        for user in &to_remove {
            state.members.remove(user);
        }
    })?;
    announce(shard, channel_id, to_add, to_remove).await?;
    drop(place);
    Ok(Answer::Done)
}
