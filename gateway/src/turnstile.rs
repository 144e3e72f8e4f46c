//! Turns in the order tickets were taken, on one core: what keeps a
//! channel's fan-outs in id order when the tasks that make them wake in
//! another order (one waits for room to answer its sender on another core
//! while a later one is ready to deliver); and [`Lines`], a turnstile per
//! key, for work on one thing that must not interleave (a channel's
//! membership changes).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::poll_fn;
use std::hash::Hash;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Hands out tickets and lets their holders through one at a time, in
/// ticket order. A ticket dropped without its turn is skipped when its turn
/// comes, so a failed or cancelled holder never stops the line.
#[derive(Debug, Default)]
pub struct Turnstile {
    next_ticket: Cell<u64>,
    /// The ticket whose turn it is.
    serving: Cell<u64>,
    /// Tickets above `serving` already done (dropped early).
    done: RefCell<BTreeSet<u64>>,
    waiting: RefCell<Vec<Waker>>,
}

/// A place in a [`Turnstile`]'s line; dropping it ends its turn (or gives
/// it up).
#[derive(Debug)]
pub struct Ticket {
    turnstile: Rc<Turnstile>,
    number: u64,
}

impl Turnstile {
    /// The next place in line.
    pub fn ticket(self: &Rc<Self>) -> Ticket {
        let number = self.next_ticket.get();
        self.next_ticket.set(number + 1);
        Ticket { turnstile: self.clone(), number }
    }

    /// Whether every ticket taken is done: no one is in line.
    pub fn is_idle(&self) -> bool {
        self.serving.get() == self.next_ticket.get()
    }

    /// Tickets taken and not yet done.
    #[cfg(test)]
    fn waiting(&self) -> u64 {
        self.next_ticket.get() - self.serving.get() - self.done.borrow().len() as u64
    }

    fn finish(&self, number: u64) {
        if number != self.serving.get() {
            self.done.borrow_mut().insert(number);
            return;
        }
        let mut serving = number + 1;
        let mut done = self.done.borrow_mut();
        while done.remove(&serving) {
            serving += 1;
        }
        self.serving.set(serving);
        drop(done);
        for waker in self.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

impl Ticket {
    /// Waits until every earlier ticket is done: the holder's turn.
    pub async fn turn(&self) {
        poll_fn(|cx| {
            if self.turnstile.serving.get() == self.number {
                Poll::Ready(())
            } else {
                self.turnstile.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.turnstile.finish(self.number);
    }
}

/// A line per key on one core: holders of one key pass one at a time, in
/// the order they joined; keys with no one in line take no memory.
#[derive(Debug)]
pub struct Lines<K> {
    lines: RefCell<HashMap<K, Rc<Turnstile>>>,
}

impl<K> Default for Lines<K> {
    fn default() -> Self {
        Lines { lines: RefCell::new(HashMap::new()) }
    }
}

/// A place in one key's line of a [`Lines`]; dropping it ends its turn (or
/// gives it up), and forgets the line once no one is in it.
#[derive(Debug)]
pub struct Place<'a, K: Eq + Hash + Clone> {
    lines: &'a Lines<K>,
    key: K,
    ticket: Option<Ticket>,
}

impl<K: Eq + Hash + Clone> Lines<K> {
    /// Joins `key`'s line now (no await: the place is taken in the order
    /// of the calls).
    pub fn join(&self, key: K) -> Place<'_, K> {
        let ticket = self.lines.borrow_mut().entry(key.clone()).or_default().ticket();
        Place { lines: self, key, ticket: Some(ticket) }
    }
}

impl<K: Eq + Hash + Clone> Place<'_, K> {
    /// Waits until everyone who joined the key's line before is done.
    pub async fn turn(&self) {
        if let Some(ticket) = &self.ticket {
            ticket.turn().await;
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for Place<'_, K> {
    fn drop(&mut self) {
        drop(self.ticket.take());
        let mut lines = self.lines.lines.borrow_mut();
        if lines.get(&self.key).is_some_and(|line| line.is_idle()) {
            lines.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn holders_pass_in_ticket_order_whatever_order_they_wake_in() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let turnstile = Rc::new(Turnstile::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let tickets: Vec<Ticket> = (0..5).map(|_| turnstile.ticket()).collect();
            let mut tasks = Vec::new();
            // Spawned last ticket first; the third gives up its place.
            for (number, ticket) in tickets.into_iter().enumerate().rev() {
                let order = order.clone();
                tasks.push(glommio::spawn_local(async move {
                    if number == 2 {
                        drop(ticket);
                        return;
                    }
                    ticket.turn().await;
                    order.borrow_mut().push(number);
                    // Hold the turn across an await: no one passes.
                    glommio::yield_if_needed().await;
                    futures_lite::future::yield_now().await;
                    drop(ticket);
                }));
            }
            for task in tasks {
                task.await;
            }
            assert_eq!(*order.borrow(), vec![0, 1, 3, 4]);
            assert_eq!(turnstile.waiting(), 0);
        });
    }

    #[test]
    fn a_ticket_dropped_out_of_turn_is_skipped_later() {
        let turnstile = Rc::new(Turnstile::default());
        let first = turnstile.ticket();
        let second = turnstile.ticket();
        let third = turnstile.ticket();
        drop(second);
        assert_eq!(turnstile.waiting(), 2);
        drop(first);
        assert_eq!(turnstile.serving.get(), 2, "the second was skipped");
        drop(third);
        assert_eq!(turnstile.waiting(), 0);
    }

    #[test]
    fn a_key_s_holders_pass_one_at_a_time_and_its_line_is_forgotten() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let lines: Lines<u32> = Lines::default();
            let log = RefCell::new(Vec::new());
            // Places taken in order before any holder runs; each holds its
            // turn across an await, when the others are polled.
            let holders: Vec<_> = (0..3)
                .map(|n| {
                    let (place, log) = (lines.join(7), &log);
                    async move {
                        place.turn().await;
                        log.borrow_mut().push(format!("start {n}"));
                        futures_lite::future::yield_now().await;
                        log.borrow_mut().push(format!("end {n}"));
                    }
                })
                .collect();
            let other = async {
                // Another key is not held up by key 7's line.
                let place = lines.join(8);
                place.turn().await;
                log.borrow_mut().push("other".to_string());
            };
            futures_lite::future::zip(futures_util::future::join_all(holders), other).await;
            let log = log.borrow();
            let sevens: Vec<&String> = log.iter().filter(|entry| *entry != "other").collect();
            let expected: Vec<String> = (0..3).flat_map(|n| [format!("start {n}"), format!("end {n}")]).collect();
            assert_eq!(sevens, expected.iter().collect::<Vec<_>>());
            assert!(log.contains(&"other".to_string()));
            assert!(lines.lines.borrow().is_empty(), "no line is kept once empty");
        });
    }
}
