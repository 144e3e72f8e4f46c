//! The HTTP side of accounts: signup and login, with Argon2id hashing on
//! the node's hashing threads (`crate::hashing`: a hash takes tens of
//! milliseconds of a core) and logins throttled per account and per client
//! IP (`crate::throttle`). The rules are `protocol::validate`'s; the account
//! is written by the username's owner (`shard::accounts`).

use std::net::IpAddr;
use std::rc::Rc;

use chatgw_storage::User;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::limits;

use crate::auth::AuthedUser;
use crate::error::{ApiError, ErrorCode};
use crate::net::http::revoke;
use crate::node::LoginAttempt;
use crate::placement;
use crate::protocol::validate::{check_display_name, check_password, valid_username};
use crate::route::{Answer, Call, NewPassword};
use crate::shard::inbox;
use crate::shard::state::Shard;

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| ApiError::bad_request(format!("{name} must be a string")))
}

/// A password to check against a stored hash: the length bound of signup
/// holds here too, before any hashing.
fn check_password_bytes(password: &str) -> Result<(), ApiError> {
    if password.len() > limits::PASSWORD_BYTES_MAX {
        return Err(ApiError::bad_request(format!("password above {} bytes", limits::PASSWORD_BYTES_MAX)));
    }
    Ok(())
}

/// Checks the login throttle for `username` from `ip` and reserves the
/// attempt (`rate_limited` while either must wait).
fn begin_attempt(shard: &Shard, ip: IpAddr, username: &str) -> Result<LoginAttempt, ApiError> {
    shard
        .shared
        .begin_login(ip, username, now_ms())
        .map_err(|wait_ms| ApiError::rate_limited("too many failed logins; wait before trying again", wait_ms))
}

/// An enabled user by name, with the token version read from the same
/// snapshot as its password hash; `None` for an unknown or disabled one.
fn enabled_account(shard: &Shard, username: &str) -> Result<Option<(User, u64)>, ApiError> {
    let Some(user_id) = shard.user_id(username)? else { return Ok(None) };
    let account = shard.store.user_and_token_version(shard.owner(user_id.0), user_id)?;
    Ok(account.filter(|(user, _)| !user.disabled))
}

/// `POST /v1/signup`: `{username, password, display_name?}`, from `ip`
/// (throttled per IP: `--max-signups-per-ip-per-min`).
pub async fn signup(shard: &Rc<Shard>, body: &Value, ip: IpAddr) -> Result<Value, ApiError> {
    if let Err(wait_ms) = shard.shared.signup_throttle().take(ip, now_ms()) {
        return Err(ApiError::rate_limited("too many signups from this address; wait before the next", wait_ms));
    }
    let username = field(body, "username")?;
    let password = field(body, "password")?;
    if !valid_username(username) {
        return Err(ApiError::bad_request("username must be 3 to 32 of a-z, 0-9 and _"));
    }
    check_password(password)?;
    let display_name = match body.get("display_name") {
        None | Some(Value::Null) => username.to_string(),
        // Not a string reads as empty, which the check refuses.
        Some(name) => {
            let name = name.as_str().unwrap_or_default();
            check_display_name(name)?;
            name.to_string()
        }
    };
    let password_hash = shard.shared.hashing.hash(password.to_string()).await?;
    let owner = placement::username_owner(username, shard.shard_count);
    let request = Call::Signup { username: username.to_string(), display_name, password_hash };
    let user_id = match inbox::call(shard, owner, request).await? {
        Answer::User(id) => id,
        other => return Err(ApiError::internal(format!("signup answered {other:?}"))),
    };
    let (token, expires_at) = shard.tokens.mint(user_id, username, shard.config.token_ttl_s, 0);
    Ok(json!({ "user_id": user_id.to_string(), "username": username, "token": token, "expires_at": expires_at }))
}

/// `POST /v1/login`: `{username, password}`, from `ip`.
///
/// An unknown or disabled user costs what a wrong password costs (the
/// password is checked against a dummy hash), and answers the same. A name
/// that breaks the username rules belongs to no account: it answers the
/// same 401 at once, without a hash and without a key in the throttle (the
/// rules are public, so the quick answer tells nothing).
///
/// The token is signed with the token version read together with the
/// password hash, before the hash is checked: a password change committed
/// while the check runs raised that version, so the token is refused.
pub async fn login(shard: &Rc<Shard>, body: &Value, ip: IpAddr) -> Result<Value, ApiError> {
    let refused = || ApiError::new(ErrorCode::Unauthorized, "wrong username or password");
    let username = field(body, "username")?;
    let password = field(body, "password")?;
    check_password_bytes(password)?;
    if !valid_username(username) {
        return Err(refused());
    }
    let attempt = begin_attempt(shard, ip, username)?;
    let account = match enabled_account(shard, username) {
        Ok(account) => account,
        Err(error) => {
            attempt.untested();
            return Err(error);
        }
    };
    let stored = account.as_ref().map(|(user, _)| user.password_hash.clone());
    let good = match shard.shared.hashing.verify(password.to_string(), stored).await {
        Ok(good) => good,
        Err(error) => {
            attempt.untested();
            return Err(error);
        }
    };
    let Some((user, version)) = account.filter(|_| good) else {
        attempt.failed();
        return Err(refused());
    };
    attempt.succeeded();
    let user_id = user.id;
    let (token, expires_at) = shard.tokens.mint(user_id, username, shard.config.token_ttl_s, version);
    Ok(json!({
        "user_id": user_id.to_string(),
        "token": token,
        "expires_at": expires_at,
        "gateway": { "node": &*shard.node, "ws_url": &*shard.ws_url },
    }))
}

/// `POST /v1/logout`: revokes every token of the caller (all its devices)
/// and closes its connections.
pub async fn logout(shard: &Rc<Shard>, user: &AuthedUser) -> Result<Value, ApiError> {
    revoke::revoke(shard, user.user_id, None).await?;
    Ok(json!({}))
}

/// `POST /v1/password`: `{old_password, new_password}`, from `ip`. Sets the
/// new password, revokes every token of the caller and closes its
/// connections; answers a fresh token. A wrong old password counts as a
/// failed login.
///
/// The old hash and the token version are read together before the old
/// password is checked, and the owner sets the new password only if the
/// version is still that one: a logout or another change committed while
/// the hashes ran makes this one fail (401) rather than apply to a state
/// it was not checked on.
pub async fn change_password(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    body: &Value,
    ip: IpAddr,
) -> Result<Value, ApiError> {
    let old_password = field(body, "old_password")?;
    let new_password = field(body, "new_password")?;
    check_password_bytes(old_password)?;
    check_password(new_password)?;
    let attempt = begin_attempt(shard, ip, &user.username)?;
    let account = match shard.store.user_and_token_version(shard.owner(user.user_id.0), user.user_id) {
        Ok(account) => account,
        Err(error) => {
            attempt.untested();
            return Err(error.into());
        }
    };
    // The caller's token was checked before this read; a revocation in
    // between shows here.
    let Some((record, version)) =
        account.filter(|(record, version)| !record.disabled && user.token_version >= *version)
    else {
        attempt.untested();
        return Err(ApiError::new(ErrorCode::Unauthorized, "a valid token is required"));
    };
    match shard.shared.hashing.verify(old_password.to_string(), Some(record.password_hash)).await {
        Ok(true) => attempt.succeeded(),
        Ok(false) => {
            attempt.failed();
            return Err(ApiError::new(ErrorCode::Unauthorized, "wrong password"));
        }
        Err(error) => {
            attempt.untested();
            return Err(error);
        }
    }
    let hash = shard.shared.hashing.hash(new_password.to_string()).await?;
    let version = revoke::revoke(shard, user.user_id, Some(NewPassword { hash, checked_at_version: version })).await?;
    let (token, expires_at) = shard.tokens.mint(user.user_id, &user.username, shard.config.token_ttl_s, version);
    Ok(json!({ "user_id": user.user_id.to_string(), "token": token, "expires_at": expires_at }))
}
