//! Group commit: every write a shard makes goes through its committer,
//! which gathers what arrived while the previous write was in flight into
//! one atomic RocksDB batch. A caller's future completes only once its
//! writes are in the WAL (and synced, with `fsync` durability).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{
    Change, Channel, DeadPush, DedupeEntry, Durability, Message, OutboxEntry, PushDue, Settings, StorageError, Store,
    User,
};
use futures_channel::oneshot;

use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::node::Shared;
use crate::services::stats::Latency;

/// One write, aimed at the shard that owns its key.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A message into its channel's history.
    Message(ShardId, Message),
    /// A user's inbox entry.
    Inbox(ShardId, UserId, MessageId, ChannelId),
    /// A change of a message (its id is issued like a message's, and
    /// settled by the commit like one).
    Change(ShardId, Change),
    /// A user's inbox entry for a change.
    InboxChange(ShardId, UserId, MessageId, ChannelId),
    /// A member's read pointer in a channel.
    ReadPointer(ShardId, ChannelId, UserId, MessageId),
    /// A user's settings.
    Settings(ShardId, UserId, Settings),
    /// A `client_msg_id` dedupe record.
    Dedupe(ShardId, UserId, String, DedupeEntry),
    /// A channel record.
    Channel(ShardId, Channel),
    /// A membership.
    AddMember(ShardId, ChannelId, UserId),
    /// A membership removed.
    RemoveMember(ShardId, ChannelId, UserId),
    /// A channel among a user's channels, with its fan-out flag.
    UserChannel(ShardId, UserId, ChannelId, bool),
    /// A channel dropped from a user's channels.
    RemoveUserChannel(ShardId, UserId, ChannelId),
    /// The direct channel of a pair.
    Direct(ShardId, UserId, UserId, ChannelId),
    /// A user record.
    User(ShardId, User),
    /// A username index entry.
    Username(ShardId, String, UserId),
    /// A push owed to a user.
    Outbox(ShardId, OutboxEntry),
    /// A push delivered.
    DeleteOutbox(ShardId, u64),
    /// A message whose members' pushes are still to be recorded.
    PushDue(ShardId, PushDue),
    /// A message's pushes all recorded.
    PushChecked(ShardId, MessageId),
    /// A user's token version.
    TokenVersion(ShardId, UserId, u64),
    /// A push the webhook refused for good.
    DeadPush(ShardId, DeadPush),
    /// A dead push retried or dropped.
    DeleteDeadPush(ShardId, u64),
}

/// The answer to a write that failed: `overloaded` when the disk refused
/// it (no space, an I/O error: it may pass once the disk recovers, and the
/// store resumes by itself when space returns), `internal` otherwise.
/// Either way its outcome is unknown: a write the disk refused may still
/// be stored (a log record whose sync failed is replayed at the next
/// start), so the answer says to retry with the same `client_msg_id`,
/// which the dedupe record makes safe.
pub fn storage_failed(error: String) -> ApiError {
    const UNKNOWN: &str = "it may or may not be stored: retry with the same client_msg_id";
    if error.contains("IO error") || error.contains("No space") || error.contains("NoSpace") {
        ApiError::new(ErrorCode::Overloaded, format!("storage refuses writes now ({error}); {UNKNOWN}, later"))
    } else {
        ApiError::internal(format!("write failed: {error}; {UNKNOWN}"))
    }
}

type Done = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct Queue {
    writes: VecDeque<(Vec<WriteOp>, Done, Instant)>,
    /// Writes that make no batch of their own: they go with the next one,
    /// or alone once the oldest has waited `limits::RIDER_WAIT`.
    riders: VecDeque<(Vec<WriteOp>, Done, Instant)>,
    waker: Option<Waker>,
    stopped: bool,
}

/// How long group commits take, kept by the committer.
#[derive(Debug, Default)]
pub struct CommitTimings {
    /// One batch write to RocksDB.
    pub storage_write: Latency,
    /// A caller's wait, from queueing its writes until they are durable.
    pub group_commit: Latency,
}

/// A shard's committer. Cheap to clone (shared within the core).
#[derive(Clone)]
pub struct Committer {
    queue: Rc<RefCell<Queue>>,
    /// Where its shard's unsettled message ids are kept.
    shared: Arc<Shared>,
    shard: ShardId,
    /// A test's slow disk: each batch waits this long first.
    delay: std::time::Duration,
    /// Its timings.
    pub timings: Rc<CommitTimings>,
}

/// The id an op carries that this shard's generator issued (or an older
/// one, for a record rewritten: the high-water mark only ever rises).
fn issued_id(op: &WriteOp, shard: ShardId) -> Option<u64> {
    match op {
        WriteOp::Message(to, message) if *to == shard => Some(message.id.0),
        WriteOp::Change(to, change) if *to == shard => Some(change.id.0),
        WriteOp::Channel(_, channel) => Some(channel.id.0),
        WriteOp::User(_, user) => Some(user.id.0),
        WriteOp::Outbox(to, entry) if *to == shard => Some(entry.push_id),
        _ => None,
    }
}

/// The message ids of this shard that `ops` write: the ids the commit
/// settles once written (or holds unsettled, when it failed).
fn message_ids<'a>(ops: impl IntoIterator<Item = &'a WriteOp>, shard: ShardId) -> Vec<u64> {
    ops.into_iter()
        .filter_map(|op| match op {
            WriteOp::Message(to, message) if *to == shard => Some(message.id.0),
            WriteOp::Change(to, change) if *to == shard => Some(change.id.0),
            _ => None,
        })
        .collect()
}

/// Why a group commit failed.
#[derive(Debug, Clone)]
enum CommitError {
    /// The batch could not be built: nothing reached the store.
    NotWritten(String),
    /// The store refused the write: it may be stored all the same.
    Unknown(String),
}

/// Writes `ops` as one batch, with `high_water` (this shard's new
/// high-water mark) when it rose.
fn apply(store: &Store, ops: &[&WriteOp], high_water: Option<(ShardId, u64)>) -> Result<(), CommitError> {
    build(store, ops, high_water)
        .map_err(|error| CommitError::NotWritten(error.to_string()))
        .and_then(|batch| store.write(batch).map_err(|error| CommitError::Unknown(error.to_string())))
}

fn build<'a>(
    store: &'a Store,
    ops: &[&WriteOp],
    high_water: Option<(ShardId, u64)>,
) -> Result<chatgw_storage::Batch<'a>, StorageError> {
    let mut batch = store.batch();
    for op in ops {
        match op {
            WriteOp::Message(to, message) => batch.put_message(*to, message)?,
            WriteOp::Inbox(to, user, message, channel) => batch.put_inbox(*to, *user, *message, *channel)?,
            WriteOp::Change(to, change) => batch.put_change(*to, change)?,
            WriteOp::InboxChange(to, user, change, channel) => batch.put_inbox_change(*to, *user, *change, *channel)?,
            WriteOp::ReadPointer(to, channel, user, read) => batch.put_read_pointer(*to, *channel, *user, *read)?,
            WriteOp::Settings(to, user, settings) => batch.put_settings(*to, *user, *settings)?,
            WriteOp::Dedupe(to, sender, client_msg_id, entry) => {
                batch.put_dedupe(*to, *sender, client_msg_id, entry)?
            }
            WriteOp::Channel(to, channel) => batch.put_channel(*to, channel)?,
            WriteOp::AddMember(to, channel, user) => batch.add_member(*to, *channel, *user)?,
            WriteOp::RemoveMember(to, channel, user) => batch.remove_member(*to, *channel, *user)?,
            WriteOp::UserChannel(to, user, channel, large) => batch.put_user_channel(*to, *user, *channel, *large)?,
            WriteOp::RemoveUserChannel(to, user, channel) => batch.remove_user_channel(*to, *user, *channel)?,
            WriteOp::Direct(to, first, second, channel) => batch.put_direct(*to, *first, *second, *channel)?,
            WriteOp::User(to, user) => batch.put_user(*to, user)?,
            WriteOp::Username(to, name, user) => batch.put_username(*to, name, *user)?,
            WriteOp::Outbox(to, entry) => batch.put_outbox(*to, entry)?,
            WriteOp::DeleteOutbox(to, push_id) => batch.delete_outbox(*to, *push_id)?,
            WriteOp::PushDue(to, due) => batch.put_push_due(*to, due)?,
            WriteOp::PushChecked(to, message) => batch.delete_push_due(*to, *message)?,
            WriteOp::TokenVersion(to, user, version) => batch.put_token_version(*to, *user, *version)?,
            WriteOp::DeadPush(to, dead) => batch.put_dead_push(*to, dead)?,
            WriteOp::DeleteDeadPush(to, push_id) => batch.delete_dead_push(*to, *push_id)?,
        }
    }
    if let Some((shard, id)) = high_water {
        batch.set_high_water(shard, MessageId(id))?;
    }
    Ok(batch)
}

impl Committer {
    /// A committer for `shard`, settling its message ids in `shared`, each
    /// batch waiting `delay_ms` first (a test aid; 0 in production); `run`
    /// must be spawned for it to make progress.
    pub fn new(shared: Arc<Shared>, shard: ShardId, delay_ms: u64) -> Self {
        Committer {
            queue: Rc::new(RefCell::new(Queue::default())),
            shared,
            shard,
            delay: std::time::Duration::from_millis(delay_ms),
            timings: Rc::new(CommitTimings::default()),
        }
    }

    /// Writes `ops` in the next group commit; resolves once they are durable.
    /// An empty `ops` resolves once everything queued before it is durable.
    pub async fn commit(&self, ops: Vec<WriteOp>) -> Result<(), String> {
        let (done, finished) = oneshot::channel();
        {
            let mut queue = self.queue.borrow_mut();
            if queue.stopped {
                // Never written: the frontier must not wait for them.
                self.shared.ids(self.shard).settle(message_ids(&ops, self.shard));
                return Err("the shard is shutting down".into());
            }
            queue.writes.push_back((ops, done, Instant::now()));
            if let Some(waker) = queue.waker.take() {
                waker.wake();
            }
        }
        finished.await.unwrap_or_else(|_| Err("the committer stopped".into()))
    }

    /// Writes `ops` in the next group commit that something else makes, or
    /// in one of their own once they have waited `limits::RIDER_WAIT`;
    /// resolves once they are durable. For writes that may wait and carry
    /// no message id (a message's pending push check, removed): at low
    /// rates they cost no WAL write of their own per message, only one per
    /// batch they ride in.
    pub async fn commit_riding(&self, ops: Vec<WriteOp>) -> Result<(), String> {
        debug_assert!(message_ids(&ops, self.shard).is_empty(), "riders carry no message id");
        let (done, finished) = oneshot::channel();
        {
            let mut queue = self.queue.borrow_mut();
            if queue.stopped {
                return Err("the shard is shutting down".into());
            }
            queue.riders.push_back((ops, done, Instant::now()));
            // The first rider: the committer sets its timer.
            if queue.riders.len() == 1
                && let Some(waker) = queue.waker.take()
            {
                waker.wake();
            }
        }
        finished.await.unwrap_or_else(|_| Err("the committer stopped".into()))
    }

    /// Writes queued and not yet taken (riders included).
    pub fn queued(&self) -> usize {
        let queue = self.queue.borrow();
        queue.writes.len() + queue.riders.len()
    }

    /// Refuses new writes; `run` returns once the queue is empty.
    pub fn stop(&self) {
        let mut queue = self.queue.borrow_mut();
        queue.stopped = true;
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
    }

    /// Waits until there is a batch to write (true), or the committer is
    /// stopped with nothing left (false). Riders alone make a batch once
    /// the oldest has waited `limits::RIDER_WAIT`, or at the stop.
    async fn work(&self) -> bool {
        loop {
            let rider_due = self.queue.borrow().riders.front().map(|(_, _, at)| *at + limits::RIDER_WAIT);
            let ready = std::future::poll_fn(|cx| {
                let mut queue = self.queue.borrow_mut();
                if !queue.writes.is_empty() {
                    Poll::Ready(Some(true))
                } else if queue.stopped {
                    Poll::Ready(Some(!queue.riders.is_empty()))
                } else if rider_due.is_none() && !queue.riders.is_empty() {
                    // A first rider came: wait again, with its timer.
                    Poll::Ready(None)
                } else {
                    queue.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            let woke = match rider_due {
                None => ready.await,
                Some(due) => {
                    let timer = async {
                        glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                        Some(true)
                    };
                    futures_lite::future::or(ready, timer).await
                }
            };
            if let Some(has_work) = woke {
                return has_work;
            }
        }
    }

    /// The commit loop: takes everything queued (up to a bound), writes it
    /// as one batch, completes every caller, and again.
    pub async fn run(self, store: Arc<Store>) {
        let shard = self.shard;
        let mut high_water = match store.high_water(shard) {
            Ok(found) => found.map_or(0, |id| id.0),
            Err(error) => {
                tracing::error!(%error, shard = shard.0, "reading the id high-water mark");
                0
            }
        };
        loop {
            if !self.work().await {
                return;
            }
            // Let the core's other ready tasks add their writes first: that
            // is what makes a group of them.
            futures_lite::future::yield_now().await;
            if !self.delay.is_zero() {
                glommio::timer::sleep(self.delay).await;
            }
            let taken: Vec<(Vec<WriteOp>, Done, Instant)> = {
                let mut queue = self.queue.borrow_mut();
                let mut ops = 0;
                let mut taken = Vec::new();
                while let Some((writes, _, _)) = queue.writes.front() {
                    if !taken.is_empty() && ops + writes.len() > limits::GROUP_COMMIT_WRITES_MAX {
                        break;
                    }
                    ops += writes.len();
                    taken.push(queue.writes.pop_front().expect("front exists"));
                }
                // The riders go along, as many as the batch has room for.
                while let Some((writes, _, _)) = queue.riders.front() {
                    if !taken.is_empty() && ops + writes.len() > limits::GROUP_COMMIT_WRITES_MAX {
                        break;
                    }
                    ops += writes.len();
                    taken.push(queue.riders.pop_front().expect("front exists"));
                }
                taken
            };
            let mut ops = Vec::with_capacity(taken.len());
            let mut dones = Vec::with_capacity(taken.len());
            for (writes, done, queued_at) in taken {
                ops.push(writes);
                dones.push((done, queued_at));
            }
            // Every id this shard issued and now writes lifts its mark, so a
            // restart resumes the generator above all of them, whatever the
            // clock did meanwhile.
            let issued = ops.iter().flatten().filter_map(|op| issued_id(op, shard)).max();
            let settled = message_ids(ops.iter().flatten(), shard);
            let rises = issued.filter(|id| *id > high_water).map(|id| (shard, id));
            let write_started = Instant::now();
            let epoch = self.shared.write_epoch();
            let outcome = if store.durability() == Durability::Fsync {
                // An fsync takes milliseconds: off the core, so it keeps
                // serving while the disk works.
                let store = store.clone();
                glommio::executor()
                    .spawn_blocking(move || {
                        let flat: Vec<&WriteOp> = ops.iter().flatten().collect();
                        apply(&store, &flat, rises)
                    })
                    .await
            } else {
                let flat: Vec<&WriteOp> = ops.iter().flatten().collect();
                apply(&store, &flat, rises)
            };
            self.timings.storage_write.record(write_started.elapsed());
            let result = match outcome {
                Ok(()) => {
                    if let Some((_, id)) = rises {
                        high_water = id;
                    }
                    self.shared.ids(shard).settle(settled);
                    self.shared.note_write_ok(epoch);
                    Ok(())
                }
                Err(CommitError::NotWritten(error)) => {
                    // Nothing reached the store: sync may pass them.
                    self.shared.ids(shard).settle(settled);
                    tracing::error!(%error, shard = shard.0, "group commit not written");
                    Err(error)
                }
                Err(CommitError::Unknown(error)) => {
                    // Maybe stored: sync may not pass them until the store
                    // is known good again (`Shared::note_write_ok`).
                    self.shared.note_write_failed(&error, shard, settled);
                    tracing::error!(%error, shard = shard.0, "group commit failed");
                    Err(error)
                }
            };
            for (done, queued_at) in dones {
                self.timings.group_commit.record(queued_at.elapsed());
                let _ = done.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chatgw_storage::{PushDue, StoreConfig};

    use super::*;
    use crate::config::Config;

    #[test]
    fn a_rider_goes_with_the_next_batch_or_alone_after_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path().join("db"), 1)).unwrap());
        let shared = Arc::new(Shared::new(1, &Config::default(), 0, 1024, None).unwrap());
        let shard = ShardId(0);
        let due = |id: u64| PushDue { message_id: MessageId(id), channel_id: ChannelId(7), sender_id: UserId(1) };
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let committer = Committer::new(shared, shard, 0);
                let running = glommio::spawn_local(committer.clone().run(store.clone()));
                let writes = || committer.timings.storage_write.snapshot().count();
                // Alone, it makes a batch of its own once it has waited.
                committer.commit(vec![WriteOp::PushDue(shard, due(1))]).await.unwrap();
                assert_eq!(writes(), 1);
                committer.commit_riding(vec![WriteOp::PushChecked(shard, MessageId(1))]).await.unwrap();
                assert_eq!(writes(), 2, "the rider's own batch");
                assert!(store.pushes_due(shard, MessageId(0), 10).unwrap().is_empty(), "the rider was written");
                // Beside a write, both go in one batch.
                let rider = committer.commit_riding(vec![WriteOp::PushChecked(shard, MessageId(2))]);
                let write = committer.commit(vec![WriteOp::PushDue(shard, due(3))]);
                let (rode, wrote) = futures_lite::future::zip(rider, write).await;
                rode.unwrap();
                wrote.unwrap();
                assert_eq!(writes(), 3, "one batch for the write and its rider");
                // A rider still waiting at the stop is written, not lost.
                let last = glommio::spawn_local({
                    let committer = committer.clone();
                    async move { committer.commit_riding(vec![WriteOp::PushChecked(shard, MessageId(3))]).await }
                });
                futures_lite::future::yield_now().await;
                committer.stop();
                last.await.unwrap();
                running.await;
                assert!(store.pushes_due(shard, MessageId(0), 10).unwrap().is_empty());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
