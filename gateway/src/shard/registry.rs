//! The connections of one core: their outbound queues, and the local index
//! of which connections belong to which users and channels. Deliveries
//! arrive here as one shared frame per channel and cost O(local members);
//! every change to the indexes (a join, a leave, a watch) is O(1), so a
//! user in 10,000 channels costs O(10,000) at connect, not O(n²).
//!
//! The sets hash with fixed SipHash keys and no per-set random state (16
//! bytes less per set, two per connection): their keys (channel, user and
//! connection ids) are made by the server, never chosen by a client.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;

use bytes::Bytes;
use chatgw_idgen::{ChannelId, UserId};
use slab::Slab;

use crate::limits;
use crate::protocol::close::CloseReason;
use crate::protocol::frame;
use crate::route::ConnKey;

/// A set of server-made ids: a hasher without state, so an empty set is
/// 32 bytes and allocates nothing.
pub type IdSet<T> = HashSet<T, BuildHasherDefault<DefaultHasher>>;

/// What a connection still has to write.
#[derive(Debug, Default)]
struct Outbound {
    queue: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    front_offset: usize,
    queued_bytes: usize,
    /// Set once a close frame is queued: nothing more goes out after it.
    closing: Option<CloseReason>,
    /// Set once the session ended: nothing will be written any more.
    ended: bool,
    /// Set while the socket takes less than it is offered (or nothing):
    /// when it last took a byte (ms since the epoch); 0 when it took a
    /// whole offer. While set, the socket is offered the front frame alone.
    stalled_since_ms: u64,
    /// When the close frame was queued (ms since the epoch).
    closing_since_ms: u64,
    /// Set when a closing connection's peer took nothing for too long:
    /// the session drops the socket without waiting for the close frame
    /// to go out.
    abandoned: bool,
    waker: Option<Waker>,
    /// A reply waiting for room in the queue (one read at a time).
    room_waker: Option<Waker>,
}

/// One WebSocket connection, as the rest of its core sees it.
#[derive(Debug)]
pub struct Conn {
    /// Its key in the registry.
    pub key: ConnKey,
    /// The user.
    pub user_id: UserId,
    /// The username.
    pub username: Rc<str>,
    /// The device.
    pub device: Box<str>,
    /// The client's address.
    pub remote: SocketAddr,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// Channels this connection receives (the local index's other side).
    pub channels: RefCell<IdSet<ChannelId>>,
    /// Users whose presence this connection subscribed to.
    pub watching: RefCell<IdSet<UserId>>,
    /// Commands being worked on.
    pub in_flight: Cell<usize>,
    /// When a frame last arrived, ms since the Unix epoch.
    pub last_active_ms: Cell<u64>,
    /// When its token expires, ms since the Unix epoch (the connection is
    /// closed then).
    pub token_expires_ms: Cell<u64>,
    outbound: RefCell<Outbound>,
}

impl Conn {
    /// A connection with nothing queued, joined or watched yet.
    fn new(
        key: ConnKey,
        user_id: UserId,
        username: Rc<str>,
        device: Box<str>,
        remote: SocketAddr,
        now_ms: u64,
    ) -> Self {
        Conn {
            key,
            user_id,
            username,
            device,
            remote,
            connected_at_ms: now_ms,
            channels: RefCell::new(IdSet::default()),
            watching: RefCell::new(IdSet::default()),
            in_flight: Cell::new(0),
            last_active_ms: Cell::new(now_ms),
            token_expires_ms: Cell::new(u64::MAX),
            outbound: RefCell::new(Outbound::default()),
        }
    }

    /// A connection that is never registered: the conformance echo's
    /// (`--conformance-echo`), which has no user, joins nothing and is in
    /// no index. Its key is one no registered connection has.
    pub fn unregistered(remote: SocketAddr, now_ms: u64) -> Rc<Conn> {
        Rc::new(Conn::new(usize::MAX, UserId(0), Rc::from(""), "echo".into(), remote, now_ms))
    }

    /// Queues a frame. If the queue would pass its byte bound, the client is
    /// a slow consumer: the queue is dropped and the connection closes with
    /// 1008 (the client recovers with `sync`). Returns false once closing.
    pub fn push(&self, frame: Bytes) -> bool {
        let mut outbound = self.outbound.borrow_mut();
        if outbound.closing.is_some() {
            return false;
        }
        if !outbound.queue.is_empty() && outbound.queued_bytes + frame.len() > limits::OUTBOUND_QUEUE_BYTES_MAX {
            drop(outbound);
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        outbound.queued_bytes += frame.len();
        let was_empty = outbound.queue.is_empty();
        outbound.queue.push_back(frame);
        // Only the first frame wakes the session: with frames queued it is
        // either running or waiting for its socket to take more, and its
        // socket wakes it then. (Waking it for every frame made a client
        // that never reads cost a gather of 64 KiB per delivery.)
        // The wake waits for the tasks ready now (`tasks::wake_soon`), so
        // that the frames they queue go out in the same write.
        if was_empty && let Some(waker) = outbound.waker.take() {
            crate::tasks::wake_soon(waker);
        }
        true
    }

    /// Queues a close frame after what is being written and stops queueing.
    /// For a slow consumer, frames not yet started are dropped first.
    pub fn close(&self, reason: CloseReason) {
        let mut outbound = self.outbound.borrow_mut();
        if outbound.closing.is_some() {
            return;
        }
        if reason == CloseReason::SlowConsumer {
            // Keep only a frame already partly written (cutting it would
            // corrupt the stream), then the close.
            let keep = usize::from(outbound.front_offset > 0);
            outbound.queue.truncate(keep);
            outbound.queued_bytes = outbound.queue.iter().map(Bytes::len).sum();
        }
        let close = frame::close(reason);
        outbound.queued_bytes += close.len();
        outbound.queue.push_back(close);
        outbound.closing = Some(reason);
        outbound.closing_since_ms = crate::clock::now_ms();
        if let Some(waker) = outbound.waker.take() {
            waker.wake();
        }
        if let Some(waker) = outbound.room_waker.take() {
            waker.wake();
        }
    }

    /// Marks the session ended (its socket is gone): a reply waiting for
    /// room stops waiting.
    pub fn end(&self) {
        let mut outbound = self.outbound.borrow_mut();
        outbound.ended = true;
        if let Some(waker) = outbound.room_waker.take() {
            waker.wake();
        }
    }

    /// Waits until `bytes` more fit under the queue's bound (or the queue
    /// is empty), so that a reply the client asked for never makes it a
    /// slow consumer; false once the connection is closing or ended.
    pub async fn room_for(&self, bytes: usize) -> bool {
        std::future::poll_fn(|cx| {
            let mut outbound = self.outbound.borrow_mut();
            if outbound.closing.is_some() || outbound.ended {
                return std::task::Poll::Ready(false);
            }
            if outbound.queue.is_empty() || outbound.queued_bytes + bytes <= limits::OUTBOUND_QUEUE_BYTES_MAX {
                return std::task::Poll::Ready(true);
            }
            outbound.room_waker = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }

    /// Why the connection is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.outbound.borrow().closing
    }

    /// Wakes the session (a command finished, say).
    pub fn wake(&self) {
        if let Some(waker) = self.outbound.borrow_mut().waker.take() {
            waker.wake();
        }
    }

    /// Remembers the session's waker for the next push.
    pub fn set_waker(&self, waker: &Waker) {
        let mut outbound = self.outbound.borrow_mut();
        match &outbound.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => outbound.waker = Some(waker.clone()),
        }
    }

    /// The bytes to write next, if any (the unwritten part of the front frame).
    pub fn front(&self) -> Option<Bytes> {
        let outbound = self.outbound.borrow();
        outbound.queue.front().map(|front| front.slice(outbound.front_offset..))
    }

    /// Frames queued (the front one may be partly written).
    pub fn queued_frames(&self) -> usize {
        self.outbound.borrow().queue.len()
    }

    /// Copies the queued bytes still to write, from the front on, into
    /// `buf` as far as they fit, so several frames go out in one write.
    /// Returns the bytes copied.
    pub fn gather(&self, buf: &mut [u8]) -> usize {
        let outbound = self.outbound.borrow();
        let mut filled = 0;
        let mut skip = outbound.front_offset;
        for frame in &outbound.queue {
            let part = &frame[skip..];
            skip = 0;
            let take = part.len().min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&part[..take]);
            filled += take;
            if filled == buf.len() {
                break;
            }
        }
        filled
    }

    /// Marks `written` bytes as written, from the front frame on.
    pub fn advance(&self, mut written: usize) {
        let mut outbound = self.outbound.borrow_mut();
        while written > 0 {
            let Some(front_len) = outbound.queue.front().map(Bytes::len) else { return };
            let step = written.min(front_len - outbound.front_offset);
            outbound.front_offset += step;
            written -= step;
            if outbound.front_offset >= front_len {
                outbound.queue.pop_front();
                outbound.front_offset = 0;
                outbound.queued_bytes -= front_len;
            }
        }
        if outbound.queue.is_empty() {
            // Release the ring's memory: idle connections hold none.
            outbound.queue = VecDeque::new();
        }
        if let Some(waker) = outbound.room_waker.take() {
            waker.wake();
        }
    }

    /// Whether the socket took less than it was last offered.
    pub fn write_blocked(&self) -> bool {
        self.outbound.borrow().stalled_since_ms != 0
    }

    /// Notes a write: whether the socket took any bytes, and whether it
    /// took less than it was offered.
    pub fn note_write(&self, progressed: bool, blocked: bool, now_ms: u64) {
        let mut outbound = self.outbound.borrow_mut();
        if !blocked {
            outbound.stalled_since_ms = 0;
        } else if progressed || outbound.stalled_since_ms == 0 {
            // Never 0 while blocked: 0 means not blocked.
            outbound.stalled_since_ms = now_ms.max(1);
        }
    }

    /// Whether its socket has taken nothing since before `cutoff_ms` while
    /// frames wait (a peer that stopped reading).
    pub fn stalled_before(&self, cutoff_ms: u64) -> bool {
        let outbound = self.outbound.borrow();
        outbound.stalled_since_ms != 0 && outbound.stalled_since_ms < cutoff_ms && !outbound.queue.is_empty()
    }

    /// Whether it has been closing since before `cutoff_ms` with its close
    /// frame still unsent.
    pub fn closing_before(&self, cutoff_ms: u64) -> bool {
        let outbound = self.outbound.borrow();
        outbound.closing.is_some() && outbound.closing_since_ms < cutoff_ms && !outbound.queue.is_empty()
    }

    /// Gives up on a closing connection whose peer takes nothing: its
    /// session drops the socket.
    pub fn abandon(&self) {
        let mut outbound = self.outbound.borrow_mut();
        outbound.abandoned = true;
        if let Some(waker) = outbound.waker.take() {
            waker.wake();
        }
    }

    /// Whether the session should drop the socket now (see `abandon`).
    pub fn abandoned(&self) -> bool {
        self.outbound.borrow().abandoned
    }

    /// Whether everything queued has been written.
    pub fn drained(&self) -> bool {
        self.outbound.borrow().queue.is_empty()
    }
}

/// The connections of this core and the local indexes over them.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Slab<Rc<Conn>>,
    by_user: HashMap<UserId, Vec<ConnKey>>,
    by_channel: HashMap<ChannelId, IdSet<ConnKey>>,
    /// Presence subscriptions: watched user → subscribed connections.
    watchers: HashMap<UserId, IdSet<ConnKey>>,
}

/// What removing a connection leaves without a local connection.
#[derive(Debug, Default)]
pub struct Emptied {
    /// Channels it was the last local member connection of.
    pub channels: Vec<ChannelId>,
    /// Users it was the last local presence subscriber of.
    pub watched: Vec<UserId>,
}

impl Registry {
    /// Adds a connection of `user_id` (not yet in any channel).
    pub fn add(
        &mut self,
        user_id: UserId,
        username: Rc<str>,
        device: Box<str>,
        remote: SocketAddr,
        now_ms: u64,
    ) -> Rc<Conn> {
        let entry = self.conns.vacant_entry();
        let conn = Rc::new(Conn::new(entry.key(), user_id, username, device, remote, now_ms));
        entry.insert(conn.clone());
        self.by_user.entry(user_id).or_default().push(conn.key);
        conn
    }

    /// Whether `conn` is registered here now: its slot holds this very
    /// connection, not one that reused the slot after it was removed.
    pub fn holds(&self, conn: &Conn) -> bool {
        self.conns.get(conn.key).is_some_and(|held| std::ptr::eq(&**held, conn))
    }

    /// Puts a connection in a channel's local index. Returns true when it
    /// is the channel's first local connection (the core must subscribe).
    /// A connection already removed joins nothing: a command can outlive
    /// its connection, and its slot may hold another one by then.
    pub fn join_channel(&mut self, conn: &Conn, channel: ChannelId) -> bool {
        if !self.holds(conn) {
            return false;
        }
        if !conn.channels.borrow_mut().insert(channel) {
            return false;
        }
        let keys = self.by_channel.entry(channel).or_default();
        keys.insert(conn.key);
        keys.len() == 1
    }

    /// Takes a connection out of a channel's index. Returns true when it
    /// was the channel's last local connection (the core may unsubscribe).
    pub fn leave_channel(&mut self, conn: &Conn, channel: ChannelId) -> bool {
        if !conn.channels.borrow_mut().remove(&channel) {
            return false;
        }
        let Some(keys) = self.by_channel.get_mut(&channel) else { return false };
        keys.remove(&conn.key);
        if keys.is_empty() {
            self.by_channel.remove(&channel);
            return true;
        }
        false
    }

    /// Subscribes a connection to a user's presence. Returns true when it is
    /// the user's first local subscriber (the core must tell the owner).
    /// A connection already removed subscribes to nothing (see `join_channel`).
    pub fn watch(&mut self, conn: &Conn, user: UserId) -> bool {
        if !self.holds(conn) {
            return false;
        }
        if !conn.watching.borrow_mut().insert(user) {
            return false;
        }
        let keys = self.watchers.entry(user).or_default();
        keys.insert(conn.key);
        keys.len() == 1
    }

    /// Ends a presence subscription. Returns true when it was the user's
    /// last local subscriber (the core may tell the owner).
    pub fn unwatch(&mut self, conn: &Conn, user: UserId) -> bool {
        if !conn.watching.borrow_mut().remove(&user) {
            return false;
        }
        let Some(keys) = self.watchers.get_mut(&user) else { return false };
        keys.remove(&conn.key);
        if keys.is_empty() {
            self.watchers.remove(&user);
            return true;
        }
        false
    }

    /// Hands a presence event to every local subscriber of `user`.
    pub fn deliver_presence(&self, user: UserId, frame: &Bytes) -> usize {
        let Some(keys) = self.watchers.get(&user) else { return 0 };
        keys.iter().filter_map(|key| self.conns.get(*key)).filter(|conn| conn.push(frame.clone())).count()
    }

    /// Removes a connection; returns the channels and watched users it was
    /// the last local connection of.
    pub fn remove(&mut self, conn: &Conn) -> Emptied {
        let channels: Vec<ChannelId> = conn.channels.borrow().iter().copied().collect();
        let channels = channels.into_iter().filter(|channel| self.leave_channel(conn, *channel)).collect();
        let watching: Vec<UserId> = conn.watching.borrow().iter().copied().collect();
        let watched = watching.into_iter().filter(|user| self.unwatch(conn, *user)).collect();
        let emptied = Emptied { channels, watched };
        if let Some(keys) = self.by_user.get_mut(&conn.user_id) {
            keys.retain(|key| *key != conn.key);
            if keys.is_empty() {
                self.by_user.remove(&conn.user_id);
            }
        }
        if self.conns.contains(conn.key) {
            self.conns.remove(conn.key);
        }
        emptied
    }

    /// The local connections of a user.
    pub fn user_conns(&self, user: UserId) -> Vec<Rc<Conn>> {
        self.by_user
            .get(&user)
            .map_or_else(Vec::new, |keys| keys.iter().filter_map(|key| self.conns.get(*key).cloned()).collect())
    }

    /// Whether any local connection receives `channel`.
    pub fn hosts_channel(&self, channel: ChannelId) -> bool {
        self.by_channel.contains_key(&channel)
    }

    /// Hands one shared frame to every local connection in `channel`.
    /// Returns how many connections it was queued to.
    pub fn deliver(&self, channel: ChannelId, frame: &Bytes) -> usize {
        let Some(keys) = self.by_channel.get(&channel) else { return 0 };
        keys.iter().filter_map(|key| self.conns.get(*key)).filter(|conn| conn.push(frame.clone())).count()
    }

    /// Hands one shared frame to the local connections in `channel` that
    /// `wanted` picks. Returns how many connections it was queued to.
    pub fn deliver_to(&self, channel: ChannelId, frame: &Bytes, wanted: impl Fn(&Conn) -> bool) -> usize {
        let Some(keys) = self.by_channel.get(&channel) else { return 0 };
        keys.iter()
            .filter_map(|key| self.conns.get(*key))
            .filter(|conn| wanted(conn) && conn.push(frame.clone()))
            .count()
    }

    /// Every connection (for shutdown and sweeps).
    pub fn all(&self) -> Vec<Rc<Conn>> {
        self.conns.iter().map(|(_, conn)| conn.clone()).collect()
    }

    /// Connections that received nothing since `cutoff_ms` and are not
    /// closing already.
    pub fn silent_since(&self, cutoff_ms: u64) -> Vec<Rc<Conn>> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.last_active_ms.get() < cutoff_ms && conn.closing().is_none())
            .map(|(_, conn)| conn.clone())
            .collect()
    }

    /// Connections whose socket took nothing since before `cutoff_ms` while
    /// frames wait, not closing already.
    pub fn stalled_before(&self, cutoff_ms: u64) -> Vec<Rc<Conn>> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.closing().is_none() && conn.stalled_before(cutoff_ms))
            .map(|(_, conn)| conn.clone())
            .collect()
    }

    /// Connections closing since before `cutoff_ms` whose close frame is
    /// still unsent.
    pub fn closing_before(&self, cutoff_ms: u64) -> Vec<Rc<Conn>> {
        self.conns.iter().filter(|(_, conn)| conn.closing_before(cutoff_ms)).map(|(_, conn)| conn.clone()).collect()
    }

    /// Connections whose token expired by `now_ms` and are not closing
    /// already.
    pub fn tokens_expired(&self, now_ms: u64) -> Vec<Rc<Conn>> {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.token_expires_ms.get() <= now_ms && conn.closing().is_none())
            .map(|(_, conn)| conn.clone())
            .collect()
    }

    /// Up to `limit` connections with keys above `after`, in key order.
    pub fn after(&self, after: Option<ConnKey>, limit: usize) -> Vec<Rc<Conn>> {
        let start = after.map_or(0, |key| key + 1);
        self.conns.iter().filter(|(key, _)| *key >= start).take(limit).map(|(_, conn)| conn.clone()).collect()
    }

    /// Distinct users with a connection here.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    /// How many connections the core holds.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the core holds no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40_000))
    }

    #[test]
    fn index_tracks_first_and_last_local_members() {
        let mut registry = Registry::default();
        let a = registry.add(UserId(1), "a".into(), "d".into(), remote(), 0);
        let b = registry.add(UserId(2), "b".into(), "d".into(), remote(), 0);
        let channel = ChannelId(9);
        assert!(registry.join_channel(&a, channel));
        assert!(!registry.join_channel(&a, channel), "joining twice is a no-op");
        assert!(!registry.join_channel(&b, channel));
        assert_eq!(registry.deliver(channel, &Bytes::from_static(b"x")), 2);
        assert!(!registry.leave_channel(&a, channel));
        assert_eq!(registry.remove(&b).channels, vec![channel]);
        assert!(!registry.hosts_channel(channel));
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn a_slow_consumer_is_closed_and_its_queue_dropped() {
        let mut registry = Registry::default();
        let conn = registry.add(UserId(1), "a".into(), "d".into(), remote(), 0);
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        let mut accepted = 0;
        while conn.push(chunk.clone()) {
            accepted += 1;
            assert!(accepted < 100, "the bound holds");
        }
        assert_eq!(conn.closing(), Some(CloseReason::SlowConsumer));
        // Only the close frame is left to write.
        let front = conn.front().unwrap();
        assert_eq!(front[0], 0x88);
        conn.advance(front.len());
        assert!(conn.drained());
        assert!(!conn.push(Bytes::from_static(b"late")));
    }

    #[test]
    fn only_the_first_queued_frame_wakes_the_session() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        // On an executor: the wake is put off until the ready tasks ran
        // (`tasks::wake_soon`).
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let settle = || async {
                for _ in 0..3 {
                    futures_lite::future::yield_now().await;
                }
            };
            let mut registry = Registry::default();
            let conn = registry.add(UserId(1), "a".into(), "d".into(), remote(), 0);
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            conn.set_waker(&waker);
            for _ in 0..100 {
                conn.set_waker(&waker);
                assert!(conn.push(Bytes::from_static(b"frame")));
            }
            settle().await;
            assert_eq!(count.0.load(Ordering::Relaxed), 1, "a session waiting on its socket is not woken per frame");
            conn.advance(conn.front().unwrap().len() * 100);
            assert!(conn.drained());
            conn.set_waker(&waker);
            conn.push(Bytes::from_static(b"again"));
            settle().await;
            assert_eq!(count.0.load(Ordering::Relaxed), 2, "an empty queue's first frame wakes it");
        });
    }

    #[test]
    fn gathered_frames_go_out_in_order_across_partial_writes() {
        let mut registry = Registry::default();
        let conn = registry.add(UserId(1), "a".into(), "d".into(), remote(), 0);
        for frame in [&b"abc"[..], b"defg", b"hi"] {
            assert!(conn.push(Bytes::copy_from_slice(frame)));
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        // A socket that takes 3 bytes of each write, from a 4-byte buffer.
        while !conn.drained() {
            let gathered = conn.gather(&mut buf);
            assert!(gathered > 0);
            let taken = gathered.min(3);
            out.extend_from_slice(&buf[..taken]);
            conn.advance(taken);
        }
        assert_eq!(out, b"abcdefghi");
        assert_eq!(conn.queued_frames(), 0);
        assert!(conn.push(Bytes::from_static(b"j")), "the queue takes frames again");
        assert_eq!(conn.front().as_deref(), Some(&b"j"[..]));
    }

    #[test]
    fn a_removed_connection_registers_nothing_for_the_one_that_reuses_its_slot() {
        let mut registry = Registry::default();
        let gone = registry.add(UserId(1), "a".into(), "d".into(), remote(), 0);
        registry.remove(&gone);
        // The next connection takes the freed slot.
        let next = registry.add(UserId(2), "b".into(), "d".into(), remote(), 0);
        assert_eq!(next.key, gone.key, "the slab reuses the slot");
        assert!(!registry.holds(&gone) && registry.holds(&next));
        // A command of the gone connection runs late: it registers nothing.
        assert!(!registry.watch(&gone, UserId(7)));
        assert!(!registry.join_channel(&gone, ChannelId(9)));
        assert_eq!(registry.deliver_presence(UserId(7), &Bytes::from_static(b"p")), 0);
        assert_eq!(registry.deliver(ChannelId(9), &Bytes::from_static(b"m")), 0);
        assert!(next.front().is_none(), "nothing reached the connection in the reused slot");
        assert!(!registry.hosts_channel(ChannelId(9)));
    }

    #[test]
    fn a_socket_that_takes_nothing_is_found_stalled_and_its_close_abandoned() {
        let mut registry = Registry::default();
        let conn = registry.add(UserId(1), "a".into(), "d".into(), remote(), 0);
        let reader = registry.add(UserId(2), "b".into(), "d".into(), remote(), 0);
        for conn in [&conn, &reader] {
            conn.push(Bytes::from_static(b"one"));
            conn.push(Bytes::from_static(b"two"));
        }
        // The socket took part of an offer at 1,000, then nothing.
        conn.note_write(true, true, 1_000);
        conn.note_write(false, true, 2_000);
        conn.note_write(false, true, 3_000);
        // The other took everything it was offered.
        reader.note_write(true, false, 1_000);
        assert!(conn.stalled_before(1_001) && !conn.stalled_before(1_000));
        assert!(!reader.stalled_before(10_000), "not blocked");
        let stalled = registry.stalled_before(1_500);
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].key, conn.key);
        // Progress moves the mark on.
        conn.note_write(true, true, 4_000);
        assert!(!conn.stalled_before(4_000));
        // Closed, with its close frame stuck behind: abandoned in the end.
        conn.close(CloseReason::SlowConsumer);
        assert!(registry.stalled_before(u64::MAX).is_empty(), "closing already");
        assert_eq!(registry.closing_before(u64::MAX).len(), 1);
        assert!(!conn.abandoned());
        conn.abandon();
        assert!(conn.abandoned());
    }

    #[test]
    fn silent_connections_are_found_and_closing_ones_skipped() {
        let mut registry = Registry::default();
        let quiet = registry.add(UserId(1), "a".into(), "d".into(), remote(), 1_000);
        let chatty = registry.add(UserId(2), "b".into(), "d".into(), remote(), 1_000);
        chatty.last_active_ms.set(5_000);
        let closing = registry.add(UserId(3), "c".into(), "d".into(), remote(), 1_000);
        closing.close(CloseReason::Normal);
        let silent = registry.silent_since(4_000);
        assert_eq!(silent.len(), 1);
        assert_eq!(silent[0].key, quiet.key);
        assert!(registry.silent_since(1_000).is_empty(), "active at the cutoff is not silent");
    }
}
