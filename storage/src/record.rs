//! The on-disk records: the only rkyv derives in chatgw.
//!
//! A value is one format-version byte followed by an rkyv archive. The
//! archive is built with rkyv's `unaligned` format (every archived type has
//! alignment 1), so it is validated and read in place straight from a
//! RocksDB slice, which carries no alignment; the version byte puts every
//! archive at an odd offset, so that path is the one always taken.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::error::{Result, StorageError};
use crate::keys;

/// The version byte in front of every record. A new layout gets a new
/// number and a reader for the old one.
pub const FORMAT_VERSION: u8 = 1;
/// The version byte of a message that was edited or deleted
/// ([`ChangedMessageRecord`]); a message never changed keeps the first
/// layout, so the common write is as small as it was.
pub const CHANGED_MESSAGE_VERSION: u8 = 2;

/// A message's value; its channel and id are in the key.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct MessageRecord {
    pub sender_id: u64,
    pub created_at_ms: u64,
    pub client_msg_id: Option<String>,
    pub text: String,
}

/// A message's value once edited or deleted (version
/// [`CHANGED_MESSAGE_VERSION`]): a deleted one keeps an empty text.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct ChangedMessageRecord {
    pub sender_id: u64,
    pub created_at_ms: u64,
    pub client_msg_id: Option<String>,
    pub text: String,
    /// 0: never edited.
    pub edited_at_ms: u64,
    /// 0: not deleted.
    pub deleted_at_ms: u64,
}

/// A channel's value; its members are keys of their own.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct ChannelRecord {
    pub name: String,
    /// 0 direct, 1 group.
    pub kind: u8,
    pub owner_id: u64,
    pub created_at_ms: u64,
    pub fan_out_on_read: bool,
}

/// An account.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct UserRecord {
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at_ms: u64,
    pub disabled: bool,
}

/// The first ids answered for a `client_msg_id`.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct DedupeRecord {
    pub channel_id: u64,
    pub message_id: u64,
    pub created_at_ms: u64,
}

/// A push owed to a user with no connected device.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct OutboxRecord {
    pub user_id: u64,
    pub channel_id: u64,
    pub message_id: u64,
    pub created_at_ms: u64,
}

/// A push the webhook refused for good (a 4xx other than 408 and 429).
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
pub struct DeadPushRecord {
    pub user_id: u64,
    pub channel_id: u64,
    pub message_id: u64,
    pub created_at_ms: u64,
    pub failed_at_ms: u64,
    pub status: u16,
}

/// Serializes `value` behind the version byte.
pub fn encode<T>(value: &T) -> Result<Vec<u8>>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    encode_as(FORMAT_VERSION, value)
}

/// Serializes `value` behind the version byte `version`.
pub fn encode_as<T>(version: u8, value: &T) -> Result<Vec<u8>>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let archive = rkyv::to_bytes::<rancor::Error>(value)
        .map_err(|error| StorageError::Engine(format!("encoding a record: {error}")))?;
    let mut bytes = Vec::with_capacity(1 + archive.len());
    bytes.push(version);
    bytes.extend_from_slice(&archive);
    Ok(bytes)
}

/// A message's value read in place, whichever layout it was written in.
pub enum MessageValue<'b> {
    /// Never changed.
    First(&'b ArchivedMessageRecord),
    /// Edited or deleted.
    Changed(&'b ArchivedChangedMessageRecord),
}

/// Validates a message's value (read from `key`) and returns it in place.
pub fn access_message<'b>(key: &[u8], bytes: &'b [u8]) -> Result<MessageValue<'b>> {
    match bytes.first() {
        Some(&CHANGED_MESSAGE_VERSION) => {
            let corrupt = |reason: String| StorageError::Corrupt { what: "message", key_hex: keys::hex(key), reason };
            rkyv::access::<ArchivedChangedMessageRecord, rancor::Error>(&bytes[1..])
                .map(MessageValue::Changed)
                .map_err(|error| corrupt(error.to_string()))
        }
        _ => access::<ArchivedMessageRecord>("message", key, bytes).map(MessageValue::First),
    }
}

/// Validates `bytes` (read from `key`) as an archived `T` and returns it in
/// place, without copying or aligning.
pub fn access<'b, T>(what: &'static str, key: &[u8], bytes: &'b [u8]) -> Result<&'b T>
where
    T: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let corrupt = |reason: String| StorageError::Corrupt { what, key_hex: keys::hex(key), reason };
    match bytes.split_first() {
        None => Err(corrupt("empty value".into())),
        Some((&FORMAT_VERSION, archive)) => {
            rkyv::access::<T, rancor::Error>(archive).map_err(|error| corrupt(error.to_string()))
        }
        Some((version, _)) => Err(corrupt(format!("unknown format version {version}"))),
    }
}

/// Entry points for chatgw-bench's criterion benches, not an API: a
/// message record written and read as the store does.
pub mod bench {
    use crate::error::Result;
    use crate::record::{ArchivedMessageRecord, MessageRecord, access, encode};

    /// A message's stored value (the version byte and its archive).
    pub fn message_value(
        sender_id: u64,
        created_at_ms: u64,
        client_msg_id: Option<&str>,
        text: &str,
    ) -> Result<Vec<u8>> {
        encode(&MessageRecord {
            sender_id,
            created_at_ms,
            client_msg_id: client_msg_id.map(str::to_string),
            text: text.to_string(),
        })
    }

    /// Validates a message's value and reads it in place, as the store
    /// does for each message it reads: its sender, time, and text.
    pub fn read_message_value(bytes: &[u8]) -> Result<(u64, u64, &str)> {
        let record = access::<ArchivedMessageRecord>("message", b"bench", bytes)?;
        Ok((record.sender_id.to_native(), record.created_at_ms.to_native(), record.text.as_str()))
    }
}

/// The records kept on disk, by the name their errors give: what
/// [`check_value`] checks bytes as.
pub const RECORD_KINDS: [&str; 6] = ["message", "channel", "user", "dedupe", "outbox", "dead push"];
// A message's value in either layout is checked as "message".

/// Validates `bytes` as the record `RECORD_KINDS[kind]` (`kind` taken
/// modulo their number), as the store does with each value it reads: an
/// error, never a panic, for anything that is not a well-formed archive of
/// that record. Bytes from disk are untrusted (fuzzing feeds this).
pub fn check_value(kind: usize, bytes: &[u8]) -> Result<()> {
    let what = RECORD_KINDS[kind % RECORD_KINDS.len()];
    let key = b"fuzz";
    match kind % RECORD_KINDS.len() {
        0 => access_message(key, bytes).map(|record| match record {
            MessageValue::First(record) => {
                let _ = (record.text.as_str().len(), record.client_msg_id.as_ref().map(|id| id.as_str().len()));
            }
            MessageValue::Changed(record) => {
                let _ = (record.text.as_str().len(), record.client_msg_id.as_ref().map(|id| id.as_str().len()));
            }
        }),
        1 => access::<ArchivedChannelRecord>(what, key, bytes).map(|record| {
            let _ = (record.name.as_str().len(), record.kind);
        }),
        2 => access::<ArchivedUserRecord>(what, key, bytes).map(|record| {
            let _ = (record.username.as_str().len(), record.password_hash.as_str().len());
        }),
        3 => access::<ArchivedDedupeRecord>(what, key, bytes).map(|_| ()),
        4 => access::<ArchivedOutboxRecord>(what, key, bytes).map(|_| ()),
        _ => access::<ArchivedDeadPushRecord>(what, key, bytes).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MessageRecord {
        MessageRecord {
            sender_id: 42,
            created_at_ms: 1_767_225_600_123,
            client_msg_id: Some("c-1".into()),
            text: "héllo, wörld — a text long enough to be stored out of line".into(),
        }
    }

    #[test]
    fn records_round_trip_at_every_alignment() {
        let bytes = encode(&sample()).unwrap();
        // Copy the value to each offset of an aligned buffer: offsets 1, 2,
        // 3, ... give the archive every misalignment.
        let mut backing = vec![0u8; bytes.len() + 16];
        for offset in 0..16 {
            backing[offset..offset + bytes.len()].copy_from_slice(&bytes);
            let slice = &backing[offset..offset + bytes.len()];
            let archived = access::<ArchivedMessageRecord>("message", b"k", slice).unwrap();
            assert_eq!(archived.sender_id.to_native(), 42);
            assert_eq!(archived.text.as_str(), sample().text);
            assert_eq!(archived.client_msg_id.as_ref().map(|id| id.as_str()), Some("c-1"));
            let owned: MessageRecord = rkyv::deserialize::<_, rancor::Error>(archived).unwrap();
            assert_eq!(owned, sample());
        }
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        let bytes = encode(&sample()).unwrap();
        assert!(access::<ArchivedMessageRecord>("message", b"k", &[]).is_err());
        assert!(access::<ArchivedMessageRecord>("message", b"k", &[9, 1, 2]).is_err());
        assert!(access::<ArchivedMessageRecord>("message", b"k", &bytes[..bytes.len() / 2]).is_err());
        // Flip each byte in turn: validation fails or yields a record, never panics.
        for index in 1..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[index] ^= 0xA5;
            let _ = access::<ArchivedMessageRecord>("message", b"k", &flipped);
        }
        // The text (the root's last field, stored out of line) pointing
        // past the end of the value is caught: its last 4 bytes are the
        // relative offset.
        let mut long = bytes.clone();
        let len = long.len();
        long[len - 4..].copy_from_slice(&0x7fff_ffffi32.to_le_bytes());
        assert!(access::<ArchivedMessageRecord>("message", b"k", &long).is_err());
    }

    #[test]
    fn a_changed_message_reads_in_its_own_layout_and_the_first_still_reads() {
        let changed = ChangedMessageRecord {
            sender_id: 42,
            created_at_ms: 1,
            client_msg_id: None,
            text: "edited".into(),
            edited_at_ms: 5,
            deleted_at_ms: 0,
        };
        let bytes = encode_as(CHANGED_MESSAGE_VERSION, &changed).unwrap();
        match access_message(b"k", &bytes).unwrap() {
            MessageValue::Changed(record) => {
                assert_eq!((record.text.as_str(), record.edited_at_ms.to_native()), ("edited", 5));
            }
            MessageValue::First(_) => panic!("read as the first layout"),
        }
        let first = encode(&sample()).unwrap();
        assert!(matches!(access_message(b"k", &first).unwrap(), MessageValue::First(_)));
        check_value(0, &bytes).unwrap();
        assert!(check_value(0, &bytes[..bytes.len() / 2]).is_err());
        assert!(access_message(b"k", &[3, 0, 0]).is_err(), "unknown version");
    }

    #[test]
    fn check_value_takes_records_and_refuses_other_bytes() {
        let bytes = encode(&sample()).unwrap();
        check_value(0, &bytes).unwrap();
        assert!(check_value(0, &bytes[..bytes.len() / 2]).is_err());
        assert!(check_value(0, &[]).is_err());
        assert!(check_value(1, &[FORMAT_VERSION, 0xff, 0xff]).is_err());
        assert!(check_value(5, &[2, 0, 0]).is_err(), "unknown version");
    }
}
