//! The generator: strictly increasing Snowflake ids for one worker.

use crate::bits::{EPOCH_MS, SEQUENCE_BITS, SEQUENCE_PER_MS, TIME_MAX_MS, WORKER_BITS};
use crate::clock::{Clock, SystemClock};
use crate::layout::{Layout, LayoutError, WorkerId};

/// Clock reads spent waiting for the next millisecond once a millisecond's
/// 4,096 ids are used, before the generator moves on by its logical clock.
/// A real clock ticks long before this (a read costs ~20 ns); the bound only
/// stops a stuck clock from stalling the caller.
const NEXT_MS_CLOCK_READS_MAX: u32 = 1 << 16;

/// Makes Snowflake ids for one worker (one node and shard).
///
/// Ids are strictly increasing and never repeat for the life of the
/// generator, whatever the clock does:
/// - the clock moving forward starts a new millisecond at sequence 0;
/// - the clock standing still or stepping back keeps the last millisecond
///   and counts the sequence up (a logical clock: no waiting for the wall
///   clock to catch up);
/// - a millisecond's 4,096 ids used up moves on to the next millisecond,
///   waiting at most until the wall clock ticks (under 1 ms) when it is in
///   that millisecond, and not at all when the logical clock is ahead.
///
/// A generator is not `Sync`: one per shard, owned by that shard's core.
#[derive(Debug)]
pub struct Generator<C: Clock = SystemClock> {
    clock: C,
    worker_field: u64,
    /// Milliseconds since [`EPOCH_MS`] of the last id made.
    last_ms: u64,
    /// Sequence of the last id made within `last_ms`.
    sequence: u64,
    last_id: u64,
    /// The earliest millisecond a later id may carry (set by [`Generator::fence`]).
    fenced_ms: u64,
}

impl Generator<SystemClock> {
    /// A generator for `worker` on the system clock.
    pub fn new(layout: Layout, worker: WorkerId) -> Result<Self, LayoutError> {
        Self::with_clock(layout, worker, SystemClock)
    }
}

impl<C: Clock> Generator<C> {
    /// A generator for `worker` reading `clock`.
    pub fn with_clock(layout: Layout, worker: WorkerId, clock: C) -> Result<Self, LayoutError> {
        Ok(Generator {
            clock,
            worker_field: layout.worker_bits(worker)? << SEQUENCE_BITS,
            last_ms: 0,
            // As if the last sequence of millisecond 0 were taken, so that
            // the first id is at a fresh millisecond.
            sequence: SEQUENCE_PER_MS - 1,
            last_id: 0,
            fenced_ms: 0,
        })
    }

    /// Makes sure every later id is greater than `id` (for example the
    /// largest id already stored), so that a clock that stepped back across
    /// a restart cannot repeat an id. `id` may come from any worker: its
    /// whole millisecond counts as used, so the next id starts a later one.
    pub fn resume_after(&mut self, id: u64) {
        let id_ms = id >> (WORKER_BITS + SEQUENCE_BITS);
        if id_ms >= self.last_ms {
            self.last_ms = id_ms;
            self.sequence = SEQUENCE_PER_MS - 1;
        }
        self.last_id = self.last_id.max(id);
    }

    /// The next id.
    ///
    /// # Panics
    /// When the logical clock passes the format's last millisecond, in
    /// 2095: the id space is then used up.
    pub fn next_id(&mut self) -> u64 {
        let now_ms = self.read_clock().max(self.fenced_ms);
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.sequence = 0;
        } else if self.sequence + 1 < SEQUENCE_PER_MS {
            self.sequence += 1;
        } else {
            self.last_ms = self.next_millisecond(now_ms);
            self.sequence = 0;
        }
        assert!(self.last_ms <= TIME_MAX_MS, "Snowflake id space used up");
        let id = (self.last_ms << (WORKER_BITS + SEQUENCE_BITS)) | self.worker_field | self.sequence;
        debug_assert!(id > self.last_id, "ids only grow");
        self.last_id = id;
        id
    }

    /// The largest id this generator can promise never to make from now on:
    /// every later id is greater. With the clock ahead of the last id this
    /// is the id just below the current millisecond's first (and the
    /// generator keeps to that millisecond or later, whatever the clock
    /// does next); otherwise the last id made.
    ///
    /// A shard with nothing in flight answers this as its frontier: no id
    /// at or below it can still appear.
    pub fn fence(&mut self) -> u64 {
        let now_ms = self.read_clock().max(self.fenced_ms);
        if now_ms > self.last_ms {
            self.fenced_ms = now_ms;
            ((now_ms << (WORKER_BITS + SEQUENCE_BITS)) | self.worker_field) - 1
        } else {
            self.last_id
        }
    }

    /// Like [`fence`](Self::fence), and at least `floor` (an id made by any
    /// worker) where that costs at most a millisecond ahead of the clock:
    /// the generator moves on to the millisecond after `floor`'s, if that is
    /// no later than the clock's next one. A shard with nothing in flight
    /// does this so that a message another shard just stored, in the
    /// current millisecond, need not wait for the clock to tick before sync
    /// may return it. The logical clock never runs more than one
    /// millisecond ahead of the wall clock for it.
    pub fn fence_above(&mut self, floor: u64) -> u64 {
        let fence = self.fence();
        if fence >= floor {
            return fence;
        }
        let floor_ms = floor >> (WORKER_BITS + SEQUENCE_BITS);
        let ms = (floor_ms + 1).min(self.read_clock() + 1).min(TIME_MAX_MS);
        if ms > self.last_ms {
            self.fenced_ms = self.fenced_ms.max(ms);
        }
        self.fence()
    }

    /// The last id this generator made or was resumed after.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    fn read_clock(&mut self) -> u64 {
        self.clock.now_unix_ms().saturating_sub(EPOCH_MS).min(TIME_MAX_MS)
    }

    /// The millisecond to move to once `last_ms` has no sequence left.
    fn next_millisecond(&mut self, mut now_ms: u64) -> u64 {
        for _ in 0..NEXT_MS_CLOCK_READS_MAX {
            if now_ms > self.last_ms {
                return now_ms;
            }
            if now_ms < self.last_ms {
                // The logical clock is ahead of the wall clock (it stepped
                // back): move on without waiting for it.
                return self.last_ms + 1;
            }
            std::hint::spin_loop();
            now_ms = self.read_clock();
        }
        self.last_ms + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::max_id_at;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn worker(node: u16, shard: u16) -> WorkerId {
        WorkerId { node, shard }
    }

    /// A clock that plays `readings` (offsets from the epoch) and then keeps
    /// ticking forward one millisecond per read.
    fn scripted(readings: Vec<u64>) -> impl FnMut() -> u64 {
        let mut iter = readings.into_iter();
        let mut last = 0;
        move || {
            last = iter.next().unwrap_or(last + 1);
            EPOCH_MS + last
        }
    }

    #[test]
    fn a_millisecond_holds_4096_ids_then_moves_on() {
        let layout = Layout::default();
        let mut generator = Generator::with_clock(layout, worker(1, 2), || EPOCH_MS + 10).unwrap();
        let ids: Vec<u64> = (0..5000).map(|_| generator.next_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(layout.decode(ids[0]).unix_ms, EPOCH_MS + 10);
        assert_eq!(layout.decode(ids[4095]).sequence, 4095);
        let moved = layout.decode(ids[4096]);
        assert_eq!((moved.unix_ms, moved.sequence), (EPOCH_MS + 11, 0));
        assert_eq!((moved.node, moved.shard), (1, 2));
    }

    #[test]
    fn a_clock_step_back_keeps_ids_growing_without_waiting() {
        let layout = Layout::default();
        let mut generator =
            Generator::with_clock(layout, worker(0, 0), scripted(vec![1000, 1000, 10, 11, 12])).unwrap();
        let ids: Vec<u64> = (0..5).map(|_| generator.next_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        // Still stamped at the logical millisecond 1000.
        assert_eq!(layout.decode(ids[4]).unix_ms, EPOCH_MS + 1000);
    }

    #[test]
    fn resume_after_a_stored_id_never_repeats_it() {
        let layout = Layout::default();
        let stored = max_id_at(EPOCH_MS + 500);
        let mut generator = Generator::with_clock(layout, worker(0, 0), || EPOCH_MS + 500).unwrap();
        generator.resume_after(stored);
        let next = generator.next_id();
        assert!(next > stored, "{next} <= {stored}");
    }

    #[test]
    fn ten_million_ids_from_four_threads_have_no_duplicate() {
        const THREADS: u16 = 4;
        const PER_THREAD: usize = 2_500_000;
        let handles: Vec<_> = (0..THREADS)
            .map(|shard| {
                std::thread::spawn(move || {
                    let mut generator = Generator::new(Layout::default(), worker(3, shard)).unwrap();
                    let ids: Vec<u64> = (0..PER_THREAD).map(|_| generator.next_id()).collect();
                    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
                    ids
                })
            })
            .collect();
        let mut seen = HashSet::with_capacity(THREADS as usize * PER_THREAD);
        for handle in handles {
            for id in handle.join().unwrap() {
                assert!(seen.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(seen.len(), THREADS as usize * PER_THREAD);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn ids_strictly_increase_under_any_clock(
            readings in proptest::collection::vec(0u64..20_000, 1..400),
            count in 1usize..12_000,
        ) {
            let mut generator = Generator::with_clock(Layout::default(), worker(2, 5), scripted(readings)).unwrap();
            let mut last = 0;
            for _ in 0..count {
                let id = generator.next_id();
                prop_assert!(id > last, "{} after {}", id, last);
                prop_assert!(id < 1 << 63);
                last = id;
            }
        }

        #[test]
        fn generators_of_distinct_workers_never_collide(
            readings in proptest::collection::vec(0u64..50, 1..100),
            count in 1usize..6_000,
        ) {
            let mut first = Generator::with_clock(Layout::default(), worker(0, 1), scripted(readings.clone())).unwrap();
            let mut second = Generator::with_clock(Layout::default(), worker(0, 2), scripted(readings)).unwrap();
            let mut seen = HashSet::new();
            for _ in 0..count {
                prop_assert!(seen.insert(first.next_id()));
                prop_assert!(seen.insert(second.next_id()));
            }
        }

        #[test]
        fn no_id_after_a_fence_is_at_or_below_it(
            readings in proptest::collection::vec(0u64..2_000, 1..300),
            steps in proptest::collection::vec(0u8..4, 1..2_000),
        ) {
            let mut generator = Generator::with_clock(Layout::default(), worker(1, 3), scripted(readings)).unwrap();
            let mut fence = 0;
            let mut last = 0;
            for step in steps {
                if step == 0 {
                    let next = generator.fence();
                    prop_assert!(next >= last, "a fence {} below the last id {}", next, last);
                    fence = fence.max(next);
                } else {
                    let id = generator.next_id();
                    prop_assert!(id > fence, "{} at or below the fence {}", id, fence);
                    prop_assert!(id > last);
                    last = id;
                }
            }
        }

        #[test]
        fn fence_above_reaches_a_floor_of_this_millisecond_and_no_later_id_is_below_it(
            steps in proptest::collection::vec((0u8..4, 0u64..40), 1..2_000),
        ) {
            let layout = Layout::default();
            let now = std::rc::Rc::new(std::cell::Cell::new(1_000u64));
            let clock = now.clone();
            let mut generator = Generator::with_clock(layout, worker(1, 3), move || EPOCH_MS + clock.get()).unwrap();
            let mut fence = 0;
            for (kind, value) in steps {
                match kind {
                    0 => {
                        // A floor from this millisecond or an earlier one.
                        let floor = max_id_at(EPOCH_MS + now.get().saturating_sub(value % 3));
                        let fenced_before = generator.fenced_ms;
                        let next = generator.fence_above(floor);
                        if generator.last_ms <= now.get() {
                            prop_assert!(next >= floor, "fence {} below a floor {} it could reach", next, floor);
                        }
                        prop_assert!(generator.fenced_ms <= fenced_before.max(now.get() + 1), "ran ahead");
                        fence = fence.max(next);
                    }
                    1 => {
                        let id = generator.next_id();
                        prop_assert!(id > fence, "{} at or below the fence {}", id, fence);
                    }
                    2 => now.set(now.get() + value % 3),
                    _ => now.set(now.get().saturating_sub(value % 4)),
                }
            }
        }

        #[test]
        fn resume_after_any_id_makes_larger_ids(stored in 0u64..(1 << 63), now in 0u64..(1 << 41)) {
            let mut generator = Generator::with_clock(Layout::default(), worker(5, 9), move || EPOCH_MS + now).unwrap();
            generator.resume_after(stored);
            let first = generator.next_id();
            prop_assert!(first > stored);
            prop_assert!(generator.next_id() > first);
        }
    }
}
