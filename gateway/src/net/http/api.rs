//! The user side of the HTTP API beyond signup and login: user lookup,
//! every WebSocket method over HTTP (`POST /v1/rpc/{method}`, through the
//! same dispatch as the WebSocket), and discovery.

use std::rc::Rc;

use bytes::Bytes;
use hyper::Request;
use serde_json::{Value, json};

use crate::cmd::dispatch::dispatch;
use crate::error::{ApiError, ErrorCode};
use crate::net::http::body::{authenticate, read_json_or_empty};
use crate::protocol::command::parse_command;
use crate::shard::state::Shard;

/// `GET /v1/users/{username}`.
pub fn user(shard: &Shard, request: &Request<Bytes>, username: &str) -> Result<Value, ApiError> {
    authenticate(shard, request)?;
    let not_found = || ApiError::new(ErrorCode::NotFound, format!("no user {username:?}"));
    let user_id = shard.user_id(username)?.ok_or_else(not_found)?;
    let record = shard.store.user(shard.owner(user_id.0), user_id)?.ok_or_else(not_found)?;
    Ok(json!({
        "user_id": user_id.to_string(),
        "username": record.username,
        "display_name": record.display_name,
        "created_at": record.created_at_ms,
    }))
}

/// `POST /v1/rpc/{method}`: the body is the method's `params` (an empty
/// body is `{}`); the answer is `{result}`.
pub async fn rpc(shard: &Rc<Shard>, request: Request<Bytes>, method: &str) -> Result<Value, ApiError> {
    // The body was read before routing: the token is checked after it,
    // so a revocation committed while the client sent it counts.
    let user = authenticate(shard, &request)?;
    let params = read_json_or_empty(&request)?;
    let command = parse_command(method, params)?;
    let result = dispatch(shard, &user, None, command).await?;
    Ok(json!({ "result": result }))
}

/// This node as discovery lists it.
fn node(shard: &Shard) -> Value {
    let connections = shard.shared.connection_count();
    json!({
        "node": &*shard.node,
        "ws_url": &*shard.ws_url,
        "connections": connections,
        "load": shard.shared.load(),
    })
}

/// `GET /v1/discovery`: the node to connect to, and every node with its
/// connections and load (one node until cluster mode).
pub fn discovery(shard: &Shard) -> Value {
    json!({
        "recommended": { "node": &*shard.node, "ws_url": &*shard.ws_url },
        "nodes": [node(shard)],
    })
}

/// The WebSocket URL announced for a `--public-url`: `http`/`https` become
/// `ws`/`wss`, and `/v1/ws` is appended unless the URL ends with it.
pub fn ws_url_from_public(public: &str) -> Result<String, String> {
    let trimmed = public.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed.split_once("://").ok_or_else(|| format!("public URL {public:?} has no scheme"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(format!("public URL scheme {other:?} is not ws, wss, http or https")),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("public URL {public:?} has no host"));
    }
    let path = if rest.ends_with("/v1/ws") { "" } else { "/v1/ws" };
    Ok(format!("{scheme}://{rest}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_become_websocket_urls() {
        assert_eq!(ws_url_from_public("https://chat.example.com").unwrap(), "wss://chat.example.com/v1/ws");
        assert_eq!(ws_url_from_public("http://10.0.0.5:8080/").unwrap(), "ws://10.0.0.5:8080/v1/ws");
        assert_eq!(ws_url_from_public("wss://gw1.example.com/v1/ws").unwrap(), "wss://gw1.example.com/v1/ws");
        assert_eq!(ws_url_from_public("ws://gw/prefix").unwrap(), "ws://gw/prefix/v1/ws");
        assert!(ws_url_from_public("chat.example.com").is_err());
        assert!(ws_url_from_public("ftp://x").is_err());
        assert!(ws_url_from_public("https://").is_err());
    }
}
