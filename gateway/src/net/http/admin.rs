//! The operator's API under `/admin/v1/`, behind the admin token: what
//! `chatgw admin` uses. docs/admin-api.md describes every route.
//!
//! Figures and connections come from every shard by one control message
//! each; a kick goes to every shard (a user's devices may sit on any);
//! disabling a user is written by the user's owner shard; banned words are
//! changed by shard 0, which numbers each version and sends it to every
//! shard.

use std::rc::Rc;

use bytes::Bytes;
use chatgw_idgen::ShardId;
use hyper::{Method, Request};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};
use crate::limits::{CONNECTIONS_PAGE_DEFAULT, CONNECTIONS_PAGE_MAX};
use crate::net::http::body::read_json;
use crate::net::http::revoke;
use crate::protocol::upgrade::{bearer, query_param};
use crate::route::{Answer, Call, ConnInfo, ConnKey};
use crate::services::banned::BannedChange;
use crate::services::stats::{LatencySnapshot, process_rss_bytes, queue_depth};
use crate::shard::state::Shard;
use crate::shard::{inbox, ops, stats};

/// Checks the admin token: none or a wrong one is `unauthorized`; a valid
/// user token is `forbidden` (it is not an operator's).
fn authorize(shard: &Shard, request: &Request<Bytes>) -> Result<(), ApiError> {
    let Some(token) = bearer(request) else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "the admin token is required"));
    };
    if bool::from(token.as_bytes().ct_eq(shard.admin_token.as_bytes())) {
        return Ok(());
    }
    if shard.tokens.verify(token).is_some() {
        return Err(ApiError::new(ErrorCode::Forbidden, "a user token does not open the admin API"));
    }
    Err(ApiError::new(ErrorCode::Unauthorized, "the admin token is required"))
}

/// Serves a request under `/admin/v1/`.
pub async fn route(shard: &Rc<Shard>, request: Request<Bytes>, path: &str) -> Result<Value, ApiError> {
    authorize(shard, &request)?;
    let method = request.method().clone();
    let rest = path.strip_prefix("/admin/v1/").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["stats"]) => stats(shard).await,
        (Method::GET, ["connections"]) => {
            let limit = page_limit(&request)?;
            let cursor = query_param(&request, "cursor").map(|cursor| parse_cursor(&cursor)).transpose()?;
            connections(shard, cursor, limit).await
        }
        (Method::POST, ["kick"]) => {
            let body = read_json(&request)?;
            let username = body
                .get("username")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("username must be a string"))?;
            let device = match body.get("device") {
                None | Some(Value::Null) => None,
                Some(Value::String(device)) => Some(device.as_str()),
                Some(_) => return Err(ApiError::bad_request("device must be a string")),
            };
            let user_id = shard.known_user(username)?;
            let kicked = revoke::kick(shard, user_id, device).await?;
            Ok(json!({ "username": username, "kicked": kicked }))
        }
        (Method::POST, ["users", username, action @ ("disable" | "enable")]) => {
            let disabled = *action == "disable";
            let user_id = shard.known_user(username)?;
            let kicked = revoke::set_disabled(shard, user_id, disabled).await?;
            Ok(json!({ "user_id": user_id.to_string(), "username": username, "disabled": disabled, "kicked": kicked }))
        }
        (Method::GET, ["banned-words"]) => Ok(shard.banned().to_json()),
        (Method::PUT, ["banned-words"]) => {
            let body = read_json(&request)?;
            let words = string_list(&body, "words")?.ok_or_else(|| ApiError::bad_request("words must be given"))?;
            change_banned(shard, BannedChange::Replace(words)).await
        }
        (Method::PATCH, ["banned-words"]) => {
            let body = read_json(&request)?;
            let add = string_list(&body, "add")?.unwrap_or_default();
            let remove = string_list(&body, "remove")?.unwrap_or_default();
            change_banned(shard, BannedChange::Patch { add, remove }).await
        }
        (Method::GET, ["outbox"]) => {
            let all = stats::gather(shard).await?;
            let shards: Vec<Value> =
                all.iter().map(|stats| json!({ "shard": stats.shard, "depth": stats.outbox_depth })).collect();
            Ok(json!({ "depth": all.iter().map(|stats| stats.outbox_depth).sum::<u64>(), "shards": shards }))
        }
        (Method::GET, ["outbox", "dead"]) => dead_pushes(shard, page_limit(&request)?),
        (Method::POST, ["outbox", "dead", "retry"]) => {
            // Every shard at once.
            let calls = (0..shard.shard_count).map(|target| inbox::call(shard, ShardId(target), Call::RetryDeadPushes));
            let mut retried = 0;
            for answer in futures_util::future::join_all(calls).await {
                if let Answer::Count(count) = answer? {
                    retried += count;
                }
            }
            Ok(json!({ "retried": retried }))
        }
        (Method::POST, ["compact"]) => start_compaction(shard),
        (Method::GET, ["compact"]) => Ok(shard.shared.compaction.to_json()),
        (Method::POST, ["faults", "panic"]) if shard.config.fault_hooks => {
            let body = read_json(&request)?;
            let target = body
                .get("shard")
                .and_then(Value::as_u64)
                .and_then(|target| u16::try_from(target).ok())
                .filter(|target| *target < shard.shard_count)
                .ok_or_else(|| ApiError::bad_request("shard must be a shard's number"))?;
            ops::panic_shard(shard, ShardId(target)).await?;
            Ok(json!({}))
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, format!("no admin route for {path}"))),
    }
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

/// Starts flushing and compacting the whole store, on a thread of its own
/// (neither a shard's core nor the blocking thread its fsync commits use),
/// one at a time per node, and answers at once: afterwards what was
/// overwritten or deleted (a deleted message's text) is gone from the
/// files. `GET /admin/v1/compact` says whether it still runs and how the
/// last one ended.
fn start_compaction(shard: &Rc<Shard>) -> Result<Value, ApiError> {
    if !shard.shared.compaction.start() {
        return Err(ApiError::new(ErrorCode::Overloaded, "a compaction is running already"));
    }
    let (store, shared) = (shard.store.clone(), shard.shared.clone());
    let spawned = std::thread::Builder::new().name("chatgw-compact".into()).spawn(move || {
        let started = std::time::Instant::now();
        let result = store.flush_and_compact_all().map_err(|error| error.to_string());
        shared.compaction.finish(result, started.elapsed());
    });
    if let Err(error) = spawned {
        shard.shared.compaction.finish(Err(error.to_string()), std::time::Duration::ZERO);
        return Err(ApiError::internal(format!("starting the compaction: {error}")));
    }
    Ok(json!({ "started": true }))
}

/// Changes the banned words at shard 0, to the end (every core told) even
/// if the request is dropped meanwhile.
async fn change_banned(shard: &Rc<Shard>, change: BannedChange) -> Result<Value, ApiError> {
    let at_zero = shard.clone();
    let changing = async move { inbox::call(&at_zero, ShardId(0), Call::BannedWords(change)).await };
    match revoke::to_the_end("changing banned words", changing).await? {
        Answer::Banned(banned) => Ok(banned.to_json()),
        other => Err(ApiError::internal(format!("banned words answered {other:?}"))),
    }
}

async fn stats(shard: &Rc<Shard>) -> Result<Value, ApiError> {
    let all = stats::gather(shard).await?;
    let shards: Vec<Value> = all
        .iter()
        .enumerate()
        .map(|(index, stats)| {
            let inbound: u64 =
                (0..all.len()).filter(|from| *from != index).map(|from| queue_depth(&all, from, index)).sum();
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
                "mesh_timeouts": stats.mesh_timeouts,
                "commit_queue": stats.commit_queue,
                "storage_sst_bytes": stats.storage_sst_bytes,
                "storage_memtable_bytes": stats.storage_memtable_bytes,
                "outbox_depth": stats.outbox_depth,
                "channels_in_memory": stats.channels_in_memory,
                "channels_evicted": stats.channels_evicted,
                "tasks": stats.tasks,
                "slow_consumers": stats.slow_consumers,
                "mesh_sent": stats.mesh_sent.iter().sum::<u64>(),
            })
        })
        .collect();
    let mut fan_out = LatencySnapshot::default();
    for stats in &all {
        fan_out.merge(&stats.fan_out);
    }
    Ok(json!({
        "node": &*shard.node,
        "uptime_s": shard.shared.started.elapsed().as_secs(),
        "rss_bytes": process_rss_bytes(),
        "load": shard.shared.load(),
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
async fn connections(shard: &Rc<Shard>, cursor: Option<(u16, ConnKey)>, limit: usize) -> Result<Value, ApiError> {
    let (page, next) = ops::connections(shard, cursor, limit).await?;
    let connections: Vec<Value> = page.iter().map(|(at, info)| connection_json(*at, info)).collect();
    let next_cursor = next.map(|(at, key)| format!("{at}.{key}"));
    Ok(json!({ "connections": connections, "next_cursor": next_cursor }))
}

/// A page's `?limit=`: 1 to `CONNECTIONS_PAGE_MAX`, by default
/// `CONNECTIONS_PAGE_DEFAULT`.
fn page_limit(request: &Request<Bytes>) -> Result<usize, ApiError> {
    match query_param(request, "limit") {
        None => Ok(CONNECTIONS_PAGE_DEFAULT),
        Some(limit) => limit
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=CONNECTIONS_PAGE_MAX).contains(limit))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {CONNECTIONS_PAGE_MAX}"))),
    }
}

/// Up to `limit` dead pushes of each shard (read from any core: reads may
/// cross shards), oldest first per shard.
fn dead_pushes(shard: &Shard, limit: usize) -> Result<Value, ApiError> {
    let mut dead = Vec::new();
    for target in 0..shard.shard_count {
        for push in shard.store.dead_pushes(ShardId(target), 0, limit)? {
            dead.push(json!({
                "shard": target,
                "push_id": push.entry.push_id.to_string(),
                "user_id": push.entry.user_id.to_string(),
                "username": &*shard.username(push.entry.user_id)?,
                "channel_id": push.entry.channel_id.to_string(),
                "message_id": push.entry.message_id.to_string(),
                "created_at": push.entry.created_at_ms,
                "failed_at": push.failed_at_ms,
                "status": push.status,
            }));
        }
    }
    Ok(json!({ "dead": dead }))
}

fn connection_json(at: u16, info: &ConnInfo) -> Value {
    json!({
        "user_id": info.user_id.to_string(),
        "username": info.username,
        "device": info.device,
        "shard": at,
        "remote_addr": info.remote.to_string(),
        "connected_at": info.connected_at_ms,
        "last_active_at": info.last_active_ms,
        "commands_in_flight": info.commands_in_flight,
    })
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
