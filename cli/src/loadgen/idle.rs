//! The `idle` scenario: N authenticated WebSocket connections that do
//! nothing, and the server's resident memory per connection (from its
//! `/metrics`, before and after the ramp).
//!
//! Accounts come from a users file written by an earlier run, so the
//! measured server has hashed no password since it started (freed Argon2
//! memory would stay resident and absorb the connections' own allocations
//! unseen).
//!
//! With `--server-pid` the memory is read from `/proc` instead (so any
//! server can be measured: `--target nats` opens NATS subscribers), along
//! with the server's CPU over the ramp and the kernel's socket memory.
//! The ramp itself is the connection-rate figure: handshakes per second,
//! `--connect-threads` of them in flight.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;

use super::accounts;
use super::cpu::{self, CpuFigures, KernelMemory};
use super::nats;
use super::target::Target;

/// `chatgw loadgen idle`.
#[derive(Debug, Args)]
pub struct IdleArgs {
    /// The server to load.
    #[arg(long, value_enum, default_value = "chatgw")]
    target: Target,
    /// The gateway's HTTP address (or NATS's WebSocket port).
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
    /// Processes to spread the connections over (one process's open-file
    /// limit caps what it holds).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal: run as a child of `--procs`, opening connections from this
    /// index and holding them until stdin closes.
    #[arg(long, hide = true)]
    child_from: Option<usize>,
    /// Open at most this many connections a second, all connecting threads
    /// together (per process with `--procs`) [default: as fast as they open].
    #[arg(long)]
    ramp_per_s: Option<f64>,
    /// Seconds to hold the connections open after the last hello.
    #[arg(long, default_value_t = 3)]
    hold_s: u64,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Threads opening connections at once (each one handshake at a time).
    #[arg(long, default_value_t = 1)]
    connect_threads: usize,
    /// The server's process id: its RSS (from /proc rather than /metrics)
    /// and its CPU over the ramp go in the report.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Fail (exit non-zero, after the report) when the server's RSS grew by
    /// more than this many KiB per connection: the guard that keeps an
    /// idle connection's cost from growing unseen
    /// (`bench/scripts/gateway.sh idle` runs with 2).
    #[arg(long)]
    max_kib_per_connection: Option<f64>,
}

/// The server's resident memory, from its `/metrics`.
pub fn server_rss_bytes(addr: &str) -> anyhow::Result<u64> {
    let text = metrics_text(addr)?;
    rss_from_metrics(&text).context("no process_resident_memory_bytes in /metrics")
}

/// The server's `/metrics` exposition, as text.
pub fn metrics_text(addr: &str) -> anyhow::Result<String> {
    Ok(ureq::get(format!("http://{addr}/metrics"))
        .call()
        .with_context(|| format!("reading http://{addr}/metrics"))?
        .body_mut()
        .read_to_string()?)
}

fn rss_from_metrics(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|bytes| bytes as u64)
}

type Socket = tungstenite::WebSocket<TcpStream>;

/// How often held connections are pinged: within the server's silence
/// limit (twice its heartbeat, 30 s by default; any frame counts), so that
/// a hold longer than that keeps every connection, as the heartbeats of a
/// real idle client would.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Pings every held socket (the server's pongs stay unread in the socket's
/// buffer: two bytes each).
fn keep_alive(sockets: &mut [Socket]) {
    for socket in sockets {
        let _ = socket.send(tungstenite::Message::Ping(Default::default()));
    }
}

/// Holds `sockets` for `hold`, pinging them every `KEEPALIVE` (not at
/// the very end: the last round's pongs would still be on their way when
/// the hold is measured); returns the pings sent.
fn hold(sockets: &mut [Socket], hold: Duration) -> u64 {
    let until = Instant::now() + hold;
    let mut pings = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return pings;
        }
        std::thread::sleep(left.min(KEEPALIVE));
        if Instant::now() >= until {
            return pings;
        }
        keep_alive(sockets);
        pings += sockets.len() as u64;
    }
}

/// Opens connections `first..first + count` (the index names the device,
/// picks the account and the source address).
/// `ramp_per_s` is this caller's share of `--ramp-per-s`.
fn open(
    args: &IdleArgs,
    accounts: &[accounts::Account],
    first: usize,
    count: usize,
    ramp_per_s: Option<f64>,
) -> anyhow::Result<Vec<Socket>> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    // A small read buffer on our side: this measures the server, not us.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut sockets = Vec::with_capacity(count);
    let started = Instant::now();
    for n in first..first + count {
        ensure!(Instant::now() < deadline, "timed out after {} connections", n - first);
        if let Some(per_s) = ramp_per_s {
            let due = started + Duration::from_secs_f64((n - first) as f64 / per_s);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let stream = match &args.source_ips {
            Some(ips) => {
                let target = args.addr.parse().with_context(|| format!("{} is not an address", args.addr))?;
                super::source::std_stream(ips.for_connection(n), target)?
            }
            None => TcpStream::connect(&args.addr).with_context(|| format!("connection {n}"))?,
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let ws = match args.target {
            Target::Chatgw => {
                let account = &accounts[n % accounts.len()];
                let mut request = format!("ws://{}/v1/ws?device=lg{n}", args.addr).into_client_request()?;
                request.headers_mut().insert("Authorization", format!("Bearer {}", account.token).parse()?);
                let (mut ws, _) = tungstenite::client::client_with_config(request, stream, Some(config))
                    .map_err(|error| anyhow::anyhow!("handshake {n}: {error}"))?;
                let hello = ws.read().with_context(|| format!("hello on connection {n}"))?;
                ensure!(hello.to_text().unwrap_or_default().contains("\"hello\""), "connection {n}: no hello");
                ws
            }
            Target::Nats => nats_subscriber(&args.addr, stream, config, n)?,
        };
        sockets.push(ws);
    }
    Ok(sockets)
}

/// A NATS subscriber of its own subject over the WebSocket listener, once
/// the server's `PONG` says the subscription is in place.
fn nats_subscriber(addr: &str, stream: TcpStream, config: WebSocketConfig, n: usize) -> anyhow::Result<Socket> {
    let request = format!("ws://{addr}/").into_client_request()?;
    let (mut ws, _) = tungstenite::client::client_with_config(request, stream, Some(config))
        .map_err(|error| anyhow::anyhow!("handshake {n}: {error}"))?;
    ws.send(tungstenite::Message::text(nats::connect_and_subscribe(&format!("chatgw.loadgen.idle{n}"))))?;
    let mut parser = nats::Parser::default();
    loop {
        let frame = ws.read().with_context(|| format!("subscription on connection {n}"))?;
        if nats::subscribed(&mut parser, &frame.into_data())? {
            return Ok(ws);
        }
    }
}

/// Opens `args.connections` from index 0 on `--connect-threads` threads
/// (each a contiguous share), in index order.
fn open_threaded(args: &IdleArgs, accounts: &[accounts::Account]) -> anyhow::Result<Vec<Socket>> {
    let threads = args.connect_threads.clamp(1, args.connections.max(1));
    let shares = super::procs::shares(args.connections, threads, 1)?;
    std::thread::scope(|scope| {
        let mut first = 0;
        let mut handles = Vec::with_capacity(shares.len());
        for share in shares {
            // Each thread paces its share of the ramp.
            let ramp_per_s = args.ramp_per_s.map(|per_s| per_s * share as f64 / args.connections as f64);
            handles.push(scope.spawn(move || open(args, accounts, first, share, ramp_per_s)));
            first += share;
        }
        let mut sockets = Vec::with_capacity(args.connections);
        for handle in handles {
            sockets.extend(handle.join().map_err(|_| anyhow::anyhow!("a connecting thread panicked"))??);
        }
        Ok(sockets)
    })
}

/// A child of `--procs`: opens its share, says so on stdout, and holds the
/// connections until its stdin closes.
fn child(args: &IdleArgs, accounts: &[accounts::Account], first: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let sockets = open(args, accounts, first, args.connections, args.ramp_per_s)?;
    println!("{}", serde_json::json!({ "opened": sockets.len(), "ramp_s": started.elapsed().as_secs_f64() }));
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut sockets = sockets;
    let (closed, stdin_closed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
        let _ = closed.send(());
    });
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stdin_closed.recv_timeout(KEEPALIVE) {
        keep_alive(&mut sockets);
    }
    drop(sockets);
    Ok(())
}

/// Opens the connections across `procs` child processes; returns when all
/// hold theirs, with the children (whose stdin closing lets them go) and the
/// slowest child's ramp.
fn open_in_children(args: &IdleArgs) -> anyhow::Result<(Vec<std::process::Child>, Duration)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().context("finding the chatgw binary")?;
    let mut children = Vec::with_capacity(args.procs);
    let mut first = 0;
    for index in 0..args.procs {
        let share = args.connections / args.procs + usize::from(index < args.connections % args.procs);
        let mut command = std::process::Command::new(&exe);
        command
            .args(["loadgen", "idle", "--addr", &args.addr])
            .args(["--connections", &share.to_string(), "--users", &args.users.to_string()])
            .arg("--users-file")
            .arg(&args.users_file)
            .args(["--timeout-s", &args.timeout_s.to_string(), "--child-from", &first.to_string()]);
        if let Some(ips) = &args.source_ips {
            command.args(["--source-ips", &ips.to_string()]);
        }
        if let Some(per_s) = args.ramp_per_s {
            command.args(["--ramp-per-s", &per_s.to_string()]);
        }
        let child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting load generator process {index}"))?;
        children.push(child);
        first += share;
    }
    let mut slowest = Duration::ZERO;
    for (index, child) in children.iter_mut().enumerate() {
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let said: serde_json::Value = match serde_json::from_str(line.trim()) {
            Ok(said) => said,
            Err(_) => {
                for child in &mut children {
                    let _ = child.kill();
                }
                anyhow::bail!("load generator process {index} failed before opening its connections");
            }
        };
        slowest = slowest.max(Duration::from_secs_f64(said["ramp_s"].as_f64().unwrap_or(0.0)));
    }
    Ok((children, slowest))
}

/// Runs the scenario.
pub fn run(args: IdleArgs) -> anyhow::Result<()> {
    ensure!(args.procs >= 1, "at least one process");
    ensure!(
        args.connections.div_ceil(args.procs) <= 19_000,
        "one process holds at most 19,000 connections here: use --procs"
    );
    ensure!(args.users >= 1, "at least one user");
    ensure!(
        args.server_pid.is_none() || args.procs == 1,
        "--server-pid measures one load generator process: no --procs"
    );
    let (accounts, made) = match args.target {
        Target::Chatgw => accounts::load_or_make(&args.addr, &args.users_file, args.users)?,
        Target::Nats => (Vec::new(), false),
    };
    if let Some(first) = args.child_from {
        return child(&args, &accounts, first);
    }
    if made {
        eprintln!(
            "made {} accounts into {}; restart the server and run again to measure (it has hashed passwords now)",
            accounts.len(),
            args.users_file.display()
        );
    }
    let server_rss = || match args.server_pid {
        Some(pid) => cpu::rss_bytes(pid),
        None => server_rss_bytes(&args.addr),
    };
    let before = server_rss()?;
    let kernel_before = KernelMemory::now()?;
    let meter = cpu::Meter::start(args.server_pid)?;
    let started = Instant::now();
    let (mut held, ramp) = if args.procs > 1 {
        let (children, _) = open_in_children(&args)?;
        (Held::Children(children), started.elapsed())
    } else {
        (Held::Here(open_threaded(&args, &accounts)?), started.elapsed())
    };
    let ramp_cpu = meter.read()?;
    let meter = cpu::Meter::start(args.server_pid)?;
    let pings = match &mut held {
        Held::Here(sockets) => hold(sockets, Duration::from_secs(args.hold_s)),
        // The children ping their own (uncounted).
        Held::Children(_) => {
            std::thread::sleep(Duration::from_secs(args.hold_s));
            0
        }
    };
    let hold_cpu = meter.read()?;
    let readings = Readings {
        ramp,
        rss_before: before,
        rss_after: server_rss()?,
        kernel_before,
        kernel_after: KernelMemory::now()?,
        ramp_cpu,
        pings,
        hold_cpu,
    };
    let report = Report::new(&args, readings);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    held.release()?;
    report.within_budget(args.max_kib_per_connection)
}

/// What an `idle` run read, around its ramp and its hold.
struct Readings {
    ramp: Duration,
    rss_before: u64,
    rss_after: u64,
    kernel_before: KernelMemory,
    kernel_after: KernelMemory,
    ramp_cpu: CpuFigures,
    pings: u64,
    hold_cpu: CpuFigures,
}

/// The figures of an `idle` run.
#[derive(Debug, serde::Serialize)]
struct Report {
    scenario: &'static str,
    target: Target,
    connections: usize,
    procs: usize,
    connect_threads: usize,
    ramp_s: f64,
    /// Connections opened per second over the ramp (each a TCP connect,
    /// the WebSocket handshake and the server's first frame).
    handshakes_per_s: f64,
    server_rss_before_bytes: u64,
    server_rss_after_bytes: u64,
    server_rss_per_connection_bytes: f64,
    /// The kernel's memory machine-wide, before and after: both ends of
    /// each loopback connection are in it, the server's and ours.
    kernel_before: KernelMemory,
    kernel_after: KernelMemory,
    /// Slab and TCP buffer growth per connection (both ends together).
    kernel_per_connection_bytes: f64,
    /// CPU over the ramp.
    ramp_cpu: CpuFigures,
    /// The server's CPU seconds per 1,000 handshakes.
    server_cpu_s_per_1000_handshakes: Option<f64>,
    /// WebSocket pings sent while holding (one per connection every 5 s).
    pings: u64,
    /// CPU over the hold: the idle connections and their pings.
    hold_cpu: CpuFigures,
    /// The server's CPU seconds over the hold per 1,000 pings (what an
    /// idle connection's keepalive costs, the idle server's own upkeep
    /// included).
    server_cpu_s_per_1000_pings: Option<f64>,
}

impl Report {
    fn new(args: &IdleArgs, readings: Readings) -> Self {
        let Readings { ramp, rss_before, rss_after, kernel_before, kernel_after, ramp_cpu, pings, hold_cpu } = readings;
        let connections = args.connections.max(1) as f64;
        let kernel_growth = kernel_after.total_bytes() as f64 - kernel_before.total_bytes() as f64;
        Report {
            scenario: "idle",
            target: args.target,
            connections: args.connections,
            procs: args.procs,
            connect_threads: args.connect_threads,
            ramp_s: ramp.as_secs_f64(),
            handshakes_per_s: connections / ramp.as_secs_f64().max(1e-9),
            server_rss_before_bytes: rss_before,
            server_rss_after_bytes: rss_after,
            server_rss_per_connection_bytes: rss_after.saturating_sub(rss_before) as f64 / connections,
            kernel_before,
            kernel_after,
            kernel_per_connection_bytes: kernel_growth / connections,
            server_cpu_s_per_1000_handshakes: ramp_cpu.server_cpu_s_per_1000(args.connections as u64),
            ramp_cpu,
            pings,
            server_cpu_s_per_1000_pings: hold_cpu.server_cpu_s_per_1000(pings),
            hold_cpu,
        }
    }

    /// An error when the server's RSS per connection is past `max_kib`.
    fn within_budget(&self, max_kib: Option<f64>) -> anyhow::Result<()> {
        let kib = self.server_rss_per_connection_bytes / 1024.0;
        match max_kib {
            Some(max) if kib > max => anyhow::bail!(
                "an idle connection costs the server {kib:.2} KiB of RSS, more than the {max} KiB allowed \
                 (--max-kib-per-connection): find what grew (docs/performance.md says how)"
            ),
            _ => Ok(()),
        }
    }

    fn print(&self) {
        println!(
            "idle against {}: {} connections open in {:.1}s ({:.0} handshakes/s, {} process(es), {} thread(s))",
            self.target.name(),
            self.connections,
            self.ramp_s,
            self.handshakes_per_s,
            self.procs,
            self.connect_threads
        );
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB after: {:.2} KiB per connection",
            self.server_rss_before_bytes as f64 / 1048576.0,
            self.server_rss_after_bytes as f64 / 1048576.0,
            self.server_rss_per_connection_bytes / 1024.0
        );
        println!(
            "kernel (slab and TCP buffers, both ends): {:.2} KiB per connection",
            self.kernel_per_connection_bytes / 1024.0
        );
        println!("ramp {}", cpu::line(&self.ramp_cpu, self.server_cpu_s_per_1000_handshakes, "handshakes"));
        println!(
            "hold ({} pings) {}",
            self.pings,
            cpu::line(&self.hold_cpu, self.server_cpu_s_per_1000_pings, "pings")
        );
    }
}

/// Connections held open until the report is made.
enum Held {
    Here(Vec<Socket>),
    Children(Vec<std::process::Child>),
}

impl Held {
    fn release(self) -> anyhow::Result<()> {
        match self {
            Held::Here(sockets) => drop(sockets),
            Held::Children(mut children) => {
                for child in &mut children {
                    // Closing its stdin lets a child go.
                    drop(child.stdin.take());
                }
                for (index, mut child) in children.into_iter().enumerate() {
                    let status = child.wait()?;
                    ensure!(status.success(), "load generator process {index} ended with {status}");
                }
            }
        }
        Ok(())
    }
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
