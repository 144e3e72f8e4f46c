//! `chatgw loadgen`: load against a running gateway, like any client.
//!
//! Scenarios: `idle` (server memory per connection), `dm` (1:1 latency at a
//! fixed offered rate, open loop), `fanout` (group deliveries per second,
//! closed loop; also against nats-server for comparison), `churn` (devices
//! that reconnect with sync, checked against history), `hostile` (every
//! limit hit, the answers counted) and `mix` (them all at once, as the soak
//! runs them).

mod accounts;
mod churn;
mod counters;
mod cpu;
mod dm;
mod fanout;
mod hostile;
mod idle;
pub(crate) mod latency;
mod mix;
mod nats;
mod procs;
mod progress;
mod runtime;
mod source;
mod target;
mod ws;

use clap::{Args, Subcommand};

/// A latency histogram of microseconds, as the scenarios keep them.
#[cfg(test)]
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    latency::histogram()
}

/// `chatgw loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open idle connections and report the server's RSS per connection.
    Idle(idle::IdleArgs),
    /// 1:1 messages between pairs at a fixed offered rate (open loop):
    /// delivery and ack latency, corrected for coordinated omission.
    Dm(dm::DmArgs),
    /// Groups with one sender each keeping a window unacknowledged:
    /// deliveries per second (against chatgw or nats-server).
    Fanout(fanout::FanoutArgs),
    /// Devices that connect, sync, send and leave over and over (some of
    /// them slow readers), then a check against the server's history that
    /// no acknowledged message is missing and no device missed any.
    Churn(churn::ChurnArgs),
    /// A client that hits every limit it can, round after round, and
    /// counts the server's answers (for a soak to hold its counters to).
    Hostile(hostile::HostileArgs),
    /// Idle connections, 1:1 pairs and groups at once, each part in a
    /// process of its own.
    Mix(mix::MixArgs),
}

/// Runs a scenario.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Idle(args) => idle::run(args),
        Scenario::Dm(args) => dm::run(args),
        Scenario::Fanout(args) => fanout::run(args),
        Scenario::Churn(args) => churn::run(args),
        Scenario::Hostile(args) => hostile::run(args),
        Scenario::Mix(args) => mix::run(args),
    }
}
