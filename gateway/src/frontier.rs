//! Commit frontiers: how far sync may read without skipping a message that
//! is still on its way to the disk.
//!
//! Each shard issues its message ids from one generator, so its ids grow,
//! but a shard's group commit can lag another's by a whole fsync: a
//! smaller id from one shard may become visible after a larger one from
//! another. A device that synced past the larger id would never see the
//! smaller one. So each shard keeps an [`IdSource`]: its generator and the
//! message ids it issued that are not yet settled (written, or known never
//! to be: a failed write is held until the store is good again, since it
//! may still land). Its
//! frontier is the largest id at or below which nothing of that shard can
//! still appear: one below its oldest unsettled id, or, with nothing in
//! flight, the generator's [`fence`](chatgw_idgen::Generator::fence). The
//! node's frontier is the smallest of its shards': every message at or
//! below it that will ever be stored already is, so a sync that reads
//! after taking it and returns only what is at or below it can hand the
//! frontier back as the next cursor, once the node's id lease covers it
//! ([`lease_need`]: a restart resumes the generators above the lease).
//!
//! Issuing an id and marking it unsettled happen under one lock, and so do
//! reading the pending set and fencing the generator: a reader on another
//! core cannot fall between a shard taking an id and recording it.
//! The lock is held for a few instructions, taken by its shard once per
//! message id and once per commit, and twice per shard by each sync (the
//! largest id issued anywhere, then each shard's frontier above it).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use chatgw_idgen::{Clock, Generator, Layout, SystemClock, max_id_at, min_id_at};

use crate::limits::{ID_LEASE_AHEAD_MS, ID_LEASE_RENEW_MARGIN_MS};

/// A shard's id generator with the message ids it has not settled.
#[derive(Debug)]
pub struct IdSource<C: Clock = SystemClock> {
    inner: Mutex<Inner<C>>,
}

#[derive(Debug)]
struct Inner<C: Clock> {
    generator: Generator<C>,
    /// Message ids issued whose write has not succeeded, and that may
    /// still be stored: in flight, or failed with an unknown outcome.
    unsettled: BTreeSet<u64>,
    /// The failed ones among them, with the failure's epoch (see
    /// [`IdSource::hold_failed`]), oldest failure first.
    failed: Vec<(u64, Vec<u64>)>,
}

impl<C: Clock> IdSource<C> {
    /// A source issuing from `generator`.
    pub fn new(generator: Generator<C>) -> Self {
        IdSource { inner: Mutex::new(Inner { generator, unsettled: BTreeSet::new(), failed: Vec::new() }) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C>> {
        // Nothing under the lock can panic half-way through a change, so a
        // poisoned lock still holds consistent state.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next id, for a record sync does not read (a user, a channel, a
    /// push).
    pub fn next_id(&self) -> u64 {
        self.lock().generator.next_id()
    }

    /// The next message id: unsettled, holding the frontier below it, until
    /// [`settle`](Self::settle) is called with it.
    pub fn next_message_id(&self) -> u64 {
        let mut inner = self.lock();
        let id = inner.generator.next_id();
        inner.unsettled.insert(id);
        id
    }

    /// Marks message ids written (or known never to be): the frontier may
    /// pass them. Ids that were not unsettled are ignored.
    pub fn settle(&self, ids: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        for id in ids {
            inner.unsettled.remove(&id);
        }
    }

    /// Keeps message ids whose write failed unsettled: a failed write may
    /// still be stored (a WAL record whose sync failed is replayed at the
    /// next open), so the frontier stays below them until
    /// [`release_failed`](Self::release_failed) says the store is good
    /// again. `epoch` numbers the failure (they only grow).
    pub fn hold_failed(&self, ids: Vec<u64>, epoch: u64) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.failed.push((epoch, ids));
    }

    /// Settles the ids of every failure numbered `epoch` or lower: a write
    /// that started after those failures succeeded, so the store resumed,
    /// and a failed write can no longer land (RocksDB's resume flushes the
    /// memtables and leaves the failed write's log behind). Returns how
    /// many ids it settled.
    pub fn release_failed(&self, epoch: u64) -> usize {
        let mut inner = self.lock();
        let failures = inner.failed.iter().take_while(|(failure, _)| *failure <= epoch).count();
        let released: Vec<(u64, Vec<u64>)> = inner.failed.drain(..failures).collect();
        let mut count = 0;
        for id in released.into_iter().flat_map(|(_, ids)| ids) {
            count += usize::from(inner.unsettled.remove(&id));
        }
        count
    }

    /// Message ids whose write failed and whose outcome is not known yet.
    pub fn held_failed(&self) -> usize {
        self.lock().failed.iter().map(|(_, ids)| ids.len()).sum()
    }

    /// Makes sure every later id is greater than `id` (the stored
    /// high-water mark, at start).
    pub fn resume_after(&self, id: u64) {
        self.lock().generator.resume_after(id);
    }

    /// The largest id at or below which no message of this source can still
    /// appear. With nothing in flight it reaches `floor` (another source's
    /// last id) when that costs the generator at most a millisecond ahead
    /// of the clock, so that a message just stored elsewhere need not wait
    /// for the clock to tick.
    pub fn frontier(&self, floor: u64) -> u64 {
        let mut inner = self.lock();
        match inner.unsettled.first() {
            Some(oldest) => oldest - 1,
            None => inner.generator.fence_above(floor),
        }
    }

    /// The last id this source issued.
    pub fn last_id(&self) -> u64 {
        self.lock().generator.last_id()
    }

    /// Message ids issued and not settled yet.
    pub fn unsettled(&self) -> usize {
        self.lock().unsettled.len()
    }
}

/// The frontier of a set of sources: the smallest of theirs, each idle one
/// fenced above the largest id any of them issued.
pub fn frontier<C: Clock>(sources: &[IdSource<C>]) -> u64 {
    let floor = sources.iter().map(IdSource::last_id).max().unwrap_or(0);
    sources.iter().map(|source| source.frontier(floor)).min().unwrap_or(0)
}

/// What a frontier asks of the id lease in force.
///
/// Neither the generators' fences nor the frontier are stored, and a fence
/// runs up to the clock: a cursor handed out at a fence, then a restart
/// with the clock behind it, would see every later id fall below the
/// cursor. So the node keeps a lease in storage, an id no cursor it hands
/// out passes, and its generators resume above it after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseNeed {
    /// The lease covers the frontier with room to spare.
    Covered,
    /// The lease covers the frontier, but not for much longer: raise it
    /// without waiting.
    RenewSoon,
    /// The frontier passed the lease: raise it before handing the frontier
    /// out (or hand out the lease instead).
    Raise,
}

/// Whether `lease` covers `frontier`, and for how long.
pub fn lease_need(frontier: u64, lease: u64) -> LeaseNeed {
    if frontier > lease {
        return LeaseNeed::Raise;
    }
    let lease_ms = Layout::default().decode(lease).unix_ms;
    if frontier >= min_id_at(lease_ms.saturating_sub(ID_LEASE_RENEW_MARGIN_MS)) {
        LeaseNeed::RenewSoon
    } else {
        LeaseNeed::Covered
    }
}

/// The lease to store for a frontier of `frontier`: the last id of the
/// millisecond [`ID_LEASE_AHEAD_MS`] after the frontier's.
pub fn lease_for(frontier: u64) -> u64 {
    max_id_at(Layout::default().decode(frontier).unix_ms + ID_LEASE_AHEAD_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatgw_idgen::{EPOCH_MS, Layout, WorkerId};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock every source reads, moved by the test.
    #[derive(Clone)]
    struct TestClock(Arc<AtomicU64>);

    impl Clock for TestClock {
        fn now_unix_ms(&mut self) -> u64 {
            EPOCH_MS + self.0.load(Ordering::SeqCst)
        }
    }

    fn sources(count: u16, clock: &TestClock) -> Vec<IdSource<TestClock>> {
        (0..count)
            .map(|shard| {
                let worker = WorkerId { node: 0, shard };
                IdSource::new(Generator::with_clock(Layout::default(), worker, clock.clone()).unwrap())
            })
            .collect()
    }

    #[test]
    fn the_frontier_waits_for_the_oldest_unsettled_id() {
        let clock = TestClock(Arc::new(AtomicU64::new(100)));
        let source = &sources(1, &clock)[0];
        let first = source.next_message_id();
        let second = source.next_message_id();
        assert_eq!(source.frontier(0), first - 1);
        source.settle([second]);
        assert_eq!(source.frontier(0), first - 1, "a later id settled first does not move it");
        source.settle([first]);
        assert!(source.frontier(0) >= second);
        clock.0.store(200, Ordering::SeqCst);
        let idle = source.frontier(0);
        assert!(source.next_message_id() > idle, "an idle frontier is a fence");
    }

    /// What one step of the model does.
    #[derive(Debug, Clone)]
    enum Step {
        /// A shard takes a message id and queues it for its group commit.
        Issue(u16),
        /// A shard's committer writes the oldest `n` queued messages (its
        /// queue is FIFO, so commits land in issue order per shard).
        Commit(u16, usize),
        /// A shard's write of its oldest queued message fails with an
        /// unknown outcome: it is stored later (`Land`) when `true`.
        Fail(u16, bool),
        /// The node restarts before the store resumed: failed writes that
        /// reached the log are replayed, and the new process knows of no
        /// failure (everything failed is stored or gone for good).
        Land,
        /// The device syncs from its cursor.
        Sync(usize),
        /// The wall clock moves (forward, or back).
        Clock(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u16..4).prop_map(Step::Issue),
            3 => (0u16..4, 1usize..4).prop_map(|(shard, n)| Step::Commit(shard, n)),
            1 => (0u16..4, any::<bool>()).prop_map(|(shard, lands)| Step::Fail(shard, lands)),
            1 => Just(Step::Land),
            3 => (1usize..6).prop_map(Step::Sync),
            2 => (-3i64..5).prop_map(Step::Clock),
        ]
    }

    /// The sync of `cmd::history::sync` over a model store: take the
    /// frontier, then read, return at most `limit` ids in `(cursor,
    /// frontier]`, and the next cursor.
    fn sync(sources: &[IdSource<TestClock>], stored: &BTreeMap<u64, ()>, cursor: u64, limit: usize) -> (Vec<u64>, u64) {
        let frontier = frontier(sources);
        let mut found: Vec<u64> =
            stored.range(cursor + 1..).map(|(id, _)| *id).take_while(|id| *id <= frontier).take(limit + 1).collect();
        if found.len() > limit {
            found.truncate(limit);
            let last = *found.last().expect("limit is at least 1");
            (found, last)
        } else {
            (found, frontier.max(cursor))
        }
    }

    /// The model: four shards' sources, their FIFO commit queues, the
    /// store, and one device with its cursor.
    struct Model {
        clock: TestClock,
        now: i64,
        sources: Vec<IdSource<TestClock>>,
        queues: Vec<VecDeque<u64>>,
        stored: BTreeMap<u64, ()>,
        cursor: u64,
        received: Vec<u64>,
        /// Failures so far, and up to which they are released.
        failures: u64,
        released: u64,
        /// Failed ids that reached the log and land at a restart.
        limbo: Vec<u64>,
    }

    impl Model {
        fn new(shards: u16) -> Self {
            let clock = TestClock(Arc::new(AtomicU64::new(1_000)));
            Model {
                sources: sources(shards, &clock),
                clock,
                now: 1_000,
                queues: vec![VecDeque::new(); shards as usize],
                stored: BTreeMap::new(),
                cursor: 0,
                received: Vec::new(),
                failures: 0,
                released: 0,
                limbo: Vec::new(),
            }
        }

        /// Every failure so far is settled: the store is good again.
        fn release(&mut self) {
            for source in &self.sources {
                source.release_failed(self.failures);
            }
            self.released = self.failures;
        }

        fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
            match *step {
                Step::Issue(shard) => {
                    let id = self.sources[shard as usize].next_message_id();
                    self.queues[shard as usize].push_back(id);
                }
                Step::Commit(shard, n) => {
                    let queue = &mut self.queues[shard as usize];
                    let written: Vec<u64> = queue.drain(..n.min(queue.len())).collect();
                    if written.is_empty() {
                        return Ok(());
                    }
                    // A write that succeeds after failures means the store
                    // resumed: what failed will never land.
                    if self.released < self.failures {
                        self.limbo.clear();
                        self.release();
                    }
                    for id in &written {
                        self.stored.insert(*id, ());
                    }
                    self.sources[shard as usize].settle(written);
                }
                Step::Fail(shard, lands) => {
                    if let Some(id) = self.queues[shard as usize].pop_front() {
                        self.failures += 1;
                        self.sources[shard as usize].hold_failed(vec![id], self.failures);
                        if lands {
                            self.limbo.push(id);
                        }
                    }
                }
                Step::Land => {
                    for id in self.limbo.drain(..) {
                        self.stored.insert(id, ());
                    }
                    self.release();
                }
                Step::Sync(limit) => {
                    let (ids, next) = sync(&self.sources, &self.stored, self.cursor, limit);
                    prop_assert!(next >= self.cursor, "the cursor went back");
                    self.received.extend(ids);
                    self.cursor = next;
                }
                Step::Clock(delta) => {
                    self.now = (self.now + delta).max(0);
                    self.clock.0.store(self.now as u64, Ordering::SeqCst);
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_larger_id_committed_first_is_held_back_until_the_smaller_one_lands() {
        let mut model = Model::new(2);
        // One millisecond: shard 0's id sorts below shard 1's.
        model.apply(&Step::Issue(0)).unwrap();
        model.apply(&Step::Issue(1)).unwrap();
        let (small, large) = (model.queues[0][0], model.queues[1][0]);
        assert!(small < large);
        model.apply(&Step::Commit(1, 1)).unwrap();
        model.apply(&Step::Sync(10)).unwrap();
        assert!(model.received.is_empty(), "the larger id waits for the smaller");
        assert!(model.cursor < small);
        model.apply(&Step::Commit(0, 1)).unwrap();
        model.apply(&Step::Sync(10)).unwrap();
        // Without the clock ticking: idle shard 0 moved on to the next
        // millisecond, so it can no longer take an id below the larger one.
        assert_eq!(model.received, vec![small, large]);
        model.apply(&Step::Issue(0)).unwrap();
        assert!(model.queues[0][0] > large);
    }

    #[test]
    fn a_failed_write_holds_the_frontier_until_a_later_write_succeeds() {
        let mut model = Model::new(2);
        model.apply(&Step::Issue(0)).unwrap();
        let failed = model.queues[0][0];
        // A larger id of the other shard is stored...
        model.apply(&Step::Issue(1)).unwrap();
        assert!(model.queues[1][0] > failed);
        model.apply(&Step::Commit(1, 1)).unwrap();
        // ...and the smaller one's write fails, outcome unknown.
        model.apply(&Step::Fail(0, true)).unwrap();
        assert_eq!(model.sources[0].held_failed(), 1);
        model.apply(&Step::Clock(50)).unwrap();
        model.apply(&Step::Sync(10)).unwrap();
        // ...and wait: no cursor passes the failed id while it may land.
        assert!(model.cursor < failed, "cursor {} passed the unknown id {failed}", model.cursor);
        assert!(model.received.is_empty());
        // It lands (a restart replayed it): the device gets it, in order.
        model.apply(&Step::Land).unwrap();
        assert_eq!(model.sources[0].held_failed(), 0);
        model.apply(&Step::Sync(10)).unwrap();
        assert_eq!(model.received.first(), Some(&failed));
        assert_eq!(model.received.len(), 2);
    }

    #[test]
    fn a_write_that_started_after_a_failure_releases_it() {
        let clock = TestClock(Arc::new(AtomicU64::new(100)));
        let source = &sources(1, &clock)[0];
        let first = source.next_message_id();
        source.hold_failed(vec![first], 1);
        let second = source.next_message_id();
        source.hold_failed(vec![second], 2);
        assert_eq!(source.frontier(0), first - 1);
        assert_eq!(source.release_failed(1), 1, "only the failures up to the epoch");
        assert_eq!(source.frontier(0), second - 1);
        assert_eq!(source.release_failed(2), 1);
        assert!(source.frontier(0) >= second);
        assert_eq!(source.held_failed(), 0);
    }

    #[test]
    fn a_lease_covers_its_frontier_is_renewed_near_its_end_and_raised_past_it() {
        let at = |ms: u64| chatgw_idgen::min_id_at(EPOCH_MS + ms) + 5;
        let lease = lease_for(at(10_000));
        assert!(lease >= at(10_000) && lease < at(10_000 + ID_LEASE_AHEAD_MS + 1));
        assert_eq!(lease_need(at(10_000), lease), LeaseNeed::Covered);
        assert_eq!(lease_need(at(10_000 + ID_LEASE_AHEAD_MS - ID_LEASE_RENEW_MARGIN_MS), lease), LeaseNeed::RenewSoon);
        assert_eq!(lease_need(lease, lease), LeaseNeed::RenewSoon);
        assert_eq!(lease_need(lease + 1, lease), LeaseNeed::Raise);
        assert_eq!(lease_need(at(5), 0), LeaseNeed::Raise, "no lease yet");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Over any interleaving of issues, commits, failures, clock steps
        /// and syncs on four shards, a device that only ever syncs from the
        /// cursor it was given gets every stored message exactly once, in
        /// id order.
        #[test]
        fn a_device_syncing_from_its_cursor_never_skips_a_stored_message(
            steps in proptest::collection::vec(step(), 1..400),
        ) {
            let mut model = Model::new(4);
            for step in &steps {
                model.apply(step)?;
            }
            // The node restarts (what failed lands or is gone), everything
            // left commits, time passes (beyond any millisecond a generator
            // ran ahead to), and the device catches up.
            model.apply(&Step::Land)?;
            for shard in 0..4 {
                model.apply(&Step::Commit(shard, usize::MAX))?;
            }
            model.apply(&Step::Clock(100_000))?;
            for _ in 0..model.stored.len() + 2 {
                model.apply(&Step::Sync(5))?;
            }
            let all: Vec<u64> = model.stored.keys().copied().collect();
            prop_assert_eq!(&model.received, &all);
        }
    }
}
