//! The `idle` scenario: N authenticated WebSocket connections that do
//! nothing, and the server's resident memory per connection.
//!
//! Accounts come from a users file written by an earlier run, so the
//! measured server has hashed no password since it started (freed Argon2
//! memory would stay resident and absorb the connections' own allocations
//! unseen).

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;

use super::accounts;

/// `chatgw loadgen idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// The gateway's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Connections to open (bounded: at most 19,000 per process here).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Accounts the connections are spread over (many devices each).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Where accounts are kept between runs; made (by signup) if missing.
    #[arg(long, default_value = "loadgen-users.json")]
    users_file: PathBuf,
    /// The server's process id, to read its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to hold the connections open after the last hello.
    #[arg(long, default_value_t = 3)]
    hold_s: u64,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The resident memory of process `pid`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

/// Runs the scenario.
pub fn run(args: IdleArgs) -> anyhow::Result<()> {
    ensure!(args.connections <= 19_000, "one process holds at most 19,000 connections here");
    ensure!(args.users >= 1, "at least one user");
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let (accounts, made) = accounts::load_or_make(&args.addr, &args.users_file, args.users)?;
    if made {
        eprintln!(
            "made {} accounts into {}; restart the server and run again to measure (it has hashed passwords now)",
            accounts.len(),
            args.users_file.display()
        );
    }
    let before = args.server_pid.map(rss_bytes).transpose()?;
    // A small read buffer on our side: this measures the server, not us.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        ensure!(Instant::now() < deadline, "timed out after {n} connections");
        let account = &accounts[n % args.users];
        let mut request = format!("ws://{}/v1/ws?device=lg{n}", args.addr).into_client_request()?;
        request.headers_mut().insert("Authorization", format!("Bearer {}", account.token).parse()?);
        let stream = TcpStream::connect(&args.addr).with_context(|| format!("connection {n}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (mut ws, _) = tungstenite::client::client_with_config(request, stream, Some(config))
            .map_err(|error| anyhow::anyhow!("handshake {n}: {error}"))?;
        let hello = ws.read().with_context(|| format!("hello on connection {n}"))?;
        ensure!(hello.to_text().unwrap_or_default().contains("\"hello\""), "connection {n}: no hello");
        sockets.push(ws);
    }
    let ramp = started.elapsed();
    std::thread::sleep(Duration::from_secs(args.hold_s));
    let after = args.server_pid.map(rss_bytes).transpose()?;
    let per_connection = match (before, after) {
        (Some(before), Some(after)) => Some((after.saturating_sub(before)) as f64 / args.connections as f64),
        _ => None,
    };
    if args.json {
        let report = serde_json::json!({
            "scenario": "idle",
            "connections": args.connections,
            "ramp_s": ramp.as_secs_f64(),
            "server_rss_before_bytes": before,
            "server_rss_after_bytes": after,
            "server_rss_per_connection_bytes": per_connection,
        });
        println!("{report}");
    } else {
        println!("idle: {} connections open in {:.1}s", args.connections, ramp.as_secs_f64());
        if let (Some(before), Some(after), Some(each)) = (before, after, per_connection) {
            println!(
                "server RSS: {:.1} MiB before, {:.1} MiB after: {:.2} KiB per connection",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                each / 1024.0
            );
        }
    }
    drop(sockets);
    Ok(())
}
