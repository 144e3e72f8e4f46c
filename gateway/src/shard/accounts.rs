//! The owner's side of accounts: creating one (at the username's owner,
//! which holds the uniqueness index) and disabling or enabling one (at the
//! user's owner). Password hashing happens before, on the caller's side.

use std::rc::Rc;

use chatgw_idgen::UserId;
use chatgw_storage::User;

use crate::clock::now_ms;
use crate::error::{ApiError, ErrorCode};
use crate::placement;
use crate::route::{Answer, NewPassword};
use crate::shard::commit::{WriteOp, storage_failed};
use crate::shard::state::Shard;
use crate::single_flight::Turn;

/// Creates an account, at the username's owner: whoever asks first for a
/// name gets it, whatever the outcome.
pub async fn signup(
    shard: &Rc<Shard>,
    username: String,
    display_name: String,
    password_hash: String,
) -> Result<Answer, ApiError> {
    debug_assert_eq!(placement::username_owner(&username, shard.shard_count), shard.id);
    let taken = || ApiError::new(ErrorCode::UsernameTaken, format!("username {username:?} is taken"));
    match shard.signups_in_flight.start(&username) {
        // Whoever was first gets the name, whatever its outcome.
        Turn::Follow(_) => Err(taken()),
        Turn::Lead(lead) => {
            let outcome = async {
                if shard.store.user_id_by_name(shard.id, &username)?.is_some() {
                    return Err(taken());
                }
                let id = UserId(shard.next_id());
                let user = User {
                    id,
                    username: username.clone(),
                    display_name,
                    password_hash,
                    created_at_ms: now_ms(),
                    disabled: false,
                };
                let ops =
                    vec![WriteOp::User(shard.owner(id.0), user), WriteOp::Username(shard.id, username.clone(), id)];
                shard.committer.commit(ops).await.map_err(storage_failed)?;
                Ok(id)
            }
            .await;
            lead.finish(&outcome);
            outcome.map(Answer::User)
        }
    }
}

/// Raises a user's token version, revoking every token minted before, and
/// sets a new password first if one is given; at the user's owner.
/// Answers the new version.
///
/// A new password applies only to the state its old one was checked on:
/// if the token version moved since (a logout or another password change
/// committed while the caller's hashes ran), or the account was disabled,
/// the change is refused (`unauthorized`) rather than undoing that newer
/// change with a password the caller proved only for the older state.
/// The read and the commit run under the owner's account-write turn, so
/// nothing commits in between.
pub async fn revoke_tokens(
    shard: &Rc<Shard>,
    user_id: UserId,
    password: Option<NewPassword>,
) -> Result<Answer, ApiError> {
    debug_assert_eq!(shard.owner(user_id.0), shard.id);
    let _turn = shard.account_writes.acquire_permit(1).await.map_err(|_| ApiError::internal("shutting down"))?;
    let (mut user, current) = shard
        .store
        .user_and_token_version(shard.id, user_id)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
    let version = current + 1;
    let mut ops = vec![WriteOp::TokenVersion(shard.id, user_id, version)];
    if let Some(password) = password {
        if password.checked_at_version != current || user.disabled {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the account changed while the password was checked; log in again",
            ));
        }
        user.password_hash = password.hash;
        let disabled = user.disabled;
        ops.push(WriteOp::User(shard.id, user));
        shard.committer.commit(ops).await.map_err(storage_failed)?;
        shard.remember_account(user_id, disabled, version);
        return Ok(Answer::Count(version));
    }
    shard.committer.commit(ops).await.map_err(storage_failed)?;
    shard.remember_account(user_id, user.disabled, version);
    Ok(Answer::Count(version))
}

/// Disables or enables an account, at the user's owner.
pub async fn set_disabled(shard: &Rc<Shard>, user_id: UserId, disabled: bool) -> Result<Answer, ApiError> {
    debug_assert_eq!(shard.owner(user_id.0), shard.id);
    let _turn = shard.account_writes.acquire_permit(1).await.map_err(|_| ApiError::internal("shutting down"))?;
    let mut user =
        shard.store.user(shard.id, user_id)?.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
    if user.disabled != disabled {
        user.disabled = disabled;
        shard.committer.commit(vec![WriteOp::User(shard.id, user)]).await.map_err(storage_failed)?;
        // The memory after the commit, and before the caller's kick.
        shard.accounts.borrow_mut().remove(&user_id);
    }
    Ok(Answer::Done)
}
