//! The `fanout` scenario: groups of members, one sender per group keeping
//! a window of messages unacknowledged (closed loop), every member
//! connected: deliveries per second.
//!
//! The same plan runs against chatgw (a group channel per group) or against
//! `nats-server`'s WebSocket listener (a subject per group, each member a
//! subscriber, the sender's `PING` after each `PUB` as its ack), so the two
//! can be compared in one run on one machine.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_tungstenite::tungstenite::Message;
use clap::Args;
use futures_util::StreamExt;
use glommio::channels::local_channel;
use serde::Serialize;

use super::accounts::{self, Account};
use super::cpu::{CpuFigures, SharedMeter};
use super::latency::{self, Figures, Summary};
use super::nats;
use super::progress::{Live, Progress};
use super::runtime;
use super::runtime::{Ramp, wait_for, within};
use super::target::Target;
use super::ws::{self, Inbound, Outbox};

/// `chatgw loadgen fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// The server to load.
    #[arg(long, value_enum, default_value = "chatgw")]
    target: Target,
    /// Its address (chatgw's HTTP port, or NATS's WebSocket port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Groups, each with its own sender.
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Members per group (the sender included), one connection each.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Messages each sender keeps unacknowledged.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Each sender sends at most this many messages a second (under a
    /// server's per-user rate limit) [default: as fast as the window lets].
    #[arg(long)]
    sends_per_s: Option<f64>,
    /// Members per group (the last ones) that connect, join and then never
    /// read a byte once the load starts, as a hostile client would: what
    /// the server holds for them must stay bounded (it closes them as slow
    /// consumers). Their deliveries are not expected.
    #[arg(long, default_value_t = 0)]
    never_readers: usize,
    /// Each sender also says it is typing (`typing` start) before every
    /// Nth message (0: never), as a person typing would.
    #[arg(long, default_value_t = 0)]
    typing_every: u64,
    /// Each member also marks its channel read (`channel.read`) at every
    /// Nth message it receives (0: never).
    #[arg(long, default_value_t = 0)]
    read_every: u64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    text_bytes: usize,
    /// Where chatgw accounts are kept between runs (unused for NATS).
    #[arg(long, default_value = "loadgen-users.json")]
    users_file: PathBuf,
    /// Worker threads (glommio executors).
    #[arg(long, default_value_t = runtime::default_workers())]
    workers: usize,
    /// Seconds to wait for in-flight messages after the run.
    #[arg(long, default_value_t = 10)]
    drain_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Bind each connection to one of these source addresses in turn
    /// (`127.0.0.2-127.0.0.200`, or a comma-separated list): one address
    /// has only so many ephemeral ports.
    #[arg(long)]
    source_ips: Option<super::source::SourceIps>,
    /// Open at most this many connections a second, all workers together
    /// [default: as fast as they open].
    #[arg(long)]
    ramp_per_s: Option<f64>,
    /// Processes to spread the groups over (one process's open-file limit
    /// caps what it holds).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal: run as a child of `--procs` on the groups from this index.
    #[arg(long, hide = true)]
    child_group_offset: Option<usize>,
    /// Write the latencies here: `.hgrm` files, an interval log, and a plot
    /// (SVG and PNG).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The server's process id: its CPU time over the measured phase (and
    /// the load generator's own) goes in the report.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    ready: AtomicUsize,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    acked: AtomicU64,
    finished: AtomicUsize,
    failed: Arc<AtomicBool>,
    /// Sent and delivered counts, connections and p99, for the live line.
    live: Arc<Live>,
    /// CPU over the measured phase (from its start to the last delivery).
    meter: SharedMeter,
}

struct Stats {
    figures: Figures,
    delivered_in_window: u64,
    /// Members that saw their group (chatgw `channel` event, NATS `PONG`).
    joined: usize,
    /// The group channel ids made by this worker's senders, by group.
    channels: BTreeMap<usize, String>,
    /// Half chatgw's heartbeat period, from its hello (NATS pings us).
    heartbeat_every: Option<Duration>,
    /// Messages a member's connections received (for `--read-every`).
    received_messages: u64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            figures: Figures::new(),
            delivered_in_window: 0,
            joined: 0,
            channels: BTreeMap::new(),
            heartbeat_every: None,
            received_messages: 0,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    target: Target,
    groups: usize,
    members: usize,
    never_readers: usize,
    window: usize,
    duration_s: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    deliveries_per_s: f64,
    messages_per_s: f64,
    delivery_latency: Summary,
    ack_latency: Summary,
    connect_latency: Summary,
    errors: BTreeMap<String, u64>,
    /// Typing and reads sent, and the events they made received.
    events: BTreeMap<String, u64>,
    /// CPU over the measured phase (with `--server-pid`).
    cpu: Option<CpuFigures>,
    /// The server's CPU seconds per 1,000 deliveries in that phase.
    server_cpu_s_per_1000_delivered: Option<f64>,
}

/// The id of the setup command (`channel.create`); sends count from 2.
const SETUP_ID: u64 = 1;
/// The id of the `typing` commands senders make (2 is the heartbeat's;
/// their replies are counted only when they fail).
const TYPING_ID: u64 = 4;
/// The id of the `channel.read` commands members make.
const READ_ID: u64 = 5;

/// Runs the scenario.
pub fn run(args: FanoutArgs) -> anyhow::Result<()> {
    ensure!(args.groups >= 1 && args.members >= 2, "at least one group of two");
    ensure!(args.procs >= 1 && args.groups >= args.procs, "at least one group per process");
    ensure!(
        (args.groups.div_ceil(args.procs)) * args.members <= 19_000,
        "one process holds at most 19,000 connections here: use --procs"
    );
    ensure!(args.window >= 1 && args.workers >= 1 && args.duration_s >= 1, "window, workers, duration positive");
    ensure!(args.never_readers + 1 < args.members, "a group keeps its sender and one reader besides never-readers");
    ensure!(
        args.server_pid.is_none() || args.procs == 1,
        "--server-pid measures one load generator process: no --procs"
    );
    if args.procs > 1 {
        return run_procs(&args);
    }
    let first_user = args.child_group_offset.unwrap_or(0) * args.members;
    let accounts = match args.target {
        Target::Chatgw => {
            let (accounts, _) = accounts::load_or_make(
                &args.addr.to_string(),
                &args.users_file,
                first_user + args.groups * args.members,
            )?;
            accounts[first_user..].to_vec()
        }
        Target::Nats => Vec::new(),
    };
    let accounts = Arc::new(accounts);
    let shared = Arc::new(Shared::default());
    let progress = Progress::start("fanout", (args.groups * args.members) as u64, shared.live.clone());
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
    let mut delivered_in_window = 0;
    for stats in outcomes {
        delivered_in_window += stats.delivered_in_window;
        total.merge(stats.figures)?;
    }
    let cpu = shared.meter.figures()?;
    finish(&args, total, delivered_in_window as f64 / args.duration_s as f64, cpu)
}

/// Runs the groups across `--procs` child processes and adds up their
/// figures (each child measures its own window; their rates add).
fn run_procs(args: &FanoutArgs) -> anyhow::Result<()> {
    if args.target == Target::Chatgw {
        accounts::load_or_make(&args.addr.to_string(), &args.users_file, args.groups * args.members)?;
    }
    let shares = super::procs::shares(args.groups, args.procs, 1)?;
    let mut offset = 0;
    let mut arg_lists = Vec::with_capacity(shares.len());
    for share in &shares {
        let target = args.target.name();
        let ramp = args.ramp_per_s.map(|per_s| (per_s * *share as f64 / args.groups as f64).to_string());
        let list = super::procs::child_args(
            "fanout",
            vec![
                ("--target", Some(target.to_string())),
                ("--addr", Some(args.addr.to_string())),
                ("--groups", Some(share.to_string())),
                ("--members", Some(args.members.to_string())),
                ("--window", Some(args.window.to_string())),
                ("--sends-per-s", args.sends_per_s.map(|per_s| per_s.to_string())),
                ("--never-readers", Some(args.never_readers.to_string())),
                ("--typing-every", Some(args.typing_every.to_string())),
                ("--read-every", Some(args.read_every.to_string())),
                ("--duration-s", Some(args.duration_s.to_string())),
                ("--text-bytes", Some(args.text_bytes.to_string())),
                ("--workers", Some(args.workers.to_string())),
                ("--drain-s", Some(args.drain_s.to_string())),
                ("--child-group-offset", Some(offset.to_string())),
                ("--users-file", Some(args.users_file.display().to_string())),
                ("--source-ips", args.source_ips.as_ref().map(ToString::to_string)),
                ("--ramp-per-s", ramp),
            ],
        );
        arg_lists.push(list);
        offset += share;
    }
    let mut total = Figures::new();
    let mut deliveries_per_s = 0.0;
    for report in super::procs::run_children(arg_lists)? {
        total.merge(super::procs::figures_from(&report)?)?;
        deliveries_per_s += report["deliveries_per_s"].as_f64().unwrap_or(0.0);
    }
    finish(args, total, deliveries_per_s, None)
}

/// Reports the run (and keeps its latencies with `--out`).
fn finish(args: &FanoutArgs, total: Figures, deliveries_per_s: f64, cpu: Option<CpuFigures>) -> anyhow::Result<()> {
    // Members that read: each gets every message of its group.
    let readers = args.members - args.never_readers;
    let report = Report {
        scenario: "fanout",
        target: args.target,
        groups: args.groups,
        members: args.members,
        never_readers: args.never_readers,
        window: args.window,
        duration_s: args.duration_s,
        sent: total.sent,
        acked: total.acked,
        delivered: total.delivered,
        deliveries_per_s,
        messages_per_s: deliveries_per_s / readers as f64,
        delivery_latency: Summary::of(&total.delivery),
        ack_latency: Summary::of(&total.ack),
        connect_latency: Summary::of(&total.connect),
        errors: total.errors.clone(),
        events: total.events.clone(),
        server_cpu_s_per_1000_delivered: cpu.as_ref().and_then(|cpu| cpu.server_cpu_s_per_1000(total.delivered)),
        cpu,
    };
    if args.child_group_offset.is_some() {
        return super::procs::print_json(&report, &total, true, args.procs);
    }
    if args.json {
        super::procs::print_json(&report, &total, false, args.procs)?;
    } else {
        println!(
            "fanout against {:?}: {} groups of {} ({} never reading), window {}, {} s, {} process(es)",
            report.target,
            report.groups,
            report.members,
            report.never_readers,
            report.window,
            report.duration_s,
            args.procs
        );
        println!(
            "{:.0} deliveries/s ({:.0} messages/s); sent {} acked {} delivered {}",
            report.deliveries_per_s, report.messages_per_s, report.sent, report.acked, report.delivered
        );
        println!("delivery (send → member): {}", report.delivery_latency.line());
        println!("ack      (send → ack):    {}", report.ack_latency.line());
        println!("connect  (TCP → ready):   {}", report.connect_latency.line());
        if let Some(cpu) = &report.cpu {
            println!("{}", super::cpu::line(cpu, report.server_cpu_s_per_1000_delivered, "deliveries"));
        }
        if !report.events.is_empty() {
            println!("typing and reads: {:?}", report.events);
        }
        if !report.errors.is_empty() {
            println!("errors: {:?}", report.errors);
        }
    }
    let title =
        format!("{:?} fan-out: {} groups of {}, window {}", args.target, args.groups, args.members, args.window);
    latency::keep(args.out.as_deref(), &title, &total, args.duration_s, args.json)?;
    ensure!(report.errors.is_empty(), "errors during the run");
    ensure!(report.delivered == report.sent * readers as u64, "deliveries missing");
    Ok(())
}

/// Opens member `user`'s connection; for a sender, acks go to `acks`.
async fn open(
    args: &FanoutArgs,
    accounts: &[Account],
    user: usize,
    stats: &Rc<RefCell<Stats>>,
    shared: &Arc<Shared>,
    acks: Option<local_channel::LocalSender<()>>,
) -> anyhow::Result<Outbox> {
    let group = user / args.members;
    let never_reads = user % args.members >= args.members - args.never_readers;
    let source = args.source_ips.as_ref().map(|ips| ips.for_connection(user));
    let connect_started = latency::now_ns();
    let ws = match args.target {
        Target::Chatgw => {
            let (ws, hello) =
                ws::chatgw_session(args.addr, source, &accounts[user].token, &format!("fo{user}")).await?;
            stats.borrow_mut().heartbeat_every = Some(ws::heartbeat_every(&hello));
            ws
        }
        Target::Nats => ws::connect(args.addr, source, "/", None).await?,
    };
    shared.live.connections.fetch_add(1, Ordering::Relaxed);
    latency::record_since(&mut stats.borrow_mut().figures.connect, connect_started);
    let (outbox, mut stream) = ws::with_outbox(ws, args.window * 2 + 16);
    if args.target == Target::Nats {
        let subject = subject(args.child_group_offset.unwrap_or(0) + group);
        outbox.try_send(Message::text(nats::connect_and_subscribe(&subject))).ok();
    }
    let (stats, shared, target, replies) = (stats.clone(), shared.clone(), args.target, outbox.clone());
    let read_every = args.read_every;
    glommio::spawn_local(async move {
        let mut parser = nats::Parser::default();
        let mut subscribed = false;
        while let Some(frame) = stream.next().await {
            if never_reads && load_started(&shared) {
                // From here on this connection reads nothing, and holds
                // its socket open until the process ends.
                std::future::pending::<()>().await;
            }
            let mut stats = stats.borrow_mut();
            let bytes = match &frame {
                Ok(Message::Text(text)) => text.as_bytes(),
                Ok(Message::Binary(bytes)) => &bytes[..],
                Ok(Message::Close(_)) => {
                    stats.figures.error("closed_by_server");
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    stats.figures.error("connection_lost");
                    break;
                }
            };
            match target {
                Target::Chatgw => {
                    on_chatgw(&mut stats, &shared, group, bytes, acks.as_ref());
                    if read_every > 0 && acks.is_none() {
                        mark_read(&mut stats, &replies, bytes, read_every);
                    }
                }
                Target::Nats => {
                    let fed = parser.feed(bytes, &mut |op| match op {
                        nats::Op::Msg(payload) => on_delivery(&mut stats, &shared, payload),
                        nats::Op::Pong if !subscribed => {
                            subscribed = true;
                            stats.joined += 1;
                        }
                        nats::Op::Pong => on_ack(&mut stats, &shared, acks.as_ref(), None),
                        nats::Op::Ping => {
                            replies.try_send(Message::text("PONG\r\n")).ok();
                        }
                        nats::Op::Err(error) => stats.figures.error(&error),
                        nats::Op::Info | nats::Op::Ok => {}
                    });
                    if fed.is_err() {
                        stats.figures.error("unreadable_frame");
                        break;
                    }
                }
            }
        }
    })
    .detach();
    Ok(outbox)
}

/// Whether the measured load has started.
fn load_started(shared: &Shared) -> bool {
    let start = shared.start_ns.load(Ordering::Acquire);
    start != 0 && latency::now_ns() >= start
}

fn subject(group: usize) -> String {
    format!("chatgw.loadgen.g{group}")
}

fn on_delivery(stats: &mut Stats, shared: &Shared, payload: &[u8]) {
    let sent_at = std::str::from_utf8(payload).ok().and_then(|text| text.split(' ').nth(1)?.parse::<u64>().ok());
    let Some(sent_at) = sent_at else {
        stats.figures.error("foreign_message");
        return;
    };
    latency::record_since(&mut stats.figures.delivery, sent_at);
    stats.figures.delivered += 1;
    shared.live.delivered.fetch_add(1, Ordering::Relaxed);
    if stats.figures.delivered.is_multiple_of(4096) {
        shared.live.report_p99(stats.figures.delivery.value_at_quantile(0.99));
    }
    let end = shared.end_ns.load(Ordering::Relaxed);
    if end == 0 || latency::now_ns() < end {
        stats.delivered_in_window += 1;
    }
}

fn on_ack(stats: &mut Stats, shared: &Shared, acks: Option<&local_channel::LocalSender<()>>, sent_at: Option<u64>) {
    let Some(acks) = acks else {
        stats.figures.error("ack_to_a_member");
        return;
    };
    if let Some(sent_at) = sent_at {
        latency::record_since(&mut stats.figures.ack, sent_at);
    }
    stats.figures.acked += 1;
    shared.acked.fetch_add(1, Ordering::Relaxed);
    acks.try_send(()).ok();
}

fn on_chatgw(
    stats: &mut Stats,
    shared: &Shared,
    group: usize,
    bytes: &[u8],
    acks: Option<&local_channel::LocalSender<()>>,
) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        stats.figures.error("unreadable_frame");
        return;
    };
    match ws::classify(text) {
        Ok(Inbound::Message(text)) => on_delivery(stats, shared, text.as_bytes()),
        Ok(Inbound::Reply(ws::HEARTBEAT_ID)) => {}
        Ok(Inbound::Reply(SETUP_ID)) => {
            let reply: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            match reply["result"]["channel"]["id"].as_str() {
                Some(channel) => {
                    stats.channels.insert(group, channel.to_string());
                }
                None => stats.figures.error("channel_create_answer"),
            }
        }
        Ok(Inbound::Reply(TYPING_ID | READ_ID)) => {}
        // Sends carry their send time as their id.
        Ok(Inbound::Reply(sent_at)) => on_ack(stats, shared, acks, Some(sent_at)),
        Ok(Inbound::Error(_, code)) => stats.figures.error(&code),
        Ok(Inbound::Event("channel")) => stats.joined += 1,
        Ok(Inbound::Event("typing")) => stats.figures.event("typing_received"),
        Ok(Inbound::Event("receipt")) => stats.figures.event("receipt_received"),
        Ok(Inbound::Event(_)) => {}
        Err(_) => stats.figures.error("unreadable_frame"),
    }
}

/// A member's `channel.read` at every `every`th message it receives: of
/// that message, whose id and channel are read from the frame's text.
fn mark_read(stats: &mut Stats, replies: &Outbox, bytes: &[u8], every: u64) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if !text.starts_with(r#"{"event":"message""#) {
        return;
    }
    stats.received_messages += 1;
    if !stats.received_messages.is_multiple_of(every) {
        return;
    }
    let field = |name: &str| {
        let start = text.find(&format!(r#""{name}":""#))? + name.len() + 4;
        text[start..].split('"').next().map(str::to_string)
    };
    let (Some(id), Some(channel)) = (field("id"), field("channel_id")) else { return };
    let read = format!(
        r#"{{"id":{READ_ID},"method":"channel.read","params":{{"channel_id":"{channel}","message_id":"{id}"}}}}"#
    );
    if replies.try_send(Message::text(read)).is_ok() {
        stats.figures.event("reads_sent");
    }
}

fn chatgw_send(channel: &str, sent_at: u64, group: usize, pad: &str) -> Message {
    Message::text(format!(
        r#"{{"id":{sent_at},"method":"send","params":{{"channel_id":"{channel}","text":"fo {sent_at} {group} {pad}"}}}}"#
    ))
}

async fn worker_main(
    args: &FanoutArgs,
    accounts: &[Account],
    shared: &Arc<Shared>,
    worker: usize,
) -> anyhow::Result<Stats> {
    let stats = Rc::new(RefCell::new(Stats::new()));
    let users = args.groups * args.members;
    let mine: Vec<usize> = (worker..users).step_by(args.workers).collect();
    let (outboxes, senders) = connect_all(args, accounts, shared, &stats, &mine).await?;
    if let Some(every) = stats.borrow().heartbeat_every {
        ws::spawn_heartbeats(&outboxes.values().cloned().collect::<Vec<_>>(), every);
    }
    shared.connected.fetch_add(1, Ordering::AcqRel);
    wait_for("every worker to connect", &shared.failed, Duration::from_secs(600), || {
        shared.connected.load(Ordering::Acquire) == args.workers
    })
    .await?;
    set_up_groups(args, accounts, shared, &stats, &mine, &outboxes, &senders).await?;
    let start = runtime::agreed_start(&shared.start_ns);
    let end = start + args.duration_s * 1_000_000_000;
    shared.end_ns.store(end, Ordering::Release);
    glommio::timer::sleep(Duration::from_nanos(start.saturating_sub(latency::now_ns()))).await;
    shared.meter.start(args.server_pid);

    let pad = "x".repeat(args.text_bytes.saturating_sub(30));
    let channels = stats.borrow().channels.clone();
    let loops = senders.into_iter().map(|(user, acks)| {
        let group = user / args.members;
        let channel = channels.get(&group).cloned().unwrap_or_default();
        let pad = pad.clone();
        let make = move |sent_at: u64| match args.target {
            Target::Chatgw => chatgw_send(&channel, sent_at, group, &pad),
            Target::Nats => {
                let subject = subject(args.child_group_offset.unwrap_or(0) + group);
                Message::text(nats::publish(&subject, &format!("fo {sent_at} {group} {pad}")))
            }
        };
        let typing = (args.target == Target::Chatgw && args.typing_every > 0).then(|| {
            Message::text(format!(
                r#"{{"id":{TYPING_ID},"method":"typing","params":{{"channel_id":"{}","state":"start"}}}}"#,
                channels.get(&group).cloned().unwrap_or_default()
            ))
        });
        let sender = GroupSender { args, user, outbox: outboxes[&user].clone(), acks, end, typing };
        sender.run(make, stats.clone(), shared.clone())
    });
    for result in futures_util::future::join_all(loops).await {
        result?;
    }
    let members = (args.members - args.never_readers) as u64;
    let _ = wait_for("the last deliveries", &shared.failed, Duration::from_secs(args.drain_s), || {
        shared.live.delivered.load(Ordering::Acquire) >= shared.live.sent.load(Ordering::Acquire) * members
    })
    .await;
    shared.meter.stop();
    shared.finished.fetch_add(1, Ordering::AcqRel);
    wait_for("every worker to finish", &shared.failed, Duration::from_secs(args.drain_s + 60), || {
        shared.finished.load(Ordering::Acquire) == args.workers
    })
    .await?;
    let figures = std::mem::replace(&mut *stats.borrow_mut(), Stats::new());
    drop(outboxes);
    Ok(figures)
}

/// A group's sender (its first member) with the acks of its messages.
type Senders = Vec<(usize, local_channel::LocalReceiver<()>)>;

/// Opens this worker's members' connections, `--ramp-per-s` of them a
/// second (its share) when given, else 64 at a time; answers them by user,
/// and the senders among them.
async fn connect_all(
    args: &FanoutArgs,
    accounts: &[Account],
    shared: &Arc<Shared>,
    stats: &Rc<RefCell<Stats>>,
    mine: &[usize],
) -> anyhow::Result<(BTreeMap<usize, Outbox>, Senders)> {
    let mut outboxes = BTreeMap::new();
    let mut senders = Vec::new();
    let ramp = Ramp::new(args.ramp_per_s, args.workers);
    let mut opened_here = 0usize;
    for chunk in mine.chunks(ramp.chunk(64)) {
        ramp.wait(opened_here).await;
        opened_here += chunk.len();
        let opened = futures_util::future::join_all(chunk.iter().map(|&user| {
            let acks = (user % args.members == 0).then(|| local_channel::new_bounded::<()>(args.window + 1));
            let (ack_tx, ack_rx) = match acks {
                Some((tx, rx)) => (Some(tx), Some(rx)),
                None => (None, None),
            };
            let open = open(args, accounts, user, stats, shared, ack_tx);
            async move { (user, open.await, ack_rx) }
        }))
        .await;
        for (user, outbox, ack_rx) in opened {
            outboxes.insert(user, outbox.with_context(|| format!("member {user}"))?);
            if let Some(ack_rx) = ack_rx {
                senders.push((user, ack_rx));
            }
        }
    }
    Ok((outboxes, senders))
}

/// chatgw senders make their group's channel; every member (NATS: every
/// subscriber) reports in, here and in every other worker, before the load
/// starts.
async fn set_up_groups(
    args: &FanoutArgs,
    accounts: &[Account],
    shared: &Arc<Shared>,
    stats: &Rc<RefCell<Stats>>,
    mine: &[usize],
    outboxes: &BTreeMap<usize, Outbox>,
    senders: &Senders,
) -> anyhow::Result<()> {
    if args.target == Target::Chatgw {
        for (user, _) in senders {
            let members: Vec<&str> =
                (user + 1..user + args.members).map(|member| accounts[member].username.as_str()).collect();
            let create = serde_json::json!({
                "id": SETUP_ID,
                "method": "channel.create",
                "params": { "name": format!("fanout-{}", user / args.members), "members": members },
            });
            outboxes[user].send(Message::text(create.to_string())).await.ok();
        }
    }
    let expected_joins = match args.target {
        // The creator's reply stands for its own join.
        Target::Chatgw => mine.iter().filter(|user| *user % args.members != 0).count(),
        Target::Nats => mine.len(),
    };
    wait_for("every member to join its group", &shared.failed, Duration::from_secs(120), || {
        let stats = stats.borrow();
        stats.joined >= expected_joins && (args.target == Target::Nats || stats.channels.len() == senders.len())
    })
    .await?;
    shared.ready.fetch_add(1, Ordering::AcqRel);
    wait_for("every worker to set up", &shared.failed, Duration::from_secs(120), || {
        shared.ready.load(Ordering::Acquire) == args.workers
    })
    .await
}

/// One group's sender in the measured phase: keeps `--window` messages in
/// flight until `end`, then waits for the last acks.
struct GroupSender<'a> {
    args: &'a FanoutArgs,
    user: usize,
    outbox: Outbox,
    acks: local_channel::LocalReceiver<()>,
    end: u64,
    /// The `typing` start sent before every `--typing-every`th message.
    typing: Option<Message>,
}

impl GroupSender<'_> {
    async fn run(
        self,
        make: impl Fn(u64) -> Message,
        stats: Rc<RefCell<Stats>>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<()> {
        let GroupSender { args, user, outbox, acks, end, typing } = self;
        let mut sent = 0u64;
        let mut in_flight = 0;
        // NATS acks (PONGs) come in order: their send times queue here.
        let mut sent_times = std::collections::VecDeque::new();
        let every_ns = args.sends_per_s.map(|per_s| (1e9 / per_s.max(1e-3)) as u64);
        // Paced senders start at even offsets over one period, as senders
        // that never agreed on a clock would: in step, every group's
        // message would land in the same instant, and the run would
        // measure that burst (1,000 deliveries at once for 10 groups of
        // 100) rather than the rate.
        let group = (user / args.members) as u64;
        let phase = every_ns.map_or(0, |every_ns| every_ns * group / args.groups.max(1) as u64);
        let mut next_due = latency::now_ns() + phase;
        loop {
            while in_flight < args.window && latency::now_ns() < end {
                if let Some(every_ns) = every_ns {
                    let now = latency::now_ns();
                    if next_due > now {
                        glommio::timer::sleep(Duration::from_nanos(next_due - now)).await;
                    }
                    next_due = next_due.max(now) + every_ns;
                }
                if let Some(typing) = &typing
                    && sent.is_multiple_of(args.typing_every)
                {
                    if outbox.send(typing.clone()).await.is_err() {
                        bail!("sender {user} lost its connection");
                    }
                    stats.borrow_mut().figures.event("typing_sent");
                }
                sent += 1;
                let sent_at = latency::now_ns();
                if outbox.send(make(sent_at)).await.is_err() {
                    bail!("sender {user} lost its connection");
                }
                in_flight += 1;
                if args.target == Target::Nats {
                    sent_times.push_back(sent_at);
                }
                stats.borrow_mut().figures.sent += 1;
                shared.live.sent.fetch_add(1, Ordering::Relaxed);
            }
            if in_flight == 0 {
                return Ok(());
            }
            let wait = end.saturating_sub(latency::now_ns()) + args.drain_s * 1_000_000_000;
            match within(Duration::from_nanos(wait), acks.recv()).await {
                Some(Some(())) => {
                    in_flight -= 1;
                    if let Some(sent_at) = sent_times.pop_front() {
                        latency::record_since(&mut stats.borrow_mut().figures.ack, sent_at);
                    }
                }
                Some(None) => bail!("sender {user} lost its connection"),
                None => bail!("sender {user}: {in_flight} messages unacknowledged after the drain time"),
            }
        }
    }
}
