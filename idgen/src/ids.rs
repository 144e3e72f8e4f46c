//! Typed ids. Every 64-bit id travels as a decimal string on the wire
//! (JavaScript numbers lose precision above 2^53); these types parse and
//! print that form and keep users, channels and messages apart in code.

use std::fmt;
use std::str::FromStr;

/// Why a decimal id string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {input:?}: expected a decimal integer from 1 to {max}")]
pub struct IdParseError {
    /// The text that was refused (cut to 32 chars).
    pub input: String,
    /// The largest value accepted.
    pub max: u64,
}

fn parse_decimal(text: &str, max: u64, allow_zero: bool) -> Result<u64, IdParseError> {
    let refuse = || IdParseError { input: text.chars().take(32).collect(), max };
    // Digits only: no sign, no whitespace, no leading '+', at most 20 chars.
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    let value: u64 = text.parse().map_err(|_| refuse())?;
    if value > max || (value == 0 && !allow_zero) {
        return Err(refuse());
    }
    Ok(value)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, allow_zero = $zero:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw integer.
            pub const fn get(self) -> u64 {
                self.0
            }
            /// The id as 8 big-endian bytes, the form keys are built from.
            pub const fn to_be_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
            /// Parses the wire form: a decimal string.
            pub fn parse(text: &str) -> Result<Self, IdParseError> {
                parse_decimal(text, i64::MAX as u64, $zero).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::parse(text)
            }
        }
    };
}

id_type!(
    /// A user (an account). Owned by shard `owner(user_id)`.
    UserId, allow_zero = false
);
id_type!(
    /// A channel, direct or group. Owned by shard `owner(channel_id)`.
    ChannelId, allow_zero = false
);
id_type!(
    /// A message: a Snowflake id, so ordering ids orders messages by time.
    /// `0` is valid on the wire as "before every message" (`sync` since 0).
    MessageId, allow_zero = true
);

/// One shard of a node: one core, one executor, one column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard's index, for indexing per-shard tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_decimal_strings() {
        let id = MessageId(7_265_991_023_114_240_001);
        assert_eq!(id.to_string(), "7265991023114240001");
        assert_eq!("7265991023114240001".parse::<MessageId>(), Ok(id));
    }

    #[test]
    fn bad_id_strings_are_refused() {
        for bad in ["", "-1", "+1", " 1", "1 ", "abc", "1e5", "99999999999999999999", "9223372036854775808"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UserId::parse("0").is_err());
        assert_eq!(MessageId::parse("0"), Ok(MessageId(0)));
        assert_eq!(ChannelId::parse("9223372036854775807"), Ok(ChannelId(i64::MAX as u64)));
    }
}
