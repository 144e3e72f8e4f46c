//! The glue around `services::push`: the channel owner's check after a
//! message is stored, the members' owner recording outbox records through
//! its group commit, and the shard's push worker that POSTs the outbox to
//! `--push-webhook` (on the executor's blocking thread).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{DeadPush, OutboxEntry, PushDue};
use futures_util::future::join_all;
use serde_json::Value;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::limits;
use crate::protocol::shapes;
use crate::route::{Answer, AnswerWait, Control};
use crate::services::push::{Check, Push, backoff, coalesce, idempotency_key};
use crate::shard::commit::{WriteOp, storage_failed};
use crate::shard::state::Shard;

/// Channel owner: whether a message from `sender` to `members` owes push
/// checks, and so a pending-check record written with it.
pub fn owes_pushes(members: &[UserId], sender: UserId) -> bool {
    members.len() <= limits::PUSH_CHANNEL_MEMBERS_MAX && members.iter().any(|member| *member != sender)
}

/// Channel owner: whether every member but `sender` is this core's user
/// (so this core's presence is theirs) and has a device connected now
/// (on this core, with sessions handed to their owners). Such a message
/// owes no push and needs no pending-check record: the fan-out that
/// follows takes the frame to every core hosting the channel, and a
/// member whose last device leaves before it is asked about after it
/// ([`recheck_here`]). Saves the record, its removal and the check's task
/// for about three 1:1 messages in four on 2 shards.
pub fn all_here_and_connected(shard: &Shard, members: &[UserId], sender: UserId) -> bool {
    let presence = shard.presence.borrow();
    members
        .iter()
        .filter(|member| **member != sender)
        .all(|member| shard.owner(member.0) == shard.id && presence.has_device(*member))
}

/// Channel owner, after the fan-out of a message stored without its
/// pending check ([`all_here_and_connected`]): records the pushes of the
/// members whose last device left meanwhile, as a task of its own, asking
/// again after a failure like [`spawn_check`] does. (With no pending-check
/// record, a kill -9 in the moment between such a leave and this record
/// loses that push: the member was connected when the message came.)
pub fn recheck_here(
    shard: &Rc<Shard>,
    channel_id: ChannelId,
    message_id: MessageId,
    members: &[UserId],
    sender: UserId,
) {
    let gone: Vec<UserId> = {
        let presence = shard.presence.borrow();
        members.iter().copied().filter(|member| *member != sender && !presence.has_device(*member)).collect()
    };
    if gone.is_empty() {
        return;
    }
    let shard = shard.clone();
    crate::tasks::spawn(async move {
        let mut wait = limits::PUSH_BACKOFF_FIRST;
        for attempt in 1..=limits::PUSH_CHECK_TRIES {
            if attempt > 1 && !wait_to_retry(&shard, &mut wait).await {
                break;
            }
            match record(&shard, Check { channel_id, message_id, members: gone.clone() }).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, attempt, "pushes not recorded; trying again"),
            }
        }
        tracing::error!(message = message_id.0, "pushes of members who left during the send not recorded");
    })
    .detach();
}

/// The members of `due`'s message that may be owed a push (every one but
/// the sender), by their owner.
pub fn members_by_owner(shard: &Shard, due: &PushDue, members: &[UserId]) -> HashMap<ShardId, Vec<UserId>> {
    let mut by_owner: HashMap<ShardId, Vec<UserId>> = HashMap::new();
    for member in members.iter().filter(|member| **member != due.sender_id) {
        by_owner.entry(shard.owner(member.0)).or_default().push(*member);
    }
    by_owner
}

/// Channel owner: once `due`'s message is stored (with its pending-check
/// record) and fanned out, has each member's owner record pushes for the
/// members with no connected device (`by_owner`, from
/// [`members_by_owner`]), as a task of its own. `riding`: the
/// owners whose check went with the message's delivery, and the waits for
/// their answers (they are not asked again unless they fail).
pub fn spawn_check(
    shard: &Rc<Shard>,
    due: PushDue,
    by_owner: HashMap<ShardId, Vec<UserId>>,
    riding: HashMap<ShardId, AnswerWait>,
) {
    let shard = shard.clone();
    crate::tasks::spawn(async move { check_members(&shard, due, by_owner, riding).await }).detach();
}

/// Asks each member's owner to record its pushes (all at once) and waits
/// until every one has them durable; then removes the message's
/// pending-check record. An owner that fails (a mesh timeout, a full disk)
/// is asked again, and so is the removal, with a growing wait
/// (`limits::PUSH_CHECK_TRIES` tries in all); what still fails leaves the
/// record, and the next start checks again (a push is owed at least once;
/// the webhook's `Idempotency-Key` names the user and message, so a repeat
/// is recognisable). Owners that answered are not asked twice.
async fn check_members(
    shard: &Rc<Shard>,
    due: PushDue,
    mut by_owner: HashMap<ShardId, Vec<UserId>>,
    mut riding: HashMap<ShardId, AnswerWait>,
) {
    let delay = shard.config.fault_push_check_delay_ms;
    if delay > 0 {
        glommio::timer::sleep(Duration::from_millis(delay)).await;
    }
    let mut wait = limits::PUSH_BACKOFF_FIRST;
    for attempt in 1..=limits::PUSH_CHECK_TRIES {
        if attempt > 1 && !wait_to_retry(shard, &mut wait).await {
            break;
        }
        let asks = by_owner.iter().map(|(&owner, members)| {
            let check = Check { channel_id: due.channel_id, message_id: due.message_id, members: members.clone() };
            let rode = riding.remove(&owner);
            async move {
                let recorded = if let Some(wait) = rode {
                    wait.answer().await.map(|_| ())
                } else if owner == shard.id {
                    record(shard, check).await.map_err(storage_failed)
                } else {
                    shard.router.ask(owner, Control::Push(check)).await.map(|_| ())
                };
                (owner, recorded)
            }
        });
        for (owner, recorded) in join_all(asks).await {
            match recorded {
                Ok(()) => {
                    by_owner.remove(&owner);
                }
                Err(error) => tracing::warn!(%error, core = owner.0, attempt, "pushes not recorded; asking again"),
            }
        }
        if !by_owner.is_empty() {
            continue;
        }
        // The removal rides in the next group commit (a later message's,
        // usually): no WAL write of its own per message. A kill before it
        // is written leaves the check to the next start, at least once.
        match shard.committer.commit_riding(vec![WriteOp::PushChecked(shard.id, due.message_id)]).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, attempt, "removing a pending push check; trying again"),
        }
    }
    tracing::error!(message = due.message_id.0, "pushes not all recorded; checked again at the next start");
}

/// Before a push check's next try: false when the shard is stopping (the
/// next start checks again); else waits `wait`, doubles it up to
/// `limits::PUSH_BACKOFF_MAX` and counts the retry.
async fn wait_to_retry(shard: &Shard, wait: &mut Duration) -> bool {
    if shard.stopping.get() {
        return false;
    }
    glommio::timer::sleep(*wait).await;
    *wait = (*wait * 2).min(limits::PUSH_BACKOFF_MAX);
    shard.counters.push_check_retries.set(shard.counters.push_check_retries.get() + 1);
    true
}

/// Members' owner: records a push for each member with no connected
/// device, through the group commit; resolves once they are durable.
///
/// In the same batch it keeps the outbox's bounds: a member at
/// `OUTBOX_PER_USER_MAX` records loses its oldest (coalesced: its push
/// carries the newest message anyway), and a shard past
/// `max_outbox_per_shard` loses its oldest records (expired). The index
/// changes before the write and is put back if the write fails.
async fn record(shard: &Rc<Shard>, check: Check) -> Result<(), String> {
    let failures = &shard.fault_push_record_failures;
    if failures.get() > 0 {
        failures.set(failures.get() - 1);
        return Err("a push recording failed by the fault hook".into());
    }
    let now = now_ms();
    let mut ops = Vec::new();
    let mut added = Vec::new();
    let mut coalesced = Vec::new();
    let mut expired = Vec::new();
    {
        let presence = shard.presence.borrow();
        let mut index = shard.outbox_index.borrow_mut();
        for member in check.members.iter().filter(|member| !presence.has_device(**member)) {
            for old in index.make_room(*member, limits::OUTBOX_PER_USER_MAX) {
                ops.push(WriteOp::DeleteOutbox(shard.id, old));
                coalesced.push((*member, old));
            }
            let entry = OutboxEntry {
                push_id: shard.next_id(),
                user_id: *member,
                channel_id: check.channel_id,
                message_id: check.message_id,
                created_at_ms: now,
            };
            index.insert(*member, entry.push_id);
            added.push((*member, entry.push_id));
            ops.push(WriteOp::Outbox(shard.id, entry));
        }
        let over = index.len().saturating_sub(shard.config.max_outbox_per_shard.max(1));
        if over > 0 {
            // The shard's oldest records, from storage (this batch's are
            // not there yet, so they never expire at once).
            let oldest = shard.store.outbox(shard.id, 0, over.min(limits::PUSH_BATCH_MAX)).unwrap_or_default();
            for entry in oldest {
                if index.remove(entry.user_id, entry.push_id) {
                    ops.push(WriteOp::DeleteOutbox(shard.id, entry.push_id));
                    expired.push((entry.user_id, entry.push_id));
                }
            }
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    if let Err(error) = shard.committer.commit(ops).await {
        let mut index = shard.outbox_index.borrow_mut();
        for (user, push_id) in added {
            index.remove(user, push_id);
        }
        for (user, push_id) in coalesced.into_iter().chain(expired) {
            index.insert(user, push_id);
        }
        return Err(error);
    }
    let counters = &shard.counters;
    counters.pushes_coalesced.set(counters.pushes_coalesced.get() + coalesced.len() as u64);
    counters.pushes_expired.set(counters.pushes_expired.get() + expired.len() as u64);
    Ok(())
}

/// Members' owner, asked by core `from`: records the pushes in a task of
/// its own (a control reader never awaits) and answers once they are
/// durable.
pub fn on_check(shard: &Rc<Shard>, from: ShardId, request_id: u64, check: Check) {
    let shard = shard.clone();
    crate::tasks::spawn(async move {
        let result = record(&shard, check).await.map(|()| Answer::Done).map_err(storage_failed);
        if request_id != 0 {
            answer_soon(&shard, from, request_id, result);
        }
    })
    .detach();
}

/// Answers a push check to the core that asked, with the other answers to
/// that core of the next `limits::PUSH_ANSWER_WAIT`, in one message. Only
/// the check's task waits for it (the ack and the deliveries went before),
/// so the wait costs a client nothing, and the asking core is woken once
/// for many checks instead of once a message. An answer lost with a
/// stopping core leaves the check to its retries and to the next start:
/// pushes stay at least once.
fn answer_soon(shard: &Rc<Shard>, to: ShardId, request_id: u64, result: Result<Answer, ApiError>) {
    let full = {
        let mut batches = shard.push_answers.borrow_mut();
        let batch = batches.entry(to).or_default();
        batch.push((request_id, result));
        if batch.len() == 1 {
            let shard = shard.clone();
            crate::tasks::spawn(async move {
                glommio::timer::sleep(limits::PUSH_ANSWER_WAIT).await;
                send_answers(&shard, to).await;
            })
            .detach();
        }
        batch.len() >= limits::PUSH_ANSWERS_PER_MESSAGE_MAX
    };
    if full {
        let shard = shard.clone();
        crate::tasks::spawn(async move { send_answers(&shard, to).await }).detach();
    }
}

/// Sends the answers gathered for `to`, if any (a full batch may have gone
/// before its wait ended).
async fn send_answers(shard: &Rc<Shard>, to: ShardId) {
    let answers = shard.push_answers.borrow_mut().remove(&to).unwrap_or_default();
    match answers.len() {
        0 => {}
        1 => {
            let (request_id, result) = answers.into_iter().next().expect("one answer");
            shard.router.send_control(to, request_id, Control::Reply(result)).await;
        }
        _ => shard.router.send_control(to, 0, Control::Replies(answers)).await,
    }
}

/// At start: checks again every message whose pushes were not all recorded
/// when the server stopped (a kill between a message's commit and its
/// members' outbox records), against the channel's members now.
pub async fn replay_due(shard: &Rc<Shard>) {
    let mut after = MessageId(0);
    loop {
        let due = match shard.store.pushes_due(shard.id, after, limits::PUSH_BATCH_MAX) {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "reading pending push checks");
                return;
            }
        };
        let Some(last) = due.last() else { return };
        after = last.message_id;
        for due in due {
            match shard.with_channel(due.channel_id, |state| state.members.iter().copied().collect::<Vec<_>>()) {
                Ok(Some(members)) => {
                    let by_owner = members_by_owner(shard, &due, &members);
                    check_members(shard, due, by_owner, HashMap::new()).await
                }
                Ok(None) => {
                    let _ = shard.committer.commit(vec![WriteOp::PushChecked(shard.id, due.message_id)]).await;
                }
                Err(error) => tracing::error!(%error, "loading a channel for its pending push check"),
            }
        }
    }
}

/// The webhook body of one push; `None` if its message is gone.
fn body(shard: &Shard, push: &Push) -> Result<Option<Value>, ApiError> {
    let channel = push.newest.channel_id;
    let Some(message) = shard.store.message(shard.owner(channel.0), channel, push.newest.message_id)? else {
        return Ok(None);
    };
    // Deleted before its push went: the push still goes (it stands for
    // the others too), with the message's tombstone and no text.
    let sender = shard.username(message.sender_id)?;
    let message = shapes::message_json(&message, &sender);
    let username = shard.username(push.user_id)?;
    let badge = shard.unread_total(push.user_id, &username)?;
    Ok(Some(shapes::push_json(push.user_id, &username, &message, push.push_ids.len(), badge)))
}

/// What the webhook made of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A 2xx: the records go.
    Sent,
    /// Unreachable, a timeout, a 5xx, 408 or 429: try again later (this
    /// user only).
    Retry,
    /// Any other 4xx: the webhook will never take it; it goes to the dead
    /// pushes.
    Refused(u16),
}

/// POSTs one push on the webhook's own threads (never the executor's
/// blocking thread, which writes group commits), within
/// `PUSH_HTTP_TIMEOUT`.
async fn post(shard: &Shard, agent: &ureq::Agent, webhook: &str, key: String, body: Value) -> Outcome {
    let Some(posts) = &shard.shared.webhook_posts else { return Outcome::Retry };
    let (agent, webhook) = (agent.clone(), webhook.to_string());
    let job = posts.submit(move || match agent.post(&webhook).header("Idempotency-Key", &key).send_json(&body) {
        Ok(response) if response.status().is_success() => Outcome::Sent,
        Ok(response) => {
            let status = response.status().as_u16();
            tracing::warn!(status, %key, "push refused by the webhook");
            if (400..500).contains(&status) && status != 408 && status != 429 {
                Outcome::Refused(status)
            } else {
                Outcome::Retry
            }
        }
        Err(error) => {
            tracing::warn!(%error, %key, "push webhook unreachable");
            Outcome::Retry
        }
    });
    match job {
        Ok(posted) => posted.await.unwrap_or(Outcome::Retry),
        Err(refused) => {
            tracing::warn!(%refused, "no webhook thread free");
            Outcome::Retry
        }
    }
}

/// Sends one push; deletes its records after a 2xx, and moves them to the
/// dead pushes after a permanent refusal.
async fn send_one(
    shard: &Shard,
    agent: &ureq::Agent,
    webhook: &str,
    push: &Push,
    entries: &HashMap<u64, OutboxEntry>,
) -> Outcome {
    let outcome = match body(shard, push) {
        Ok(Some(body)) => post(shard, agent, webhook, idempotency_key(push), body).await,
        // The message is gone (it never is, short of corruption): nothing
        // to send, drop the records.
        Ok(None) => Outcome::Sent,
        Err(error) => {
            tracing::error!(%error, "building a push");
            Outcome::Retry
        }
    };
    let mut ops: Vec<WriteOp> = push.push_ids.iter().map(|id| WriteOp::DeleteOutbox(shard.id, *id)).collect();
    if !matches!(outcome, Outcome::Retry) {
        // Out of the index now: a write that fails leaves them in storage,
        // and a later round sends them again.
        let mut index = shard.outbox_index.borrow_mut();
        for id in &push.push_ids {
            index.remove(push.user_id, *id);
        }
    }
    // Dead pushes this write adds, and the oldest it drops at the bound.
    let (mut added, mut dropped) = (0, 0);
    match outcome {
        Outcome::Retry => return outcome,
        Outcome::Sent => {}
        Outcome::Refused(status) => {
            let failed_at_ms = now_ms();
            let dead: Vec<WriteOp> = push
                .push_ids
                .iter()
                .filter_map(|id| entries.get(id))
                .map(|entry| WriteOp::DeadPush(shard.id, DeadPush { entry: *entry, failed_at_ms, status }))
                .collect();
            // The shard's bound on dead pushes: its oldest go first.
            let over = (shard.dead_pushes.get() + dead.len()).saturating_sub(limits::DEAD_PUSHES_PER_SHARD_MAX);
            if over > 0 {
                match shard.store.dead_pushes(shard.id, 0, over.min(limits::DEAD_PUSH_RETRY_MAX)) {
                    Ok(oldest) => {
                        dropped = oldest.len();
                        ops.extend(oldest.iter().map(|old| WriteOp::DeleteDeadPush(shard.id, old.entry.push_id)));
                    }
                    Err(error) => tracing::error!(%error, "reading the oldest dead pushes"),
                }
            }
            added = dead.len();
            ops.extend(dead);
        }
    }
    match shard.committer.commit(ops).await {
        Ok(()) => {
            let count = push.push_ids.len() as u64;
            if matches!(outcome, Outcome::Refused(_)) {
                shard.counters.pushes_dead.set(shard.counters.pushes_dead.get() + count);
                shard.dead_pushes.set((shard.dead_pushes.get() + added).saturating_sub(dropped));
                let counter = &shard.counters.dead_pushes_dropped;
                counter.set(counter.get() + dropped as u64);
            }
        }
        Err(error) => tracing::error!(%error, "removing pushes from the outbox (they will be tried again)"),
    }
    outcome
}

/// The shard's push worker: sends what its outbox holds to `webhook`, until
/// the server stops. Each round reads the outbox a page at a time; a user
/// whose push failed waits out its own backoff while everyone else's go on.
pub async fn run(shard: Rc<Shard>, webhook: String) {
    let Some(agent) = shard.shared.webhook_agent.clone() else { return };
    let window_ms = limits::PUSH_COALESCE.as_millis() as u64;
    // User → (failures in a row, no try before this, ms).
    let mut waiting: HashMap<UserId, (u32, u64)> = HashMap::new();
    while !shard.stopping.get() {
        let now = now_ms();
        let mut after = 0;
        let mut progressed = false;
        for _ in 0..limits::PUSH_PAGES_PER_ROUND {
            let entries = match shard.store.outbox(shard.id, after, limits::PUSH_BATCH_MAX) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::error!(%error, "reading the push outbox");
                    Vec::new()
                }
            };
            let Some(last) = entries.last() else { break };
            after = last.push_id;
            let by_id: HashMap<u64, OutboxEntry> = entries.iter().map(|entry| (entry.push_id, *entry)).collect();
            for push in coalesce(&entries, now, window_ms) {
                if shard.stopping.get() {
                    return;
                }
                if waiting.get(&push.user_id).is_some_and(|(_, next)| *next > now) {
                    continue;
                }
                match send_one(&shard, &agent, &webhook, &push, &by_id).await {
                    Outcome::Sent | Outcome::Refused(_) => {
                        waiting.remove(&push.user_id);
                        progressed = true;
                    }
                    Outcome::Retry => {
                        let failures = waiting.get(&push.user_id).map_or(0, |(failures, _)| *failures) + 1;
                        let next = now_ms() + backoff(failures).as_millis() as u64;
                        waiting.insert(push.user_id, (failures, next));
                    }
                }
            }
        }
        // Users whose backoff ended long ago and who had nothing since.
        waiting.retain(|_, (_, next)| *next + limits::PUSH_BACKOFF_MAX.as_millis() as u64 > now);
        if !progressed {
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Owner of the records: moves up to `limit` dead pushes back into the
/// outbox (the operator fixed the webhook); answers how many.
pub async fn retry_dead(shard: &Rc<Shard>, limit: usize) -> Result<Answer, ApiError> {
    let dead = shard.store.dead_pushes(shard.id, 0, limit)?;
    if dead.is_empty() {
        return Ok(Answer::Count(0));
    }
    let mut ops = Vec::with_capacity(2 * dead.len());
    for push in &dead {
        ops.push(WriteOp::DeleteDeadPush(shard.id, push.entry.push_id));
        ops.push(WriteOp::Outbox(shard.id, push.entry));
    }
    shard.committer.commit(ops).await.map_err(storage_failed)?;
    shard.dead_pushes.set(shard.dead_pushes.get().saturating_sub(dead.len()));
    let mut index = shard.outbox_index.borrow_mut();
    for push in &dead {
        index.insert(push.entry.user_id, push.entry.push_id);
    }
    Ok(Answer::Count(dead.len() as u64))
}
