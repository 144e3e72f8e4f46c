//! Which kind of server a scenario runs against.

use clap::ValueEnum;
use serde::Serialize;

/// Which server the plan runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A server of chatgw's protocol: chatgw, or the comparison's
    /// `chatgw-peer` (`--addr` is its HTTP address).
    Chatgw,
    /// nats-server's WebSocket listener (`--addr` is its `websocket` port).
    Nats,
}

impl Target {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Chatgw => "chatgw",
            Target::Nats => "nats",
        }
    }
}
