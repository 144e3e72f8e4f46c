//! What the operator asks of the shards: kicks (every core, since a user's
//! devices may sit on any), pages of connections in (shard, key) order, and
//! banned-word versions, numbered by shard 0 and sent to every core.

use std::rc::Rc;
use std::sync::Arc;

use chatgw_idgen::{ShardId, UserId};

use futures_util::future::join_all;

use crate::error::ApiError;
use crate::limits;
use crate::protocol::close::CloseReason;
use crate::route::{Answer, ConnInfo, ConnKey, Control, OpsMsg};
use crate::services::banned::{BannedChange, BannedWords, META_KEY};
use crate::shard::state::Shard;

/// Closes this core's connections of a user (one device's, if named)
/// with 1008; returns how many.
pub fn kick_here(shard: &Shard, user: UserId, device: Option<&str>) -> u64 {
    let conns = shard.registry.borrow().user_conns(user);
    let mut kicked = 0;
    for conn in conns {
        if device.is_none_or(|device| *conn.device == *device) && conn.closing().is_none() {
            conn.close(CloseReason::Kicked);
            kicked += 1;
        }
    }
    kicked
}

/// Closes this core's connection at `key` with 4002 if it is still
/// `user`'s `device` (a newer connection of the device replaced it);
/// returns 1 if it did.
pub fn replace_here(shard: &Shard, user: UserId, device: &str, key: ConnKey) -> u64 {
    let conns = shard.registry.borrow().user_conns(user);
    match conns.iter().find(|conn| conn.key == key && *conn.device == *device && conn.closing().is_none()) {
        Some(conn) => {
            conn.close(CloseReason::Replaced);
            1
        }
        None => 0,
    }
}

/// Asks every other core at once for what `make` builds, and asks again,
/// up to `limits::MESH_ASK_ROUNDS` rounds in all, the cores whose answer
/// did not come (a full queue or a busy core past the mesh's timeout); one
/// core's failure never stops the others. Each core's answer, or its last
/// error, by core.
pub async fn ask_others(shard: &Shard, make: impl Fn() -> Control) -> Vec<(ShardId, Result<Answer, ApiError>)> {
    let mut settled = Vec::new();
    let mut pending: Vec<ShardId> = shard.others().collect();
    for round in 1..=limits::MESH_ASK_ROUNDS {
        let asks = pending.iter().map(|&other| {
            let control = make();
            async move { (other, shard.router.ask(other, control).await) }
        });
        let answers = join_all(asks).await;
        pending.clear();
        for (other, answer) in answers {
            match answer {
                Err(error) if round < limits::MESH_ASK_ROUNDS => {
                    tracing::warn!(%error, core = other.0, round, "no answer; asking again");
                    pending.push(other);
                }
                answer => settled.push((other, answer)),
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    settled.sort_by_key(|(other, _)| *other);
    settled
}

/// Closes a user's connections (or one device's) on every core with 1008;
/// returns how many. Every core is asked at once, and a core that fails to
/// answer is asked again ([`ask_others`]); the error, if one never answers,
/// comes after every other core has kicked.
pub async fn kick(shard: &Rc<Shard>, user_id: UserId, device: Option<&str>) -> Result<u64, ApiError> {
    let device: Option<Box<str>> = device.map(Into::into);
    let mut kicked = kick_here(shard, user_id, device.as_deref());
    let mut failed = None;
    let answers = ask_others(shard, || Control::Ops(OpsMsg::Kick { user_id, device: device.clone() })).await;
    for (core, answer) in answers {
        match answer {
            Ok(Answer::Count(count)) => kicked += count,
            Ok(other) => failed = Some(ApiError::internal(format!("kick answered {other:?}"))),
            Err(error) => {
                tracing::warn!(%error, core = core.0, user = user_id.0, "kick not confirmed");
                failed = Some(error);
            }
        }
    }
    failed.map_or(Ok(kicked), Err)
}

/// Up to `limit` of this core's connections after registry key `after`,
/// in key order.
pub fn connections_here(shard: &Shard, after: Option<ConnKey>, limit: usize) -> Vec<ConnInfo> {
    shard
        .registry
        .borrow()
        .after(after, limit)
        .into_iter()
        .map(|conn| ConnInfo {
            key: conn.key,
            user_id: conn.user_id,
            username: conn.username.to_string(),
            device: conn.device.to_string(),
            remote: conn.remote,
            connected_at_ms: conn.connected_at_ms,
            last_active_ms: conn.last_active_ms.get(),
            commands_in_flight: conn.in_flight.get(),
        })
        .collect()
}

/// A page of at most `limit` connections in (shard, key) order after
/// `cursor`, and the cursor of the next page if there is more.
pub async fn connections(
    shard: &Rc<Shard>,
    cursor: Option<(u16, ConnKey)>,
    limit: usize,
) -> Result<(Vec<(u16, ConnInfo)>, Option<(u16, ConnKey)>), ApiError> {
    let mut page = Vec::new();
    let first_shard = cursor.map_or(0, |(at, _)| at);
    for at in first_shard..shard.shard_count {
        let after = cursor.filter(|(cursor_shard, _)| *cursor_shard == at).map(|(_, key)| key);
        let wanted = limit - page.len();
        // One more than wanted tells whether this shard has more.
        let found = if at == shard.id.0 {
            connections_here(shard, after, wanted + 1)
        } else {
            let asked = OpsMsg::Connections { after, limit: wanted + 1 };
            match shard.router.ask(ShardId(at), Control::Ops(asked)).await? {
                Answer::Connections(found) => found,
                other => return Err(ApiError::internal(format!("connections answered {other:?}"))),
            }
        };
        let more_here = found.len() > wanted;
        page.extend(found.into_iter().take(wanted).map(|info| (at, info)));
        if page.len() == limit {
            let more = more_here || at + 1 < shard.shard_count;
            let next = if more { page.last().map(|(at, info)| (*at, info.key)) } else { None };
            return Ok((page, next));
        }
    }
    Ok((page, None))
}

/// Applies a banned-words change: at shard 0 only, so versions are in order.
/// Stores the new list, enforces it here, then on every other core; returns
/// once every core enforces it.
pub async fn change_banned(shard: &Rc<Shard>, change: BannedChange) -> Result<Arc<BannedWords>, ApiError> {
    if shard.id != ShardId(0) {
        return Err(ApiError::internal("banned words change at a shard other than 0"));
    }
    let next = Arc::new(shard.banned().changed(change)?);
    shard.store.put_meta(META_KEY, next.to_json().to_string().as_bytes())?;
    shard.set_banned(next.clone());
    // Every core at once, again for those that did not answer; an error
    // only once every other core enforces the new list.
    let mut failed = None;
    for (core, answer) in ask_others(shard, || Control::Ops(OpsMsg::BannedWords(next.clone()))).await {
        if let Err(error) = answer {
            tracing::warn!(%error, core = core.0, version = next.version(), "banned words not confirmed");
            failed = Some(error);
        }
    }
    failed.map_or(Ok(next), Err)
}

/// Panics on this shard's thread, for `Config::fault_hooks`: the test of
/// what a panic does (the process aborts; see `net::server`'s panic hook).
pub fn panic_here(shard: &Shard) -> Answer {
    if !shard.config.fault_hooks {
        return Answer::Done;
    }
    panic!("a panic asked for by the fault hook, on shard {}", shard.id.0);
}

/// Makes shard `target` panic (`Config::fault_hooks` only).
pub async fn panic_shard(shard: &Rc<Shard>, target: ShardId) -> Result<(), ApiError> {
    if target == shard.id {
        panic_here(shard);
        return Ok(());
    }
    shard.router.ask(target, Control::Ops(OpsMsg::Panic)).await.map(|_| ())
}
