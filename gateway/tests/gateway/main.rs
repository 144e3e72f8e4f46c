//! The gateway's integration tests: a real server on an ephemeral loopback
//! port, real HTTP and WebSocket clients, a real RocksDB in a temp dir.
//! One test binary (one link of RocksDB), a module per subject.

mod common;

mod abuse;
mod ack_latency;
mod bad_input;
mod cancel;
mod conformance_echo;
mod connection_caps;
mod direct_burst;
mod disk_full;
mod edits;
mod event_order;
mod hand_off;
mod heartbeat;
mod hello_first;
mod http_api;
mod idle_channels;
mod large_channel;
mod lifecycle;
mod login_races;
mod member_races;
mod messaging;
mod presence;
mod push;
mod read_budget;
mod reads;
mod revocation;
mod slow_owner;
mod subscriptions;
mod sync_gap;
mod task_count;
mod transcripts;
mod typing;
