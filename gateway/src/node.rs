//! What every shard of one server shares: readiness, the stop flag, the
//! connection counts and the load that discovery reports, and each shard's
//! id source, whose commit frontier sync reads. Each shard writes only its
//! own connection count, when a connection comes or goes, and shard 0 writes
//! the load once a second; a shard's id source is locked by that shard once
//! per id and per commit, and by a sync twice per shard (see
//! [`crate::frontier`]). The id lease is read by each sync (an atomic) and
//! written by at most one core at a time, about once a second while
//! devices sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use std::sync::{Mutex, MutexGuard};

use chatgw_idgen::{Generator, Layout, MessageId, ShardId, WorkerId};
use chatgw_storage::Store;

use crate::admission::{AcceptRefusal, Admission, Caps, HttpCaps, HttpConnections, within_reserve};
use crate::clock::IdClock;
use crate::config::Config;
use crate::error::{ApiError, ServeError};
use crate::frontier::{self, IdSource, LeaseNeed};
use crate::hashing::HashPool;
use crate::limits::HASH_QUEUE_MAX;
use crate::throttle::{LoginThrottle, Outcome, SignupThrottle};
use crate::webhook;
use crate::workers::WorkerPool;

/// What every core of one server shares.
#[derive(Debug)]
pub struct Shared {
    /// Shards that have joined the meshes and listen.
    pub ready_shards: AtomicUsize,
    /// Whether storage writes fail now, and which failures are released.
    storage: Mutex<StorageHealth>,
    /// Storage write failures so far: a write notes this when it starts
    /// ([`Shared::write_epoch`]), and its success releases the message ids
    /// of the failures up to it (`IdSource::release_failed`).
    write_failures: AtomicU64,
    /// The id lease in force: stored, and at or above every sync cursor
    /// handed out (see [`frontier::lease_need`]).
    id_lease: AtomicU64,
    /// One lease write at a time.
    lease_writes: Mutex<()>,
    /// A lease renewal runs in the background.
    lease_renewing: AtomicBool,
    /// The operator's compactions (`/admin/v1/compact`).
    pub compaction: Compaction,
    /// Set to stop the server (signal handlers set it directly).
    pub stop: Arc<AtomicBool>,
    /// Connections per shard (for discovery).
    pub connections: Box<[AtomicU64]>,
    /// The shards' busy fraction over the last second, as `f64` bits.
    load_bits: AtomicU64,
    /// When the server started.
    pub started: Instant,
    /// Each shard's id generator with its unsettled message ids, by shard.
    ids: Box<[IdSource<IdClock>]>,
    /// The password-hashing threads.
    pub hashing: HashPool,
    /// The webhook's POSTs, when there is a webhook: one thread per shard
    /// (each shard's push worker sends one push at a time), so a webhook
    /// that hangs holds only these, never a shard's group commits.
    pub webhook_posts: Option<WorkerPool>,
    /// The webhook's HTTP client, when there is a webhook (its TLS roots
    /// read at start).
    pub webhook_agent: Option<ureq::Agent>,
    login_throttle: Mutex<LoginThrottle>,
    signup_throttle: Mutex<SignupThrottle>,
    admission: Mutex<Admission>,
    http_connections: Mutex<HttpConnections>,
    /// The open-file limit the process runs with (read at start).
    open_files_max: u64,
    /// Descriptors kept below it for what is not a client connection.
    fd_reserve: u64,
    /// WebSocket connections handed to another core and not yet started
    /// (or dropped) there: a stopping core drains them too.
    hand_offs_in_flight: AtomicUsize,
}

/// An HTTP connection [`Shared::open_http`] let in; dropping it (when the
/// connection ends, or once it has become a WebSocket, which the WebSocket
/// caps count from then on) makes its room again.
#[derive(Debug)]
pub struct HttpSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.shared.http_connections().close(self.ip);
    }
}

/// How storage writes go, under [`Shared`]'s lock.
#[derive(Debug, Default)]
struct StorageHealth {
    /// Why storage writes fail, while they do (the last failed write's
    /// error; cleared by a write that started after it and succeeded).
    failure: Option<String>,
    /// Failures up to this one have had their message ids released.
    released: u64,
}

/// A WebSocket connection [`Shared::admit`] let in; dropping it (when the
/// connection ends, or its upgrade fails) makes its room again.
#[derive(Debug)]
pub struct Admitted {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
    user: Option<chatgw_idgen::UserId>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.admission().release(self.ip, self.user);
    }
}

/// One connection counted in [`Shared::hand_offs_in_flight`] until this is
/// dropped (its session started, or the hand-off lost).
#[derive(Debug)]
pub struct HandOffInFlight {
    shared: Arc<Shared>,
}

impl Drop for HandOffInFlight {
    fn drop(&mut self) {
        self.shared.hand_offs_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A login attempt [`Shared::begin_login`] let through: it counts as a
/// failure for its account and IP until told otherwise, and dropping it
/// unresolved (the request was dropped while its hash ran, say) leaves it
/// counted as one.
#[derive(Debug)]
#[must_use = "an attempt counts as a failure until resolved"]
pub struct LoginAttempt {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
    account: Box<str>,
    resolved: bool,
}

impl LoginAttempt {
    fn finish(mut self, outcome: Outcome) {
        self.resolved = true;
        self.shared.login_throttle().finish(self.ip, &self.account, outcome, crate::clock::now_ms());
    }

    /// The password was wrong.
    pub fn failed(self) {
        self.finish(Outcome::Failed);
    }

    /// The password was right: the account's failures are cleared.
    pub fn succeeded(self) {
        self.finish(Outcome::Succeeded);
    }

    /// No password was checked (the hashing queue was full, a read
    /// failed): the attempt counts for nothing.
    pub fn untested(self) {
        self.finish(Outcome::Untested);
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if !self.resolved {
            self.shared.login_throttle().finish(self.ip, &self.account, Outcome::Failed, crate::clock::now_ms());
        }
    }
}

/// The operator's compaction of the whole store: whether one runs, and how
/// the last one ended.
#[derive(Debug, Default)]
pub struct Compaction {
    state: Mutex<CompactionState>,
}

#[derive(Debug, Default)]
struct CompactionState {
    running: bool,
    /// The last one's outcome, how long it took, and when it ended (ms
    /// since the Unix epoch).
    last: Option<(Result<(), String>, std::time::Duration, u64)>,
}

impl Compaction {
    /// Marks one running; false if one runs already.
    pub fn start(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        !std::mem::replace(&mut state.running, true)
    }

    /// Records how the running one ended.
    pub fn finish(&self, result: Result<(), String>, took: std::time::Duration) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.running = false;
        state.last = Some((result, took, crate::clock::now_ms()));
    }

    /// `{running, last?: {ok, took_ms, finished_at, error?}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut value = serde_json::json!({ "running": state.running });
        if let Some((result, took, finished_at)) = &state.last {
            let mut last = serde_json::json!({
                "ok": result.is_ok(),
                "took_ms": took.as_millis() as u64,
                "finished_at": finished_at,
            });
            if let Err(error) = result {
                last["error"] = serde_json::Value::from(error.as_str());
            }
            value["last"] = last;
        }
        value
    }
}

impl Shared {
    /// State for a server of `shard_count` shards as `config` says, taking
    /// at most `connections_max` WebSocket connections (0: no cap), in a
    /// process that may hold `open_files_max` descriptors, with the id
    /// lease `id_lease` read from the store.
    pub fn new(
        shard_count: u16,
        config: &Config,
        connections_max: usize,
        open_files_max: u64,
        id_lease: Option<MessageId>,
    ) -> Result<Self, ServeError> {
        let node_id = config.node_id;
        let caps = Caps {
            connections: connections_max,
            per_ip: config.max_connections_per_ip,
            new_per_ip_per_s: config.max_new_connections_per_ip_per_s,
            per_user: config.max_devices_per_user,
        };
        let ids = (0..shard_count)
            .map(|shard| {
                let clock = IdClock { offset_ms: config.fault_id_clock_offset_ms };
                Generator::with_clock(Layout::default(), WorkerId { node: node_id, shard }, clock).map(IdSource::new)
            })
            .collect::<Result<_, _>>()
            .map_err(|error| ServeError::Config(error.to_string()))?;
        let hashing = HashPool::new(config.hash_threads, HASH_QUEUE_MAX)?;
        let posters = usize::from(shard_count);
        let (webhook_posts, webhook_agent) = match &config.push_webhook {
            Some(_) => (Some(WorkerPool::new("chatgw-push", posters, posters)?), Some(webhook::agent(config)?)),
            None => (None, None),
        };
        Ok(Shared {
            ready_shards: AtomicUsize::new(0),
            storage: Mutex::new(StorageHealth::default()),
            write_failures: AtomicU64::new(0),
            id_lease: AtomicU64::new(id_lease.map_or(0, |lease| lease.0)),
            lease_writes: Mutex::new(()),
            lease_renewing: AtomicBool::new(false),
            compaction: Compaction::default(),
            stop: Arc::new(AtomicBool::new(false)),
            connections: (0..shard_count).map(|_| AtomicU64::new(0)).collect(),
            load_bits: AtomicU64::new(0f64.to_bits()),
            started: Instant::now(),
            ids,
            hashing,
            webhook_posts,
            webhook_agent,
            login_throttle: Mutex::new(LoginThrottle::default()),
            signup_throttle: Mutex::new(SignupThrottle::new(config.max_signups_per_ip_per_min)),
            admission: Mutex::new(Admission::new(caps)),
            hand_offs_in_flight: AtomicUsize::new(0),
            http_connections: Mutex::new(HttpConnections::new(HttpCaps {
                connections: config.max_http_connections,
                per_ip: config.max_http_connections_per_ip,
            })),
            open_files_max,
            fd_reserve: config.fd_reserve,
        })
    }

    fn storage(&self) -> MutexGuard<'_, StorageHealth> {
        self.storage.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a storage write notes as it starts, to hand back to
    /// [`note_write_ok`](Self::note_write_ok): the failures before it.
    pub fn write_epoch(&self) -> u64 {
        self.write_failures.load(Ordering::Acquire)
    }

    /// A storage write that started at `epoch` succeeded: the store is
    /// good, so the writes that failed before it can no longer land (their
    /// message ids are released, and sync may pass them), and the node is
    /// ready again unless a write failed since it started.
    pub fn note_write_ok(&self, epoch: u64) {
        let mut health = self.storage();
        if epoch >= self.write_failures.load(Ordering::Acquire) && health.failure.take().is_some() {
            tracing::warn!("storage writes succeed again");
        }
        if epoch > health.released {
            let released: usize = self.ids.iter().map(|source| source.release_failed(epoch)).sum();
            if released > 0 {
                tracing::warn!(released, "message ids of failed writes released: the store is good again");
            }
            health.released = epoch;
        }
    }

    /// A storage write failed with `error`: the node is unready (`/readyz`
    /// 503) until a later write succeeds, and the message ids it wrote for
    /// `shard` (`failed`) stay unsettled until then: the write may still
    /// be stored, so no sync cursor may pass them.
    pub fn note_write_failed(&self, error: &str, shard: ShardId, failed: Vec<u64>) {
        let mut health = self.storage();
        let epoch = self.write_failures.load(Ordering::Acquire) + 1;
        self.ids(shard).hold_failed(failed, epoch);
        self.write_failures.store(epoch, Ordering::Release);
        health.failure = Some(error.to_string());
    }

    /// Why storage writes fail, if they do now.
    pub fn storage_failure(&self) -> Option<String> {
        self.storage().failure.clone()
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a WebSocket connection from `ip` for a user's device (`None`
    /// for the conformance echo, which has no user) under the connection
    /// caps, or says which one it meets.
    pub fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        device: Option<(chatgw_idgen::UserId, &str)>,
        now_ms: u64,
    ) -> Result<Admitted, ApiError> {
        self.admission().admit(ip, device, now_ms)?;
        Ok(Admitted { shared: self.clone(), ip, user: device.map(|(user, _)| user) })
    }

    fn http_connections(&self) -> MutexGuard<'_, HttpConnections> {
        self.http_connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets in a connection just accepted from `ip` on descriptor `fd`, or
    /// says why it must be closed at once: its descriptor is within the
    /// reserve below the open-file limit, or the process or its address
    /// holds its most HTTP connections.
    pub fn open_http(self: &Arc<Self>, ip: std::net::IpAddr, fd: u64) -> Result<HttpSlot, AcceptRefusal> {
        if within_reserve(fd, self.open_files_max, self.fd_reserve) {
            return Err(AcceptRefusal::Descriptors);
        }
        self.http_connections().open(ip)?;
        Ok(HttpSlot { shared: self.clone(), ip })
    }

    /// HTTP connections accepted and not yet ended or upgraded.
    pub fn http_connections_live(&self) -> usize {
        self.http_connections().live()
    }

    /// Records where `user`'s `device` is connected now (shard, registry
    /// key); returns its older connection's place, to be closed.
    pub fn claim_device(&self, user: chatgw_idgen::UserId, device: &str, at: (u16, usize)) -> Option<(u16, usize)> {
        self.admission().claim_device(user, device, at)
    }

    /// Forgets a device's connection at `at` as it ends (unless replaced).
    pub fn release_device(&self, user: chatgw_idgen::UserId, device: &str, at: (u16, usize)) {
        self.admission().release_device(user, device, at);
    }

    /// WebSocket connections admitted and not yet ended.
    pub fn admitted(&self) -> usize {
        self.admission().live()
    }

    /// The node's signup throttle (held for one take only).
    pub fn signup_throttle(&self) -> MutexGuard<'_, SignupThrottle> {
        self.signup_throttle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn login_throttle(&self) -> MutexGuard<'_, LoginThrottle> {
        self.login_throttle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The login throttle's keys and bytes now.
    pub fn login_throttle_size(&self) -> (usize, usize) {
        let throttle = self.login_throttle();
        (throttle.keys_tracked(), throttle.bytes())
    }

    /// Checks the login throttle for a login from `ip` as `account` at
    /// `now_ms` and reserves the attempt in the same lock acquisition
    /// (`Err(wait_ms)` if it must wait): it counts as a failure until the
    /// returned attempt says how its password check came out.
    pub fn begin_login(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        account: &str,
        now_ms: u64,
    ) -> Result<LoginAttempt, u64> {
        self.login_throttle().begin(ip, account, now_ms)?;
        Ok(LoginAttempt { shared: self.clone(), ip, account: account.into(), resolved: false })
    }

    /// Shard `shard`'s id source.
    pub fn ids(&self, shard: ShardId) -> &IdSource<IdClock> {
        &self.ids[usize::from(shard.0)]
    }

    /// The id lease in force (0: none yet): every sync cursor handed out
    /// is at or below it, and it is stored.
    pub fn id_lease(&self) -> u64 {
        self.id_lease.load(Ordering::Acquire)
    }

    /// The node's commit frontier: every message at or below it that will
    /// ever be stored is stored now. Not capped by the lease: see
    /// [`sync_frontier`](Self::sync_frontier) for a cursor to hand out.
    pub fn frontier(&self) -> u64 {
        frontier::frontier(&self.ids)
    }

    /// The frontier a sync may hand out as its cursor: the commit frontier,
    /// capped by the id lease, so that no id issued after a restart is at
    /// or below it. A frontier past the lease waits for the lease to be
    /// raised (a synced write on this core's blocking thread); one close to
    /// it has the lease raised in the background. Should the write fail,
    /// the lease in force caps the answer (never an error: later syncs
    /// pick up the rest).
    pub async fn sync_frontier(self: &Arc<Self>, store: &Arc<Store>) -> u64 {
        let frontier = self.frontier();
        match frontier::lease_need(frontier, self.id_lease()) {
            LeaseNeed::Covered => {}
            LeaseNeed::RenewSoon => {
                if !self.lease_renewing.swap(true, Ordering::AcqRel) {
                    let (shared, store) = (self.clone(), store.clone());
                    crate::tasks::spawn(async move {
                        shared.raise_lease(store, frontier).await;
                        shared.lease_renewing.store(false, Ordering::Release);
                    })
                    .detach();
                }
            }
            LeaseNeed::Raise => self.raise_lease(store.clone(), frontier).await,
        }
        frontier.min(self.id_lease())
    }

    /// Raises the stored lease to cover `frontier` (and some way past it),
    /// unless it already does; on this core's blocking thread.
    async fn raise_lease(self: &Arc<Self>, store: Arc<Store>, frontier: u64) {
        let shared = self.clone();
        let result = glommio::executor().spawn_blocking(move || shared.write_lease(&store, frontier)).await;
        if let Err(error) = result {
            tracing::error!(%error, "storing the id lease");
        }
    }

    fn write_lease(&self, store: &Store, frontier: u64) -> Result<(), chatgw_storage::StorageError> {
        let _one = self.lease_writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Another core may have raised it meanwhile.
        if frontier::lease_need(frontier, self.id_lease()) == LeaseNeed::Covered {
            return Ok(());
        }
        let lease = frontier::lease_for(frontier);
        store.set_id_lease(MessageId(lease))?;
        self.id_lease.fetch_max(lease, Ordering::AcqRel);
        Ok(())
    }

    /// The shards' busy fraction (0 to 1) over the last second, from the
    /// process's CPU time.
    pub fn load(&self) -> f64 {
        f64::from_bits(self.load_bits.load(Ordering::Relaxed))
    }

    /// Sets the busy fraction (shard 0 samples it).
    pub fn set_load(&self, load: f64) {
        self.load_bits.store(load.to_bits(), Ordering::Relaxed);
    }

    /// All shards' connections now.
    pub fn connection_count(&self) -> u64 {
        self.connections.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }

    /// Counts a connection handed to another core until the returned guard
    /// is dropped.
    pub fn hand_off_started(self: &Arc<Self>) -> HandOffInFlight {
        self.hand_offs_in_flight.fetch_add(1, Ordering::AcqRel);
        HandOffInFlight { shared: self.clone() }
    }

    /// Connections handed to another core and not yet started there.
    pub fn hand_offs_in_flight(&self) -> usize {
        self.hand_offs_in_flight.load(Ordering::Acquire)
    }
}
