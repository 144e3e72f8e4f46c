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
pub enum Turn<V> {
    /// No one is working on the key: do it, then call `finish`.
    Lead,
    /// Someone is: await their result.
    Follow(oneshot::Receiver<V>),
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Nothing in flight.
    pub fn new() -> Self {
        SingleFlight { waiting: RefCell::new(HashMap::new()) }
    }

    /// Claims `key` or joins its work.
    pub fn start(&self, key: &K) -> Turn<V> {
        let mut waiting = self.waiting.borrow_mut();
        match waiting.get_mut(key) {
            Some(followers) => {
                let (sender, receiver) = oneshot::channel();
                followers.push(sender);
                Turn::Follow(receiver)
            }
            None => {
                waiting.insert(key.clone(), Vec::new());
                Turn::Lead
            }
        }
    }

    /// Ends the leader's work and hands its result to every follower.
    pub fn finish(&self, key: &K, value: &V) {
        let followers = self.waiting.borrow_mut().remove(key).unwrap_or_default();
        for follower in followers {
            let _ = follower.send(value.clone());
        }
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
        assert!(matches!(flight.start(&1), Turn::Lead));
        let Turn::Follow(mut follower) = flight.start(&1) else { panic!("second caller follows") };
        assert!(matches!(flight.start(&2), Turn::Lead), "keys are independent");
        flight.finish(&1, &"done".to_string());
        assert_eq!(follower.try_recv().unwrap(), Some("done".to_string()));
        assert!(matches!(flight.start(&1), Turn::Lead), "a finished key is free again");
    }
}
