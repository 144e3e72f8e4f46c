//! Presence (protocol §3), held by each user's owner shard.
//!
//! The core that holds a connection tells the user's owner when it comes
//! and goes, and once a second which of its users were active. The owner
//! counts the user's devices across cores: online from the first; after the
//! last goes, offline only once `presence_grace_ms` passes with no new one
//! (a reconnect within it changes nothing, so nothing flickers).
//!
//! Subscriptions work as channels do: a core that holds subscribers of a
//! user tells the owner once (a bit in the user's `watchers` mask), and a
//! change is encoded once and sent to each such core: O(cores) cross-core
//! messages per change. Nothing fans presence out to a channel's members:
//! clients subscribe to whom they show, or ask with `presence.query`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use chatgw_idgen::{ShardId, UserId};
use serde_json::{Value, json};

use crate::core::{Core, now_ms};
use crate::frame;
use crate::protocol;
use crate::route::{Control, Response};

/// A user's presence as its owner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The user.
    pub user_id: UserId,
    /// Online (a device connected, or within the grace period).
    pub online: bool,
    /// When a frame last came from any of the user's devices, ms since the
    /// Unix epoch; 0 if not seen since the server started.
    pub last_active_ms: u64,
}

impl Status {
    /// The contract's `Presence` shape.
    pub fn to_json(self, username: &str) -> Value {
        json!({
            "user_id": self.user_id.to_string(),
            "username": username,
            "status": if self.online { "online" } else { "offline" },
            "last_active_at": self.last_active_ms,
        })
    }
}

#[derive(Debug, Default)]
struct Entry {
    /// Connected devices, on every core.
    devices: u32,
    online: bool,
    last_active_ms: u64,
    /// Bumped whenever a pending offline must not happen any more.
    generation: u64,
    /// Bit `i`: core `i` holds subscribers of this user.
    watchers: u128,
}

/// The presence a shard holds for the users it owns, and the presence
/// events it still has to send to other cores, in order.
#[derive(Debug, Default)]
pub struct Presence {
    entries: RefCell<HashMap<UserId, Entry>>,
    outgoing: RefCell<VecDeque<(u128, UserId, Bytes)>>,
    sending: Cell<bool>,
}

impl Presence {
    fn status(&self, user: UserId) -> Status {
        let entries = self.entries.borrow();
        let entry = entries.get(&user);
        Status {
            user_id: user,
            online: entry.is_some_and(|entry| entry.online),
            last_active_ms: entry.map_or(0, |entry| entry.last_active_ms),
        }
    }
}

/// Owner: a device of `user` connected (on any core).
pub fn on_connected(core: &Rc<Core>, user: UserId, at_ms: u64) {
    let turned_online = {
        let mut entries = core.presence.entries.borrow_mut();
        let entry = entries.entry(user).or_default();
        entry.devices += 1;
        entry.generation += 1;
        entry.last_active_ms = entry.last_active_ms.max(at_ms);
        !std::mem::replace(&mut entry.online, true)
    };
    if turned_online {
        publish(core, user);
    }
}

/// Owner: a device of `user` went, last active at `last_active_ms`.
pub fn on_disconnected(core: &Rc<Core>, user: UserId, last_active_ms: u64) {
    let generation = {
        let mut entries = core.presence.entries.borrow_mut();
        let entry = entries.entry(user).or_default();
        entry.devices = entry.devices.saturating_sub(1);
        entry.last_active_ms = entry.last_active_ms.max(last_active_ms);
        if entry.devices > 0 || !entry.online {
            return;
        }
        entry.generation += 1;
        entry.generation
    };
    let core = core.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(Duration::from_millis(core.config.presence_grace_ms)).await;
        let turned_offline = {
            let mut entries = core.presence.entries.borrow_mut();
            match entries.get_mut(&user) {
                Some(entry) if entry.generation == generation && entry.devices == 0 && entry.online => {
                    entry.online = false;
                    true
                }
                _ => false,
            }
        };
        if turned_offline {
            publish(&core, user);
        }
    })
    .detach();
}

/// Owner: users of this shard were active at these times (from one core).
pub fn on_activity(core: &Core, activity: &[(UserId, u64)]) {
    let mut entries = core.presence.entries.borrow_mut();
    for (user, at_ms) in activity {
        if let Some(entry) = entries.get_mut(user) {
            entry.last_active_ms = entry.last_active_ms.max(*at_ms);
        }
    }
}

/// Owner: core `from` starts or stops holding subscribers of `users`;
/// answers their presence.
pub fn on_watch(core: &Core, from: ShardId, users: &[UserId], watch: bool) -> Vec<Status> {
    let bit = 1u128 << from.0;
    {
        let mut entries = core.presence.entries.borrow_mut();
        for user in users {
            if watch {
                entries.entry(*user).or_default().watchers |= bit;
            } else if let Some(entry) = entries.get_mut(user) {
                entry.watchers &= !bit;
            }
        }
    }
    query_owned(core, users)
}

/// Owner: whether a user it owns has a connected device now.
pub fn has_device(core: &Core, user: UserId) -> bool {
    core.presence.entries.borrow().get(&user).is_some_and(|entry| entry.devices > 0)
}

/// Owner: the presence of users it owns.
pub fn query_owned(core: &Core, users: &[UserId]) -> Vec<Status> {
    users.iter().map(|user| core.presence.status(*user)).collect()
}

/// Owner: sends a user's new status to every core holding subscribers, in
/// the order the changes happened.
fn publish(core: &Rc<Core>, user: UserId) {
    let status = core.presence.status(user);
    let watchers = core.presence.entries.borrow().get(&user).map_or(0, |entry| entry.watchers);
    if watchers == 0 {
        return;
    }
    let username = match core.username(user) {
        Ok(name) => name,
        Err(error) => {
            tracing::warn!(%error, user = user.0, "presence event without a username");
            return;
        }
    };
    let event = frame::text(&protocol::event_json("presence", &status.to_json(&username)));
    let own = 1u128 << core.shard.0;
    if watchers & own != 0 {
        core.registry.borrow().deliver_presence(user, &event);
    }
    let others = watchers & !own;
    if others == 0 {
        return;
    }
    core.presence.outgoing.borrow_mut().push_back((others, user, event));
    if core.presence.sending.replace(true) {
        return;
    }
    // One sender per core drains the events in order.
    let core = core.clone();
    glommio::spawn_local(async move {
        loop {
            let next = core.presence.outgoing.borrow_mut().pop_front();
            let Some((cores, user_id, frame)) = next else { break };
            for shard in 0..core.shards {
                if cores & (1u128 << shard) != 0 {
                    let event = Control::PresenceEvent { user_id, frame: frame.clone() };
                    core.router.send_control(ShardId(shard), 0, event).await;
                }
            }
        }
        core.presence.sending.set(false);
    })
    .detach();
}

// ---- the side of the core that holds connections ----

/// Tells `user`'s owner that one of its devices connected here.
pub async fn connected(core: &Rc<Core>, user: UserId) {
    let owner = core.owner(user.0);
    if owner == core.shard {
        on_connected(core, user, now_ms());
    } else {
        core.router.send_control(owner, 0, Control::PresenceConnected { user_id: user, at_ms: now_ms() }).await;
    }
}

/// Tells `user`'s owner that one of its devices here went.
pub async fn disconnected(core: &Rc<Core>, user: UserId, last_active_ms: u64) {
    let owner = core.owner(user.0);
    if owner == core.shard {
        on_disconnected(core, user, last_active_ms);
    } else {
        core.router.send_control(owner, 0, Control::PresenceDisconnected { user_id: user, last_active_ms }).await;
    }
}

/// What a core asks of the owners of some users.
#[derive(Debug, Clone, Copy)]
enum Asking {
    /// Watch (or stop watching) them for this core.
    Watch(bool),
    /// Their presence only.
    Query,
}

impl Asking {
    fn control(self, users: Vec<UserId>) -> Control {
        match self {
            Asking::Watch(watch) => Control::PresenceWatch { users, watch },
            Asking::Query => Control::PresenceQuery(users),
        }
    }

    /// The answer when this core owns them (a local call, not a message).
    fn answer_here(self, core: &Core, users: &[UserId]) -> Vec<Status> {
        match self {
            Asking::Watch(watch) => on_watch(core, core.shard, users, watch),
            Asking::Query => query_owned(core, users),
        }
    }
}

/// Asks each owner of `users` to watch (or stop watching) for this core;
/// answers every user's presence, in the order given.
pub async fn watch(core: &Rc<Core>, users: &[UserId], watch: bool) -> Result<Vec<Status>, crate::error::ApiError> {
    ask_owners(core, users, Asking::Watch(watch)).await
}

/// The presence of `users`, asked of their owners, in the order given.
pub async fn query(core: &Rc<Core>, users: &[UserId]) -> Result<Vec<Status>, crate::error::ApiError> {
    ask_owners(core, users, Asking::Query).await
}

/// Groups users by owner, asks each other owner once (all at the same
/// time), and puts the answers back in the order given.
async fn ask_owners(core: &Rc<Core>, users: &[UserId], asking: Asking) -> Result<Vec<Status>, crate::error::ApiError> {
    let mut groups: HashMap<ShardId, Vec<UserId>> = HashMap::new();
    for user in users {
        groups.entry(core.owner(user.0)).or_default().push(*user);
    }
    let mut found: HashMap<UserId, Status> = HashMap::new();
    let mut waits = Vec::new();
    for (owner, users) in groups {
        if owner == core.shard {
            found.extend(asking.answer_here(core, &users).into_iter().map(|status| (status.user_id, status)));
        } else {
            waits.push(core.router.ask(owner, asking.control(users)));
        }
    }
    for wait in waits {
        match wait.await? {
            Response::Presence(statuses) => {
                found.extend(statuses.into_iter().map(|status| (status.user_id, status)));
            }
            other => return Err(crate::error::ApiError::internal(format!("presence answered {other:?}"))),
        }
    }
    Ok(users
        .iter()
        .map(|user| found.get(user).copied().unwrap_or(Status { user_id: *user, online: false, last_active_ms: 0 }))
        .collect())
}

/// Once a second, tells owners which of this core's users were active
/// (one batch per owner), until the server stops. This is how frames move
/// `last_active_at` without a cross-core message per frame.
pub async fn report_activity(core: Rc<Core>) {
    let mut reported_up_to = now_ms();
    while !core.stopping.get() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let mut latest: HashMap<UserId, u64> = HashMap::new();
        let mut newest = reported_up_to;
        for conn in core.registry.borrow().all() {
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
            by_owner.entry(core.owner(user.0)).or_default().push((user, at));
        }
        for (owner, activity) in by_owner {
            if owner == core.shard {
                on_activity(&core, &activity);
            } else {
                core.router.send_control(owner, 0, Control::PresenceActivity(activity)).await;
            }
        }
    }
}
