//! A connection's arrival and departure on its core: registering it,
//! subscribing the core to its channels at their owners (before its
//! `hello`, so nothing sent after can miss it), telling the user's owner
//! for presence; and, at an owner, which cores host each channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use chatgw_idgen::{ChannelId, ShardId, UserId};
use futures_util::future::join_all;

use crate::auth::AuthedUser;
use crate::clock::now_ms;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::route::{ChannelMsg, Control, OpsMsg};
use crate::shard::ops::replace_here;
use crate::shard::presence;
use crate::shard::registry::Conn;
use crate::shard::state::Shard;
use crate::single_flight::Turn;

/// Registers a connection, queues its first frame (`hello`, made by
/// `first`), and subscribes this core to its channels; returns once every
/// owner knows, so nothing sent after the `hello` can miss it.
///
/// The first frame is queued before the connection joins its channels
/// here: a message this core delivers to them while the owners are told
/// queues after it, so the `hello` is always the first frame on the wire
/// (protocol §2). The queue is written only once the session's loop runs,
/// after this returns.
pub async fn attach(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    device: Box<str>,
    remote: SocketAddr,
    first: impl FnOnce(&Conn) -> Bytes,
) -> Result<Rc<Conn>, ApiError> {
    let username: Rc<str> = user.username.as_str().into();
    let conn = shard.registry.borrow_mut().add(user.user_id, username, device, remote, now_ms());
    conn.push(first(&conn));
    conn.token_expires_ms.set(user.expires_at_ms);
    replace_older(shard, &conn);
    shard.count_connections();
    let undo = |error: ApiError| {
        shard.registry.borrow_mut().remove(&conn);
        shard.shared.release_device(conn.user_id, &conn.device, (shard.id.0, conn.key));
        shard.count_connections();
        Err(error)
    };
    // The token was checked at the upgrade, and a logout, password change
    // or disable committed since kicked this core's connections before
    // this one was registered. Checked again now that it is, with no await
    // in between: such a change is either visible to this read or its kick
    // (sent once its commit returned) finds the connection.
    match shard.may_connect(user) {
        Ok(true) => {}
        Ok(false) => return undo(ApiError::new(ErrorCode::Unauthorized, "the token was revoked after the upgrade")),
        Err(error) => return undo(error),
    }
    let channels = match shard.store.user_channels(shard.owner(user.user_id.0), user.user_id) {
        Ok(channels) => channels,
        Err(error) => return undo(error.into()),
    };
    let mut first_local = Vec::new();
    let mut others_in_flight = Vec::new();
    {
        let mut registry = shard.registry.borrow_mut();
        for joined in &channels {
            if registry.join_channel(&conn, joined.channel_id) {
                first_local.push(joined.channel_id);
            } else if let Some(landing) = shard.subscribes_in_flight.join(&joined.channel_id) {
                // Another connection here is still telling the owner.
                others_in_flight.push(landing);
            }
        }
    }
    // The channels' owners and the user's owner are told at once: the
    // `hello` waits for the slower, not for both in a row.
    let subscribing = async {
        subscribe(shard, &first_local).await;
        for landing in others_in_flight {
            // `Canceled` (the other connection's attach was dropped) frees
            // the key, and its word was sent or never mattered: go on
            // either way.
            let _ = landing.await;
        }
    };
    futures_lite::future::zip(subscribing, presence::connected(shard, user.user_id)).await;
    Ok(conn)
}

/// Closes the older connection of this connection's device, wherever it is
/// (4002): one device, one connection.
fn replace_older(shard: &Rc<Shard>, conn: &Conn) {
    let Some((at, key)) = shard.shared.claim_device(conn.user_id, &conn.device, (shard.id.0, conn.key)) else {
        return;
    };
    if at == shard.id.0 {
        replace_here(shard, conn.user_id, &conn.device, key);
    } else {
        let replace = OpsMsg::Replace { user_id: conn.user_id, device: conn.device.clone(), key };
        shard.send_control_soon(ShardId(at), 0, Control::Ops(replace));
    }
}

/// Tells the owners of `channels` that this core hosts them now, and
/// returns once each has applied it: one word per owner (per
/// `limits::SUBSCRIBES_PER_WORD_MAX` channels), all in flight at once.
/// Each channel's claim in `subscribes_in_flight` is taken before the
/// first await, so a connection that joins the channel here meanwhile
/// waits for the same answer.
async fn subscribe(shard: &Rc<Shard>, channels: &[ChannelId]) {
    let mut leads = Vec::new();
    let mut earlier = Vec::new();
    let mut by_owner: HashMap<ShardId, Vec<ChannelId>> = HashMap::new();
    for channel in channels {
        match shard.subscribes_in_flight.start(channel) {
            Turn::Lead(lead) => leads.push(lead),
            // A subscribe of this channel from here is already on its way
            // (its connection went and this one came at once): this one is
            // newer and goes too; wait for both.
            Turn::Follow(landing) => earlier.push(landing),
        }
        by_owner.entry(shard.owner(channel.0)).or_default().push(*channel);
    }
    let mut waits = Vec::new();
    for (owner, owned) in by_owner {
        for word in owned.chunks(limits::SUBSCRIBES_PER_WORD_MAX) {
            // One epoch for the word: every later word about any of its
            // channels has a larger one.
            let epoch = shard.next_subscription_epoch();
            if owner == shard.id {
                for channel in word {
                    on_subscribe(shard, shard.id, *channel, true, epoch);
                }
                continue;
            }
            let subscribe = ChannelMsg::Subscribe { channel_ids: word.to_vec(), epoch };
            waits.push(shard.router.ask(owner, Control::Channel(subscribe)));
        }
    }
    // All in flight at once (an `ask` sends only once polled).
    for answer in join_all(waits).await {
        if let Err(error) = answer {
            tracing::warn!(%error, "subscription failed");
        }
    }
    for landing in earlier {
        let _ = landing.await;
    }
    for lead in leads {
        lead.finish(&());
    }
}

/// Removes a connection, unsubscribes channels and presence it was the
/// last local connection of, and tells the user's owner it went.
pub async fn detach(shard: &Rc<Shard>, conn: &Conn) {
    conn.end();
    let emptied = shard.registry.borrow_mut().remove(conn);
    // With its registry key freed: a later claim of the key is another's.
    shard.shared.release_device(conn.user_id, &conn.device, (shard.id.0, conn.key));
    shard.count_connections();
    presence::disconnected(shard, conn.user_id, conn.last_active_ms.get()).await;
    if !emptied.watched.is_empty()
        && let Err(error) = presence::watch(shard, &emptied.watched, false).await
    {
        tracing::warn!(%error, "ending presence subscriptions");
    }
    for channel in emptied.channels {
        // A connection that came meanwhile (a reconnect) hosts it again:
        // then there is nothing to take back.
        if shard.registry.borrow().hosts_channel(channel) {
            continue;
        }
        let owner = shard.owner(channel.0);
        let epoch = shard.next_subscription_epoch();
        if owner == shard.id {
            on_subscribe(shard, shard.id, channel, false, epoch);
        } else {
            let unsubscribe = ChannelMsg::Unsubscribe { channel_id: channel, epoch };
            shard.router.send_control(owner, 0, Control::Channel(unsubscribe)).await;
        }
    }
}

/// Owner: a core (`from`) hosts or stops hosting connections of an owned
/// channel, as of its subscription epoch `epoch` (an older word from that
/// core, arriving late, changes nothing).
pub fn on_subscribe(shard: &Shard, from: ShardId, channel: ChannelId, hosts: bool, epoch: u64) {
    let result = shard.with_channel(channel, |state| state.hosted_by(from, hosts, epoch) && state.cores_mask == 0);
    match result {
        Ok(Some(true)) if !hosts => shard.note_channel_idle(),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, channel = channel.0, "subscription to an unreadable channel"),
    }
}

/// A channel's membership changed: applies it to this core's connections
/// (each gets the channel event of its change); returns whether the core
/// still hosts the channel.
pub fn on_membership(
    shard: &Shard,
    channel: ChannelId,
    added: &[UserId],
    removed: &[UserId],
    added_frame: Option<&Bytes>,
    removed_frame: Option<&Bytes>,
) -> bool {
    let mut registry = shard.registry.borrow_mut();
    for user in added {
        for conn in registry.user_conns(*user) {
            registry.join_channel(&conn, channel);
            if let Some(frame) = added_frame {
                conn.push(frame.clone());
            }
        }
    }
    for user in removed {
        for conn in registry.user_conns(*user) {
            registry.leave_channel(&conn, channel);
            if let Some(frame) = removed_frame {
                conn.push(frame.clone());
            }
        }
    }
    registry.hosts_channel(channel)
}
