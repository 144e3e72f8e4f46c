//! One shard's state, owned by its core: the channels it owns (members and
//! the cores that host them), its id generator, committer, router and the
//! registry of its connections. Everything here is touched by one thread.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chatgw_idgen::{ChannelId, Generator, MessageId, ShardId, UserId};
use chatgw_storage::{Channel, Store};

use crate::admin::ConnInfo;
use crate::auth::{AuthedUser, TokenKeys};
use crate::banned::BannedWords;
use crate::close::CloseReason;
use crate::commit::Committer;
use crate::config::Config;
use crate::error::ApiError;
use crate::registry::{Conn, Registry};
use crate::route::{Control, Response, Router};
use crate::shard;
use crate::single_flight::SingleFlight;
use crate::stats::Counters;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A channel this shard owns, as held in memory.
#[derive(Debug)]
pub struct ChannelState {
    /// Its record.
    pub channel: Channel,
    /// Its members.
    pub members: HashSet<UserId>,
    /// Bit `i` set: core `i` hosts at least one connection of a member.
    pub cores: u128,
}

/// A shard's core.
pub struct Core {
    /// This shard.
    pub shard: ShardId,
    /// Shards in the node.
    pub shards: u16,
    /// The configuration.
    pub config: Arc<Config>,
    /// The node's store (shared by all cores; RocksDB is thread-safe).
    pub store: Arc<Store>,
    /// Token keys.
    pub tokens: Arc<TokenKeys>,
    /// The admin token in force.
    pub admin_token: Arc<str>,
    /// This node's name.
    pub node: Arc<str>,
    /// The WebSocket URL clients are told to use.
    pub ws_url: Arc<str>,
    /// This shard's Snowflake generator.
    pub ids: RefCell<Generator>,
    /// Cross-core messaging.
    pub router: Router,
    /// Local connections.
    pub registry: RefCell<Registry>,
    /// Group commit.
    pub committer: Committer,
    /// Counters.
    pub counters: Counters,
    /// Set when the server stops.
    pub stopping: Cell<bool>,
    /// What all cores of the server share (readiness, the stop flag).
    pub shared: Arc<crate::server::Shared>,
    /// Push records in this shard's outbox.
    pub outbox_depth: Cell<u64>,
    /// Presence of the users this shard owns.
    pub presence: crate::presence::Presence,
    /// Send rate limits and flood control for the users this shard owns.
    pub limiter: crate::abuse::Limiter,
    banned: RefCell<Arc<BannedWords>>,
    owned: RefCell<HashMap<ChannelId, ChannelState>>,
    usernames: RefCell<HashMap<UserId, Rc<str>>>,
    /// User ids by username (names are never reused or renamed).
    user_ids: RefCell<HashMap<Box<str>, UserId>>,
    /// Direct channels by pair, smaller id first (a pair's channel never
    /// changes once made).
    directs: RefCell<HashMap<(UserId, UserId), ChannelId>>,
    /// Direct channels being made, by pair.
    pub directs_in_flight: SingleFlight<(UserId, UserId), Result<ChannelId, ApiError>>,
    /// Signups in progress, by username.
    pub signups_in_flight: SingleFlight<String, Result<UserId, ApiError>>,
    /// Sends with a `client_msg_id` in progress, by sender and id.
    pub sends_in_flight: SingleFlight<(UserId, String), Result<chatgw_storage::Message, ApiError>>,
}

/// Entries each per-core lookup cache holds before it is cleared (a
/// storage read refills what is used again).
const LOOKUP_CACHE_MAX: usize = 100_000;

/// Inserts into a bounded lookup cache, clearing it when full.
fn cache_insert<K: std::hash::Hash + Eq, V>(cache: &RefCell<HashMap<K, V>>, key: K, value: V) {
    let mut cache = cache.borrow_mut();
    if cache.len() >= LOOKUP_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, value);
}

impl Core {
    /// A core from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: ShardId,
        shards: u16,
        config: Arc<Config>,
        store: Arc<Store>,
        tokens: Arc<TokenKeys>,
        admin_token: Arc<str>,
        node: Arc<str>,
        ws_url: Arc<str>,
        ids: Generator,
        router: Router,
        shared: Arc<crate::server::Shared>,
    ) -> Self {
        let limiter = crate::abuse::Limiter::new(config.rate_limit_per_s, config.rate_burst);
        Core {
            shard,
            shards,
            config,
            store,
            tokens,
            admin_token,
            node,
            ws_url,
            ids: RefCell::new(ids),
            router,
            registry: RefCell::new(Registry::default()),
            committer: Committer::new(),
            counters: Counters::default(),
            stopping: Cell::new(false),
            shared,
            outbox_depth: Cell::new(0),
            presence: crate::presence::Presence::default(),
            limiter,
            banned: RefCell::new(Arc::new(BannedWords::default())),
            owned: RefCell::new(HashMap::new()),
            usernames: RefCell::new(HashMap::new()),
            user_ids: RefCell::new(HashMap::new()),
            directs: RefCell::new(HashMap::new()),
            directs_in_flight: SingleFlight::new(),
            signups_in_flight: SingleFlight::new(),
            sends_in_flight: SingleFlight::new(),
        }
    }

    /// The owner of a user or channel id.
    pub fn owner(&self, id: u64) -> ShardId {
        shard::owner(id, self.shards)
    }

    /// The next Snowflake id of this shard.
    pub fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next_id()
    }

    // ---- names ----

    /// A user's username (cached; read from the user's shard).
    pub fn username(&self, user: UserId) -> Result<Rc<str>, ApiError> {
        if let Some(name) = self.usernames.borrow().get(&user) {
            return Ok(name.clone());
        }
        let name: Rc<str> = match self.store.user(self.owner(user.0), user)? {
            Some(record) => record.username.into(),
            None => "".into(),
        };
        cache_insert(&self.usernames, user, name.clone());
        Ok(name)
    }

    /// A user id by username (read from the username's shard).
    pub fn user_id(&self, username: &str) -> Result<Option<UserId>, ApiError> {
        if !crate::accounts::valid_username(username) {
            return Ok(None);
        }
        if let Some(id) = self.user_ids.borrow().get(username) {
            return Ok(Some(*id));
        }
        let found = self.store.user_id_by_name(shard::username_owner(username, self.shards), username)?;
        if let Some(id) = found {
            cache_insert(&self.user_ids, username.into(), id);
        }
        Ok(found)
    }

    /// The direct channel of a pair, if made (cached; read from the pair's
    /// owner shard).
    pub fn direct_channel(&self, first: UserId, second: UserId) -> Result<Option<ChannelId>, ApiError> {
        let pair = (first.min(second), first.max(second));
        if let Some(channel) = self.directs.borrow().get(&pair) {
            return Ok(Some(*channel));
        }
        let found = self.store.direct_channel(shard::pair_owner(first, second, self.shards), first, second)?;
        if let Some(channel) = found {
            cache_insert(&self.directs, pair, channel);
        }
        Ok(found)
    }

    // ---- owned channels ----

    /// Runs `visit` on an owned channel's state, loading it from storage
    /// first. `None` if the channel does not exist.
    pub fn with_channel<R>(
        &self,
        id: ChannelId,
        visit: impl FnOnce(&mut ChannelState) -> R,
    ) -> Result<Option<R>, ApiError> {
        debug_assert_eq!(self.owner(id.0), self.shard, "only the owner holds a channel");
        if !self.owned.borrow().contains_key(&id) {
            let Some(channel) = self.store.channel(self.shard, id)? else { return Ok(None) };
            let members = self.store.members(self.shard, id)?.into_iter().collect();
            self.owned.borrow_mut().entry(id).or_insert(ChannelState { channel, members, cores: 0 });
        }
        Ok(self.owned.borrow_mut().get_mut(&id).map(visit))
    }

    /// Records a channel just created by this owner.
    pub fn insert_channel(&self, channel: Channel, members: HashSet<UserId>) {
        self.owned.borrow_mut().insert(channel.id, ChannelState { channel, members, cores: 0 });
    }

    /// Sends one shared frame to every core hosting a member of `channel`
    /// (`taken_at`: when this owner took the message).
    pub async fn fan_out(&self, channel: ChannelId, cores: u128, frame: Bytes, taken_at: Instant) {
        for core in 0..self.shards {
            if cores & (1u128 << core) == 0 {
                continue;
            }
            if ShardId(core) == self.shard {
                self.deliver_local(channel, &frame, taken_at);
            } else {
                let deliver = Control::Deliver { channel_id: channel, frame: frame.clone(), taken_at };
                self.router.send_control(ShardId(core), 0, deliver).await;
            }
        }
    }

    /// Queues a frame to this core's connections in `channel`.
    pub fn deliver_local(&self, channel: ChannelId, frame: &Bytes, taken_at: Instant) {
        let queued = self.registry.borrow().deliver(channel, frame);
        self.counters.deliveries.set(self.counters.deliveries.get() + queued as u64);
        self.counters.fan_out.record(taken_at.elapsed());
    }

    // ---- operator controls ----

    /// The banned words this core enforces.
    pub fn banned(&self) -> Arc<BannedWords> {
        self.banned.borrow().clone()
    }

    /// Enforces a version of the banned words, unless a newer one is in force.
    pub fn set_banned(&self, banned: Arc<BannedWords>) {
        let mut current = self.banned.borrow_mut();
        if banned.version > current.version {
            *current = banned;
        }
    }

    /// Closes this core's connections of a user (one device's, if named)
    /// with 1008; returns how many.
    pub fn kick(&self, user: UserId, device: Option<&str>) -> u64 {
        let conns = self.registry.borrow().user_conns(user);
        let mut kicked = 0;
        for conn in conns {
            if device.is_none_or(|device| *conn.device == *device) && conn.closing().is_none() {
                conn.close(CloseReason::Kicked);
                kicked += 1;
            }
        }
        kicked
    }

    /// Up to `limit` of this core's connections after registry key `after`,
    /// in key order.
    pub fn connections_after(&self, after: Option<usize>, limit: usize) -> Vec<ConnInfo> {
        self.registry
            .borrow()
            .after(after, limit)
            .into_iter()
            .map(|conn| ConnInfo {
                key: conn.key,
                user_id: conn.user_id,
                username: conn.username.to_string(),
                device: conn.device.to_string(),
                remote: conn.remote,
                connected_at_ms: conn.connected_at_ms,
                last_active_ms: conn.last_active_ms.get(),
            })
            .collect()
    }

    fn count_connections(&self) {
        if let Some(count) = self.shared.connections.get(self.shard.index()) {
            count.store(self.registry.borrow().len() as u64, Ordering::Relaxed);
        }
    }

    // ---- connections ----

    /// Registers a connection and subscribes this core to its channels;
    /// returns once every owner knows, so nothing sent after the `hello`
    /// can miss it.
    pub async fn attach(
        self: &Rc<Self>,
        user: &AuthedUser,
        device: Box<str>,
        remote: SocketAddr,
    ) -> Result<Rc<Conn>, ApiError> {
        let username: Rc<str> = user.username.as_str().into();
        let conn = self.registry.borrow_mut().add(user.user_id, username, device, remote, now_ms());
        self.count_connections();
        let channels = match self.store.user_channels(self.owner(user.user_id.0), user.user_id) {
            Ok(channels) => channels,
            Err(error) => {
                self.registry.borrow_mut().remove(&conn);
                self.count_connections();
                return Err(error.into());
            }
        };
        let first_local: Vec<ChannelId> = {
            let mut registry = self.registry.borrow_mut();
            channels
                .iter()
                .filter(|joined| registry.join_channel(&conn, joined.channel_id))
                .map(|joined| joined.channel_id)
                .collect()
        };
        self.subscribe(&first_local).await;
        crate::presence::connected(self, user.user_id).await;
        Ok(conn)
    }

    /// Tells the owners of `channels` that this core hosts them now.
    pub async fn subscribe(&self, channels: &[ChannelId]) {
        let mut waits = Vec::new();
        for channel in channels {
            let owner = self.owner(channel.0);
            if owner == self.shard {
                self.on_subscribe(self.shard, *channel, true);
            } else {
                waits.push(self.router.ask(owner, Control::Subscribe(*channel)));
            }
        }
        for wait in waits {
            if let Err(error) = wait.await {
                tracing::warn!(%error, "subscription failed");
            }
        }
    }

    /// Removes a connection, unsubscribes channels and presence it was the
    /// last local connection of, and tells the user's owner it went.
    pub async fn detach(self: &Rc<Self>, conn: &Conn) {
        let emptied = self.registry.borrow_mut().remove(conn);
        self.count_connections();
        crate::presence::disconnected(self, conn.user_id, conn.last_active_ms.get()).await;
        if !emptied.watched.is_empty()
            && let Err(error) = crate::presence::watch(self, &emptied.watched, false).await
        {
            tracing::warn!(%error, "ending presence subscriptions");
        }
        for channel in emptied.channels {
            let owner = self.owner(channel.0);
            if owner == self.shard {
                self.on_subscribe(self.shard, channel, false);
            } else {
                self.router.send_control(owner, 0, Control::Unsubscribe(channel)).await;
            }
        }
    }

    /// A core (`from`) hosts or stops hosting connections of an owned channel.
    pub fn on_subscribe(&self, from: ShardId, channel: ChannelId, hosts: bool) {
        let bit = 1u128 << from.0;
        let result = self.with_channel(channel, |state| {
            if hosts {
                state.cores |= bit;
            } else {
                state.cores &= !bit;
            }
        });
        if let Err(error) = result {
            tracing::warn!(%error, channel = channel.0, "subscription to an unreadable channel");
        }
    }

    /// Applies a membership change to this core's connections; returns
    /// whether the core still hosts the channel.
    pub fn on_membership(
        &self,
        channel: ChannelId,
        added: &[UserId],
        removed: &[UserId],
        added_frame: Option<&Bytes>,
        removed_frame: Option<&Bytes>,
    ) -> bool {
        let mut registry = self.registry.borrow_mut();
        for user in added {
            for conn in registry.user_conns(*user) {
                registry.join_channel(&conn, channel);
                if let Some(frame) = added_frame {
                    conn.push(frame.clone());
                }
            }
        }
        for user in removed {
            for conn in registry.user_conns(*user) {
                registry.leave_channel(&conn, channel);
                if let Some(frame) = removed_frame {
                    conn.push(frame.clone());
                }
            }
        }
        registry.hosts_channel(channel)
    }

    /// Handles a control message from another core. Never awaits: replies
    /// go out from a task of their own.
    pub fn on_control(self: &Rc<Self>, from: ShardId, request_id: u64, control: Control) {
        let reply = match control {
            Control::Reply(result) => {
                self.router.complete(request_id, result);
                None
            }
            Control::Deliver { channel_id, frame, taken_at } => {
                self.deliver_local(channel_id, &frame, taken_at);
                None
            }
            Control::Subscribe(channel) => {
                self.on_subscribe(from, channel, true);
                Some(Ok(Response::Done))
            }
            Control::Unsubscribe(channel) => {
                self.on_subscribe(from, channel, false);
                None
            }
            Control::Membership { channel_id, added, removed, added_frame, removed_frame } => {
                let hosts =
                    self.on_membership(channel_id, &added, &removed, added_frame.as_ref(), removed_frame.as_ref());
                Some(Ok(Response::Subscribed(hosts)))
            }
            Control::Stats => Some(Ok(Response::Stats(Box::new(crate::stats::snapshot(self))))),
            Control::Kick { user_id, device } => Some(Ok(Response::Count(self.kick(user_id, device.as_deref())))),
            Control::Connections { after, limit } => {
                Some(Ok(Response::Connections(self.connections_after(after, limit))))
            }
            Control::BannedWords(banned) => {
                self.set_banned(banned);
                Some(Ok(Response::Done))
            }
            Control::PresenceConnected { user_id, at_ms } => {
                crate::presence::on_connected(self, user_id, at_ms);
                None
            }
            Control::PresenceDisconnected { user_id, last_active_ms } => {
                crate::presence::on_disconnected(self, user_id, last_active_ms);
                None
            }
            Control::PresenceActivity(activity) => {
                crate::presence::on_activity(self, &activity);
                None
            }
            Control::PresenceWatch { users, watch } => {
                Some(Ok(Response::Presence(crate::presence::on_watch(self, from, &users, watch))))
            }
            Control::PresenceQuery(users) => Some(Ok(Response::Presence(crate::presence::query_owned(self, &users)))),
            Control::SendAllowed { user_id, text_hash, client_msg_id_hash } => Some(
                self.limiter.check(user_id, text_hash, client_msg_id_hash, Instant::now()).map(|()| Response::Done),
            ),
            Control::PushCheck { channel_id, message_id, members } => {
                crate::push::on_message(self, channel_id, message_id, &members);
                None
            }
            Control::PresenceEvent { user_id, frame } => {
                self.registry.borrow().deliver_presence(user_id, &frame);
                None
            }
        };
        if let Some(result) = reply
            && request_id != 0
        {
            // Most replies fit the queue at once; only a full queue costs a
            // task that waits for room.
            if let Err(reply) = self.router.try_send_control(from, request_id, Control::Reply(result)) {
                let core = self.clone();
                glommio::spawn_local(async move {
                    core.router.send_control(from, request_id, reply).await;
                })
                .detach();
            }
        }
    }

    /// Largest message id this shard has stored, for the generator.
    pub fn high_water(&self) -> Result<Option<MessageId>, ApiError> {
        Ok(self.store.high_water(self.shard)?)
    }
}
