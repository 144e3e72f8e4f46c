//! The wire: every shape a client sees (protocol §2), the commands parsed
//! from its frames, the rules its fields follow, the RFC 6455 frames
//! and close codes, and what an HTTP request head says (the upgrade). Nothing here knows a shard.

pub mod close;
pub mod command;
pub mod frame;
pub mod shapes;
pub mod upgrade;
pub mod validate;
