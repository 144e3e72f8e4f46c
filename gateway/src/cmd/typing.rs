//! `typing`: a token of the typist's rate limit at its owner, then the
//! change to the channel's owner, which checks the member and tells the
//! other members' cores (`shard::typing`). Ephemeral: nothing is stored.

use std::rc::Rc;

use chatgw_idgen::ChannelId;
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::error::ApiError;
use crate::route::{Answer, Control, TypingChange};
use crate::shard::state::Shard;
use crate::shard::{abuse, typing as owner};

/// `typing`: `start` (or still typing) or stop, in `channel_id`.
pub async fn typing(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    start: bool,
) -> Result<Value, ApiError> {
    abuse::check_command(shard, user.user_id).await?;
    let change = TypingChange { channel_id, user_id: user.user_id, username: user.username.as_str().into(), start };
    let to = shard.owner(channel_id.0);
    let answer = if to == shard.id {
        owner::on_change(shard, change)?
    } else {
        shard.router.ask(to, Control::Typing(change)).await?
    };
    match answer {
        Answer::Done => Ok(json!({})),
        other => Err(ApiError::internal(format!("typing answered {other:?}"))),
    }
}
