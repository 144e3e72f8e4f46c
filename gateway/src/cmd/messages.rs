//! `message.edit` and `message.delete`: checked on the caller's core (an
//! edit's text like a send's: its length, then banned words; a token of
//! the caller's rate limit at its owner), then made by the channel's
//! owner (`shard::changes`), which checks who may.

use std::rc::Rc;

use chatgw_idgen::{ChannelId, MessageId};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::error::ApiError;
use crate::protocol::shapes;
use crate::protocol::validate::check_text;
use crate::route::{Answer, Call};
use crate::shard::state::Shard;
use crate::shard::{abuse, inbox};

/// `message.edit`: the message as it is now (`{message}`, with `edited_at`).
pub async fn edit(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    message_id: MessageId,
    text: String,
) -> Result<Value, ApiError> {
    check_text(&text, shard.config.max_message_chars)?;
    abuse::check_command(shard, user.user_id).await?;
    shard.banned().check(&text)?;
    let message = change(shard, user, channel_id, message_id, Some(text)).await?;
    Ok(json!({ "message": shapes::message_json(&message, &user.username) }))
}

/// `message.delete`: `{}` once the message is a tombstone.
pub async fn delete(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    message_id: MessageId,
) -> Result<Value, ApiError> {
    abuse::check_command(shard, user.user_id).await?;
    change(shard, user, channel_id, message_id, None).await?;
    Ok(json!({}))
}

async fn change(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    message_id: MessageId,
    edit: Option<String>,
) -> Result<chatgw_storage::Message, ApiError> {
    let call = Call::ChangeMessage { channel_id, message_id, by: user.user_id, edit };
    match inbox::call(shard, shard.owner(channel_id.0), call).await? {
        Answer::Sent { message, .. } => Ok(*message),
        other => Err(ApiError::internal(format!("message change answered {other:?}"))),
    }
}
