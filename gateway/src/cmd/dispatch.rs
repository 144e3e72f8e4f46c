//! The one dispatch behind WebSocket commands (and HTTP `/v1/rpc`): runs on
//! the caller's core. Reads go straight to storage (any core may read);
//! writes go to the owning shard through `shard::inbox::call`.

use std::rc::Rc;

use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::cmd::{channel, history, messages, presence, reads, send, typing};
use crate::error::ApiError;
use crate::protocol::command::Command;
use crate::shard::registry::Conn;
use crate::shard::state::Shard;

/// Runs one command for `user`, from `conn` when it came over a WebSocket
/// (`None` over HTTP); the value is the reply's `result`.
pub async fn dispatch(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    conn: Option<&Rc<Conn>>,
    command: Command,
) -> Result<Value, ApiError> {
    match command {
        Command::Send { target, text, client_msg_id } => send::send(shard, user, target, text, client_msg_id).await,
        Command::History { channel_id, anchor, limit } => {
            history::history(shard, user, channel_id, anchor, limit).await
        }
        Command::Sync { since, limit } => history::sync(shard, user, since, limit).await,
        Command::ChannelCreate { name, members } => channel::create(shard, user, name, members).await,
        Command::ChannelAddMembers { channel_id, members } => {
            channel::add_members(shard, user, channel_id, &members).await
        }
        Command::ChannelRemoveMembers { channel_id, members } => {
            channel::remove_members(shard, user, channel_id, &members).await
        }
        Command::ChannelLeave { channel_id } => channel::leave(shard, user, channel_id).await,
        Command::ChannelInfo { channel_id } => channel::info(shard, user, channel_id),
        Command::ChannelList { after, limit } => channel::list(shard, user, after, limit).await,
        Command::ChannelMembers { channel_id, after, limit } => {
            channel::members(shard, user, channel_id, after, limit).await
        }
        Command::MessageEdit { channel_id, message_id, text } => {
            messages::edit(shard, user, channel_id, message_id, text).await
        }
        Command::MessageDelete { channel_id, message_id } => {
            messages::delete(shard, user, channel_id, message_id).await
        }
        Command::ChannelRead { channel_id, message_id } => reads::read(shard, user, conn, channel_id, message_id).await,
        Command::Counts => reads::counts(shard, user).await,
        Command::SettingsGet => reads::settings(shard, user),
        Command::SettingsSet { private_reads } => reads::set_settings(shard, user, private_reads).await,
        Command::Heartbeat => Ok(json!({})),
        Command::Typing { channel_id, start } => typing::typing(shard, user, channel_id, start).await,
        Command::PresenceQuery { users } => presence::query(shard, user, &users).await,
        Command::PresenceSubscribe { users } => presence::subscribe(shard, user, conn, &users).await,
        Command::PresenceUnsubscribe { users } => presence::unsubscribe(shard, conn, &users).await,
    }
}
