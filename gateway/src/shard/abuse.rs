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
    let check = Check { user_id: user, text_hash: text_hash(text), client_msg_id_hash: client_msg_id.map(text_hash) };
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
    shard.limiter.check(check.user_id, check.text_hash, check.client_msg_id_hash, Instant::now()).map(|()| Answer::Done)
}
