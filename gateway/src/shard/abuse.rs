//! The glue around `services::abuse`: a send is checked by the sender's
//! owner shard, by a local call there or one control round trip.

use std::rc::Rc;
use std::time::Instant;

use chatgw_idgen::UserId;

use crate::error::ApiError;
use crate::route::{Answer, Control};
use crate::services::abuse::{Check, text_hash};
use crate::shard::state::Shard;

/// Checks a send of `user` at the user's owner.
pub async fn check_send(
    shard: &Rc<Shard>,
    user: UserId,
    text: &str,
    client_msg_id: Option<&str>,
) -> Result<(), ApiError> {
    let check =
        Check::Send { user_id: user, text_hash: text_hash(text), client_msg_id_hash: client_msg_id.map(text_hash) };
    ask_owner(shard, user, check).await
}

/// Checks that `user` may create a channel or add members now, at the
/// user's owner.
pub async fn check_channel_change(shard: &Rc<Shard>, user: UserId) -> Result<(), ApiError> {
    ask_owner(shard, user, Check::ChannelChange { user_id: user }).await
}

/// Takes a token of `user`'s rate limit for a command that is not a send
/// (`typing`), at the user's owner.
pub async fn check_command(shard: &Rc<Shard>, user: UserId) -> Result<(), ApiError> {
    ask_owner(shard, user, Check::Command { user_id: user }).await
}

async fn ask_owner(shard: &Rc<Shard>, user: UserId, check: Check) -> Result<(), ApiError> {
    let owner = shard.owner(user.0);
    if owner == shard.id {
        return on_check(shard, check).map(|_| ());
    }
    match shard.router.ask(owner, Control::Abuse(check)).await? {
        Answer::Done => Ok(()),
        other => Err(ApiError::internal(format!("rate check answered {other:?}"))),
    }
}

/// The owner's side: takes a token for the send, or says why not.
pub fn on_check(shard: &Shard, check: Check) -> Result<Answer, ApiError> {
    let now = Instant::now();
    match check {
        Check::Send { user_id, text_hash, client_msg_id_hash } => {
            shard.limiter.check(user_id, text_hash, client_msg_id_hash, now)
        }
        Check::ChannelChange { user_id } => shard.limiter.check_channel_change(user_id, now),
        Check::Command { user_id } => shard.limiter.check_command(user_id, now),
    }
    .map(|()| Answer::Done)
}
