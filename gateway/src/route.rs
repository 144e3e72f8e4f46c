//! The only module that crosses cores.
//!
//! Two bounded full meshes join the shards:
//! - *requests*: work that awaits storage at the owner (a send, a channel
//!   change, a signup). The owner's reader may wait for room to work
//!   (backpressure), so these queues fill under overload.
//! - *control*: replies, deliveries, subscriptions, membership changes. Its
//!   readers handle each message at once and never await, so a sender
//!   waiting for room there always makes progress: no cycle of waits.
//!
//! A message to the own shard never enters a mesh: it is a local call.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chatgw_idgen::{ChannelId, ShardId, UserId};
use chatgw_storage::{Channel, Message};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;

use crate::admin::ConnInfo;
use crate::banned::BannedWords;
use crate::error::ApiError;
use crate::presence::Status;
use crate::stats::CoreStats;

/// A request for the shard that owns its subject.
#[derive(Debug)]
pub enum Request {
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

/// A change to the banned words.
#[derive(Debug, Clone)]
pub enum BannedChange {
    /// The whole list.
    Replace(Vec<String>),
    /// Entries to add and to remove.
    Patch {
        /// Added.
        add: Vec<String>,
        /// Removed.
        remove: Vec<String>,
    },
}

/// What a request answers.
#[derive(Debug)]
pub enum Response {
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
    Stats(Box<CoreStats>),
    /// How many (connections kicked, say).
    Count(u64),
    /// A page of a core's connections.
    Connections(Vec<ConnInfo>),
    /// The banned words now in force.
    Banned(Arc<BannedWords>),
    /// Users' presence.
    Presence(Vec<Status>),
    /// Done.
    Done,
}

/// A control message: handled at once, never awaiting.
#[derive(Debug)]
pub enum Control {
    /// The answer to a request this core made.
    Reply(Result<Response, ApiError>),
    /// One encoded frame for every local connection of a channel.
    Deliver {
        /// The channel.
        channel_id: ChannelId,
        /// The WebSocket frame, shared by every receiver.
        frame: Bytes,
        /// When the owner took the message (for the fan-out latency).
        taken_at: Instant,
    },
    /// The sender hosts connections of this channel now (to the owner).
    Subscribe(ChannelId),
    /// The sender hosts no connection of this channel any more (to the owner).
    Unsubscribe(ChannelId),
    /// Members joined or left (to every core); answered with `Subscribed`.
    Membership {
        /// The channel.
        channel_id: ChannelId,
        /// Users who joined, and the `channel` event for them.
        added: Vec<UserId>,
        /// Users who left, and the `channel` event for them.
        removed: Vec<UserId>,
        /// The `channel` event with kind `added`.
        added_frame: Option<Bytes>,
        /// The `channel` event with kind `removed`.
        removed_frame: Option<Bytes>,
    },
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
        after: Option<usize>,
        /// At most this many.
        limit: usize,
    },
    /// Enforce this version of the banned words (if newer); answered with `Done`.
    BannedWords(Arc<BannedWords>),
    /// A device of a user this shard owns connected on the sender.
    PresenceConnected {
        /// The user.
        user_id: UserId,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
    /// A device of a user this shard owns went from the sender.
    PresenceDisconnected {
        /// The user.
        user_id: UserId,
        /// Its last frame, ms since the Unix epoch.
        last_active_ms: u64,
    },
    /// Users this shard owns were active on the sender (user, ms).
    PresenceActivity(Vec<(UserId, u64)>),
    /// The sender starts or stops holding presence subscribers of these
    /// users (owned here); answered with `Presence`.
    PresenceWatch {
        /// The users.
        users: Vec<UserId>,
        /// Start (true) or stop.
        watch: bool,
    },
    /// The presence of users owned here; answered with `Presence`.
    PresenceQuery(Vec<UserId>),
    /// A message was stored in a channel with these members (owned by the
    /// receiver): record a push for each with no connected device.
    PushCheck {
        /// The channel.
        channel_id: ChannelId,
        /// The message.
        message_id: chatgw_idgen::MessageId,
        /// Members owned by the receiver (the sender left out).
        members: Vec<UserId>,
    },
    /// May this user (owned by the receiver) send a text of this hash now?
    /// Answered with `Done` or `rate_limited`.
    SendAllowed {
        /// The sender.
        user_id: UserId,
        /// `abuse::text_hash` of the text.
        text_hash: u64,
        /// `abuse::text_hash` of its `client_msg_id`, if any.
        client_msg_id_hash: Option<u64>,
    },
    /// A presence event for the receiver's subscribers of a user.
    PresenceEvent {
        /// The user whose presence changed.
        user_id: UserId,
        /// The encoded `presence` event.
        frame: Bytes,
    },
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
    requests: Senders<Routed<Request>>,
    control: Senders<Routed<Control>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<Response, ApiError>>>>,
    next_request_id: Cell<u64>,
    /// Messages sent to each shard (both meshes).
    sent: Box<[Cell<u64>]>,
    /// Messages taken off the queues from each shard (both meshes).
    received: Box<[Cell<u64>]>,
}

impl Router {
    /// A router over joined meshes (peer `i` is shard `i`).
    pub fn new(shard: ShardId, requests: Senders<Routed<Request>>, control: Senders<Routed<Control>>) -> Self {
        assert_eq!(requests.peer_id(), shard.index(), "mesh peers are shards in order");
        assert_eq!(control.peer_id(), shard.index(), "mesh peers are shards in order");
        let peers = requests.nr_consumers();
        Router {
            shard,
            requests,
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

    fn register(&self) -> (u64, oneshot::Receiver<Result<Response, ApiError>>) {
        let id = self.next_request_id.get();
        self.next_request_id.set(id + 1);
        let (sender, receiver) = oneshot::channel();
        self.pending.borrow_mut().insert(id, sender);
        (id, receiver)
    }

    async fn wait(
        &self,
        id: u64,
        receiver: oneshot::Receiver<Result<Response, ApiError>>,
    ) -> Result<Response, ApiError> {
        receiver.await.unwrap_or_else(|_| {
            self.pending.borrow_mut().remove(&id);
            Err(ApiError::internal("a shard dropped a request"))
        })
    }

    /// Sends a request to another shard and awaits its answer. Waits for
    /// room when that shard's queue is full (backpressure).
    pub async fn request(&self, to: ShardId, body: Request) -> Result<Response, ApiError> {
        debug_assert_ne!(to, self.shard, "local requests are local calls");
        let (id, receiver) = self.register();
        Self::count(&self.sent, to);
        if self.requests.send_to(to.index(), Routed { from: self.shard, request_id: id, body }).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(ApiError::new(crate::error::ErrorCode::Overloaded, "shard unavailable"));
        }
        self.wait(id, receiver).await
    }

    /// Sends a control message that expects a reply, and awaits it.
    pub async fn ask(&self, to: ShardId, body: Control) -> Result<Response, ApiError> {
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
    pub fn complete(&self, request_id: u64, result: Result<Response, ApiError>) {
        if let Some(waiter) = self.pending.borrow_mut().remove(&request_id) {
            let _ = waiter.send(result);
        }
    }

    /// Requests still awaiting replies.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }
}
