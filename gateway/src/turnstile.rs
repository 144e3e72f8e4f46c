//! Turns in the order tickets were taken, on one core: what keeps a
//! channel's fan-outs in id order when the tasks that make them wake in
//! another order (one waits for room to answer its sender on another core
//! while a later one is ready to deliver).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::poll_fn;
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
}
