//! The glue around `services::presence`: a connection's core tells the
//! user's owner when a device comes and goes (and once a second which of
//! its users were active); the owner runs the state machine, keeps the
//! grace timers, and sends each status change, encoded once, to every core
//! holding subscribers, in the order the changes happened.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use chatgw_idgen::{ShardId, UserId};

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::protocol::shapes;
use crate::route::{Answer, Control};
use crate::services::presence::{Msg, Status};
use crate::shard::state::Shard;

// ---- the side of the core that holds connections ----

/// Tells `user`'s owner that one of its devices connected here, and waits
/// until the owner has it: after the `hello`, the user is online for
/// everyone who asks.
pub async fn connected(shard: &Rc<Shard>, user: UserId) {
    let connected = Msg::Connected { user_id: user, at_ms: now_ms() };
    let owner = shard.owner(user.0);
    if owner == shard.id {
        on_msg(shard, shard.id, connected);
    } else if let Err(error) = shard.router.ask(owner, Control::Presence(connected)).await {
        tracing::warn!(%error, "presence owner did not confirm a connection");
    }
}

/// Tells `user`'s owner that one of its devices here went.
pub async fn disconnected(shard: &Rc<Shard>, user: UserId, last_active_ms: u64) {
    tell_owner(shard, user, Msg::Disconnected { user_id: user, last_active_ms }).await;
}

async fn tell_owner(shard: &Rc<Shard>, user: UserId, msg: Msg) {
    let owner = shard.owner(user.0);
    if owner == shard.id {
        on_msg(shard, shard.id, msg);
    } else {
        shard.router.send_control(owner, 0, Control::Presence(msg)).await;
    }
}

/// Asks each owner of `users` to watch (or stop watching) for this core;
/// answers every user's presence, in the order given.
pub async fn watch(shard: &Rc<Shard>, users: &[UserId], watch: bool) -> Result<Vec<Status>, ApiError> {
    ask_owners(shard, users, |users| Msg::Watch { users, watch }).await
}

/// The presence of `users`, asked of their owners, in the order given.
pub async fn query(shard: &Rc<Shard>, users: &[UserId]) -> Result<Vec<Status>, ApiError> {
    ask_owners(shard, users, Msg::Query).await
}

/// Groups users by owner, asks each owner once (all at the same time; this
/// core's own by a local call), and puts the answers back in the order given.
async fn ask_owners(
    shard: &Rc<Shard>,
    users: &[UserId],
    asking: impl Fn(Vec<UserId>) -> Msg,
) -> Result<Vec<Status>, ApiError> {
    let mut groups: HashMap<ShardId, Vec<UserId>> = HashMap::new();
    for user in users {
        groups.entry(shard.owner(user.0)).or_default().push(*user);
    }
    let mut found: HashMap<UserId, Status> = HashMap::new();
    let mut waits = Vec::new();
    for (owner, users) in groups {
        if owner == shard.id {
            if let Some(Answer::Presence(statuses)) = on_msg(shard, shard.id, asking(users)) {
                found.extend(statuses.into_iter().map(|status| (status.user_id, status)));
            }
        } else {
            waits.push(shard.router.ask(owner, Control::Presence(asking(users))));
        }
    }
    // All in flight at once (an `ask` sends only once polled).
    for answer in futures_util::future::join_all(waits).await {
        match answer? {
            Answer::Presence(statuses) => found.extend(statuses.into_iter().map(|status| (status.user_id, status))),
            other => return Err(ApiError::internal(format!("presence answered {other:?}"))),
        }
    }
    Ok(users.iter().map(|user| found.get(user).copied().unwrap_or(Status::unknown(*user))).collect())
}

/// Once a second, tells owners which of this core's users were active
/// (one batch per owner), until the server stops. This is how frames move
/// `last_active_at` without a cross-core message per frame.
pub async fn report_activity(shard: Rc<Shard>) {
    let mut reported_up_to = now_ms();
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let mut latest: HashMap<UserId, u64> = HashMap::new();
        let mut newest = reported_up_to;
        for conn in shard.registry.borrow().all() {
            let at = conn.last_active_ms.get();
            if at > reported_up_to {
                let seen = latest.entry(conn.user_id).or_default();
                *seen = (*seen).max(at);
                newest = newest.max(at);
            }
        }
        reported_up_to = newest;
        let mut by_owner: HashMap<ShardId, Vec<(UserId, u64)>> = HashMap::new();
        for (user, at) in latest {
            by_owner.entry(shard.owner(user.0)).or_default().push((user, at));
        }
        let mut sends = Vec::new();
        for (owner, activity) in by_owner {
            if owner == shard.id {
                shard.presence.borrow_mut().active(&activity);
            } else {
                sends.push(shard.router.send_control(owner, 0, Control::Presence(Msg::Activity(activity))));
            }
        }
        // Every owner's batch at once: a full queue to one holds no other.
        futures_util::future::join_all(sends).await;
    }
}

// ---- the owner's side ----

/// Handles a presence message from core `from` (this one, for a local
/// call). Never awaits; answers what `Watch` and `Query` ask.
pub fn on_msg(shard: &Rc<Shard>, from: ShardId, msg: Msg) -> Option<Answer> {
    match msg {
        Msg::Connected { user_id, at_ms } => {
            if shard.presence.borrow_mut().connected(user_id, at_ms) {
                publish(shard, user_id);
            }
            Some(Answer::Done)
        }
        Msg::Disconnected { user_id, last_active_ms } => {
            let now = now_ms();
            if let Some(due) = shard.presence.borrow_mut().disconnected(user_id, last_active_ms, now) {
                expire_at(shard, due, now);
            }
            None
        }
        Msg::Activity(activity) => {
            shard.presence.borrow_mut().active(&activity);
            None
        }
        Msg::Watch { users, watch } => Some(Answer::Presence(shard.presence.borrow_mut().watch(from, &users, watch))),
        Msg::Query(users) => Some(Answer::Presence(shard.presence.borrow().query(&users))),
        Msg::Event { user_id, frame } => {
            shard.registry.borrow().deliver_presence(user_id, &frame);
            None
        }
    }
}

/// At `due` (wall-clock ms; `now` is the time now), turns offline whoever's
/// grace ended with no device back, and publishes each.
fn expire_at(shard: &Rc<Shard>, due: u64, now: u64) {
    let shard = shard.clone();
    crate::tasks::spawn(async move {
        glommio::timer::sleep(Duration::from_millis(due.saturating_sub(now))).await;
        let offline = shard.presence.borrow_mut().expire(due);
        for user in offline {
            publish(&shard, user);
        }
    })
    .detach();
}

/// Sends a user's new status to every core holding subscribers, in the
/// order the changes happened.
fn publish(shard: &Rc<Shard>, user: UserId) {
    let (status, watchers) = {
        let presence = shard.presence.borrow();
        (presence.status(user), presence.watchers_mask(user))
    };
    if watchers == 0 {
        return;
    }
    let username = match shard.username(user) {
        Ok(name) => name,
        Err(error) => {
            tracing::warn!(%error, user = user.0, "presence event without a username");
            return;
        }
    };
    let data = shapes::presence_json(status.user_id, &username, status.online, status.last_active_ms);
    let event = shapes::event_frame("presence", &data);
    let own = 1u128 << shard.id.0;
    if watchers & own != 0 {
        shard.registry.borrow().deliver_presence(user, &event);
    }
    let others = watchers & !own;
    if others == 0 {
        return;
    }
    {
        let mut outbox = shard.presence_outbox.borrow_mut();
        outbox.queue.push_back((others, user, event));
        if std::mem::replace(&mut outbox.sending, true) {
            return;
        }
    }
    // One sender per core drains the events in order.
    let shard = shard.clone();
    crate::tasks::spawn(async move {
        loop {
            let next = shard.presence_outbox.borrow_mut().queue.pop_front();
            let Some((cores, user_id, frame)) = next else { break };
            for core in 0..shard.shard_count {
                if cores & (1u128 << core) != 0 {
                    let event = Msg::Event { user_id, frame: frame.clone() };
                    shard.router.send_control(ShardId(core), 0, Control::Presence(event)).await;
                }
            }
        }
        shard.presence_outbox.borrow_mut().sending = false;
    })
    .detach();
}
