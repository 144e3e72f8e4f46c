//! The HTTP side of accounts: signup and login, with Argon2id hashing on
//! the executor's blocking thread (a hash takes tens of milliseconds). The
//! rules are `protocol::validate`'s; the account is written by the
//! username's owner (`shard::accounts`).

use std::rc::Rc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorCode};
use crate::placement;
use crate::protocol::validate::{check_display_name, check_password, valid_username};
use crate::route::{Answer, Call};
use crate::shard::inbox;
use crate::shard::state::Shard;

/// Hashes a password with Argon2id off the shard.
async fn hash_password(password: String) -> Result<String, ApiError> {
    glommio::executor()
        .spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string())
        })
        .await
        .map_err(ApiError::internal)
}

/// Checks a password against a stored PHC string off the shard.
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
pub async fn signup(shard: &Rc<Shard>, body: &Value) -> Result<Value, ApiError> {
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
    let password_hash = hash_password(password.to_string()).await?;
    let owner = placement::username_owner(username, shard.shard_count);
    let request = Call::Signup { username: username.to_string(), display_name, password_hash };
    let user_id = match inbox::call(shard, owner, request).await? {
        Answer::User(id) => id,
        other => return Err(ApiError::internal(format!("signup answered {other:?}"))),
    };
    let (token, expires_at) = shard.tokens.mint(user_id, username, shard.config.token_ttl_s);
    Ok(json!({ "user_id": user_id.to_string(), "username": username, "token": token, "expires_at": expires_at }))
}

/// `POST /v1/login`: `{username, password}`.
pub async fn login(shard: &Rc<Shard>, body: &Value) -> Result<Value, ApiError> {
    let refused = || ApiError::new(ErrorCode::Unauthorized, "wrong username or password");
    let username = field(body, "username")?;
    let password = field(body, "password")?;
    let Some(user_id) = shard.user_id(username)? else { return Err(refused()) };
    let Some(user) = shard.store.user(shard.owner(user_id.0), user_id)? else { return Err(refused()) };
    if user.disabled || !verify_password(password.to_string(), user.password_hash).await {
        return Err(refused());
    }
    let (token, expires_at) = shard.tokens.mint(user_id, username, shard.config.token_ttl_s);
    Ok(json!({
        "user_id": user_id.to_string(),
        "token": token,
        "expires_at": expires_at,
        "gateway": { "node": &*shard.node, "ws_url": &*shard.ws_url },
    }))
}
