//! Push to offline members (protocol §4): a durable outbox per shard and a
//! worker per shard that POSTs it to `--push-webhook`.
//!
//! Once a message is stored and fanned out, its channel's owner sends each
//! member's owner shard the members it owns (O(cores) messages). That shard
//! knows the member's presence: for each member with no connected device it
//! writes an outbox record through its group commit. Its worker reads the
//! outbox in order, coalesces one user's records within `PUSH_COALESCE` into
//! one push (the newest message and a count), POSTs it with an
//! `Idempotency-Key` of recipient and newest message, and deletes the records
//! only after a 2xx. Failures back off exponentially with jitter. Records
//! live in RocksDB: a restart, or a kill -9, resends what was not confirmed.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::OutboxEntry;
use serde_json::{Value, json};

use crate::commit::WriteOp;
use crate::core::{Core, now_ms};
use crate::limits;
use crate::presence;
use crate::protocol;
use crate::route::Control;

/// Channel owner: after storing `message` in `channel`, asks each member's
/// owner to record pushes for members with no connected device.
pub async fn check_members(
    core: &Rc<Core>,
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
        by_owner.entry(core.owner(member.0)).or_default().push(*member);
    }
    for (owner, members) in by_owner {
        if owner == core.shard {
            on_message(core, channel, message, &members);
        } else {
            let check = Control::PushCheck { channel_id: channel, message_id: message, members };
            core.router.send_control(owner, 0, check).await;
        }
    }
}

/// Members' owner: records a push for each of `members` with no connected
/// device, through the group commit. Never awaits (the commit is a task).
pub fn on_message(core: &Rc<Core>, channel: ChannelId, message: MessageId, members: &[UserId]) {
    let now = now_ms();
    let ops: Vec<WriteOp> = members
        .iter()
        .filter(|member| !presence::has_device(core, **member))
        .map(|member| {
            let entry = OutboxEntry {
                push_id: core.next_id(),
                user_id: *member,
                channel_id: channel,
                message_id: message,
                created_at_ms: now,
            };
            WriteOp::Outbox(core.shard, entry)
        })
        .collect();
    if ops.is_empty() {
        return;
    }
    let core = core.clone();
    glommio::spawn_local(async move {
        let count = ops.len() as u64;
        match core.committer.commit(ops).await {
            Ok(()) => core.outbox_depth.set(core.outbox_depth.get() + count),
            Err(error) => tracing::error!(%error, "recording pushes failed"),
        }
    })
    .detach();
}

/// One push: a user's records coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Push {
    user_id: UserId,
    /// The newest message's record.
    newest: OutboxEntry,
    /// Every record it stands for.
    push_ids: Vec<u64>,
}

/// Groups records (in outbox order) into pushes: one user's records within
/// `window_ms` of that user's first. Only records at least `window_ms` old
/// at `now_ms` go (a push waits for what may coalesce with it); the rest,
/// and everything after a user's first held record, wait for a later round
/// so that order per user holds.
fn coalesce(entries: &[OutboxEntry], now_ms: u64, window_ms: u64) -> Vec<Push> {
    let mut pushes: Vec<Push> = Vec::new();
    // User → (its push's index, when its first record was made).
    let mut open: HashMap<UserId, (usize, u64)> = HashMap::new();
    let mut held: HashSet<UserId> = HashSet::new();
    for entry in entries {
        if held.contains(&entry.user_id) {
            continue;
        }
        match open.get(&entry.user_id) {
            Some(&(index, first_at)) if entry.created_at_ms <= first_at + window_ms => {
                let push = &mut pushes[index];
                if entry.message_id >= push.newest.message_id {
                    push.newest = *entry;
                }
                push.push_ids.push(entry.push_id);
            }
            // Past the push's window: a push of its own, in a later round.
            Some(_) => {
                held.insert(entry.user_id);
            }
            // Too young: wait for what may coalesce with it.
            None if now_ms < entry.created_at_ms + window_ms => {
                held.insert(entry.user_id);
            }
            None => {
                open.insert(entry.user_id, (pushes.len(), entry.created_at_ms));
                pushes.push(Push { user_id: entry.user_id, newest: *entry, push_ids: vec![entry.push_id] });
            }
        }
    }
    pushes
}

/// The webhook body: the contract's `{user_id, username, message}`, and how
/// many messages the push stands for.
fn body(core: &Core, push: &Push) -> Result<Option<Value>, crate::error::ApiError> {
    let channel = push.newest.channel_id;
    let Some(message) = core.store.message(core.owner(channel.0), channel, push.newest.message_id)? else {
        return Ok(None);
    };
    let sender = core.username(message.sender_id)?;
    Ok(Some(json!({
        "user_id": push.user_id.to_string(),
        "username": &*core.username(push.user_id)?,
        "message": protocol::message_json(&message, &sender),
        "count": push.push_ids.len(),
    })))
}

/// The key a receiver dedupes on: the recipient and the newest message.
fn idempotency_key(push: &Push) -> String {
    format!("{}-{}", push.user_id, push.newest.message_id)
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

/// Waits before retry `failures` (1 for the first): doubling from
/// `PUSH_BACKOFF_FIRST` up to `PUSH_BACKOFF_MAX`, jittered to half or more.
fn backoff(failures: u32) -> Duration {
    let full = limits::PUSH_BACKOFF_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = full.min(limits::PUSH_BACKOFF_MAX);
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    let fraction = 0.5 + f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) / 2.0;
    full.mul_f64(fraction)
}

/// The shard's push worker: sends what its outbox holds to `webhook`, until
/// the server stops.
pub async fn run(core: Rc<Core>, webhook: String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limits::PUSH_HTTP_TIMEOUT))
        .build()
        .into();
    let window_ms = limits::PUSH_COALESCE.as_millis() as u64;
    let mut failures = 0u32;
    while !core.stopping.get() {
        let entries = match core.store.outbox(core.shard, 0, limits::PUSH_BATCH_MAX) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "reading the push outbox");
                Vec::new()
            }
        };
        let pushes = coalesce(&entries, now_ms(), window_ms);
        let mut failed = false;
        for push in &pushes {
            if core.stopping.get() {
                return;
            }
            let sent = match body(&core, push) {
                Ok(Some(body)) => post(&agent, &webhook, idempotency_key(push), body).await,
                // The message is gone (it never is, short of corruption):
                // nothing to send, drop the records.
                Ok(None) => true,
                Err(error) => {
                    tracing::error!(%error, "building a push");
                    false
                }
            };
            if !sent {
                failed = true;
                break;
            }
            let deletes = push.push_ids.iter().map(|id| WriteOp::DeleteOutbox(core.shard, *id)).collect();
            match core.committer.commit(deletes).await {
                Ok(()) => core.outbox_depth.set(core.outbox_depth.get().saturating_sub(push.push_ids.len() as u64)),
                Err(error) => tracing::error!(%error, "deleting sent pushes (they will be sent again)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(push_id: u64, user: u64, message: u64, at: u64) -> OutboxEntry {
        OutboxEntry {
            push_id,
            user_id: UserId(user),
            channel_id: ChannelId(9),
            message_id: MessageId(message),
            created_at_ms: at,
        }
    }

    #[test]
    fn one_users_records_within_the_window_go_as_one_push() {
        let entries = [entry(1, 7, 100, 1_000), entry(2, 8, 101, 1_100), entry(3, 7, 102, 1_500)];
        let pushes = coalesce(&entries, 5_000, 1_000);
        assert_eq!(pushes.len(), 2);
        assert_eq!(
            (pushes[0].user_id, pushes[0].newest.message_id, &pushes[0].push_ids),
            (UserId(7), MessageId(102), &vec![1, 3])
        );
        assert_eq!((pushes[1].user_id, &pushes[1].push_ids), (UserId(8), &vec![2]));
        assert_eq!(idempotency_key(&pushes[0]), "7-102");
    }

    #[test]
    fn records_wait_for_their_window_and_order_holds_per_user() {
        let entries = [entry(1, 7, 100, 1_000), entry(2, 7, 101, 2_500), entry(3, 8, 102, 4_800)];
        let pushes = coalesce(&entries, 5_000, 1_000);
        assert_eq!(pushes.len(), 1, "user 7's second record is past the window; user 8's is too young");
        assert_eq!(pushes[0].push_ids, vec![1]);
        let later = coalesce(&entries[1..], 6_000, 1_000);
        assert_eq!(later.iter().map(|push| push.push_ids.clone()).collect::<Vec<_>>(), vec![vec![2], vec![3]]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        for failures in 1..40 {
            let full =
                limits::PUSH_BACKOFF_FIRST.saturating_mul(1 << (failures - 1).min(16)).min(limits::PUSH_BACKOFF_MAX);
            let wait = backoff(failures);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?} vs {full:?}");
        }
    }
}
