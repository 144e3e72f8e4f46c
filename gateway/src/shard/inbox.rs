//! A shard's only inbox: every call and control message reaches the shard
//! here, from its own core (`call`, a local call) or from another core
//! (`serve_mesh`'s readers). The handlers it hands them to are the files
//! beside it; this file is the one match over what can arrive.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use chatgw_idgen::ShardId;
use glommio::channels::channel_mesh::Receivers;
use glommio::sync::Semaphore;

use crate::error::ApiError;
use crate::limits::{self, MESH_ANSWER_SWEEP};
use crate::route::{Answer, Call, ChannelMsg, Control, DeliverWith, OpsMsg, Routed};
use crate::services::presence::Msg as PresenceMsg;
use crate::shard::channels::EarlyReply;
use crate::shard::state::Shard;
use crate::shard::{abuse, accounts, changes, channels, connections, ops, presence, push, reads, stats, typing};

/// Makes a call on the shard `to` that owns its subject: a local call on
/// this core, or one over the mesh. What the layers above use to write.
///
/// Either way the owner's work runs as a task of its own, so once started
/// it runs to completion whatever happens to the caller (an HTTP client
/// that goes away drops its request's future): no half-made write, no
/// single-flight key left behind.
pub async fn call(shard: &Rc<Shard>, to: ShardId, call: Call) -> Result<Answer, ApiError> {
    if to != shard.id {
        return shard.router.call(to, call).await;
    }
    let owner = shard.clone();
    crate::tasks::spawn(async move { handle_call(&owner, call, None).await })
        .detach()
        .await
        .unwrap_or_else(|| Err(ApiError::internal("the owner's task was cancelled")))
}

/// Runs a call at the shard that owns its subject. `early`: where a remote
/// send is answered as soon as it is stored.
async fn handle_call(shard: &Rc<Shard>, call: Call, early: Option<&EarlyReply>) -> Result<Answer, ApiError> {
    match call {
        Call::Send { channel_id, sender_id, sender, text, client_msg_id } => {
            channels::send(shard, channel_id, sender_id, &sender, text, client_msg_id, early).await
        }
        Call::ChangeMessage { channel_id, message_id, by, edit } => {
            changes::change_message(shard, channel_id, message_id, by, edit).await
        }
        Call::Read(read) => reads::read(shard, *read).await,
        Call::SetSettings { user_id, settings } => reads::set_settings(shard, user_id, settings).await,
        Call::Direct { first, second, names } => channels::direct(shard, first, second, names).await,
        Call::Create { channel, members } => channels::create(shard, channel, members).await,
        Call::Members { channel_id, by, add, remove } => channels::members(shard, channel_id, by, add, remove).await,
        Call::Signup { username, display_name, password_hash } => {
            accounts::signup(shard, username, display_name, password_hash).await
        }
        Call::SetDisabled { user_id, disabled } => accounts::set_disabled(shard, user_id, disabled).await,
        Call::RevokeTokens { user_id, password } => accounts::revoke_tokens(shard, user_id, password).await,
        Call::RetryDeadPushes => push::retry_dead(shard, limits::DEAD_PUSH_RETRY_MAX).await,
        Call::BannedWords(change) => ops::change_banned(shard, change).await.map(Answer::Banned),
    }
}

/// Runs a call that came from another shard and sends its answer back. A
/// new message is answered before its fan-out: the sender's core then
/// takes the reply before the event, and the sender's connection gets both
/// in one write (one packet, one read for the client).
async fn handle_remote_call(shard: &Rc<Shard>, from: ShardId, request_id: u64, call: Call) {
    let early = EarlyReply { to: from, request_id, sent: Cell::new(false) };
    let result = handle_call(shard, call, Some(&early)).await;
    if !early.sent.get() {
        shard.router.send_control(from, request_id, Control::Reply(result)).await;
    }
}

/// Handles a control message from core `from` (never this one: a shard
/// makes local calls to itself). Never awaits: replies go out at once, or
/// from a task of their own when the queue back is full.
fn handle_control(shard: &Rc<Shard>, from: ShardId, request_id: u64, control: Control) {
    let delay = shard.config.fault_owner_delay_ms;
    if delay > 0 && is_hosting_word(&control) {
        // A test's slow owner: the word lands later, answered from a task.
        let shard = shard.clone();
        crate::tasks::spawn(async move {
            glommio::timer::sleep(std::time::Duration::from_millis(delay)).await;
            apply_control(&shard, from, request_id, control);
        })
        .detach();
        return;
    }
    apply_control(shard, from, request_id, control);
}

/// A core's word that it hosts a channel or a user's device: what
/// `fault_owner_delay_ms` slows down.
fn is_hosting_word(control: &Control) -> bool {
    matches!(control, Control::Channel(ChannelMsg::Subscribe { .. }) | Control::Presence(PresenceMsg::Connected { .. }))
}

fn apply_control(shard: &Rc<Shard>, from: ShardId, request_id: u64, control: Control) {
    let reply = match control {
        Control::Reply(result) => {
            shard.router.complete(request_id, result);
            None
        }
        Control::Replies(answers) => {
            for (request_id, result) in answers {
                shard.router.complete(request_id, result);
            }
            None
        }
        Control::Channel(msg) => on_channel(shard, from, request_id, msg),
        Control::Presence(msg) => presence::on_msg(shard, from, msg).map(Ok),
        Control::Abuse(check) => Some(abuse::on_check(shard, check)),
        Control::Push(check) => {
            push::on_check(shard, from, request_id, check);
            None
        }
        Control::Ops(msg) => Some(Ok(on_ops(shard, msg))),
        Control::Typing(change) => Some(typing::on_change(shard, change)),
        Control::HandOff(hand_off) => {
            match shard.start_handed_off.get() {
                Some(start) => start(shard, *hand_off),
                None => tracing::warn!("a connection handed here before sessions can start: closed"),
            }
            None
        }
    };
    if let Some(result) = reply
        && request_id != 0
    {
        // Most replies fit the queue at once; only a full queue costs a
        // task that waits for room.
        shard.send_control_soon(from, request_id, Control::Reply(result));
    }
}

fn on_channel(shard: &Rc<Shard>, from: ShardId, request_id: u64, msg: ChannelMsg) -> Option<Result<Answer, ApiError>> {
    match msg {
        ChannelMsg::Deliver { channel_id, frame, taken_at, with } => {
            let DeliverWith { reply, push } = with.map(|with| *with).unwrap_or_default();
            if let Some(answer) = reply {
                // The sender's answer first, then its message's frame.
                shard.router.complete(request_id, Ok(answer));
            }
            shard.deliver_local(channel_id, &frame, taken_at);
            if let Some((push_request, check)) = push {
                push::on_check(shard, from, push_request, check);
            }
            if !shard.registry.borrow().hosts_channel(channel_id) {
                // The owner thinks this core hosts the channel and it does
                // not (a stale word met a state the owner had dropped, see
                // `ChannelState::is_evictable`): say so, with a new epoch,
                // so that the next message skips this core. Any connection
                // that joins the channel here later takes a newer epoch.
                let unsubscribe = ChannelMsg::Unsubscribe { channel_id, epoch: shard.next_subscription_epoch() };
                shard.send_control_soon(from, 0, Control::Channel(unsubscribe));
            }
            None
        }
        ChannelMsg::Typing { channel_id, frame, except } => {
            typing::deliver_here(shard, channel_id, &frame, except);
            None
        }
        ChannelMsg::Receipt { channel_id, frame, only, skip } => {
            reads::deliver_here(shard, channel_id, &frame, only, skip);
            None
        }
        ChannelMsg::Subscribe { channel_ids, epoch } => {
            for channel_id in channel_ids {
                connections::on_subscribe(shard, from, channel_id, true, epoch);
            }
            Some(Ok(Answer::Done))
        }
        ChannelMsg::Unsubscribe { channel_id, epoch } => {
            connections::on_subscribe(shard, from, channel_id, false, epoch);
            None
        }
        ChannelMsg::Membership { channel_id, added, removed, added_frame, removed_frame } => {
            let hosts = connections::on_membership(
                shard,
                channel_id,
                &added,
                &removed,
                added_frame.as_ref(),
                removed_frame.as_ref(),
            );
            Some(Ok(Answer::Subscribed { hosts, epoch: shard.next_subscription_epoch() }))
        }
    }
}

fn on_ops(shard: &Shard, msg: OpsMsg) -> Answer {
    match msg {
        OpsMsg::Stats => Answer::Stats(Box::new(stats::snapshot(shard))),
        OpsMsg::Kick { user_id, device } => Answer::Count(ops::kick_here(shard, user_id, device.as_deref())),
        OpsMsg::Replace { user_id, device, key } => Answer::Count(ops::replace_here(shard, user_id, &device, key)),
        OpsMsg::Connections { after, limit } => Answer::Connections(ops::connections_here(shard, after, limit)),
        OpsMsg::BannedWords(banned) => {
            shard.set_banned(banned);
            Answer::Done
        }
        OpsMsg::Panic => ops::panic_here(shard),
    }
}

/// Starts the readers of the two meshes: control messages are handled as
/// they come (never awaiting); calls each run as a task, at most
/// `calls_in_flight_per_shard_max` at once (past it the readers wait,
/// and the callers' queues fill: backpressure).
pub fn serve_mesh(shard: &Rc<Shard>, mut calls: Receivers<Routed<Call>>, mut controls: Receivers<Routed<Control>>) {
    for (_, stream) in controls.streams() {
        let shard = shard.clone();
        crate::tasks::spawn(async move {
            while let Some(routed) = stream.recv().await {
                shard.router.note_received(routed.from);
                handle_control(&shard, routed.from, routed.request_id, routed.body);
            }
        })
        .detach();
    }
    let permits = Rc::new(Semaphore::new(shard.config.calls_in_flight_per_shard_max.max(1) as u64));
    for (_, stream) in calls.streams() {
        let (shard, permits) = (shard.clone(), permits.clone());
        crate::tasks::spawn(async move {
            while let Some(routed) = stream.recv().await {
                shard.router.note_received(routed.from);
                let Ok(permit) = permits.acquire_static_permit(1).await else { break };
                let shard = shard.clone();
                crate::tasks::spawn(async move {
                    handle_remote_call(&shard, routed.from, routed.request_id, routed.body).await;
                    drop(permit);
                })
                .detach();
            }
        })
        .detach();
    }
}

/// Answers `overloaded` to this core's calls and asks past their deadline,
/// every `MESH_ANSWER_SWEEP`, until the server stops.
pub async fn expire_answers(shard: Rc<Shard>) {
    while !shard.stopping.get() {
        glommio::timer::sleep(MESH_ANSWER_SWEEP).await;
        let expired = shard.router.expire(Instant::now());
        if expired > 0 {
            tracing::warn!(expired, shard = shard.id.0, "calls to other shards timed out");
        }
    }
}
