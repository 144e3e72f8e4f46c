//! The `channel.*` methods: creating and changing channels goes to the
//! channel's owner (`shard::channels`); info and list read storage here.

use std::rc::Rc;

use chatgw_idgen::{ChannelId, UserId};
use chatgw_storage::{Channel, ChannelKind};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::clock::now_ms;
use crate::cmd::budget::ReplyBudget;
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
/// in id order; `has_more` and `next_after` say where the next page
/// starts. A page also ends early once its encoded channels reach the
/// reply budget (`cmd::budget`), pausing every chunk of work as it reads:
/// each `Channel` lists at most `limits::CHANNEL_VIEW_MEMBERS_MAX` members,
/// so a user in many large groups gets shorter pages, never a frame past
/// the limit.
pub async fn list(shard: &Shard, user: &AuthedUser, after: Option<ChannelId>, limit: usize) -> Result<Value, ApiError> {
    let owner = shard.owner(user.user_id.0);
    // One more than asked tells whether there is more.
    let joined = shard.store.user_channels_after(owner, user.user_id, after, limit + 1)?;
    let mut has_more = joined.len() > limit;
    let mut budget = ReplyBudget::default();
    let mut last = None;
    for entry in joined.iter().take(limit) {
        let mut view = shard.channel_view(entry.channel_id)?;
        let unread = shard.unread(entry.channel_id, user.user_id, &user.username)?;
        view["unread"] = json!(unread.messages);
        view["unread_mentions"] = json!(unread.mentions);
        let members = view["members"].as_array().map_or(0, Vec::len);
        if !budget.take(view) {
            has_more = true;
            break;
        }
        last = Some(entry.channel_id);
        // The unread messages counted were read too.
        budget.worked(1 + members / 64 + unread.messages as usize, 0).await;
    }
    let mut reply = json!({ "channels": budget.items, "has_more": has_more });
    if has_more && let Some(last) = last {
        reply["next_after"] = json!(last.to_string());
    }
    Ok(reply)
}

/// `channel.members`: a page of at most `limit` members of a channel the
/// caller belongs to, with user ids above `after`, in id order; `has_more`
/// and `next_after` (a user id) say where the next page starts. What a
/// `Channel` with `more_members` leaves out comes this way.
pub async fn members(
    shard: &Shard,
    user: &AuthedUser,
    channel_id: ChannelId,
    after: Option<UserId>,
    limit: usize,
) -> Result<Value, ApiError> {
    readable(shard, user, channel_id)?;
    let from = match after {
        Some(after) => match after.0.checked_add(1) {
            Some(from) => UserId(from),
            None => return Ok(json!({ "members": [], "has_more": false })),
        },
        None => UserId(0),
    };
    // One more than asked tells whether there is more.
    let mut page = shard.store.members_from(shard.owner(channel_id.0), channel_id, from, limit + 1)?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    let mut budget = ReplyBudget::default();
    for member in &page {
        // A page of the largest usernames fits the budget (limits.rs).
        budget.take(json!(&*shard.username(*member)?));
        budget.worked(1, 0).await;
    }
    let mut reply = json!({ "members": budget.items, "has_more": has_more });
    if has_more && let Some(last) = page.last() {
        reply["next_after"] = json!(last.to_string());
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
