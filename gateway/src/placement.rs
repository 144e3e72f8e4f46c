//! Who owns what: a pure function of an id and the shard count.

use chatgw_idgen::{ShardId, UserId};

/// Mixes an id so that sequential Snowflake ids spread evenly (the low bits
/// of a Snowflake id are its sequence, which would cluster).
fn mix(mut value: u64) -> u64 {
    // splitmix64's finalizer.
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The shard that owns an id (a user or a channel).
pub fn owner(id: u64, shards: u16) -> ShardId {
    debug_assert!(shards > 0);
    ShardId((mix(id) % u64::from(shards.max(1))) as u16)
}

/// The shard that owns a username (its uniqueness index).
pub fn username_owner(username: &str, shards: u16) -> ShardId {
    // FNV-1a, then mixed: stable across builds and platforms.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in username.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    owner(hash, shards)
}

/// The shard that owns the direct channel index of a pair of users, and so
/// the pair's direct channel (it makes the channel with an id it owns): the
/// owner of the pair's lower user id. Sessions run on their user's owner,
/// so a 1:1 message is stored where one of its two users is connected.
pub fn pair_owner(first: UserId, second: UserId, shards: u16) -> ShardId {
    owner(first.min(second).0, shards)
}

/// Where data written before pairs were owned by one of their users keeps
/// a pair's index (a hash of both ids): read to find the pairs made then.
pub fn legacy_pair_owner(first: UserId, second: UserId, shards: u16) -> ShardId {
    let (low, high) = if first <= second { (first, second) } else { (second, first) };
    owner(mix(low.0) ^ high.0.rotate_left(17), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_shards() {
        let mut counts = [0usize; 4];
        let base = 1u64 << 40;
        for id in base..base + 40_000 {
            counts[owner(id, 4).index()] += 1;
        }
        assert!(counts.iter().all(|&count| (9_000..11_000).contains(&count)), "{counts:?}");
    }

    #[test]
    fn ownership_is_stable_and_symmetric() {
        assert_eq!(owner(12345, 7), owner(12345, 7));
        assert_eq!(pair_owner(UserId(3), UserId(9), 5), pair_owner(UserId(9), UserId(3), 5));
        assert_eq!(legacy_pair_owner(UserId(3), UserId(9), 5), legacy_pair_owner(UserId(9), UserId(3), 5));
        assert_eq!(username_owner("alice", 1), ShardId(0));
    }

    #[test]
    fn a_pair_is_owned_by_one_of_its_users_owners() {
        for low in (1u64 << 40)..(1u64 << 40) + 200 {
            let (first, second) = (UserId(low), UserId(low * 7 + 3));
            assert_eq!(pair_owner(first, second, 4), owner(low, 4));
            assert_eq!(pair_owner(second, first, 4), owner(low, 4));
        }
    }
}
