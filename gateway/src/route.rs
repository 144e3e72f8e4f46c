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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chatgw_idgen::{ChannelId, ShardId, UserId};
use chatgw_storage::{Channel, Message};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::error::{ApiError, ErrorCode};
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
    /// Change the banned words (to shard 0, which numbers the versions).
    BannedWords(BannedChange),
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
    /// Whether the answering core now hosts a connection of the channel.
    Subscribed(bool),
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
    /// Done.
    Done,
}

/// A control message: handled at once, never awaiting. One variant per
/// subject; each carries that subject's own closed enum of plain data.
#[derive(Debug)]
pub enum Control {
    /// The answer to a request this core made.
    Reply(Result<Answer, ApiError>),
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
    },
    /// The sender hosts connections of this channel now (to the owner);
    /// answered with `Done`.
    Subscribe(ChannelId),
    /// The sender hosts no connection of this channel any more (to the owner).
    Unsubscribe(ChannelId),
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

/// This core's ends of the meshes and its requests awaiting replies.
pub struct Router {
    shard: ShardId,
    calls: Senders<Routed<Call>>,
    control: Senders<Routed<Control>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<Answer, ApiError>>>>,
    next_request_id: Cell<u64>,
    /// Messages sent to each shard (both meshes).
    sent: Box<[Cell<u64>]>,
    /// Messages taken off the queues from each shard (both meshes).
    received: Box<[Cell<u64>]>,
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
            pending: RefCell::new(HashMap::new()),
            next_request_id: Cell::new(1),
            sent: (0..peers).map(|_| Cell::new(0)).collect(),
            received: (0..peers).map(|_| Cell::new(0)).collect(),
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

    fn register(&self) -> (u64, oneshot::Receiver<Result<Answer, ApiError>>) {
        let id = self.next_request_id.get();
        self.next_request_id.set(id + 1);
        let (sender, receiver) = oneshot::channel();
        self.pending.borrow_mut().insert(id, sender);
        (id, receiver)
    }

    async fn wait(&self, id: u64, receiver: oneshot::Receiver<Result<Answer, ApiError>>) -> Result<Answer, ApiError> {
        receiver.await.unwrap_or_else(|_| {
            self.pending.borrow_mut().remove(&id);
            Err(ApiError::internal("a shard dropped a request"))
        })
    }

    /// Sends a call to another shard and awaits its answer. Waits for
    /// room when that shard's queue is full (backpressure).
    pub async fn call(&self, to: ShardId, body: Call) -> Result<Answer, ApiError> {
        debug_assert_ne!(to, self.shard, "local requests are local calls");
        let (id, receiver) = self.register();
        Self::count(&self.sent, to);
        if self.calls.send_to(to.index(), Routed { from: self.shard, request_id: id, body }).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(ApiError::new(ErrorCode::Overloaded, "shard unavailable"));
        }
        self.wait(id, receiver).await
    }

    /// Sends a control message that expects a reply, and awaits it.
    pub async fn ask(&self, to: ShardId, body: Control) -> Result<Answer, ApiError> {
        let (id, receiver) = self.register();
        self.send_control(to, id, body).await;
        self.wait(id, receiver).await
    }

    /// Sends a control message (its reader never blocks, so this wait is short).
    pub async fn send_control(&self, to: ShardId, request_id: u64, body: Control) {
        debug_assert_ne!(to, self.shard, "local control messages are local calls");
        Self::count(&self.sent, to);
        if let Err(error) = self.control.send_to(to.index(), Routed { from: self.shard, request_id, body }).await {
            tracing::warn!(%error, to = to.0, "control message dropped: shard gone");
        }
    }

    /// Sends a control message if the receiver's queue has room now, without
    /// waiting (so without a task); gives the message back when it is full.
    pub fn try_send_control(&self, to: ShardId, request_id: u64, body: Control) -> Result<(), Control> {
        debug_assert_ne!(to, self.shard, "local control messages are local calls");
        match self.control.try_send_to(to.index(), Routed { from: self.shard, request_id, body }) {
            Ok(()) => {
                Self::count(&self.sent, to);
                Ok(())
            }
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(routed))) => Err(routed.body),
            Err(error) => {
                tracing::warn!(%error, to = to.0, "control message dropped: shard gone");
                Ok(())
            }
        }
    }

    /// Completes a request this core made.
    pub fn complete(&self, request_id: u64, result: Result<Answer, ApiError>) {
        if let Some(waiter) = self.pending.borrow_mut().remove(&request_id) {
            let _ = waiter.send(result);
        }
    }

    /// Requests still awaiting replies.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }
}
