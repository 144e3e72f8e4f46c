//! Plain state machines that a shard drives: they take the time as an
//! argument and know nothing of the shard or the router. The glue that
//! moves their messages between cores lives in `shard/`.

pub mod abuse;
pub mod banned;
pub mod bucket;
pub mod presence;
pub mod push;
pub mod stats;
pub mod typing;
