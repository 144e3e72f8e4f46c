//! Accounts: username and password rules, Argon2id hashing (on the core's
//! blocking thread: a hash takes tens of milliseconds), signup and login.

use std::rc::Rc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chatgw_idgen::UserId;
use serde_json::{Value, json};

use crate::core::Core;
use crate::dispatch;
use crate::error::{ApiError, ErrorCode};
use crate::route::{Request, Response};
use crate::shard;

/// Shortest password accepted.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted (hashing cost is bounded by it).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Longest display name, in chars.
pub const DISPLAY_NAME_CHARS_MAX: usize = 64;

/// 3 to 32 of `a-z 0-9 _`.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn valid_device(device: &str) -> bool {
    (1..=64).contains(&device.len())
        && device.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < PASSWORD_CHARS_MIN || password.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "password must be at least {PASSWORD_CHARS_MIN} chars and at most {PASSWORD_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Hashes a password with Argon2id off the core.
async fn hash_password(password: String) -> Result<String, ApiError> {
    glommio::executor()
        .spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string())
        })
        .await
        .map_err(ApiError::internal)
}

/// Checks a password against a stored PHC string off the core.
async fn verify_password(password: String, stored: String) -> bool {
    glommio::executor()
        .spawn_blocking(move || {
            PasswordHash::new(&stored)
                .map(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
                .unwrap_or(false)
        })
        .await
}

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| ApiError::bad_request(format!("{name} must be a string")))
}

/// `POST /v1/signup`: `{username, password, display_name?}`.
pub async fn signup(core: &Rc<Core>, body: &Value) -> Result<Value, ApiError> {
    let username = field(body, "username")?;
    let password = field(body, "password")?;
    if !valid_username(username) {
        return Err(ApiError::bad_request("username must be 3 to 32 of a-z, 0-9 and _"));
    }
    check_password(password)?;
    let display_name = match body.get("display_name") {
        None | Some(Value::Null) => username.to_string(),
        Some(Value::String(name)) if (1..=DISPLAY_NAME_CHARS_MAX).contains(&name.chars().count()) => name.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(format!("display_name must be 1 to {DISPLAY_NAME_CHARS_MAX} chars")));
        }
    };
    let password_hash = hash_password(password.to_string()).await?;
    let owner = shard::username_owner(username, core.shards);
    let request = Request::Signup { username: username.to_string(), display_name, password_hash };
    let user_id = match dispatch::request(core, owner, request).await? {
        Response::User(id) => id,
        other => return Err(ApiError::internal(format!("signup answered {other:?}"))),
    };
    let (token, expires_at) = core.tokens.mint(user_id, username, core.config.token_ttl_s);
    Ok(json!({ "user_id": user_id.to_string(), "username": username, "token": token, "expires_at": expires_at }))
}

/// `POST /v1/login`: `{username, password}`.
pub async fn login(core: &Rc<Core>, body: &Value) -> Result<Value, ApiError> {
    let refused = || ApiError::new(ErrorCode::Unauthorized, "wrong username or password");
    let username = field(body, "username")?;
    let password = field(body, "password")?;
    let Some(user_id) = core.user_id(username)? else { return Err(refused()) };
    let Some(user) = core.store.user(core.owner(user_id.0), user_id)? else { return Err(refused()) };
    if user.disabled || !verify_password(password.to_string(), user.password_hash).await {
        return Err(refused());
    }
    let (token, expires_at) = core.tokens.mint(user_id, username, core.config.token_ttl_s);
    Ok(json!({
        "user_id": user_id.to_string(),
        "token": token,
        "expires_at": expires_at,
        "gateway": { "node": &*core.node, "ws_url": &*core.ws_url },
    }))
}

/// Whether a user exists and may connect.
pub fn may_connect(core: &Core, user: UserId) -> Result<bool, ApiError> {
    Ok(core.store.user(core.owner(user.0), user)?.is_some_and(|record| !record.disabled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_devices_follow_the_contract() {
        for good in ["abc", "a_1", &"z".repeat(32)] {
            assert!(valid_username(good), "{good}");
        }
        for bad in ["ab", "Abc", "a-b", "a b", "é_abc", &"z".repeat(33)] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert!(valid_device("Phone-1_x"));
        assert!(!valid_device("") && !valid_device("a/b") && !valid_device(&"d".repeat(65)));
    }
}
