//! The only module that crosses cores.
//!
//! Two bounded full meshes join the shards:
//! - *calls*: work that awaits storage at the owner (a send, a channel
//!   change, a signup). The owner's reader may wait for room to work
//!   (backpressure), so these queues fill under overload.
//! - *control*: replies, deliveries, subscriptions, membership changes. Its
//!   readers handle each message at once and never await, so a sender
//!   waiting for room there always makes progress: no cycle of waits.
//!
//! A message to the own shard never enters a mesh: it is a local call.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{Channel, Message};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::services::banned::{BannedChange, BannedWords};
use crate::services::stats::ShardStats;
use crate::services::{abuse, presence, push};

/// A call on the shard that owns its subject: work that awaits storage there.
#[derive(Debug)]
pub enum Call {
    /// Store and fan out a message of a channel.
    Send {
        /// The channel (owned by the receiver).
        channel_id: ChannelId,
        /// The sender.
        sender_id: UserId,
        /// The sender's username, for the event.
        sender: String,
        /// The text (checked by the sender's core).
        text: String,
        /// For dedupe.
        client_msg_id: Option<String>,
    },
    /// Edit (`edit` holds the new text) or delete a stored message (to its
    /// channel's owner); answers the message as it is now (`Sent`).
    ChangeMessage {
        /// The channel (owned by the receiver).
        channel_id: ChannelId,
        /// The message.
        message_id: MessageId,
        /// Who asks.
        by: UserId,
        /// The new text (checked by the caller's core); `None` deletes.
        edit: Option<String>,
    },
    /// Move a member's read pointer forward (to the channel's owner);
    /// answers the pointer now (`Read`).
    Read(Box<ReadMove>),
    /// Set a user's settings (to the user's owner); answers `Done`.
    SetSettings {
        /// The user.
        user_id: UserId,
        /// The settings.
        settings: chatgw_storage::Settings,
    },
    /// Find or make the direct channel of a pair (to the pair's owner).
    Direct {
        /// One user.
        first: UserId,
        /// The other.
        second: UserId,
        /// Their usernames, for the channel's name.
        names: (String, String),
    },
    /// Create a channel with its members (to the channel's owner).
    Create {
        /// The channel, id already taken.
        channel: Channel,
        /// Every member, the owner included.
        members: Vec<UserId>,
    },
    /// Change a channel's members (to the channel's owner).
    Members {
        /// The channel.
        channel_id: ChannelId,
        /// Who asks.
        by: UserId,
        /// Users to add.
        add: Vec<UserId>,
        /// Users to remove.
        remove: Vec<UserId>,
    },
    /// Create an account (to the username's owner).
    Signup {
        /// The username, validated.
        username: String,
        /// The name shown.
        display_name: String,
        /// The Argon2id PHC string.
        password_hash: String,
    },
    /// Disable or enable an account (to the user's owner).
    SetDisabled {
        /// The user.
        user_id: UserId,
        /// Disabled from now on, or enabled.
        disabled: bool,
    },
    /// Move dead pushes back into this shard's outbox; answers how many
    /// (`Count`).
    RetryDeadPushes,
    /// Revoke every token of a user (raise its token version), setting a
    /// new password first if given; answers the new version (`Count`).
    RevokeTokens {
        /// The user.
        user_id: UserId,
        /// A new password, set only if nothing changed since its old one
        /// was checked.
        password: Option<NewPassword>,
    },
    /// Change the banned words (to shard 0, which numbers the versions).
    BannedWords(BannedChange),
}

/// What a cross-core message is for, as `chatgw_mesh_messages_total`
/// counts them (`kind` label): calls by their method, control messages by
/// their subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshKind {
    /// `Call::Send`.
    Send,
    /// The other calls (channels, accounts, banned words, dead pushes).
    OtherCall,
    /// `Control::Reply`: an answer.
    Reply,
    /// `ChannelMsg::Deliver`: a message's frame for a core's members.
    Deliver,
    /// The other channel words (subscriptions, membership).
    Subscription,
    /// `Control::Presence`.
    Presence,
    /// `Control::Abuse`: a send's rate check.
    RateCheck,
    /// `Control::Push`: pushes to record.
    PushCheck,
    /// `Control::Ops`.
    Ops,
    /// `Control::HandOff`: a connection moved to its user's owner.
    HandOff,
    /// `Control::Typing` and `ChannelMsg::Typing`: a typing change to its
    /// channel's owner, and its event to the cores of the other members.
    Typing,
    /// `Call::Read` and `ChannelMsg::Receipt`: a read pointer moved at the
    /// channel's owner, and its event to the cores that host the channel.
    Receipt,
}

impl MeshKind {
    /// Every kind, in the order of their counters.
    pub const ALL: [MeshKind; 12] = [
        MeshKind::Send,
        MeshKind::OtherCall,
        MeshKind::Reply,
        MeshKind::Deliver,
        MeshKind::Subscription,
        MeshKind::Presence,
        MeshKind::RateCheck,
        MeshKind::PushCheck,
        MeshKind::Ops,
        MeshKind::HandOff,
        MeshKind::Typing,
        MeshKind::Receipt,
    ];

    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshKind::Send => "send",
            MeshKind::OtherCall => "other_call",
            MeshKind::Reply => "reply",
            MeshKind::Deliver => "deliver",
            MeshKind::Subscription => "subscription",
            MeshKind::Presence => "presence",
            MeshKind::RateCheck => "rate_check",
            MeshKind::PushCheck => "push_check",
            MeshKind::Ops => "ops",
            MeshKind::HandOff => "hand_off",
            MeshKind::Typing => "typing",
            MeshKind::Receipt => "receipt",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Call {
    /// What it is for, as counted.
    pub fn kind(&self) -> MeshKind {
        match self {
            Call::Send { .. } => MeshKind::Send,
            Call::Read(_) => MeshKind::Receipt,
            _ => MeshKind::OtherCall,
        }
    }
}

impl Control {
    /// What it is for, as counted.
    pub fn kind(&self) -> MeshKind {
        match self {
            Control::Reply(_) | Control::Replies(_) => MeshKind::Reply,
            Control::Channel(ChannelMsg::Deliver { .. }) => MeshKind::Deliver,
            Control::Channel(ChannelMsg::Typing { .. }) | Control::Typing(_) => MeshKind::Typing,
            Control::Channel(ChannelMsg::Receipt { .. }) => MeshKind::Receipt,
            Control::Channel(_) => MeshKind::Subscription,
            Control::Presence(_) => MeshKind::Presence,
            Control::Abuse(_) => MeshKind::RateCheck,
            Control::Push(_) => MeshKind::PushCheck,
            Control::Ops(_) => MeshKind::Ops,
            Control::HandOff(_) => MeshKind::HandOff,
        }
    }
}

/// A password change for its user's owner: the new hash, and the token
/// version read together with the old hash that the caller's old password
/// was checked against. The owner refuses the change if the version moved
/// meanwhile (a logout or another change committed while the hashes ran),
/// so a change always applies to the state it was checked on.
#[derive(Debug)]
pub struct NewPassword {
    /// The new Argon2id PHC string.
    pub hash: String,
    /// The token version when the old password was checked.
    pub checked_at_version: u64,
}

/// A `channel.read` for the channel's owner.
#[derive(Debug)]
pub struct ReadMove {
    /// The channel (owned by the receiver).
    pub channel_id: ChannelId,
    /// The reader.
    pub user_id: UserId,
    /// Its username, for the event.
    pub username: String,
    /// The last message read.
    pub message_id: MessageId,
    /// The reader keeps its reads from the other members.
    pub private: bool,
    /// The reading connection (its core and key), which gets the reply and
    /// not the event.
    pub from: Option<(ShardId, ConnKey)>,
}

/// What a call, or a control message that asks, answers.
#[derive(Debug)]
pub enum Answer {
    /// A message stored (or a duplicate found).
    Sent {
        /// The message (the first one, for a duplicate).
        message: Box<Message>,
        /// Whether this was a duplicate `client_msg_id`.
        duplicate: bool,
    },
    /// A channel id.
    Channel(ChannelId),
    /// A user id.
    User(UserId),
    /// Whether the answering core now hosts a connection of the channel,
    /// as of its subscription epoch `epoch`.
    Subscribed {
        /// It hosts one.
        hosts: bool,
        /// The answering core's subscription epoch when it answered.
        epoch: u64,
    },
    /// A core's figures.
    Stats(Box<ShardStats>),
    /// How many (connections kicked, say).
    Count(u64),
    /// A page of a core's connections.
    Connections(Vec<ConnInfo>),
    /// The banned words now in force.
    Banned(Arc<BannedWords>),
    /// Users' presence.
    Presence(Vec<presence::Status>),
    /// A member's read pointer.
    Read(MessageId),
    /// Done.
    Done,
}

/// A control message: handled at once, never awaiting. One variant per
/// subject; each carries that subject's own closed enum of plain data.
#[derive(Debug)]
pub enum Control {
    /// The answer to a request this core made.
    Reply(Result<Answer, ApiError>),
    /// Answers to several requests this core made, by request id: the push
    /// checks a members' owner answers in one message
    /// (`limits::PUSH_ANSWER_WAIT`).
    Replies(Vec<(u64, Result<Answer, ApiError>)>),
    /// Deliveries and the channel subscriptions of cores.
    Channel(ChannelMsg),
    /// Presence, between a connection's core and the user's owner.
    Presence(presence::Msg),
    /// A send's rate check at the sender's owner; answered with `Done` or
    /// `rate_limited`.
    Abuse(abuse::Check),
    /// Pushes to record at the members' owner.
    Push(push::Check),
    /// The operator's requests to every core.
    Ops(OpsMsg),
    /// A WebSocket connection that passed its upgrade on another core, for
    /// its user's owner to run (`net::hand_off`).
    HandOff(Box<HandOff>),
    /// A user starts or stops typing in a channel (to the channel's
    /// owner); answered with `Done`, or why not.
    Typing(TypingChange),
}

/// A `typing` command for the channel's owner, which checks the member,
/// keeps the expiry and tells the other members' cores.
#[derive(Debug)]
pub struct TypingChange {
    /// The channel (owned by the receiver).
    pub channel_id: ChannelId,
    /// Who types.
    pub user_id: UserId,
    /// Its username, for the event.
    pub username: Box<str>,
    /// Started (or still typing), or stopped.
    pub start: bool,
}

/// A WebSocket connection on its way to the core that owns its user: the
/// socket (a duplicate of the accepting core's descriptor, which that core
/// closed once this was queued), the bytes read past the upgrade request,
/// and what the upgrade passed. Dropped unstarted, it closes the socket
/// and frees the connection's room.
#[derive(Debug)]
pub struct HandOff {
    /// The socket.
    pub fd: std::os::fd::OwnedFd,
    /// Bytes the client sent after its upgrade request.
    pub early: Vec<u8>,
    /// The client's address.
    pub remote: SocketAddr,
    /// The token's user.
    pub user: crate::auth::AuthedUser,
    /// The device id.
    pub device: Box<str>,
    /// Its room under the connection caps.
    pub admitted: crate::node::Admitted,
    /// Counted in `Shared`'s hand-offs in flight until started or dropped.
    pub in_flight: crate::node::HandOffInFlight,
}

/// What a delivery carries besides its frame, so that one message does the
/// work of two or three.
#[derive(Debug, Default)]
pub struct DeliverWith {
    /// The sender's answer, when the sender's connection is on the core
    /// the frame goes to: completes the request `Routed::request_id`.
    pub reply: Option<Answer>,
    /// Pushes to record for members the receiving core owns, answered
    /// (`Done`, or the error) to the request with this id.
    pub push: Option<(u64, push::Check)>,
}

/// The answer to a request registered with [`Router::expect_answer`].
#[derive(Debug)]
pub struct AnswerWait(oneshot::Receiver<Result<Answer, ApiError>>);

impl AnswerWait {
    /// The answer, or `overloaded` if none came in time.
    pub async fn answer(self) -> Result<Answer, ApiError> {
        self.0.await.unwrap_or_else(|_| Err(ApiError::new(ErrorCode::Overloaded, "shard unavailable")))
    }
}

/// Channel traffic between an owner and the cores hosting its members.
#[derive(Debug)]
pub enum ChannelMsg {
    /// One encoded frame for every local connection of a channel.
    Deliver {
        /// The channel.
        channel_id: ChannelId,
        /// The WebSocket frame, shared by every receiver.
        frame: Bytes,
        /// When the owner took the message (for the fan-out latency).
        taken_at: Instant,
        /// What goes along with the frame to this core, if anything.
        with: Option<Box<DeliverWith>>,
    },
    /// The sender hosts connections of these channels now (to their owner),
    /// as of its subscription epoch `epoch`; answered with `Done`. One word
    /// carries every channel of a connection that the owner owns (up to
    /// `limits::SUBSCRIBES_PER_WORD_MAX`).
    Subscribe {
        /// The channels.
        channel_ids: Vec<ChannelId>,
        /// The sender's subscription epoch when it decided.
        epoch: u64,
    },
    /// The sender hosts no connection of this channel any more (to the
    /// owner), as of its subscription epoch `epoch`.
    Unsubscribe {
        /// The channel.
        channel_id: ChannelId,
        /// The sender's subscription epoch when it decided.
        epoch: u64,
    },
    /// A `typing` event for this core's connections of a channel, except
    /// the typist's own devices.
    Typing {
        /// The channel.
        channel_id: ChannelId,
        /// The event's frame, shared by every receiver.
        frame: Bytes,
        /// The typist, whose devices get nothing.
        except: UserId,
    },
    /// A `receipt` event for this core's connections of a channel: of
    /// `only` (the reader's other devices) when given, else every one;
    /// never the reading connection.
    Receipt {
        /// The channel.
        channel_id: ChannelId,
        /// The event's frame.
        frame: Bytes,
        /// Only this user's connections.
        only: Option<UserId>,
        /// The reading connection, skipped.
        skip: Option<(ShardId, ConnKey)>,
    },
    /// Members joined or left (to every core); answered with `Subscribed`.
    Membership {
        /// The channel.
        channel_id: ChannelId,
        /// Users who joined.
        added: Vec<UserId>,
        /// Users who left.
        removed: Vec<UserId>,
        /// The `channel` event with kind `added`.
        added_frame: Option<Bytes>,
        /// The `channel` event with kind `removed`.
        removed_frame: Option<Bytes>,
    },
}

/// What the operator asks of every core.
#[derive(Debug)]
pub enum OpsMsg {
    /// This core's figures, please; answered with `Stats`.
    Stats,
    /// Close a user's connections here (one device's, if named); answered
    /// with `Count`.
    Kick {
        /// The user.
        user_id: UserId,
        /// Only this device.
        device: Option<Box<str>>,
    },
    /// Close the connection at this registry key with 4002, if it is still
    /// that user's device: a newer connection of the device replaced it.
    Replace {
        /// The user.
        user_id: UserId,
        /// The device.
        device: Box<str>,
        /// Its registry key here.
        key: ConnKey,
    },
    /// A page of this core's connections after a registry key; answered
    /// with `Connections`.
    Connections {
        /// The last key of the previous page.
        after: Option<ConnKey>,
        /// At most this many.
        limit: usize,
    },
    /// Enforce this version of the banned words (if newer); answered with `Done`.
    BannedWords(Arc<BannedWords>),
    /// Panic on the receiving shard's thread (`Config::fault_hooks` only).
    Panic,
}

/// A connection's key in its core's registry (the admin API's paging cursor).
pub type ConnKey = usize;

/// One connection as the admin API lists it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Its key in its core's registry.
    pub key: ConnKey,
    /// The user.
    pub user_id: UserId,
    /// The username.
    pub username: String,
    /// The device.
    pub device: String,
    /// The client's address.
    pub remote: SocketAddr,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// When a frame last came, ms since the Unix epoch.
    pub last_active_ms: u64,
    /// Its commands being worked on now.
    pub commands_in_flight: usize,
}

/// A mesh message: who sent it and which of its requests it answers.
#[derive(Debug)]
pub struct Routed<T> {
    /// The sending shard.
    pub from: ShardId,
    /// The sender's request id (0 when none is awaited).
    pub request_id: u64,
    /// The message.
    pub body: T,
}

type Waiter = oneshot::Sender<Result<Answer, ApiError>>;

/// The calls and asks a core made that await answers, each with its
/// deadline. Plain state: the time comes as an argument.
#[derive(Default)]
pub struct Pending {
    waiting: HashMap<u64, (Waiter, Instant, ShardId)>,
    next_id: u64,
    timed_out: u64,
}

impl Pending {
    /// Registers a wait for an answer from `to`, due by `deadline`.
    pub fn register(&mut self, to: ShardId, deadline: Instant) -> (u64, oneshot::Receiver<Result<Answer, ApiError>>) {
        self.next_id += 1;
        let (sender, receiver) = oneshot::channel();
        self.waiting.insert(self.next_id, (sender, deadline, to));
        (self.next_id, receiver)
    }

    /// Hands an answer to its waiter; false if none waits any more (it
    /// timed out, or its caller went).
    pub fn complete(&mut self, id: u64, result: Result<Answer, ApiError>) -> bool {
        match self.waiting.remove(&id) {
            Some((waiter, _, _)) => waiter.send(result).is_ok(),
            None => false,
        }
    }

    /// Forgets a wait whose message never went.
    pub fn forget(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Answers `overloaded` to every wait past its deadline at `now`;
    /// returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let late: Vec<u64> =
            self.waiting.iter().filter(|(_, (_, deadline, _))| *deadline <= now).map(|(id, _)| *id).collect();
        for id in &late {
            if let Some((waiter, _, to)) = self.waiting.remove(id) {
                let _ = waiter
                    .send(Err(ApiError::new(ErrorCode::Overloaded, format!("shard {} did not answer in time", to.0))));
            }
        }
        self.timed_out += late.len() as u64;
        late.len()
    }

    /// Waits now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Waits that timed out so far.
    pub fn timed_out(&self) -> u64 {
        self.timed_out
    }
}

/// This core's ends of the meshes and its calls awaiting answers.
pub struct Router {
    shard: ShardId,
    calls: Senders<Routed<Call>>,
    control: Senders<Routed<Control>>,
    pending: RefCell<Pending>,
    /// Messages sent to each shard (both meshes).
    sent: Box<[Cell<u64>]>,
    /// Messages taken off the queues from each shard (both meshes).
    received: Box<[Cell<u64>]>,
    /// Messages sent, by kind (`MeshKind::ALL`'s order).
    sent_by_kind: [Cell<u64>; MeshKind::ALL.len()],
}

impl Router {
    /// A router over joined meshes (peer `i` is shard `i`).
    pub fn new(shard: ShardId, calls: Senders<Routed<Call>>, control: Senders<Routed<Control>>) -> Self {
        assert_eq!(calls.peer_id(), shard.index(), "mesh peers are shards in order");
        assert_eq!(control.peer_id(), shard.index(), "mesh peers are shards in order");
        let peers = calls.nr_consumers();
        Router {
            shard,
            calls,
            control,
            pending: RefCell::new(Pending::default()),
            sent: (0..peers).map(|_| Cell::new(0)).collect(),
            received: (0..peers).map(|_| Cell::new(0)).collect(),
            sent_by_kind: Default::default(),
        }
    }

    fn count(cells: &[Cell<u64>], shard: ShardId) {
        if let Some(cell) = cells.get(shard.index()) {
            cell.set(cell.get() + 1);
        }
    }

    /// Counts a message taken off a queue from `from` (the meshes' readers call it).
    pub fn note_received(&self, from: ShardId) {
        Self::count(&self.received, from);
    }

    /// Messages sent to each shard so far.
    pub fn sent_counts(&self) -> Vec<u64> {
        self.sent.iter().map(Cell::get).collect()
    }

    /// Messages taken off the queues from each shard so far.
    pub fn received_counts(&self) -> Vec<u64> {
        self.received.iter().map(Cell::get).collect()
    }

    /// Messages sent so far, by kind (`MeshKind::ALL`'s order).
    pub fn sent_by_kind(&self) -> Vec<u64> {
        self.sent_by_kind.iter().map(Cell::get).collect()
    }

    fn count_kind(&self, kind: MeshKind) {
        let cell = &self.sent_by_kind[kind.index()];
        cell.set(cell.get() + 1);
    }

    /// Sends `send` (a message carrying the new request id) and awaits the
    /// answer, or `overloaded` once `MESH_ANSWER_TIMEOUT` passes, whether
    /// the wait was for room in the queue or for the answer.
    async fn send_and_wait<F: Future<Output = bool>>(
        &self,
        to: ShardId,
        send: impl FnOnce(u64) -> F,
    ) -> Result<Answer, ApiError> {
        let (id, receiver) = self.pending.borrow_mut().register(to, Instant::now() + limits::MESH_ANSWER_TIMEOUT);
        let sending = async {
            if !send(id).await {
                self.pending.borrow_mut().forget(id);
                return Err(ApiError::new(ErrorCode::Overloaded, "shard unavailable"));
            }
            // Sent: the answer (or the deadline) completes the other side.
            std::future::pending().await
        };
        let answered =
            async { receiver.await.unwrap_or_else(|_| Err(ApiError::new(ErrorCode::Overloaded, "shard unavailable"))) };
        futures_lite::future::or(sending, answered).await
    }

    /// Sends a call to another shard and awaits its answer. Waits for
    /// room when that shard's queue is full (backpressure).
    pub async fn call(&self, to: ShardId, body: Call) -> Result<Answer, ApiError> {
        debug_assert_ne!(to, self.shard, "local calls are calls, not messages");
        Self::count(&self.sent, to);
        self.count_kind(body.kind());
        let from = self.shard;
        self.send_and_wait(to, |request_id| async move {
            self.calls.send_to(to.index(), Routed { from, request_id, body }).await.is_ok()
        })
        .await
    }

    /// Sends a control message that expects a reply, and awaits it.
    pub async fn ask(&self, to: ShardId, body: Control) -> Result<Answer, ApiError> {
        self.send_and_wait(to, |request_id| async move {
            self.send_control(to, request_id, body).await;
            true
        })
        .await
    }

    /// Answers `overloaded` to every call and ask past its deadline.
    pub fn expire(&self, now: Instant) -> usize {
        self.pending.borrow_mut().expire(now)
    }

    /// Calls and asks that timed out so far.
    pub fn timed_out(&self) -> u64 {
        self.pending.borrow().timed_out()
    }

    /// Registers a wait for an answer from `from` to a request this core
    /// sends itself (inside another message: a push check riding with a
    /// delivery): its id, and the wait, which ends `overloaded` once
    /// `MESH_ANSWER_TIMEOUT` passes.
    pub fn expect_answer(&self, from: ShardId) -> (u64, AnswerWait) {
        let (id, receiver) = self.pending.borrow_mut().register(from, Instant::now() + limits::MESH_ANSWER_TIMEOUT);
        (id, AnswerWait(receiver))
    }

    /// Sends a control message (its reader never blocks, so this wait is short).
    pub async fn send_control(&self, to: ShardId, request_id: u64, body: Control) {
        debug_assert_ne!(to, self.shard, "local control messages are local calls");
        Self::count(&self.sent, to);
        self.count_kind(body.kind());
        if let Err(error) = self.control.send_to(to.index(), Routed { from: self.shard, request_id, body }).await {
            tracing::warn!(%error, to = to.0, "control message dropped: shard gone");
        }
    }

    /// Sends a control message if the receiver's queue has room now, without
    /// waiting (so without a task); gives the message back when it is full.
    pub fn try_send_control(&self, to: ShardId, request_id: u64, body: Control) -> Result<(), Control> {
        debug_assert_ne!(to, self.shard, "local control messages are local calls");
        let kind = body.kind();
        match self.control.try_send_to(to.index(), Routed { from: self.shard, request_id, body }) {
            Ok(()) => {
                Self::count(&self.sent, to);
                self.count_kind(kind);
                Ok(())
            }
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(routed))) => Err(routed.body),
            Err(error) => {
                tracing::warn!(%error, to = to.0, "control message dropped: shard gone");
                Ok(())
            }
        }
    }

    /// Completes a call or ask this core made.
    pub fn complete(&self, request_id: u64, result: Result<Answer, ApiError>) {
        self.pending.borrow_mut().complete(request_id, result);
    }

    /// Requests still awaiting replies.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn waits_past_their_deadline_are_answered_overloaded() {
        let mut pending = Pending::default();
        let now = Instant::now();
        let (early, mut early_answer) = pending.register(ShardId(1), now + Duration::from_secs(1));
        let (late, mut late_answer) = pending.register(ShardId(2), now + Duration::from_secs(5));
        assert_ne!(early, late);
        assert_eq!(pending.expire(now), 0, "nothing is due yet");
        assert_eq!(pending.expire(now + Duration::from_secs(2)), 1);
        let expired = early_answer.try_recv().unwrap().unwrap().unwrap_err();
        assert_eq!(expired.code, ErrorCode::Overloaded);
        assert!(expired.message.contains("shard 1"), "{}", expired.message);
        assert!(!pending.complete(early, Ok(Answer::Done)), "a late answer finds no waiter");
        assert!(pending.complete(late, Ok(Answer::Done)));
        assert!(matches!(late_answer.try_recv().unwrap(), Some(Ok(Answer::Done))));
        assert!(pending.is_empty());
        assert_eq!(pending.timed_out(), 1);
    }
}
