//! The `chatgw` binary: `serve` runs a node; admin, load generation,
//! reports and host checks grow here as subcommands.

mod admin;
mod doctor;
mod hgrm;
mod loadgen;
mod plot;
mod report;
mod serve;

use clap::{Parser, Subcommand};

/// chatgw: a thread-per-core chat gateway.
#[derive(Debug, Parser)]
#[command(name = "chatgw", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: HTTP and WebSocket on one port, one shard per core.
    Serve(Box<serve::ServeArgs>),
    /// Put load on a running gateway and report what it cost.
    Loadgen(loadgen::LoadgenArgs),
    /// Operate a running server through its admin API.
    Admin(admin::AdminArgs),
    /// Check this host for a million connections and say what to change.
    Doctor(doctor::DoctorArgs),
    /// Compare saved latency histograms (.hgrm) side by side and on a chart.
    Report(report::ReportArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CHATGW_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(*args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Report(args) => report::run(args),
    }
}
