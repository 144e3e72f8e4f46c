//! The `channel.*` methods: creating and changing channels goes to the
//! channel's owner (`shard::channels`); info and list read storage here.

use std::rc::Rc;

use chatgw_idgen::{ChannelId, UserId};
use chatgw_storage::{Channel, ChannelKind};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::clock::now_ms;
use crate::cmd::history::readable;
use crate::error::{ApiError, ErrorCode};
use crate::route::Call;
use crate::shard::abuse::check_channel_change;
use crate::shard::inbox;
use crate::shard::state::Shard;

/// `channel.create`: the creator and `members`, at most `max_channel_members`.
pub async fn create(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    name: String,
    members: Vec<String>,
) -> Result<Value, ApiError> {
    // Cheap checks first: the rate, the size, then each member's channels.
    check_channel_change(shard, user.user_id).await?;
    let mut ids = shard.known_users(&members)?;
    ids.push(user.user_id);
    ids.sort();
    ids.dedup();
    let max = shard.config.max_channel_members;
    if ids.len() > max {
        return Err(ApiError::new(ErrorCode::ChannelFull, format!("a channel holds at most {max} members")));
    }
    room_for_a_channel(shard, &ids)?;
    // An id this core owns: the channel is made here, and the id's issuer
    // is the shard that writes it (its high-water mark covers the id).
    let channel = Channel {
        id: ChannelId(shard.next_owned_id()),
        name,
        kind: ChannelKind::Group,
        owner_id: user.user_id,
        created_at_ms: now_ms(),
        fan_out_on_read: false,
    };
    let id = channel.id;
    inbox::call(shard, shard.owner(id.0), Call::Create { channel, members: ids }).await?;
    Ok(json!({ "channel": shard.channel_view(id)? }))
}

/// `channel.add_members`.
pub async fn add_members(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    members: &[String],
) -> Result<Value, ApiError> {
    check_channel_change(shard, user.user_id).await?;
    let add = shard.known_users(members)?;
    let owner = shard.owner(channel_id.0);
    let mut joining = Vec::with_capacity(add.len());
    for member in &add {
        if !shard.store.is_member(owner, channel_id, *member)? {
            joining.push(*member);
        }
    }
    room_for_a_channel(shard, &joining)?;
    change_members(shard, user, channel_id, add, Vec::new()).await
}

/// Checks that each of `users` may join one more channel
/// (`max_channels_per_user`). Read here, before the owner's write: two
/// additions of one user racing at two owners can pass the cap by one
/// each.
fn room_for_a_channel(shard: &Shard, users: &[UserId]) -> Result<(), ApiError> {
    let max = shard.config.max_channels_per_user;
    for user in users {
        if shard.store.user_channel_count(shard.owner(user.0), *user, max)? >= max {
            let name = shard.username(*user)?;
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("{name} is in {max} channels, the most a user may be in"),
            ));
        }
    }
    Ok(())
}

/// `channel.remove_members`.
pub async fn remove_members(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    members: &[String],
) -> Result<Value, ApiError> {
    let remove = shard.known_users(members)?;
    change_members(shard, user, channel_id, Vec::new(), remove).await
}

/// `channel.leave`.
pub async fn leave(shard: &Rc<Shard>, user: &AuthedUser, channel_id: ChannelId) -> Result<Value, ApiError> {
    change_members(shard, user, channel_id, Vec::new(), vec![user.user_id]).await?;
    Ok(json!({}))
}

/// `channel.info`.
pub fn info(shard: &Shard, user: &AuthedUser, channel_id: ChannelId) -> Result<Value, ApiError> {
    readable(shard, user, channel_id)?;
    Ok(json!({ "channel": shard.channel_view(channel_id)? }))
}

/// `channel.list`: the caller's channels above `after`, at most `limit`,
/// in id order; `has_more` and `next_after` say where the next page starts.
pub fn list(shard: &Shard, user: &AuthedUser, after: Option<ChannelId>, limit: usize) -> Result<Value, ApiError> {
    let owner = shard.owner(user.user_id.0);
    // One more than asked tells whether there is more.
    let mut joined = shard.store.user_channels_after(owner, user.user_id, after, limit + 1)?;
    let has_more = joined.len() > limit;
    joined.truncate(limit);
    let channels = joined.iter().map(|entry| shard.channel_view(entry.channel_id)).collect::<Result<Vec<_>, _>>()?;
    let mut reply = json!({ "channels": channels, "has_more": has_more });
    if has_more && let Some(last) = joined.last() {
        reply["next_after"] = json!(last.channel_id.to_string());
    }
    Ok(reply)
}

/// Asks the owner to change a channel's members; answers the channel as it
/// is now, or `{}` if the caller is no longer a member.
async fn change_members(
    shard: &Rc<Shard>,
    user: &AuthedUser,
    channel_id: ChannelId,
    add: Vec<UserId>,
    remove: Vec<UserId>,
) -> Result<Value, ApiError> {
    let call = Call::Members { channel_id, by: user.user_id, add, remove };
    inbox::call(shard, shard.owner(channel_id.0), call).await?;
    if shard.store.is_member(shard.owner(channel_id.0), channel_id, user.user_id)? {
        Ok(json!({ "channel": shard.channel_view(channel_id)? }))
    } else {
        Ok(json!({}))
    }
}
