//! chatgw's history store: one RocksDB instance per node, one column
//! family per shard plus `meta`, values as rkyv archives read in place.
//!
//! What lives where (all in the owning shard's column family):
//! - a channel's messages under `m | channel | message`: its history is one
//!   ordered range, so latest-N, before, after and around are single seeks;
//! - a user's inbox under `i | user | message → channel` (fan-out on write
//!   for small channels);
//! - channels, members, a user's channels, users, usernames, direct
//!   channels, `client_msg_id` dedupe records (24 h) and the push outbox.
//!
//! No RocksDB or rkyv type crosses this crate's public API: the gateway
//! depends on storage's own types alone. Storage knows nothing of
//! WebSocket, glommio or JSON.

mod batch;
mod cf;
mod error;
mod keys;
mod model;
mod record;
mod store;

pub use batch::Batch;
pub use error::{Result, StorageError};
pub use keys::{CLIENT_MSG_ID_BYTES_MAX, USERNAME_BYTES_MAX};
pub use model::{
    Change, ChangeKind, Channel, ChannelKind, DeadPush, DedupeEntry, InboxEntry, Message, OutboxEntry, PushDue,
    Settings, Unread, User, UserChannel,
};
#[doc(hidden)]
pub use record::bench as record_bench;
pub use record::{RECORD_KINDS, check_value};
pub use store::{DEDUPE_TTL_MS, Durability, READ_LIMIT_MAX, Store, StoreConfig, mentions};
