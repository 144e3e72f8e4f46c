//! The glue around `services::push`: the channel owner's check after a
//! message is stored, the members' owner recording outbox records through
//! its group commit, and the shard's push worker that POSTs the outbox to
//! `--push-webhook` (on the executor's blocking thread).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::OutboxEntry;
use serde_json::Value;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::limits;
use crate::protocol::shapes;
use crate::route::Control;
use crate::services::push::{Check, Push, backoff, coalesce, idempotency_key};
use crate::shard::commit::WriteOp;
use crate::shard::state::Shard;

/// Channel owner: after storing `message` in `channel`, asks each member's
/// owner to record pushes for members with no connected device.
pub async fn check_members(
    shard: &Rc<Shard>,
    channel: ChannelId,
    message: MessageId,
    sender: UserId,
    members: &[UserId],
) {
    if members.len() > limits::PUSH_CHANNEL_MEMBERS_MAX {
        return;
    }
    let mut by_owner: HashMap<ShardId, Vec<UserId>> = HashMap::new();
    for member in members.iter().filter(|member| **member != sender) {
        by_owner.entry(shard.owner(member.0)).or_default().push(*member);
    }
    for (owner, members) in by_owner {
        let check = Check { channel_id: channel, message_id: message, members };
        if owner == shard.id {
            on_check(shard, check);
        } else {
            shard.router.send_control(owner, 0, Control::Push(check)).await;
        }
    }
}

/// Members' owner: records a push for each member with no connected
/// device, through the group commit. Never awaits (the commit is a task).
pub fn on_check(shard: &Rc<Shard>, check: Check) {
    let now = now_ms();
    let ops: Vec<WriteOp> = {
        let presence = shard.presence.borrow();
        check
            .members
            .iter()
            .filter(|member| !presence.has_device(**member))
            .map(|member| {
                let entry = OutboxEntry {
                    push_id: shard.next_id(),
                    user_id: *member,
                    channel_id: check.channel_id,
                    message_id: check.message_id,
                    created_at_ms: now,
                };
                WriteOp::Outbox(shard.id, entry)
            })
            .collect()
    };
    if ops.is_empty() {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let count = ops.len() as u64;
        match shard.committer.commit(ops).await {
            Ok(()) => shard.outbox_depth.set(shard.outbox_depth.get() + count),
            Err(error) => tracing::error!(%error, "recording pushes failed"),
        }
    })
    .detach();
}

/// The webhook body of one push; `None` if its message is gone.
fn body(shard: &Shard, push: &Push) -> Result<Option<Value>, ApiError> {
    let channel = push.newest.channel_id;
    let Some(message) = shard.store.message(shard.owner(channel.0), channel, push.newest.message_id)? else {
        return Ok(None);
    };
    let sender = shard.username(message.sender_id)?;
    let message = shapes::message_json(&message, &sender);
    Ok(Some(shapes::push_json(push.user_id, &shard.username(push.user_id)?, &message, push.push_ids.len())))
}

/// POSTs one push off the core; true on a 2xx.
async fn post(agent: &ureq::Agent, webhook: &str, key: String, body: Value) -> bool {
    let (agent, webhook) = (agent.clone(), webhook.to_string());
    glommio::executor()
        .spawn_blocking(move || match agent.post(&webhook).header("Idempotency-Key", &key).send_json(&body) {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::warn!(status = response.status().as_u16(), %key, "push refused by the webhook");
                false
            }
            Err(error) => {
                tracing::warn!(%error, %key, "push webhook unreachable");
                false
            }
        })
        .await
}

/// Sends one push and deletes its records after a 2xx; false if it failed.
async fn send_one(shard: &Shard, agent: &ureq::Agent, webhook: &str, push: &Push) -> bool {
    let sent = match body(shard, push) {
        Ok(Some(body)) => post(agent, webhook, idempotency_key(push), body).await,
        // The message is gone (it never is, short of corruption): nothing
        // to send, drop the records.
        Ok(None) => true,
        Err(error) => {
            tracing::error!(%error, "building a push");
            false
        }
    };
    if !sent {
        return false;
    }
    let deletes = push.push_ids.iter().map(|id| WriteOp::DeleteOutbox(shard.id, *id)).collect();
    match shard.committer.commit(deletes).await {
        Ok(()) => shard.outbox_depth.set(shard.outbox_depth.get().saturating_sub(push.push_ids.len() as u64)),
        Err(error) => tracing::error!(%error, "deleting sent pushes (they will be sent again)"),
    }
    true
}

/// The shard's push worker: sends what its outbox holds to `webhook`, until
/// the server stops.
pub async fn run(shard: Rc<Shard>, webhook: String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limits::PUSH_HTTP_TIMEOUT))
        .build()
        .into();
    let window_ms = limits::PUSH_COALESCE.as_millis() as u64;
    let mut failures = 0u32;
    while !shard.stopping.get() {
        let entries = match shard.store.outbox(shard.id, 0, limits::PUSH_BATCH_MAX) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "reading the push outbox");
                Vec::new()
            }
        };
        let pushes = coalesce(&entries, now_ms(), window_ms);
        let mut failed = false;
        for push in &pushes {
            if shard.stopping.get() {
                return;
            }
            if !send_one(&shard, &agent, &webhook, push).await {
                failed = true;
                break;
            }
        }
        let wait = if failed {
            failures += 1;
            backoff(failures)
        } else {
            failures = 0;
            // Nothing due, or a batch done: look again soon.
            if pushes.is_empty() { Duration::from_millis(100) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }
}
