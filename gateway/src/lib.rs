//! chatgw's gateway: one glommio executor per core, each with its own
//! SO_REUSEPORT listener, WebSocket sessions, and the shards that own users
//! and channels by hash. See ARCHITECTURE.md for the map and the life of a
//! message.
//!
//! The folders are the layers, each using only those below it:
//! - `net/`: the server's start and stop, the accept loop, WebSocket
//!   sessions and the HTTP routes;
//! - `cmd/`: the one dispatch of client commands, a file per method group;
//! - `shard/`: one shard's state and everything it does as an owner, with
//!   `shard::inbox`, its only door from other cores;
//! - `route.rs`: the router between cores and its closed message enums;
//! - `services/`: presence, abuse, push, stats and banned words as plain
//!   state machines;
//! - the ground: `protocol/` (every wire shape and frame), limits, config,
//!   errors, tokens, placement, the clock, the commit frontiers.

pub mod admission;
pub mod auth;
#[doc(hidden)]
pub mod bench;
pub mod clock;
mod cmd;
pub mod config;
pub mod error;
pub mod frontier;
mod hashing;
pub mod limits;
mod net;
pub mod node;
pub mod placement;
pub mod protocol;
mod route;
pub mod services;
mod shard;
mod single_flight;
mod tasks;
mod throttle;
mod turnstile;
mod webhook;
mod workers;

pub use auth::TokenKeys;
pub use config::{Config, Durability, PresenceScope};
pub use error::{ApiError, ErrorCode, ServeError};
pub use net::server::{ServerHandle, start};
pub use node::Shared;
