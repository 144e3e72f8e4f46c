//! The network edge: starting and stopping a server, the accept loop,
//! WebSocket sessions and the HTTP side of the port.

pub mod accept;
pub mod hand_off;
pub mod http;
pub mod server;
pub mod session;
