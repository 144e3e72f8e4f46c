//! One piece of work per key at a time on a core: the first caller does it,
//! callers that arrive while it runs get its result. This is what makes a
//! shard's read-then-write (username uniqueness, direct channels, dedupe)
//! safe across the awaits in between.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;

use futures_channel::oneshot;

/// Work in flight, by key.
pub struct SingleFlight<K, V> {
    waiting: RefCell<HashMap<K, Vec<oneshot::Sender<V>>>>,
}

/// Whether the caller does the work or waits for it.
pub enum Turn<'f, K: Hash + Eq + Clone, V: Clone> {
    /// No one is working on the key: do it, then `finish` the lead.
    Lead(Lead<'f, K, V>),
    /// Someone is: await their result (`Canceled` if the leader was
    /// dropped before it finished; the key is free again then).
    Follow(oneshot::Receiver<V>),
}

/// The claim on a key. Finishing it hands the result to every follower;
/// dropping it unfinished (a cancelled future) frees the key, so the next
/// caller leads instead of waiting forever.
pub struct Lead<'f, K: Hash + Eq + Clone, V: Clone> {
    flight: &'f SingleFlight<K, V>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Lead<'_, K, V> {
    /// Ends the work and hands its result to every follower.
    pub fn finish(mut self, value: &V) {
        if let Some(key) = self.key.take() {
            let followers = self.flight.waiting.borrow_mut().remove(&key).unwrap_or_default();
            for follower in followers {
                let _ = follower.send(value.clone());
            }
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // The followers' senders go with the entry: they see `Canceled`.
            self.flight.waiting.borrow_mut().remove(&key);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Nothing in flight.
    pub fn new() -> Self {
        SingleFlight { waiting: RefCell::new(HashMap::new()) }
    }

    /// Claims `key` or joins its work.
    pub fn start(&self, key: &K) -> Turn<'_, K, V> {
        let mut waiting = self.waiting.borrow_mut();
        match waiting.get_mut(key) {
            Some(followers) => {
                let (sender, receiver) = oneshot::channel();
                followers.push(sender);
                Turn::Follow(receiver)
            }
            None => {
                waiting.insert(key.clone(), Vec::new());
                Turn::Lead(Lead { flight: self, key: Some(key.clone()) })
            }
        }
    }

    /// Joins `key`'s work if someone is doing it: `None` if no one is.
    pub fn join(&self, key: &K) -> Option<oneshot::Receiver<V>> {
        let mut waiting = self.waiting.borrow_mut();
        let followers = waiting.get_mut(key)?;
        let (sender, receiver) = oneshot::channel();
        followers.push(sender);
        Some(receiver)
    }

    /// Whether no key is in flight.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.waiting.borrow().is_empty()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_get_the_leaders_result() {
        let flight = SingleFlight::<u32, String>::new();
        let Turn::Lead(lead) = flight.start(&1) else { panic!("the first caller leads") };
        let Turn::Follow(mut follower) = flight.start(&1) else { panic!("second caller follows") };
        assert!(matches!(flight.start(&2), Turn::Lead(_)), "keys are independent");
        lead.finish(&"done".to_string());
        assert_eq!(follower.try_recv().unwrap(), Some("done".to_string()));
        assert!(matches!(flight.start(&1), Turn::Lead(_)), "a finished key is free again");
        assert!(flight.is_empty(), "dropped leads leave nothing behind");
    }

    #[test]
    fn a_lead_dropped_unfinished_frees_its_key_and_its_followers() {
        let flight = SingleFlight::<u32, String>::new();
        let lead = flight.start(&1);
        let Turn::Follow(mut follower) = flight.start(&1) else { panic!("second caller follows") };
        // The leader's future is cancelled before it finishes.
        drop(lead);
        assert!(follower.try_recv().is_err(), "the follower learns the lead is gone");
        assert!(flight.is_empty());
        assert!(matches!(flight.start(&1), Turn::Lead(_)), "the next caller leads instead of waiting");
    }
}
