//! The `dm` scenario: 1:1 messages between pairs of users at a fixed
//! offered rate, open loop.
//!
//! Users `2i` and `2i+1` are a pair. Each worker sends its share of the
//! rate on a fixed schedule, whatever the server does; a message's latency
//! is counted from the time it was due (as wrk2 does), so a stall shows up
//! in the figures instead of slowing the load down. Delivery latency runs
//! from due time to the partner's arrival; ack latency from due time to the
//! sender's reply.
//!
//! Against nats-server (`--target nats`) each user is a subscriber of its
//! own subject, a send is a `PUB` to the partner's subject followed by a
//! `PING`, and the `PONG` stands for the ack (nothing is stored).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use async_tungstenite::tungstenite::Message;
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;

use super::accounts::{self, Account};
use super::counters::{CounterFigures, SharedCounters};
use super::cpu::{CpuFigures, SharedMeter};
use super::latency::{self, Figures, SecondSummary, SecondsSpread, Summary};
use super::nats;
use super::progress::{Live, Progress};
use super::runtime;
use super::runtime::{Ramp, wait_for};
use super::target::Target;
use super::ws::{self, Inbound, Outbox};

/// `chatgw loadgen dm`.
#[derive(Debug, Clone, Args)]
pub struct DmArgs {
    /// The server to load.
    #[arg(long, value_enum, default_value = "chatgw")]
    target: Target,
    /// The gateway's HTTP address (or NATS's WebSocket port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Connected users, one connection each, in pairs.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Offered messages per second, all pairs together (open loop).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Closed loop instead: each worker keeps this many messages
    /// unacknowledged and sends the next on each ack; latency counts from
    /// the send, and the report gives the rate reached (`--rate` is unused).
    #[arg(long)]
    in_flight: Option<u64>,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Bytes of text per message (at least the timestamp it carries).
    #[arg(long, default_value_t = 100)]
    text_bytes: usize,
    /// Where accounts are kept between runs; missing ones are made by signup.
    #[arg(long, default_value = "loadgen-users.json")]
    users_file: PathBuf,
    /// Worker threads (glommio executors).
    #[arg(long, default_value_t = runtime::default_workers())]
    workers: usize,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Open at most this many connections a second, all workers together
    /// [default: as fast as they open].
    #[arg(long)]
    ramp_per_s: Option<f64>,
    /// Seconds to wait for the last deliveries after the schedule ends.
    #[arg(long, default_value_t = 10)]
    drain_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The delivery p99 each second of the run is held to in the report's
    /// per-second spread, ms (the 1:1 target is 5).
    #[arg(long, default_value_t = 5.0, value_parser = positive_ms)]
    p99_budget_ms: f64,
    /// Bind each connection to one of these source addresses in turn
    /// (`127.0.0.2-127.0.0.200`, or a comma-separated list): one address
    /// has only so many ephemeral ports.
    #[arg(long)]
    source_ips: Option<super::source::SourceIps>,
    /// Processes to spread the pairs over (each runs its share of users at
    /// its share of the rate; one process's open-file limit caps what it
    /// holds).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal: run as a child of `--procs` on the accounts from this index.
    #[arg(long, hide = true)]
    child_offset: Option<usize>,
    /// Write the latencies here: `.hgrm` files, an interval log, and a plot
    /// (SVG and PNG).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The server's process id: its CPU time over the measured phase (and
    /// the load generator's own) goes in the report.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// Progress every worker sees.
#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    warmed: AtomicUsize,
    start_ns: AtomicU64,
    acked: AtomicU64,
    finished: AtomicUsize,
    failed: Arc<AtomicBool>,
    /// Sent and delivered counts, connections and p99, for the live line.
    live: Arc<Live>,
    /// CPU over the measured phase (from its start to the last delivery).
    meter: SharedMeter,
    /// The server's counters over the measured phase.
    counters: SharedCounters,
}

/// One worker's figures.
struct Stats {
    figures: Figures,
    warm_acks: usize,
    warm_deliveries: usize,
    /// Half the server's heartbeat period, from its hello.
    heartbeat_every: Duration,
}

thread_local! {
    /// Closed loop: a unit per message this worker may send; each ack
    /// returns one (a worker is one thread).
    static WINDOW: Rc<glommio::sync::Semaphore> = Rc::new(glommio::sync::Semaphore::new(0));
}

impl Stats {
    fn new() -> Self {
        Stats {
            figures: Figures::new(),
            warm_acks: 0,
            warm_deliveries: 0,
            heartbeat_every: Duration::from_millis(7_500),
        }
    }
}

/// The whole run's figures.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    target: Target,
    /// `open` (a fixed offered rate) or `closed` (a fixed number in flight).
    mode: &'static str,
    users: usize,
    offered_rate: u64,
    duration_s: u64,
    connect_s: f64,
    sent: u64,
    acked: u64,
    delivered: u64,
    lost: u64,
    delivered_per_s: f64,
    delivery_latency: Summary,
    ack_latency: Summary,
    connect_latency: Summary,
    /// Due time to the message handed to its connection (open loop).
    send_lag: Summary,
    /// The seconds with the worst delivery p99, worst first.
    worst_seconds: Vec<SecondSummary>,
    /// The per-second p99s against `--p99-budget-ms`.
    seconds_spread: Option<SecondsSpread>,
    /// Delivery latency second by second.
    timeline: Vec<SecondSummary>,
    errors: BTreeMap<String, u64>,
    /// CPU over the measured phase (with `--server-pid`).
    cpu: Option<CpuFigures>,
    /// The server's CPU seconds per 1,000 deliveries in that phase.
    server_cpu_s_per_1000_delivered: Option<f64>,
    /// The server's counters over that phase (chatgw, one process).
    server_counters: Option<CounterFigures>,
    /// Cross-core messages per stored message in that phase.
    server_mesh_messages_per_message: Option<f64>,
}

/// A positive, finite number of milliseconds, for clap.
fn positive_ms(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms > 0.0 => Ok(ms),
        _ => Err(format!("`{text}` is not a positive number of milliseconds")),
    }
}

/// Runs the scenario.
pub fn run(args: DmArgs) -> anyhow::Result<()> {
    ensure!(args.users >= 2 && args.users.is_multiple_of(2), "--users must be even and at least 2");
    ensure!(args.procs >= 1, "at least one process");
    ensure!(
        args.users.div_ceil(args.procs) <= 19_000,
        "one process holds at most 19,000 connections here: use --procs"
    );
    ensure!(args.rate >= 1 && args.workers >= 1 && args.duration_s >= 1, "rate, workers and duration must be positive");
    ensure!(
        args.server_pid.is_none() || args.procs == 1,
        "--server-pid measures one load generator process: no --procs"
    );
    if args.procs > 1 {
        return run_procs(&args);
    }
    ensure!(args.workers <= args.users, "more workers than users");
    let offset = args.child_offset.unwrap_or(0);
    let accounts = match args.target {
        Target::Chatgw => {
            let (accounts, _) = accounts::load_or_make(&args.addr.to_string(), &args.users_file, offset + args.users)?;
            accounts[offset..].to_vec()
        }
        // NATS has no accounts: a user is its subject.
        Target::Nats => (offset..offset + args.users)
            .map(|n| Account { username: format!("chatgw.loadgen.u{n}"), token: String::new() })
            .collect(),
    };
    let accounts = Arc::new(accounts);
    let shared = Arc::new(Shared::default());
    let connect_started = latency::now_ns();
    let progress = Progress::start("dm", args.users as u64, shared.live.clone());
    let outcomes = {
        let failed = shared.failed.clone();
        let (args, accounts, shared) = (args.clone(), accounts.clone(), shared.clone());
        runtime::on_workers(args.workers, &failed, move |worker| {
            let (args, accounts, shared) = (args.clone(), accounts.clone(), shared.clone());
            async move { worker_main(&args, &accounts, &shared, worker).await }
        })
    };
    progress.finish();
    let outcomes = outcomes?;
    let mut total = Figures::new();
    let mut connect_ns = 0;
    for (stats, connected_at) in outcomes {
        total.merge(stats.figures)?;
        connect_ns = connect_ns.max(connected_at.saturating_sub(connect_started));
    }
    let cpu = shared.meter.figures()?;
    let counters = shared.counters.figures();
    finish(&args, total, connect_ns as f64 / 1e9, cpu, counters)
}

/// Runs the pairs across `--procs` child processes and adds up their figures.
fn run_procs(args: &DmArgs) -> anyhow::Result<()> {
    // Every account exists before the children start (they share the file).
    if args.target == Target::Chatgw {
        accounts::load_or_make(&args.addr.to_string(), &args.users_file, args.users)?;
    }
    let shares = super::procs::shares(args.users, args.procs, 2)?;
    let mut offset = 0;
    let mut arg_lists = Vec::with_capacity(shares.len());
    for share in &shares {
        let rate = (args.rate as f64 * *share as f64 / args.users as f64).round().max(1.0) as u64;
        let ramp = args.ramp_per_s.map(|per_s| (per_s * *share as f64 / args.users as f64).to_string());
        let list = super::procs::child_args(
            "dm",
            vec![
                ("--target", Some(args.target.name().to_string())),
                ("--addr", Some(args.addr.to_string())),
                ("--users", Some(share.to_string())),
                ("--rate", Some(rate.to_string())),
                ("--duration-s", Some(args.duration_s.to_string())),
                ("--text-bytes", Some(args.text_bytes.to_string())),
                ("--workers", Some(args.workers.min(*share).to_string())),
                ("--connect-concurrency", Some(args.connect_concurrency.to_string())),
                ("--drain-s", Some(args.drain_s.to_string())),
                ("--child-offset", Some(offset.to_string())),
                ("--users-file", Some(args.users_file.display().to_string())),
                ("--source-ips", args.source_ips.as_ref().map(ToString::to_string)),
                ("--in-flight", args.in_flight.map(|in_flight| in_flight.to_string())),
                ("--ramp-per-s", ramp),
            ],
        );
        arg_lists.push(list);
        offset += share;
    }
    let mut total = Figures::new();
    let mut connect_s: f64 = 0.0;
    for report in super::procs::run_children(arg_lists)? {
        total.merge(super::procs::figures_from(&report)?)?;
        connect_s = connect_s.max(report["connect_s"].as_f64().unwrap_or(0.0));
    }
    finish(args, total, connect_s, None, None)
}

/// Reports the run (and keeps its latencies with `--out`).
fn finish(
    args: &DmArgs,
    total: Figures,
    connect_s: f64,
    cpu: Option<CpuFigures>,
    counters: Option<CounterFigures>,
) -> anyhow::Result<()> {
    let timeline = total.timeline.summaries();
    let report = Report {
        scenario: "dm",
        target: args.target,
        mode: if args.in_flight.is_some() { "closed" } else { "open" },
        users: args.users,
        offered_rate: args.rate,
        duration_s: args.duration_s,
        connect_s,
        sent: total.sent,
        acked: total.acked,
        delivered: total.delivered,
        lost: total.sent.saturating_sub(total.delivered),
        delivered_per_s: total.delivered as f64 / args.duration_s as f64,
        delivery_latency: Summary::of(&total.delivery),
        ack_latency: Summary::of(&total.ack),
        connect_latency: Summary::of(&total.connect),
        send_lag: Summary::of(&total.send_lag),
        worst_seconds: latency::worst_seconds(&timeline, 3),
        seconds_spread: SecondsSpread::of(&timeline, args.p99_budget_ms),
        timeline,
        errors: total.errors.clone(),
        server_cpu_s_per_1000_delivered: cpu.as_ref().and_then(|cpu| cpu.server_cpu_s_per_1000(total.delivered)),
        cpu,
        server_mesh_messages_per_message: counters.and_then(|counters| counters.mesh_messages_per_stored),
        server_counters: counters,
    };
    if args.child_offset.is_some() {
        return super::procs::print_json(&report, &total, true, args.procs);
    }
    if args.json {
        super::procs::print_json(&report, &total, false, args.procs)?;
    } else {
        println!(
            "dm: {} users ({} pairs), offered {} msg/s for {} s, {} process(es), connected in {:.1} s",
            report.users,
            report.users / 2,
            report.offered_rate,
            report.duration_s,
            args.procs,
            report.connect_s
        );
        println!(
            "sent {}  acked {}  delivered {}  lost {}  ({:.0} deliveries/s)",
            report.sent, report.acked, report.delivered, report.lost, report.delivered_per_s
        );
        println!("delivery (due → partner): {}", report.delivery_latency.line());
        println!("ack      (due → reply):   {}", report.ack_latency.line());
        println!("connect  (TCP → hello):   {}", report.connect_latency.line());
        if report.send_lag.count > 0 {
            println!("send lag (due → sent):    {}", report.send_lag.line());
        }
        if !report.worst_seconds.is_empty() {
            let worst: Vec<String> = report.worst_seconds.iter().map(SecondSummary::line).collect();
            println!("worst seconds (delivery): {}", worst.join(", "));
        }
        if let Some(spread) = &report.seconds_spread {
            println!("per-second p99 (delivery): {}", spread.line());
        }
        if let Some(cpu) = &report.cpu {
            println!("{}", super::cpu::line(cpu, report.server_cpu_s_per_1000_delivered, "deliveries"));
        }
        if let Some(per) = report.server_mesh_messages_per_message {
            println!("cross-core messages: {per:.2} per stored message");
        }
        if !report.errors.is_empty() {
            println!("errors: {:?}", report.errors);
        }
    }
    let title = format!("{} dm: {} users, {} msg/s offered", args.target.name(), args.users, args.rate);
    latency::keep(args.out.as_deref(), &title, &total, args.duration_s, args.json)?;
    ensure!(report.lost == 0 && report.errors.is_empty(), "messages were lost or failed");
    Ok(())
}

/// One user's connection: its outbox and, against NATS, the due times of
/// its sends whose `PONG` has not come back yet (they come in order).
#[derive(Clone)]
struct Conn {
    outbox: Outbox,
    pending: Rc<RefCell<std::collections::VecDeque<u64>>>,
}

async fn open(
    args: &DmArgs,
    account: &Account,
    user: usize,
    stats: &Rc<RefCell<Stats>>,
    shared: &Arc<Shared>,
) -> anyhow::Result<Conn> {
    let connect_started = latency::now_ns();
    let source = args.source_ips.as_ref().map(|ips| ips.for_connection(user));
    let ws = match args.target {
        Target::Chatgw => {
            let (ws, hello) = ws::chatgw_session(args.addr, source, &account.token, &format!("dm{user}")).await?;
            stats.borrow_mut().heartbeat_every = ws::heartbeat_every(&hello);
            ws
        }
        Target::Nats => nats_session(args.addr, source, &account.username).await?,
    };
    shared.live.connections.fetch_add(1, Ordering::Relaxed);
    latency::record_since(&mut stats.borrow_mut().figures.connect, connect_started);
    let (outbox, mut stream) = ws::with_outbox(ws, 1024);
    let conn = Conn { outbox, pending: Rc::default() };
    let (stats, shared, target, replies, pending) =
        (stats.clone(), shared.clone(), args.target, conn.outbox.clone(), conn.pending.clone());
    glommio::spawn_local(async move {
        let mut parser = nats::Parser::default();
        while let Some(frame) = stream.next().await {
            let mut stats = stats.borrow_mut();
            match frame {
                Ok(Message::Text(text)) if target == Target::Chatgw => on_text(&mut stats, &shared, user, &text),
                // NATS sends its protocol in text or binary frames alike.
                Ok(frame @ (Message::Text(_) | Message::Binary(_))) if target == Target::Nats => {
                    let bytes = frame.into_data();
                    if on_nats(&mut parser, &mut stats, &shared, user, &bytes, &pending, &replies).is_err() {
                        stats.figures.error("unreadable_frame");
                        break;
                    }
                }
                Ok(Message::Close(_)) => {
                    stats.figures.error("closed_by_server");
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    stats.figures.error("connection_lost");
                    break;
                }
            }
        }
    })
    .detach();
    Ok(conn)
}

/// Connects to NATS's WebSocket listener and subscribes to `subject`;
/// returns once the server's `PONG` says the subscription is in place.
async fn nats_session(addr: SocketAddr, source: Option<std::net::IpAddr>, subject: &str) -> anyhow::Result<ws::Ws> {
    let mut ws = ws::connect(addr, source, "/", None).await?;
    ws.send(Message::text(nats::connect_and_subscribe(subject))).await.context("subscribing")?;
    let mut parser = nats::Parser::default();
    loop {
        let Some(frame) = runtime::within(ws::CONNECT_TIMEOUT, ws.next()).await else {
            anyhow::bail!("no PONG for the subscription within {:?}", ws::CONNECT_TIMEOUT);
        };
        let bytes = match frame {
            Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
            Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error).context("reading the subscription's answer"),
            None => anyhow::bail!("closed before the subscription was in place"),
        };
        if nats::subscribed(&mut parser, &bytes)? {
            return Ok(ws);
        }
    }
}

/// NATS bytes on `user`'s connection: `MSG`s are deliveries, `PONG`s the
/// acks of its sends in order, `PING`s are answered.
fn on_nats(
    parser: &mut nats::Parser,
    stats: &mut Stats,
    shared: &Shared,
    user: usize,
    bytes: &[u8],
    pending: &RefCell<std::collections::VecDeque<u64>>,
    replies: &Outbox,
) -> anyhow::Result<()> {
    parser.feed(bytes, &mut |op| match op {
        nats::Op::Msg(payload) => match std::str::from_utf8(payload) {
            Ok(text) => on_delivery(stats, shared, user, text),
            Err(_) => stats.figures.error("foreign_message"),
        },
        nats::Op::Pong => match pending.borrow_mut().pop_front() {
            Some(due) => on_reply(stats, shared, due),
            None => stats.figures.error("unexpected_pong"),
        },
        nats::Op::Ping => {
            replies.try_send(Message::text("PONG\r\n")).ok();
        }
        nats::Op::Err(error) => stats.figures.error(&error),
        nats::Op::Info | nats::Op::Ok => {}
    })
}

fn on_text(stats: &mut Stats, shared: &Shared, user: usize, text: &str) {
    match ws::classify(text) {
        Ok(Inbound::Message(text)) => on_delivery(stats, shared, user, &text),
        Ok(Inbound::Reply(ws::HEARTBEAT_ID)) => {}
        Ok(Inbound::Reply(due)) => on_reply(stats, shared, due),
        Ok(Inbound::Error(_, code)) => stats.figures.error(&code),
        Ok(Inbound::Event(_)) => {}
        Err(_) => stats.figures.error("unreadable_frame"),
    }
}

/// A message's text (`lg <due> <sender> ...`) arrived at `user`.
fn on_delivery(stats: &mut Stats, shared: &Shared, user: usize, text: &str) {
    let mut fields = text.split(' ').skip(1);
    let due: Option<u64> = fields.next().and_then(|due| due.parse().ok());
    let sender: Option<usize> = fields.next().and_then(|sender| sender.parse().ok());
    match (due, sender) {
        (Some(_), Some(sender)) if sender == user => {} // our own echo
        (Some(0), Some(_)) => stats.warm_deliveries += 1,
        (Some(due), Some(_)) => {
            let micros = latency::record_since(&mut stats.figures.delivery, due);
            stats.figures.timeline.record(due, micros);
            stats.figures.delivered += 1;
            shared.live.delivered.fetch_add(1, Ordering::Relaxed);
            if stats.figures.delivered.is_multiple_of(128) {
                shared.live.report_p99(stats.figures.delivery.value_at_quantile(0.99));
            }
        }
        _ => stats.figures.error("foreign_message"),
    }
}

/// The ack of the send due at `due` (0: a warm-up send).
fn on_reply(stats: &mut Stats, shared: &Shared, due: u64) {
    if due == 0 {
        stats.warm_acks += 1;
        return;
    }
    latency::record_since(&mut stats.figures.ack, due);
    stats.figures.acked += 1;
    WINDOW.with(|window| window.signal(1));
    shared.acked.fetch_add(1, Ordering::Relaxed);
}

/// The send of `sender`'s message due at `due` to `partner` (a username,
/// or against NATS the partner's subject); against NATS its due time
/// waits in `pending` for the `PONG`.
fn command(target: Target, due: u64, sender: usize, partner: &str, pad: &str, conn: &Conn) -> Message {
    match target {
        Target::Chatgw => Message::text(format!(
            r#"{{"id":{due},"method":"send","params":{{"to_user":"{partner}","text":"lg {due} {sender} {pad}"}}}}"#
        )),
        Target::Nats => {
            conn.pending.borrow_mut().push_back(due);
            Message::text(nats::publish(partner, &format!("lg {due} {sender} {pad}")))
        }
    }
}

async fn worker_main(
    args: &DmArgs,
    accounts: &[Account],
    shared: &Arc<Shared>,
    worker: usize,
) -> anyhow::Result<(Stats, u64)> {
    let stats = Rc::new(RefCell::new(Stats::new()));
    let mine: Vec<usize> = (worker..args.users).step_by(args.workers).collect();
    let conns = connect_all(args, accounts, shared, &stats, &mine).await?;
    let connected_at = latency::now_ns();
    if args.target == Target::Chatgw {
        // (NATS pings its clients, and the readers answer.)
        let outboxes: Vec<Outbox> = conns.iter().map(|conn| conn.outbox.clone()).collect();
        ws::spawn_heartbeats(&outboxes, stats.borrow().heartbeat_every);
    }
    shared.connected.fetch_add(1, Ordering::AcqRel);
    wait_for("every worker to connect", &shared.failed, Duration::from_secs(600), || {
        shared.connected.load(Ordering::Acquire) == args.workers
    })
    .await?;
    let pad = "x".repeat(args.text_bytes.saturating_sub(30));
    warm_up(args, accounts, shared, &stats, &mine, &conns, &pad).await?;

    // One start time for all, set by worker 0 once it has read the
    // server's counters: a worker that started sending while they were
    // being read would have its first messages counted before the
    // measured phase (the counters once said 799 of 800 stored).
    let start = if worker == 0 {
        if args.target == Target::Chatgw && args.child_offset.is_none() {
            shared.counters.start(&args.addr.to_string());
        }
        runtime::agreed_start(&shared.start_ns)
    } else {
        wait_for("the start", &shared.failed, Duration::from_secs(120), || {
            shared.start_ns.load(Ordering::Acquire) != 0
        })
        .await?;
        shared.start_ns.load(Ordering::Acquire)
    };
    let end = start + args.duration_s * 1_000_000_000;
    stats.borrow_mut().figures.timeline.start_at(start);
    shared.meter.start(args.server_pid);
    let sender = Sender { target: args.target, accounts, shared, stats: &stats, mine: &mine, conns: &conns, pad: &pad };
    match args.in_flight {
        Some(in_flight) => sender.closed_loop(in_flight, end).await,
        None => {
            let interval = (1e9 * args.workers as f64 / args.rate as f64) as u64;
            sender.open_loop(start + worker as u64 * interval / args.workers as u64, interval, end).await;
        }
    }
    let _ = wait_for("the last deliveries", &shared.failed, Duration::from_secs(args.drain_s), || {
        let sent = shared.live.sent.load(Ordering::Acquire);
        shared.live.delivered.load(Ordering::Acquire) >= sent && shared.acked.load(Ordering::Acquire) >= sent
    })
    .await;
    shared.meter.stop();
    if args.target == Target::Chatgw && args.child_offset.is_none() {
        shared.counters.stop(&args.addr.to_string());
    }
    shared.finished.fetch_add(1, Ordering::AcqRel);
    wait_for("every worker to finish", &shared.failed, Duration::from_secs(args.drain_s + 60), || {
        shared.finished.load(Ordering::Acquire) == args.workers
    })
    .await?;
    // Take the figures before the connections close (closing is not an error).
    let figures = std::mem::replace(&mut *stats.borrow_mut(), Stats::new());
    drop(conns);
    Ok((figures, connected_at))
}

/// Opens this worker's connections, `--ramp-per-s` of them a second (its
/// share) when given, else `--connect-concurrency` at a time.
async fn connect_all(
    args: &DmArgs,
    accounts: &[Account],
    shared: &Arc<Shared>,
    stats: &Rc<RefCell<Stats>>,
    mine: &[usize],
) -> anyhow::Result<Vec<Conn>> {
    let mut outboxes = Vec::with_capacity(mine.len());
    let ramp = Ramp::new(args.ramp_per_s, args.workers);
    for chunk in mine.chunks(ramp.chunk(args.connect_concurrency)) {
        ramp.wait(outboxes.len()).await;
        let opened =
            futures_util::future::join_all(chunk.iter().map(|&user| open(args, &accounts[user], user, stats, shared)))
                .await;
        for (outbox, &user) in opened.into_iter().zip(chunk) {
            outboxes.push(outbox.with_context(|| format!("user {user}"))?);
        }
    }
    Ok(outboxes)
}

/// Each even user sends one message, which makes the pair's direct
/// channel; waits until every ack and every delivery is in, here and in
/// every other worker.
async fn warm_up(
    args: &DmArgs,
    accounts: &[Account],
    shared: &Arc<Shared>,
    stats: &Rc<RefCell<Stats>>,
    mine: &[usize],
    conns: &[Conn],
    pad: &str,
) -> anyhow::Result<()> {
    let mut evens = 0;
    let mut odds = 0;
    for (slot, &user) in mine.iter().enumerate() {
        if user.is_multiple_of(2) {
            evens += 1;
            let conn = &conns[slot];
            conn.outbox.send(command(args.target, 0, user, &accounts[user + 1].username, pad, conn)).await.ok();
        } else {
            odds += 1;
        }
    }
    wait_for("warm-up", &shared.failed, Duration::from_secs(120), || {
        let stats = stats.borrow();
        stats.warm_acks >= evens && stats.warm_deliveries >= odds
    })
    .await?;
    shared.warmed.fetch_add(1, Ordering::AcqRel);
    wait_for("every worker to warm up", &shared.failed, Duration::from_secs(120), || {
        shared.warmed.load(Ordering::Acquire) == args.workers
    })
    .await
}

/// What the measured phase sends with: this worker's users, their
/// connections and figures.
struct Sender<'a> {
    target: Target,
    accounts: &'a [Account],
    shared: &'a Arc<Shared>,
    stats: &'a Rc<RefCell<Stats>>,
    mine: &'a [usize],
    conns: &'a [Conn],
    pad: &'a str,
}

impl Sender<'_> {
    /// Queues the message of slot `slot` due at `due_ns`, counting it.
    fn send(&self, slot: usize, due_ns: u64) {
        let user = self.mine[slot];
        let partner = &self.accounts[user ^ 1].username;
        let conn = &self.conns[slot];
        match conn.outbox.try_send(command(self.target, due_ns, user, partner, self.pad, conn)) {
            Ok(()) => {
                self.stats.borrow_mut().figures.sent += 1;
                self.shared.live.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                if self.target == Target::Nats {
                    conn.pending.borrow_mut().pop_back(); // it never went out
                }
                self.stats.borrow_mut().figures.error("client_backlog");
            }
        }
    }

    /// `--in-flight N`: a new message whenever an ack frees a unit, until `end`.
    async fn closed_loop(&self, in_flight: u64, end: u64) {
        let window = WINDOW.with(Rc::clone);
        window.signal(in_flight);
        let mut slot = 0;
        while latency::now_ns() < end {
            let left = Duration::from_nanos(end.saturating_sub(latency::now_ns()));
            // The next unit comes with an ack; give up waiting at the end.
            if !matches!(runtime::within(left, window.acquire(1)).await, Some(Ok(()))) {
                break;
            }
            // The message is "due" now: latency counts from the send.
            self.send(slot, latency::now_ns());
            slot = (slot + 1) % self.mine.len();
        }
    }

    /// The open loop: one message every `interval` ns from `next`, until
    /// `end`, each with its own due time.
    async fn open_loop(&self, mut next: u64, interval: u64, end: u64) {
        let mut slot = 0;
        while next < end {
            let now = latency::now_ns();
            if next > now {
                // Sleep until the next one is due (no spinning: the cores are
                // shared with the server being measured). A late wake-up only
                // delays sends, and their latency still counts from due time.
                glommio::timer::sleep(Duration::from_nanos(next - now)).await;
                continue;
            }
            // Everything due by now goes out, each with its own due time.
            while next <= now && next < end {
                latency::record_between(&mut self.stats.borrow_mut().figures.send_lag, next, now);
                self.send(slot, next);
                slot = (slot + 1) % self.mine.len();
                next += interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_a_positive_number_of_milliseconds() {
        assert_eq!(positive_ms("5"), Ok(5.0));
        assert_eq!(positive_ms("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "five", ""] {
            assert!(positive_ms(bad).unwrap_err().contains("not a positive number"), "{bad}");
        }
    }
}
