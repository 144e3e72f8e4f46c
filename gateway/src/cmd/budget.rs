//! A read's reply budget: what `history`, `sync`, `channel.list` and
//! `channel.members` take, item by item, until the reply's encoded JSON
//! would pass `limits::READ_REPLY_BYTES_MAX` (so the reply frame stays
//! under the `FRAME_BYTES_MAX` clients are told to accept), and the pauses
//! every chunk of work, so that a large read never holds the other
//! connections of its core.

use serde_json::Value;

use crate::limits;

/// The size of `value` as the reply will encode it.
pub fn encoded_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Where a read stands against its budget: the items taken (as JSON),
/// their encoded bytes, and the work done since it last paused.
#[derive(Debug, Default)]
pub struct ReplyBudget {
    /// The items taken, in the order taken.
    pub items: Vec<Value>,
    bytes: usize,
    chunk_bytes: usize,
    chunk_items: usize,
}

impl ReplyBudget {
    /// Takes `item` if the reply stays within the budget with it; the
    /// first item always fits (a single item is bounded by its own rules).
    /// `false`: the budget is spent and nothing was taken.
    pub fn take(&mut self, item: Value) -> bool {
        // The comma between items counts too.
        let size = encoded_len(&item) + 1;
        if !self.items.is_empty() && self.bytes + size > limits::READ_REPLY_BYTES_MAX {
            return false;
        }
        self.bytes += size;
        self.items.push(item);
        true
    }

    /// Counts `items` read and `bytes` of them; once a chunk is done,
    /// pauses until the core has polled its sockets again. (A plain yield
    /// would not do: glommio polls sockets only when no task is ready or
    /// its preemption timer, 100 ms, fires, and a yielded task is ready at
    /// once.)
    pub async fn worked(&mut self, items: usize, bytes: usize) {
        self.chunk_items += items;
        self.chunk_bytes += bytes;
        if self.chunk_items >= limits::READ_CHUNK_ITEMS || self.chunk_bytes >= limits::READ_CHUNK_BYTES {
            self.chunk_items = 0;
            self.chunk_bytes = 0;
            glommio::timer::sleep(limits::READ_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_are_taken_until_the_reply_would_pass_the_budget() {
        let item = json!({ "text": "x".repeat(100_000) });
        let size = encoded_len(&item) + 1;
        let mut budget = ReplyBudget::default();
        let mut taken = 0;
        while budget.take(item.clone()) {
            taken += 1;
            assert!(taken < 1_000, "the budget ends");
        }
        assert_eq!(taken, limits::READ_REPLY_BYTES_MAX / size);
        let mut one = ReplyBudget::default();
        assert!(one.take(json!({ "text": "y".repeat(limits::READ_REPLY_BYTES_MAX * 2) })), "the first always fits");
        assert!(!one.take(json!({})));
    }
}
