//! The user side of the HTTP API beyond signup and login: user lookup,
//! every WebSocket method over HTTP (`POST /v1/rpc/{method}`, through the
//! same dispatch as the WebSocket), and discovery.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::accounts;
use crate::auth::AuthedUser;
use crate::core::Core;
use crate::dispatch;
use crate::error::{ApiError, ErrorCode};
use crate::http;
use crate::protocol;

/// The bearer token of a request's `Authorization` header.
pub fn bearer(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The user a token names: valid signature, not expired, and an account
/// that exists and is not disabled.
pub fn user_of_token(core: &Core, token: Option<&str>) -> Result<AuthedUser, ApiError> {
    let unauthorized = || ApiError::new(ErrorCode::Unauthorized, "a valid token is required");
    let user = token.and_then(|token| core.tokens.verify(token)).ok_or_else(unauthorized)?;
    if accounts::may_connect(core, user.user_id)? { Ok(user) } else { Err(unauthorized()) }
}

/// The user a request's bearer token names (see `user_of_token`).
pub fn authenticate(core: &Core, request: &Request<Incoming>) -> Result<AuthedUser, ApiError> {
    user_of_token(core, bearer(request))
}

/// `GET /v1/users/{username}`.
pub fn user(core: &Core, request: &Request<Incoming>, username: &str) -> Result<Value, ApiError> {
    authenticate(core, request)?;
    let not_found = || ApiError::new(ErrorCode::NotFound, format!("no user {username:?}"));
    let user_id = core.user_id(username)?.ok_or_else(not_found)?;
    let record = core.store.user(core.owner(user_id.0), user_id)?.ok_or_else(not_found)?;
    Ok(json!({
        "user_id": user_id.to_string(),
        "username": record.username,
        "display_name": record.display_name,
        "created_at": record.created_at_ms,
    }))
}

/// `POST /v1/rpc/{method}`: the body is the method's `params` (an empty
/// body is `{}`); the answer is `{result}`.
pub async fn rpc(core: &Rc<Core>, request: Request<Incoming>, method: &str) -> Result<Value, ApiError> {
    let user = authenticate(core, &request)?;
    let params = http::read_json_or_empty(request).await?;
    let command = protocol::parse_command(method, params)?;
    let result = dispatch::dispatch(core, &user, None, command).await?;
    Ok(json!({ "result": result }))
}

/// This node as discovery lists it.
fn node(core: &Core) -> Value {
    let connections: u64 = core.shared.connections.iter().map(|count| count.load(Ordering::Relaxed)).sum();
    json!({
        "node": &*core.node,
        "ws_url": &*core.ws_url,
        "connections": connections,
        "load": core.shared.load(),
    })
}

/// `GET /v1/discovery`: the node to connect to, and every node with its
/// connections and load (one node until cluster mode).
pub fn discovery(core: &Core) -> Value {
    json!({
        "recommended": { "node": &*core.node, "ws_url": &*core.ws_url },
        "nodes": [node(core)],
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
