//! chatgw's gateway: one glommio executor per core, each with its own
//! SO_REUSEPORT listener, WebSocket sessions, and the shards that own users
//! and channels by hash. See ARCHITECTURE.md for the life of a message.

mod abuse;
pub mod accounts;
mod admin;
mod api;
pub mod auth;
pub mod banned;
pub mod close;
mod commit;
pub mod config;
mod core;
mod dispatch;
pub mod error;
pub mod frame;
mod http;
pub mod limits;
mod metrics;
mod owner;
mod presence;
pub mod protocol;
mod push;
mod registry;
mod route;
mod server;
mod session;
pub mod shard;
mod single_flight;
mod stats;

pub use auth::TokenKeys;
pub use config::{Config, Durability};
pub use error::{ApiError, ErrorCode, ServeError};
pub use server::{ServerHandle, Shared, start};
