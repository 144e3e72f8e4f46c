//! How the 10 worker bits split into node and shard, and decoding ids.

use crate::bits::{EPOCH_MS, SEQUENCE_BITS, TIME_MAX_MS, WORKER_BITS};

/// Why a layout or worker id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Node bits must leave room for at least one shard bit and take at least one.
    #[error("node bits must be 1 to {max}, got {got}", max = WORKER_BITS - 1)]
    NodeBits {
        /// The number asked for.
        got: u32,
    },
    /// The node number does not fit the node bits.
    #[error("node {node} does not fit in {bits} bits (at most {max})")]
    NodeTooLarge {
        /// The node number asked for.
        node: u16,
        /// Bits available.
        bits: u32,
        /// Largest node number.
        max: u16,
    },
    /// The shard number does not fit the shard bits.
    #[error("shard {shard} does not fit in {bits} bits (at most {max})")]
    ShardTooLarge {
        /// The shard number asked for.
        shard: u16,
        /// Bits available.
        bits: u32,
        /// Largest shard number.
        max: u16,
    },
}

/// The split of the 10 worker bits between node and shard.
///
/// The default gives 3 bits to the node (8 nodes) and 7 to the shard (128
/// cores per node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    node_bits: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { node_bits: 3 }
    }
}

/// A worker: the (node, shard) pair whose generator made an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId {
    /// The node.
    pub node: u16,
    /// The shard within the node.
    pub shard: u16,
}

/// An id taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// When the id was made, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The node that made it.
    pub node: u16,
    /// The shard that made it.
    pub shard: u16,
    /// Its position within its millisecond.
    pub sequence: u16,
}

impl Layout {
    /// A layout with `node_bits` node bits and the rest of the 10 worker
    /// bits for shards.
    pub fn new(node_bits: u32) -> Result<Self, LayoutError> {
        if node_bits == 0 || node_bits >= WORKER_BITS {
            return Err(LayoutError::NodeBits { got: node_bits });
        }
        Ok(Layout { node_bits })
    }

    /// Bits of node number.
    pub const fn node_bits(self) -> u32 {
        self.node_bits
    }

    /// Bits of shard number.
    pub const fn shard_bits(self) -> u32 {
        WORKER_BITS - self.node_bits
    }

    /// The worker field (10 bits) for a node and shard, checked.
    pub fn worker_bits(self, worker: WorkerId) -> Result<u64, LayoutError> {
        let node_max = ((1u32 << self.node_bits) - 1) as u16;
        let shard_max = ((1u32 << self.shard_bits()) - 1) as u16;
        if worker.node > node_max {
            return Err(LayoutError::NodeTooLarge { node: worker.node, bits: self.node_bits, max: node_max });
        }
        if worker.shard > shard_max {
            return Err(LayoutError::ShardTooLarge { shard: worker.shard, bits: self.shard_bits(), max: shard_max });
        }
        Ok(((worker.node as u64) << self.shard_bits()) | worker.shard as u64)
    }

    /// Takes an id apart into time, node, shard and sequence.
    pub fn decode(self, id: u64) -> Decoded {
        let worker = (id >> SEQUENCE_BITS) & ((1 << WORKER_BITS) - 1);
        Decoded {
            unix_ms: (id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS,
            node: (worker >> self.shard_bits()) as u16,
            shard: (worker & ((1 << self.shard_bits()) - 1)) as u16,
            sequence: (id & ((1 << SEQUENCE_BITS) - 1)) as u16,
        }
    }
}

/// The smallest id any worker can make at `unix_ms`: the start of a time
/// range scan. Times before the epoch clamp to the epoch, times past the
/// format's end to its last millisecond.
pub fn min_id_at(unix_ms: u64) -> u64 {
    offset_ms(unix_ms) << (WORKER_BITS + SEQUENCE_BITS)
}

/// The largest id any worker can make at `unix_ms`: the inclusive end of a
/// time range scan. Clamped as [`min_id_at`].
pub fn max_id_at(unix_ms: u64) -> u64 {
    min_id_at(unix_ms) | ((1 << (WORKER_BITS + SEQUENCE_BITS)) - 1)
}

fn offset_ms(unix_ms: u64) -> u64 {
    unix_ms.saturating_sub(EPOCH_MS).min(TIME_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_bits_split_and_decode() {
        let layout = Layout::new(4).unwrap();
        assert_eq!(layout.shard_bits(), 6);
        let bits = layout.worker_bits(WorkerId { node: 15, shard: 63 }).unwrap();
        assert_eq!(bits, 1023);
        let id = ((1234u64) << 22) | (bits << 12) | 77;
        let decoded = layout.decode(id);
        assert_eq!(decoded, Decoded { unix_ms: EPOCH_MS + 1234, node: 15, shard: 63, sequence: 77 });
    }

    #[test]
    fn out_of_range_workers_are_refused() {
        let layout = Layout::default();
        assert!(matches!(
            layout.worker_bits(WorkerId { node: 8, shard: 0 }),
            Err(LayoutError::NodeTooLarge { max: 7, .. })
        ));
        assert!(matches!(
            layout.worker_bits(WorkerId { node: 0, shard: 128 }),
            Err(LayoutError::ShardTooLarge { max: 127, .. })
        ));
        assert!(Layout::new(0).is_err());
        assert!(Layout::new(10).is_err());
    }

    #[test]
    fn millisecond_bounds_cover_every_worker_and_sequence() {
        let ms = EPOCH_MS + 5_000;
        let low = min_id_at(ms);
        let high = max_id_at(ms);
        assert_eq!(Layout::default().decode(low).unix_ms, ms);
        assert_eq!(Layout::default().decode(high).unix_ms, ms);
        assert_eq!(high - low, (1 << 22) - 1);
        assert_eq!(max_id_at(ms) + 1, min_id_at(ms + 1));
        assert_eq!(min_id_at(0), 0);
        assert_eq!(max_id_at(u64::MAX) >> 63, 0, "ids stay positive as i64");
    }
}
