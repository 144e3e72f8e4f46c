//! The `idle` scenario: N authenticated WebSocket connections that do
//! nothing, and the server's resident memory per connection (from its
//! `/metrics`, before and after the ramp).
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
    /// Bind each connection to one of these source addresses in turn
    /// (`127.0.0.2-127.0.0.200`, or a comma-separated list): one address
    /// has only so many ephemeral ports.
    #[arg(long)]
    source_ips: Option<super::source::SourceIps>,
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

/// The server's resident memory, from its `/metrics`.
pub fn server_rss_bytes(addr: &str) -> anyhow::Result<u64> {
    let text = ureq::get(format!("http://{addr}/metrics"))
        .call()
        .with_context(|| format!("reading http://{addr}/metrics"))?
        .body_mut()
        .read_to_string()?;
    rss_from_metrics(&text).context("no process_resident_memory_bytes in /metrics")
}

fn rss_from_metrics(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|bytes| bytes as u64)
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
    let before = server_rss_bytes(&args.addr)?;
    // A small read buffer on our side: this measures the server, not us.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        ensure!(Instant::now() < deadline, "timed out after {n} connections");
        let account = &accounts[n % args.users];
        let mut request = format!("ws://{}/v1/ws?device=lg{n}", args.addr).into_client_request()?;
        request.headers_mut().insert("Authorization", format!("Bearer {}", account.token).parse()?);
        let stream = match &args.source_ips {
            Some(ips) => {
                let target = args.addr.parse().with_context(|| format!("{} is not an address", args.addr))?;
                super::source::std_stream(ips.for_connection(n), target)?
            }
            None => TcpStream::connect(&args.addr).with_context(|| format!("connection {n}"))?,
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (mut ws, _) = tungstenite::client::client_with_config(request, stream, Some(config))
            .map_err(|error| anyhow::anyhow!("handshake {n}: {error}"))?;
        let hello = ws.read().with_context(|| format!("hello on connection {n}"))?;
        ensure!(hello.to_text().unwrap_or_default().contains("\"hello\""), "connection {n}: no hello");
        sockets.push(ws);
    }
    let ramp = started.elapsed();
    std::thread::sleep(Duration::from_secs(args.hold_s));
    let after = server_rss_bytes(&args.addr)?;
    let per_connection = after.saturating_sub(before) as f64 / args.connections as f64;
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
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB after: {:.2} KiB per connection",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per_connection / 1024.0
        );
    }
    drop(sockets);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_the_exposition() {
        let text =
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 61534208\nchatgw_load 0.1\n";
        assert_eq!(rss_from_metrics(text), Some(61_534_208));
        assert_eq!(rss_from_metrics("chatgw_load 0.1\n"), None);
    }
}
