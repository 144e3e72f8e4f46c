//! The operator's API under `/admin/v1/`, behind the admin token: what
//! `chatgw admin` uses. docs/admin-api.md describes every route.
//!
//! Figures and connections come from every core by one control message
//! each; a kick goes to every core (a user's devices may sit on any);
//! disabling a user is written by the user's owner shard; banned words are
//! changed by shard 0, which numbers each version and sends it to every
//! core.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use chatgw_idgen::{ShardId, UserId};
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::api;
use crate::banned::BannedWords;
use crate::core::Core;
use crate::dispatch;
use crate::error::{ApiError, ErrorCode};
use crate::http;
use crate::registry::ConnKey;
use crate::route::{BannedChange, Control, Request as OwnerRequest, Response};
use crate::stats;

/// Connections a page holds at most (and by default).
pub const CONNECTIONS_PAGE_MAX: usize = 1000;
const CONNECTIONS_PAGE_DEFAULT: usize = 100;

/// One connection as the admin API lists it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Its key in its core's registry (the paging cursor).
    pub key: ConnKey,
    /// The user.
    pub user_id: UserId,
    /// The username.
    pub username: String,
    /// The device.
    pub device: String,
    /// The client's address.
    pub remote: SocketAddr,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// When a frame last came, ms since the Unix epoch.
    pub last_active_ms: u64,
}

/// Checks the admin token: none or a wrong one is `unauthorized`; a valid
/// user token is `forbidden` (it is not an operator's).
fn authorize(core: &Core, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = api::bearer(request) else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "the admin token is required"));
    };
    if bool::from(token.as_bytes().ct_eq(core.admin_token.as_bytes())) {
        return Ok(());
    }
    if core.tokens.verify(token).is_some() {
        return Err(ApiError::new(ErrorCode::Forbidden, "a user token does not open the admin API"));
    }
    Err(ApiError::new(ErrorCode::Unauthorized, "the admin token is required"))
}

/// Serves a request under `/admin/v1/`.
pub async fn route(core: &Rc<Core>, request: Request<Incoming>, path: &str) -> Result<Value, ApiError> {
    authorize(core, &request)?;
    let method = request.method().clone();
    let rest = path.strip_prefix("/admin/v1/").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["stats"]) => stats(core).await,
        (Method::GET, ["connections"]) => {
            let limit =
                match http::query_param(&request, "limit") {
                    Some(limit) => limit
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=CONNECTIONS_PAGE_MAX).contains(limit))
                        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {CONNECTIONS_PAGE_MAX}")))?,
                    None => CONNECTIONS_PAGE_DEFAULT,
                };
            let cursor = http::query_param(&request, "cursor").map(|cursor| parse_cursor(&cursor)).transpose()?;
            connections(core, cursor, limit).await
        }
        (Method::POST, ["kick"]) => {
            let body = http::read_json(request).await?;
            let username = body
                .get("username")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("username must be a string"))?;
            let device = match body.get("device") {
                None | Some(Value::Null) => None,
                Some(Value::String(device)) => Some(device.as_str()),
                Some(_) => return Err(ApiError::bad_request("device must be a string")),
            };
            let user_id = known_user(core, username)?;
            let kicked = kick(core, user_id, device).await?;
            Ok(json!({ "username": username, "kicked": kicked }))
        }
        (Method::POST, ["users", username, action @ ("disable" | "enable")]) => {
            let disabled = *action == "disable";
            let user_id = known_user(core, username)?;
            dispatch::request(core, core.owner(user_id.0), OwnerRequest::SetDisabled { user_id, disabled }).await?;
            let kicked = if disabled { kick(core, user_id, None).await? } else { 0 };
            Ok(json!({ "user_id": user_id.to_string(), "username": username, "disabled": disabled, "kicked": kicked }))
        }
        (Method::GET, ["banned-words"]) => Ok(banned_json(&core.banned())),
        (Method::PUT, ["banned-words"]) => {
            let body = http::read_json(request).await?;
            let words = string_list(&body, "words")?.ok_or_else(|| ApiError::bad_request("words must be given"))?;
            change_banned(core, BannedChange::Replace(words)).await
        }
        (Method::PATCH, ["banned-words"]) => {
            let body = http::read_json(request).await?;
            let add = string_list(&body, "add")?.unwrap_or_default();
            let remove = string_list(&body, "remove")?.unwrap_or_default();
            change_banned(core, BannedChange::Patch { add, remove }).await
        }
        (Method::GET, ["outbox"]) => {
            let all = stats::gather(core).await?;
            let shards: Vec<Value> =
                all.iter().map(|stats| json!({ "shard": stats.shard, "depth": stats.outbox_depth })).collect();
            Ok(json!({ "depth": all.iter().map(|stats| stats.outbox_depth).sum::<u64>(), "shards": shards }))
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, format!("no admin route for {path}"))),
    }
}

fn known_user(core: &Core, username: &str) -> Result<UserId, ApiError> {
    core.user_id(username)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {username:?}")))
}

fn string_list(body: &Value, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a list of strings"))),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be a list of strings"))),
    }
}

fn banned_json(banned: &BannedWords) -> Value {
    json!({ "version": banned.version, "words": banned.entries() })
}

async fn change_banned(core: &Rc<Core>, change: BannedChange) -> Result<Value, ApiError> {
    match dispatch::request(core, ShardId(0), OwnerRequest::BannedWords(change)).await? {
        Response::Banned(banned) => Ok(banned_json(&banned)),
        other => Err(ApiError::internal(format!("banned words answered {other:?}"))),
    }
}

/// Applies a banned-words change: at shard 0 only, so versions are in order.
/// Stores the new list, enforces it here, then on every other core; returns
/// once every core enforces it.
pub async fn apply_banned_change(core: &Rc<Core>, change: BannedChange) -> Result<Arc<BannedWords>, ApiError> {
    let current = core.banned();
    let entries = match change {
        BannedChange::Replace(words) => words,
        BannedChange::Patch { add, remove } => {
            let remove: Vec<String> =
                remove.iter().map(|entry| crate::banned::normalize(entry)).collect::<Result<_, _>>()?;
            current.entries().iter().filter(|entry| !remove.contains(entry)).cloned().chain(add).collect()
        }
    };
    let next = Arc::new(BannedWords::new(current.version + 1, &entries)?);
    let stored = json!({ "version": next.version, "words": next.entries() });
    core.store.put_meta(crate::banned::META_KEY, stored.to_string().as_bytes())?;
    core.set_banned(next.clone());
    let mut waits = Vec::new();
    for shard in 0..core.shards {
        if shard != core.shard.0 {
            waits.push(core.router.ask(ShardId(shard), Control::BannedWords(next.clone())));
        }
    }
    for wait in waits {
        wait.await?;
    }
    Ok(next)
}

/// Closes a user's connections (or one device's) on every core with 1008;
/// returns how many.
pub async fn kick(core: &Rc<Core>, user_id: UserId, device: Option<&str>) -> Result<u64, ApiError> {
    let device: Option<Box<str>> = device.map(Into::into);
    let mut waits = Vec::new();
    for shard in 0..core.shards {
        if shard != core.shard.0 {
            waits.push(core.router.ask(ShardId(shard), Control::Kick { user_id, device: device.clone() }));
        }
    }
    let mut kicked = core.kick(user_id, device.as_deref());
    for wait in waits {
        match wait.await? {
            Response::Count(count) => kicked += count,
            other => return Err(ApiError::internal(format!("kick answered {other:?}"))),
        }
    }
    Ok(kicked)
}

async fn stats(core: &Rc<Core>) -> Result<Value, ApiError> {
    let all = stats::gather(core).await?;
    let shards: Vec<Value> = all
        .iter()
        .enumerate()
        .map(|(index, stats)| {
            let inbound: u64 =
                (0..all.len()).filter(|from| *from != index).map(|from| stats::queue_depth(&all, from, index)).sum();
            json!({
                "shard": stats.shard,
                "connections": stats.connections,
                "users_connected": stats.users_connected,
                "messages_per_s": stats.messages_per_s,
                "deliveries_per_s": stats.deliveries_per_s,
                "messages_stored": stats.messages_stored,
                "deliveries": stats.deliveries,
                "inbound_queue_depth": inbound,
                "requests_pending": stats.requests_pending,
                "commit_queue": stats.commit_queue,
                "storage_sst_bytes": stats.storage_sst_bytes,
                "storage_memtable_bytes": stats.storage_memtable_bytes,
                "outbox_depth": stats.outbox_depth,
                "slow_consumers": stats.slow_consumers,
            })
        })
        .collect();
    let mut fan_out = stats::LatencySnapshot::default();
    for stats in &all {
        fan_out.merge(&stats.fan_out);
    }
    Ok(json!({
        "node": &*core.node,
        "uptime_s": core.shared.started.elapsed().as_secs(),
        "rss_bytes": stats::process_rss_bytes(),
        "load": core.shared.load(),
        "fan_out_p99_s": fan_out.quantile_upper_bound(0.99),
        "shards": shards,
    }))
}

/// A cursor: `"<shard>.<key>"`, the last connection of the previous page.
fn parse_cursor(cursor: &str) -> Result<(u16, ConnKey), ApiError> {
    cursor
        .split_once('.')
        .and_then(|(shard, key)| Some((shard.parse().ok()?, key.parse().ok()?)))
        .ok_or_else(|| ApiError::bad_request("cursor must be the next_cursor of a previous page"))
}

/// A page of connections in (shard, key) order after `cursor`.
async fn connections(core: &Rc<Core>, cursor: Option<(u16, ConnKey)>, limit: usize) -> Result<Value, ApiError> {
    let mut page = Vec::new();
    let mut next_cursor = None;
    let first_shard = cursor.map_or(0, |(shard, _)| shard);
    for shard in first_shard..core.shards {
        let after = cursor.filter(|(at, _)| *at == shard).map(|(_, key)| key);
        let wanted = limit - page.len();
        // One more than wanted tells whether this shard has more.
        let found = if shard == core.shard.0 {
            core.connections_after(after, wanted + 1)
        } else {
            match core.router.ask(ShardId(shard), Control::Connections { after, limit: wanted + 1 }).await? {
                Response::Connections(found) => found,
                other => return Err(ApiError::internal(format!("connections answered {other:?}"))),
            }
        };
        let more_here = found.len() > wanted;
        for info in found.into_iter().take(wanted) {
            page.push((shard, info));
        }
        if page.len() == limit {
            if more_here || shard + 1 < core.shards {
                next_cursor = page.last().map(|(shard, info)| format!("{shard}.{}", info.key));
            }
            break;
        }
    }
    let connections: Vec<Value> = page
        .iter()
        .map(|(shard, info)| {
            json!({
                "user_id": info.user_id.to_string(),
                "username": info.username,
                "device": info.device,
                "shard": shard,
                "remote_addr": info.remote.to_string(),
                "connected_at": info.connected_at_ms,
                "last_active_at": info.last_active_ms,
            })
        })
        .collect();
    Ok(json!({ "connections": connections, "next_cursor": next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back() {
        assert_eq!(parse_cursor("3.17").unwrap(), (3, 17));
        for bad in ["", "3", "x.1", "1.y", "1.-2"] {
            assert_eq!(parse_cursor(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }
}
