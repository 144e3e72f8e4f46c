//! The HTTP side of the one port (protocol §1): the server and its route
//! table, body and token helpers, and one file per group of routes.

pub mod accounts;
pub mod admin;
pub mod api;
pub mod body;
pub mod metrics;
pub mod revoke;
pub mod server;
