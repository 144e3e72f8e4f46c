//! What a channel's owner does with `typing`: checks that the typist is a
//! member, keeps the table of who types (`services::typing`) and its
//! expiry, and sends each change worth an event to the cores that host the
//! channel, one frame a core, as a message's fan-out does. Nothing of it
//! is stored. The expiry is a task that lives only while someone types.

use std::rc::Rc;
use std::time::Instant;

use chatgw_idgen::{ChannelId, UserId};

use crate::error::{ApiError, ErrorCode};
use crate::protocol::shapes;
use crate::route::{Answer, ChannelMsg, TypingChange};
use crate::services::typing::Started;
use crate::shard::state::Shard;

/// The owner's side of a `typing` command (from this core or another).
pub fn on_change(shard: &Rc<Shard>, change: TypingChange) -> Result<Answer, ApiError> {
    let TypingChange { channel_id, user_id, username, start } = change;
    let found = shard.with_channel(channel_id, |state| (state.members.contains(&user_id), state.cores_mask))?;
    let Some((is_member, cores)) = found else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such channel"));
    };
    if !is_member {
        return Err(ApiError::new(ErrorCode::Forbidden, "not a member of this channel"));
    }
    let announce = if start {
        let started = shard.typing.borrow_mut().start(channel_id, user_id, &username, Instant::now())?;
        keep_expiring(shard);
        started == Started::New
    } else {
        shard.typing.borrow_mut().stop(channel_id, user_id)
    };
    if announce {
        fan_out(shard, channel_id, cores, user_id, &username, start);
    }
    Ok(Answer::Done)
}

/// A stored message of `sender` ends its typing in the channel, silently:
/// every device that saw `start` gets the message itself, which ends it.
pub fn on_message(shard: &Shard, channel: ChannelId, sender: UserId) {
    let mut typing = shard.typing.borrow_mut();
    if !typing.is_empty() {
        typing.stop(channel, sender);
    }
}

/// One frame to each core that hosts the channel, for every connection
/// there but the typist's own.
fn fan_out(shard: &Rc<Shard>, channel: ChannelId, cores: u128, typist: UserId, username: &str, start: bool) {
    let frame = shapes::typing_event_frame(channel, typist, username, start);
    shard.to_cores_soon(
        cores,
        || deliver_here(shard, channel, &frame, typist),
        || ChannelMsg::Typing { channel_id: channel, frame: frame.clone(), except: typist },
    );
}

/// Queues a `typing` frame to this core's connections of `channel` but
/// the typist's.
pub fn deliver_here(shard: &Shard, channel: ChannelId, frame: &bytes::Bytes, typist: UserId) {
    let queued = shard.registry.borrow().deliver_to(channel, frame, |conn| conn.user_id != typist);
    shard.counters.typing_deliveries.set(shard.counters.typing_deliveries.get() + queued as u64);
}

/// Starts the expiry's task unless it runs: it sleeps until the next entry
/// ends, announces each `stop`, and ends once nobody types.
fn keep_expiring(shard: &Rc<Shard>) {
    if shard.typing_expiry.get() {
        return;
    }
    shard.typing_expiry.set(true);
    let shard = shard.clone();
    crate::tasks::spawn(async move {
        expire(&shard).await;
        shard.typing_expiry.set(false);
    })
    .detach();
}

async fn expire(shard: &Rc<Shard>) {
    loop {
        // Every entry lives as long, so a later start never ends sooner
        // than the one this task sleeps for.
        let Some(next) = shard.typing.borrow().next_end() else { return };
        if shard.stopping.get() {
            return;
        }
        let now = Instant::now();
        if next > now {
            glommio::timer::sleep(next - now).await;
            continue;
        }
        let ended = shard.typing.borrow_mut().expire(now);
        for (channel, user, username) in ended {
            match shard.with_channel(channel, |state| state.cores_mask) {
                Ok(Some(cores)) => fan_out(shard, channel, cores, user, &username, false),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, channel = channel.0, "typing expiry: channel unreadable"),
            }
        }
    }
}
