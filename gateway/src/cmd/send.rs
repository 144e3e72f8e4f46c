//! `send`: checked on the sender's core (text length, the sender's rate at
//! its owner, banned words), then stored and fanned out by the channel's
//! owner.
//! A `to_user` send finds or makes the pair's direct channel first.

use std::rc::Rc;

use chatgw_idgen::ChannelId;
use serde_json::Value;

use crate::auth::AuthedUser;
use crate::error::ApiError;
use crate::placement;
use crate::protocol::command::SendTarget;
use crate::protocol::shapes;
use crate::protocol::validate::check_text;
use crate::route::{Answer, Call};
use crate::shard::state::Shard;
use crate::shard::{abuse, inbox};

/// `send`.
pub async fn send(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    target: SendTarget,
    text: String,
    client_msg_id: Option<String>,
) -> Result<Value, ApiError> {
    // Cheap checks first: the length, the sender's rate, and only then the
    // scan of the whole text for banned words.
    check_text(&text, shard.config.max_message_chars)?;
    abuse::check_send(shard, user.user_id, &text, client_msg_id.as_deref()).await?;
    shard.banned().check(&text)?;
    let channel_id = match target {
        SendTarget::Channel(channel) => channel,
        SendTarget::User(username) => direct_channel(shard, user, &username).await?,
    };
    let call = Call::Send { channel_id, sender_id: user.user_id, sender: user.username.clone(), text, client_msg_id };
    match inbox::call(shard, shard.owner(channel_id.0), call).await? {
        Answer::Sent { message, duplicate } => Ok(shapes::sent_json(&message, duplicate)),
        other => Err(ApiError::internal(format!("send answered {other:?}"))),
    }
}

/// The direct channel of `user` and `username`, made on first use.
async fn direct_channel(shard: &Rc<Shard>, user: &AuthedUser, username: &str) -> Result<ChannelId, ApiError> {
    let other = shard.known_user(username)?;
    if other == user.user_id {
        return Err(ApiError::bad_request("to_user must be another user"));
    }
    if let Some(channel) = shard.direct_channel(user.user_id, other)? {
        return Ok(channel);
    }
    let pair_owner = placement::pair_owner(user.user_id, other, shard.shard_count);
    let names = (user.username.clone(), username.to_string());
    match inbox::call(shard, pair_owner, Call::Direct { first: user.user_id, second: other, names }).await? {
        Answer::Channel(channel) => Ok(channel),
        other => Err(ApiError::internal(format!("direct answered {other:?}"))),
    }
}
