//! One shard's state, owned by its core: the channels it owns (members and
//! the cores that host them), its id generator, committer, router, the
//! registry of its connections, the services it drives, and local fan-out.
//! Everything here is touched by one thread. What the shard *does* lives in
//! the files beside this one, as `impl Shard` blocks or functions over it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use chatgw_idgen::{ChannelId, ShardId, UserId};
use chatgw_storage::{Channel, Message, Store};

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::error::ApiError;
use crate::node::Shared;
use crate::placement;
use crate::route::{Answer, ChannelMsg, ConnKey, Control, DeliverWith, HandOff, Router};
use crate::services::abuse::Limiter;
use crate::services::banned::{self, BannedWords};
use crate::services::presence::Presence;
use crate::services::push::OutboxIndex;
use crate::services::stats::Counters;
use crate::services::typing::TypingTable;
use crate::shard::commit::Committer;
use crate::shard::registry::Registry;
use crate::single_flight::SingleFlight;
use crate::turnstile::{Lines, Turnstile};

/// A channel this shard owns, as held in memory.
#[derive(Debug)]
pub struct ChannelState {
    /// Its record.
    pub channel: Channel,
    /// Its members.
    pub members: HashSet<UserId>,
    /// Bit `i` set: core `i` hosts at least one connection of a member.
    pub cores_mask: u128,
    /// The latest subscription epoch applied from each core (by shard
    /// number): an older word from a core never overwrites a newer one.
    pub epochs: HashMap<u16, u64>,
    /// Its fan-outs' line: a message takes a ticket with its id and
    /// delivers in its turn, so every connection gets the channel's
    /// messages in id order.
    pub fan_outs: Rc<Turnstile>,
    /// When it was last visited, by the shard's channel tick (the eviction
    /// order: least recently used first).
    pub last_used: u64,
}

impl ChannelState {
    /// A channel state no core hosts yet.
    pub fn new(channel: Channel, members: HashSet<UserId>) -> Self {
        ChannelState { channel, members, cores_mask: 0, epochs: HashMap::new(), fan_outs: Rc::default(), last_used: 0 }
    }

    /// Whether the state may be dropped and read again from storage later:
    /// no core hosts a connection of a member (so no fan-out needs its
    /// mask), and no message is between its id and its fan-out (no task
    /// holds its line).
    ///
    /// A word from a core about the channel that arrives after the drop
    /// meets a fresh state with no epochs and is applied. If it was a stale
    /// "hosts", the owner fans out to a core that hosts nothing; that core
    /// answers the frame with a newer "hosts no more" (`inbox`), so the
    /// phantom bit costs one frame. A newer word is never refused, which is
    /// what keeping epochs across drops (a floor per core) would risk.
    pub fn is_evictable(&self) -> bool {
        self.cores_mask == 0 && Rc::strong_count(&self.fan_outs) == 1
    }

    /// Core `from` says, as of its epoch `epoch`, whether it hosts a
    /// connection of the channel; applied only if newer than what that
    /// core said before. Returns whether it was applied.
    pub fn hosted_by(&mut self, from: ShardId, hosts: bool, epoch: u64) -> bool {
        let last = self.epochs.entry(from.0).or_insert(0);
        if epoch <= *last {
            return false;
        }
        *last = epoch;
        let bit = 1u128 << from.0;
        if hosts {
            self.cores_mask |= bit;
        } else {
            self.cores_mask &= !bit;
        }
        true
    }
}

/// What the node gives each shard it starts.
#[derive(Clone)]
pub struct NodeParts {
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
    /// What all shards of the server share.
    pub shared: Arc<Shared>,
}

/// Presence events an owner still has to send to other cores, in order,
/// and whether a task is sending them.
#[derive(Debug, Default)]
pub struct PresenceOutbox {
    /// (cores, user, encoded event), oldest first.
    pub queue: VecDeque<(u128, UserId, Bytes)>,
    /// A task drains `queue`.
    pub sending: bool,
}

/// What starts a handed-off connection's session (see `Shard::start_handed_off`).
pub type StartHandedOff = fn(&Rc<Shard>, HandOff);

/// One shard, on its own core.
pub struct Shard {
    /// This shard.
    pub id: ShardId,
    /// Shards in the node.
    pub shard_count: u16,
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
    /// What all cores of the server share (readiness, the stop flag).
    pub shared: Arc<Shared>,
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
    /// Starts the session of a connection another core handed here (set by
    /// the network edge, which owns sessions; unset, a hand-off is dropped
    /// and its socket closed).
    pub start_handed_off: Cell<Option<StartHandedOff>>,
    /// This core's subscription epoch: bumped each time it tells an owner
    /// whether it hosts a channel, so that the owner can order what one
    /// core said even when the words arrive by different paths.
    pub subscription_epoch: Cell<u64>,
    /// The push records in this shard's outbox, by user (the bounds'
    /// bookkeeping; the outbox itself is in storage).
    pub outbox_index: RefCell<OutboxIndex>,
    /// Dead pushes in this shard's storage (counted at open, then kept
    /// with each change; the bound `limits::DEAD_PUSHES_PER_SHARD_MAX` is
    /// kept with it).
    pub dead_pushes: Cell<usize>,
    /// Push recordings still to fail (`Config::fault_push_record_failures`).
    pub fault_push_record_failures: Cell<u32>,
    /// Presence of the users this shard owns.
    pub presence: RefCell<Presence>,
    /// Presence events on their way to other cores.
    pub presence_outbox: RefCell<PresenceOutbox>,
    /// Send rate limits and flood control for the users this shard owns.
    pub limiter: Limiter,
    /// Who types in the channels this shard owns (`shard::typing`).
    pub typing: RefCell<TypingTable>,
    /// Whether the typing expiry's task runs.
    pub typing_expiry: Cell<bool>,
    banned: RefCell<Arc<BannedWords>>,
    owned: RefCell<HashMap<ChannelId, ChannelState>>,
    /// Bumped at each visit of an owned channel's state.
    channel_tick: Cell<u64>,
    /// `owned` is swept for evictable states when it grows past this...
    channels_sweep_at: Cell<usize>,
    /// ...or once this many states have lost their last hosting core since
    /// the last sweep went past an eighth of the bound.
    channels_idled: Cell<usize>,
    /// Usernames by user id (cached reads).
    pub usernames: RefCell<HashMap<UserId, Rc<str>>>,
    /// User ids by username (names are never reused or renamed).
    pub user_ids: RefCell<HashMap<Box<str>, UserId>>,
    /// Direct channels by pair, smaller id first (a pair's channel never
    /// changes once made).
    pub directs: RefCell<HashMap<(UserId, UserId), ChannelId>>,
    /// Users this shard owns: whether each is disabled, and its token
    /// version, as last read or written here (the owner makes every change
    /// to them, and updates this after its commit, before it kicks).
    /// Bounded like the other lookup caches.
    pub accounts: RefCell<HashMap<UserId, (bool, u64)>>,
    /// Direct channels being made, by pair.
    pub directs_in_flight: SingleFlight<(UserId, UserId), Result<ChannelId, ApiError>>,
    /// Signups in progress, by username.
    pub signups_in_flight: SingleFlight<String, Result<UserId, ApiError>>,
    /// Sends with a `client_msg_id` in progress, by sender and id.
    pub sends_in_flight: SingleFlight<(UserId, String), Result<Message, ApiError>>,
    /// Channels whose owner this core is telling that it hosts them now: a
    /// second connection in the channel waits for the first's word to land
    /// before its `hello`.
    pub subscribes_in_flight: SingleFlight<ChannelId, ()>,
    /// One rewrite of a user record at a time on this owner: each reads the
    /// record, then writes it whole, across an await.
    pub account_writes: glommio::sync::Semaphore,
    /// The line of each owned channel's membership changes: one at a time,
    /// each planned from the state the one before it left (a plan read
    /// before a commit's await and applied after it would otherwise pass
    /// the member cap, or leave a member reading the channel the wrong way).
    pub member_changes: Lines<ChannelId>,
    /// The line of each owned channel's message edits and deletes: one at a
    /// time, each reading the message its predecessor wrote.
    pub message_changes: Lines<ChannelId>,
    /// Read pointers being written now, by channel and member: the largest
    /// pending one, so that a later, smaller `channel.read` changes nothing.
    pub reads_in_flight: RefCell<HashMap<(ChannelId, UserId), chatgw_idgen::MessageId>>,
    /// The line of `history` and `sync` reads of each connection that has
    /// one in flight: they run one at a time, in the order they came.
    pub read_lines: RefCell<HashMap<ConnKey, Rc<Turnstile>>>,
    /// Answers to other cores' push checks, gathered per core until they go
    /// in one message (`shard::push::on_check`).
    pub push_answers: RefCell<HashMap<ShardId, Vec<PendingAnswer>>>,
}

/// An answer to another core's request, by the request's id.
pub type PendingAnswer = (u64, Result<Answer, ApiError>);

/// The outbox of shard `id`, indexed by user (read a page at a time).
fn index_outbox(store: &Store, id: ShardId) -> Result<OutboxIndex, ApiError> {
    let mut index = OutboxIndex::default();
    let mut after = 0;
    loop {
        let entries = store.outbox(id, after, crate::limits::PUSH_BATCH_MAX)?;
        let Some(last) = entries.last() else { return Ok(index) };
        after = last.push_id;
        for entry in entries {
            index.insert(entry.user_id, entry.push_id);
        }
    }
}

/// The dead pushes of shard `id` (read a page at a time).
fn count_dead_pushes(store: &Store, id: ShardId) -> Result<usize, ApiError> {
    let mut count = 0;
    let mut after = 0;
    loop {
        let page = store.dead_pushes(id, after, crate::limits::DEAD_PUSH_RETRY_MAX)?;
        let Some(last) = page.last() else { return Ok(count) };
        after = last.entry.push_id;
        count += page.len();
    }
}

impl Shard {
    /// Shard `id` of `shard_count`, with its generator resumed above what
    /// it stored and above the node's id lease (every sync cursor handed
    /// out before), the banned words in force and its outbox counted.
    pub fn open(id: ShardId, shard_count: u16, parts: NodeParts, router: Router) -> Result<Self, ApiError> {
        let NodeParts { config, store, tokens, admin_token, node, ws_url, shared } = parts;
        let max_idle_channels = config.max_idle_channels_per_shard;
        let high_water = store.high_water(id)?.map_or(0, |high_water| high_water.0);
        shared.ids(id).resume_after(high_water.max(shared.id_lease()));
        let banned = banned::load(&store)?;
        let outbox_index = index_outbox(&store, id)?;
        let dead_pushes = count_dead_pushes(&store, id)?;
        let push_record_failures = config.fault_push_record_failures;
        let committer = Committer::new(shared.clone(), id, config.fault_commit_delay_ms);
        let limiter = Limiter::new(config.rate_limit_per_s, config.rate_burst)
            .with_channel_changes(config.channel_changes_per_min);
        let presence = Presence::new(config.presence_grace_ms);
        let typing_ttl_ms = config.typing_ttl_ms;
        Ok(Shard {
            id,
            shard_count,
            config,
            store,
            tokens,
            admin_token,
            node,
            ws_url,
            shared,
            router,
            registry: RefCell::new(Registry::default()),
            committer,
            counters: Counters::default(),
            stopping: Cell::new(false),
            start_handed_off: Cell::new(None),
            subscription_epoch: Cell::new(0),
            outbox_index: RefCell::new(outbox_index),
            dead_pushes: Cell::new(dead_pushes),
            fault_push_record_failures: Cell::new(push_record_failures),
            presence: RefCell::new(presence),
            presence_outbox: RefCell::new(PresenceOutbox::default()),
            limiter,
            typing: RefCell::new(TypingTable::new(
                std::time::Duration::from_millis(typing_ttl_ms),
                crate::limits::TYPING_TRACKED_PER_SHARD_MAX,
            )),
            typing_expiry: Cell::new(false),
            banned: RefCell::new(Arc::new(banned)),
            owned: RefCell::new(HashMap::new()),
            channel_tick: Cell::new(0),
            channels_sweep_at: Cell::new(max_idle_channels),
            channels_idled: Cell::new(0),
            usernames: RefCell::new(HashMap::new()),
            user_ids: RefCell::new(HashMap::new()),
            directs: RefCell::new(HashMap::new()),
            accounts: RefCell::new(HashMap::new()),
            directs_in_flight: SingleFlight::new(),
            signups_in_flight: SingleFlight::new(),
            sends_in_flight: SingleFlight::new(),
            subscribes_in_flight: SingleFlight::new(),
            account_writes: glommio::sync::Semaphore::new(1),
            member_changes: Lines::default(),
            message_changes: Lines::default(),
            reads_in_flight: RefCell::new(HashMap::new()),
            read_lines: RefCell::new(HashMap::new()),
            push_answers: RefCell::new(HashMap::new()),
        })
    }

    /// The owner of a user or channel id.
    pub fn owner(&self, id: u64) -> ShardId {
        placement::owner(id, self.shard_count)
    }

    /// The next Snowflake id of this shard, for a record sync does not read.
    pub fn next_id(&self) -> u64 {
        self.shared.ids(self.id).next_id()
    }

    /// The next message id of this shard: it holds the node's commit
    /// frontier below it until the committer settles it, so it must go
    /// into a `WriteOp::Message` of this shard committed at once.
    pub fn next_message_id(&self) -> u64 {
        self.shared.ids(self.id).next_message_id()
    }

    /// The next id of this shard's generator that this shard also owns
    /// (one in `shard_count` is: a few tries on average). A record made
    /// with it is written by the shard that issued its id, so the shard's
    /// high-water mark covers it, and its maker never waits on another
    /// owner: asking the id's owner to make a direct channel meant holding
    /// a call permit while awaiting another shard's, and under a burst of
    /// first direct messages shards waited on each other for good.
    pub fn next_owned_id(&self) -> u64 {
        loop {
            let id = self.next_id();
            if self.owner(id) == self.id {
                return id;
            }
        }
    }

    /// The next subscription epoch of this core.
    pub fn next_subscription_epoch(&self) -> u64 {
        let epoch = self.subscription_epoch.get() + 1;
        self.subscription_epoch.set(epoch);
        epoch
    }

    /// Sends a control message to core `to` without awaiting: at once when
    /// its queue has room (most times), else from a task that waits for it.
    pub fn send_control_soon(self: &Rc<Self>, to: ShardId, request_id: u64, control: Control) {
        if let Err(control) = self.router.try_send_control(to, request_id, control) {
            let shard = self.clone();
            crate::tasks::spawn(async move {
                shard.router.send_control(to, request_id, control).await;
            })
            .detach();
        }
    }

    /// Every other shard of the node.
    pub fn others(&self) -> impl Iterator<Item = ShardId> + use<> {
        let own = self.id;
        (0..self.shard_count).map(ShardId).filter(move |shard| *shard != own)
    }

    // ---- owned channels ----

    /// Runs `visit` on an owned channel's state, loading it from storage
    /// first. `None` if the channel does not exist.
    pub fn with_channel<R>(
        &self,
        id: ChannelId,
        visit: impl FnOnce(&mut ChannelState) -> R,
    ) -> Result<Option<R>, ApiError> {
        debug_assert_eq!(self.owner(id.0), self.id, "only the owner holds a channel");
        let loaded = !self.owned.borrow().contains_key(&id);
        if loaded {
            let Some(channel) = self.store.channel(self.id, id)? else { return Ok(None) };
            let members = self.store.members(self.id, id)?.into_iter().collect();
            self.owned.borrow_mut().entry(id).or_insert(ChannelState::new(channel, members));
        }
        let tick = self.next_channel_tick();
        let visited = self.owned.borrow_mut().get_mut(&id).map(|state| {
            state.last_used = tick;
            visit(state)
        });
        if loaded {
            self.bound_channels();
        }
        Ok(visited)
    }

    /// Records a channel just created by this owner.
    pub fn insert_channel(&self, channel: Channel, members: HashSet<UserId>) {
        let mut state = ChannelState::new(channel, members);
        state.last_used = self.next_channel_tick();
        self.owned.borrow_mut().insert(state.channel.id, state);
        self.bound_channels();
    }

    /// The next tick of the owned channels' use clock (`last_used`).
    fn next_channel_tick(&self) -> u64 {
        let tick = self.channel_tick.get() + 1;
        self.channel_tick.set(tick);
        tick
    }

    /// The last core hosting an owned channel said it hosts it no more:
    /// its state is one more that may be dropped.
    pub fn note_channel_idle(&self) {
        self.channels_idled.set(self.channels_idled.get() + 1);
        self.bound_channels();
    }

    /// Channel states in memory now.
    pub fn channels_in_memory(&self) -> usize {
        self.owned.borrow().len()
    }

    /// Keeps at most `--max-idle-channels-per-shard` evictable channel
    /// states (`ChannelState::is_evictable`) in memory, dropping the least
    /// recently used. States that cores host stay: fan-out needs their
    /// masks, and there are only as many as connected members' channels
    /// (each capped by `--max-channels-per-user`). A sweep walks the map, so
    /// it runs only once the map has grown, or that many states have turned
    /// idle, by an eighth of the bound since the last: O(1) a load or an
    /// unsubscribe, amortized, and never more than the bound and an eighth
    /// (plus one) of idle states.
    fn bound_channels(&self) {
        let max = self.config.max_idle_channels_per_shard;
        let mut owned = self.owned.borrow_mut();
        if owned.len() <= self.channels_sweep_at.get() && self.channels_idled.get() <= max / 8 {
            return;
        }
        self.channels_idled.set(0);
        let mut idle: Vec<(u64, ChannelId)> =
            owned.iter().filter(|(_, state)| state.is_evictable()).map(|(id, state)| (state.last_used, *id)).collect();
        if idle.len() > max {
            let excess = idle.len() - max;
            idle.select_nth_unstable(excess - 1);
            for (_, id) in &idle[..excess] {
                owned.remove(id);
            }
            let evicted = &self.counters.channels_evicted;
            evicted.set(evicted.get() + excess as u64);
        }
        self.channels_sweep_at.set(owned.len() + max / 8 + 1);
    }

    // ---- local fan-out ----

    /// Sends one shared frame to every core hosting a member of `channel`
    /// (`taken_at`: when this owner took the message).
    ///
    /// `with` gives what goes along to some of those cores (a sender's
    /// answer, a push check), with the request id each message carries;
    /// what names a core outside `cores`, or this one, is not sent.
    pub async fn fan_out(
        &self,
        channel: ChannelId,
        cores: u128,
        frame: Bytes,
        taken_at: Instant,
        mut with: HashMap<ShardId, (u64, DeliverWith)>,
    ) {
        for core in 0..self.shard_count {
            if cores & (1u128 << core) == 0 {
                continue;
            }
            if ShardId(core) == self.id {
                self.deliver_local(channel, &frame, taken_at);
            } else {
                let (request_id, extra) = match with.remove(&ShardId(core)) {
                    Some((request_id, extra)) => (request_id, Some(Box::new(extra))),
                    None => (0, None),
                };
                let deliver = ChannelMsg::Deliver { channel_id: channel, frame: frame.clone(), taken_at, with: extra };
                self.router.send_control(ShardId(core), request_id, Control::Channel(deliver)).await;
            }
        }
    }

    /// A channel word for every core in `cores` at once, none awaited (one
    /// waits in a task of its own only when its queue is full): `here` runs
    /// for this core's bit, and each other core gets `word()`. How events
    /// that are not messages (typing, receipts) fan out.
    pub fn to_cores_soon(self: &Rc<Self>, cores: u128, here: impl FnOnce(), word: impl Fn() -> ChannelMsg) {
        let mut here = Some(here);
        for core in 0..self.shard_count {
            if cores & (1u128 << core) == 0 {
                continue;
            }
            if ShardId(core) == self.id {
                if let Some(here) = here.take() {
                    here();
                }
            } else {
                self.send_control_soon(ShardId(core), 0, Control::Channel(word()));
            }
        }
    }

    /// Queues a frame to this core's connections in `channel`.
    pub fn deliver_local(&self, channel: ChannelId, frame: &Bytes, taken_at: Instant) {
        let queued = self.registry.borrow().deliver(channel, frame);
        self.counters.deliveries.set(self.counters.deliveries.get() + queued as u64);
        self.counters.fan_out.record(taken_at.elapsed());
    }

    /// Publishes this core's connection count (for discovery).
    pub fn count_connections(&self) {
        if let Some(count) = self.shared.connections.get(self.id.index()) {
            count.store(self.registry.borrow().len() as u64, Ordering::Relaxed);
        }
    }

    // ---- banned words ----

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
}

#[cfg(test)]
mod tests {
    use chatgw_storage::ChannelKind;

    use super::*;

    fn state() -> ChannelState {
        let channel = Channel {
            id: ChannelId(1),
            name: "c".into(),
            kind: ChannelKind::Group,
            owner_id: UserId(2),
            created_at_ms: 0,
            fan_out_on_read: false,
        };
        ChannelState::new(channel, HashSet::new())
    }

    #[test]
    fn a_cores_older_word_never_overwrites_a_newer_one() {
        let mut state = state();
        // Core 3 subscribed (epoch 5); its older answer to a membership
        // change (epoch 4, "not hosting") arrives after.
        assert!(state.hosted_by(ShardId(3), true, 5));
        assert!(!state.hosted_by(ShardId(3), false, 4));
        assert_eq!(state.cores_mask, 1 << 3);
        // A disconnect's late unsubscribe (epoch 6) against a reconnect's
        // subscribe (epoch 7) that overtook it.
        assert!(state.hosted_by(ShardId(3), true, 7));
        assert!(!state.hosted_by(ShardId(3), false, 6));
        assert_eq!(state.cores_mask, 1 << 3);
        // Each core's epochs are its own.
        assert!(state.hosted_by(ShardId(0), true, 1));
        assert!(state.hosted_by(ShardId(3), false, 8));
        assert_eq!(state.cores_mask, 1);
    }

    #[test]
    fn a_state_is_evictable_only_unhosted_and_with_no_fan_out_in_line() {
        let mut state = state();
        assert!(state.is_evictable());
        assert!(state.hosted_by(ShardId(1), true, 1));
        assert!(!state.is_evictable(), "a core hosts it");
        assert!(state.hosted_by(ShardId(1), false, 2));
        assert!(state.is_evictable());
        let line = state.fan_outs.clone();
        let ticket = line.ticket();
        drop(line);
        assert!(!state.is_evictable(), "a message holds its place in line");
        drop(ticket);
        assert!(state.is_evictable());
    }
}

#[cfg(test)]
mod outbox_tests {
    use chatgw_idgen::MessageId;
    use chatgw_storage::{OutboxEntry, StoreConfig};

    use super::*;

    #[test]
    fn the_outbox_index_is_rebuilt_from_storage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(dir.path().join("db"), 1)).unwrap();
        let mut batch = store.batch();
        for (push_id, user) in [(5, 1), (7, 2), (9, 1)] {
            let entry = OutboxEntry {
                push_id,
                user_id: UserId(user),
                channel_id: ChannelId(3),
                message_id: MessageId(push_id),
                created_at_ms: 1,
            };
            batch.put_outbox(ShardId(0), &entry).unwrap();
        }
        store.write(batch).unwrap();
        let mut index = index_outbox(&store, ShardId(0)).unwrap();
        assert_eq!((index.len(), index.of(UserId(1)), index.of(UserId(2))), (3, 2, 1));
        assert_eq!(index.make_room(UserId(1), 2), vec![5], "the oldest of the user's goes first");
    }
}
