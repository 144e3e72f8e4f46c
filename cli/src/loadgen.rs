//! `chatgw loadgen`: load against a running gateway, like any client.
//!
//! The `idle` scenario opens N authenticated WebSocket connections, waits
//! for every `hello`, and reports the server's resident memory per
//! connection. Accounts come from a users file written by an earlier run,
//! so the measured server has hashed no password since it started (freed
//! Argon2 memory would stay resident and absorb the connections' own
//! allocations unseen).

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;

/// `chatgw loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open idle connections and report the server's RSS per connection.
    Idle(IdleArgs),
}

#[derive(Debug, Args)]
struct IdleArgs {
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

#[derive(Debug, Serialize, Deserialize)]
struct Account {
    username: String,
    token: String,
}

/// Runs a scenario.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Idle(args) => idle(args),
    }
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

fn accounts(args: &IdleArgs) -> anyhow::Result<(Vec<Account>, bool)> {
    if let Ok(text) = std::fs::read_to_string(&args.users_file) {
        let accounts: Vec<Account> = serde_json::from_str(&text).context("parsing the users file")?;
        ensure!(accounts.len() >= args.users, "the users file holds {} accounts, {} asked", accounts.len(), args.users);
        return Ok((accounts, false));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let run = std::process::id();
    let mut accounts = Vec::with_capacity(args.users);
    for n in 0..args.users {
        let username = format!("lg{run}_{n}");
        let mut response = agent
            .post(format!("http://{}/v1/signup", args.addr))
            .send_json(serde_json::json!({ "username": username, "password": "loadgen-password" }))
            .context("signup")?;
        let body: serde_json::Value = response.body_mut().read_json().context("signup answer")?;
        let Some(token) = body["token"].as_str() else { bail!("signup of {username} failed: {body}") };
        accounts.push(Account { username, token: token.to_string() });
    }
    std::fs::write(&args.users_file, serde_json::to_vec(&accounts)?)?;
    Ok((accounts, true))
}

fn idle(args: IdleArgs) -> anyhow::Result<()> {
    ensure!(args.connections <= 19_000, "one process holds at most 19,000 connections here");
    ensure!(args.users >= 1, "at least one user");
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let (accounts, made) = accounts(&args)?;
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
