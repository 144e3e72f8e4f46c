//! Revocation: raising a user's token version (logout, a password change)
//! or disabling it, then closing its sessions on every core. Each runs as
//! a task of its own, to its end, whatever becomes of the HTTP request
//! that asked (hyper drops a request's future when its client half-closes
//! or goes away): the version raised with the sessions left open would be
//! a revocation that did not happen. A session registered meanwhile checks
//! the version again once registered (`shard::connections::attach`).

use std::future::Future;
use std::rc::Rc;

use chatgw_idgen::UserId;

use crate::error::ApiError;
use crate::route::{Answer, Call, NewPassword};
use crate::shard::state::Shard;
use crate::shard::{inbox, ops};
use crate::tasks::to_completion;

/// Revokes `user_id`'s tokens (setting a new password first, if given and
/// the version is still the one it was checked at) and closes its connections on every core; answers the new token
/// version. Runs as a task of its own, to its end, whatever becomes of the
/// caller: an HTTP request whose client went away must not leave the
/// version raised and the sessions open.
pub async fn revoke(shard: &Rc<Shard>, user_id: UserId, password: Option<NewPassword>) -> Result<u64, ApiError> {
    let owner_side = shard.clone();
    let revoking = async move {
        let shard = owner_side;
        let call = Call::RevokeTokens { user_id, password };
        let version = match inbox::call(&shard, shard.owner(user_id.0), call).await? {
            Answer::Count(version) => version,
            other => return Err(ApiError::internal(format!("revoke answered {other:?}"))),
        };
        ops::kick(&shard, user_id, None).await?;
        Ok(version)
    };
    to_the_end("revoking", revoking).await
}

/// Disables or enables `user_id` at its owner; a disable also closes its
/// connections on every core. Answers how many were closed. Runs to its
/// end as a task of its own, like [`revoke`].
pub async fn set_disabled(shard: &Rc<Shard>, user_id: UserId, disabled: bool) -> Result<u64, ApiError> {
    let owner_side = shard.clone();
    let changing = async move {
        let shard = owner_side;
        inbox::call(&shard, shard.owner(user_id.0), Call::SetDisabled { user_id, disabled }).await?;
        if disabled { ops::kick(&shard, user_id, None).await } else { Ok(0) }
    };
    to_the_end("disabling", changing).await
}

/// Closes a user's connections (one device's, if named) on every core;
/// answers how many. To its end, like [`revoke`].
pub async fn kick(shard: &Rc<Shard>, user_id: UserId, device: Option<&str>) -> Result<u64, ApiError> {
    let (shard, device) = (shard.clone(), device.map(str::to_owned));
    let kicking = async move { ops::kick(&shard, user_id, device.as_deref()).await };
    to_the_end("kicking", kicking).await
}

/// Runs `work` as a task of its own, to its end whatever becomes of the
/// caller (`tasks::to_completion`), and answers what it answered; an error
/// if the executor dropped it (`what`: what it was doing).
pub async fn to_the_end<T: 'static>(
    what: &'static str,
    work: impl Future<Output = Result<T, ApiError>> + 'static,
) -> Result<T, ApiError> {
    to_completion(work).await.unwrap_or_else(|| Err(ApiError::internal(format!("stopped while {what}"))))
}
