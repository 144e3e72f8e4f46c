//! The `presence.*` methods: asked of each user's owner through
//! `shard::presence`; subscriptions are held by the connection's core.

use std::collections::HashSet;
use std::rc::Rc;

use chatgw_idgen::{ChannelId, UserId};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::config::PresenceScope;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::protocol::shapes;
use crate::services::presence::Status;
use crate::shard::presence;
use crate::shard::registry::Conn;
use crate::shard::state::Shard;

/// The `Presence` shapes of `statuses`, under the usernames they were asked by.
fn presence_json(usernames: &[String], statuses: &[Status]) -> Value {
    let shown: Vec<Value> = usernames
        .iter()
        .zip(statuses)
        .map(|(username, status)| shapes::presence_json(status.user_id, username, status.online, status.last_active_ms))
        .collect();
    json!({ "presence": shown })
}

/// The users asked by `usernames`, each known and, under
/// `--presence-scope shared`, sharing a channel with `caller` (or the
/// caller itself). Key scans only: the caller's channel index once, then
/// each user's until a shared channel turns up.
fn visible_users(shard: &Shard, caller: UserId, usernames: &[String]) -> Result<Vec<UserId>, ApiError> {
    let ids = shard.known_users(usernames)?;
    if shard.config.presence_scope == PresenceScope::All {
        return Ok(ids);
    }
    let mut mine: Option<HashSet<ChannelId>> = None;
    for (username, id) in usernames.iter().zip(&ids) {
        if *id == caller {
            continue;
        }
        let mine = match &mut mine {
            Some(mine) => mine,
            None => {
                let channels = shard.store.user_channels(shard.owner(caller.0), caller)?;
                mine.insert(channels.into_iter().map(|channel| channel.channel_id).collect())
            }
        };
        if !shard.store.any_user_channel(shard.owner(id.0), *id, |channel| mine.contains(&channel))? {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the presence of {username} is shown only to users who share a channel with them"),
            ));
        }
    }
    Ok(ids)
}

/// `presence.query`.
pub async fn query(shard: &Rc<Shard>, user: &AuthedUser, users: &[String]) -> Result<Value, ApiError> {
    let ids = visible_users(shard, user.user_id, users)?;
    let statuses = presence::query(shard, &ids).await?;
    Ok(presence_json(users, &statuses))
}

/// `presence.subscribe`: the owners set this core's bit (idempotent) and
/// answer the presence now; later changes come as events.
pub async fn subscribe(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    conn: Option<&Rc<Conn>>,
    users: &[String],
) -> Result<Value, ApiError> {
    let conn = conn.ok_or_else(|| ApiError::bad_request("presence.subscribe needs a WebSocket connection"))?;
    let ids = visible_users(shard, user.user_id, users)?;
    let watched = conn.watching.borrow().len();
    let new = ids.iter().filter(|id| !conn.watching.borrow().contains(*id)).count();
    let max = limits::PRESENCE_WATCHES_PER_CONNECTION_MAX;
    if watched + new > max {
        return Err(ApiError::bad_request(format!(
            "a connection watches at most {max} users ({watched} now): unsubscribe some first"
        )));
    }
    // A connection already gone from the registry (closing while this
    // command ran) watches nothing: telling the owners would set a bit
    // that no unsubscribe or detach ever clears.
    if !shard.registry.borrow().holds(conn) {
        return Err(ApiError::bad_request("the connection is closing"));
    }
    for id in &ids {
        shard.registry.borrow_mut().watch(conn, *id);
    }
    let statuses = presence::watch(shard, &ids, true).await?;
    Ok(presence_json(users, &statuses))
}

/// `presence.unsubscribe`: the owners hear of it when this core's last
/// subscriber of a user goes.
pub async fn unsubscribe(shard: &Rc<Shard>, conn: Option<&Rc<Conn>>, users: &[String]) -> Result<Value, ApiError> {
    let conn = conn.ok_or_else(|| ApiError::bad_request("presence.unsubscribe needs a WebSocket connection"))?;
    let ids = shard.known_users(users)?;
    let last: Vec<UserId> = ids.into_iter().filter(|id| shard.registry.borrow_mut().unwatch(conn, *id)).collect();
    if !last.is_empty() {
        presence::watch(shard, &last, false).await?;
    }
    Ok(json!({}))
}
