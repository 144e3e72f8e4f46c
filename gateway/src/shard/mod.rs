//! One shard: its state, and everything it does as the owner of users and
//! channels. `inbox` is the only door from other cores (and the local-or-
//! mesh call that the layers above use); the other files are what it runs.

pub mod abuse;
pub mod accounts;
pub mod changes;
pub mod channels;
pub mod commit;
pub mod connections;
pub mod inbox;
pub mod lookup;
pub mod ops;
pub mod presence;
pub mod push;
pub mod reads;
pub mod registry;
pub mod state;
pub mod stats;
pub mod typing;
