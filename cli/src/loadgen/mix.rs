//! The `mix` scenario: idle connections, 1:1 pairs at a fixed rate and
//! groups fanning out, all at once against one gateway, as a production
//! node sees them; with `--churn-users` and `--hostile`, devices that come
//! and go and a client that hits every limit as well (what the soak runs).
//! Each part runs as a child process with accounts of its
//! own (a users file each), and the report holds each part's report.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::ensure;
use clap::Args;
use serde_json::{Value, json};

use super::procs;
use super::runtime;

/// `chatgw loadgen mix`.
#[derive(Debug, Clone, Args)]
pub struct MixArgs {
    /// The gateway's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Idle connections held through the run.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Users in 1:1 pairs.
    #[arg(long, default_value_t = 1000)]
    dm_users: usize,
    /// Messages per second offered by the pairs (open loop).
    #[arg(long, default_value_t = 1000)]
    dm_rate: u64,
    /// Groups, one sender each (closed loop).
    #[arg(long, default_value_t = 2)]
    groups: usize,
    /// Members per group.
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// Messages each group's sender keeps unacknowledged.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Messages a second each group's sender sends at most [default: as
    /// fast as its window lets].
    #[arg(long)]
    fanout_sends_per_s: Option<f64>,
    /// Each group's sender says it is typing before every Nth message (0:
    /// never).
    #[arg(long, default_value_t = 0)]
    typing_every: u64,
    /// Each group's member marks the channel read at every Nth message it
    /// receives (0: never).
    #[arg(long, default_value_t = 0)]
    read_every: u64,
    /// Churning devices (`loadgen churn`: connect, sync, send, leave, and
    /// a check that none missed anything); 0 for none.
    #[arg(long, default_value_t = 0)]
    churn_users: usize,
    /// Run `loadgen hostile` beside the rest: every limit hit, round after
    /// round, and the server's answers counted.
    #[arg(long)]
    hostile: bool,
    /// Seconds between the hostile client's rounds.
    #[arg(long, default_value_t = 30)]
    hostile_round_every_s: u64,
    /// The server's `--max-devices-per-user` (for the hostile client).
    #[arg(long, default_value_t = 32)]
    max_devices_per_user: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Accounts are kept in `<this>.idle.json`, `.dm.json` and `.fanout.json`.
    #[arg(long, default_value = "loadgen-users")]
    users_prefix: PathBuf,
    /// Worker threads of each part.
    #[arg(long, default_value_t = runtime::default_workers())]
    workers: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn users_file(args: &MixArgs, part: &str) -> String {
    format!("{}.{part}.json", args.users_prefix.display())
}

/// Runs the scenario.
pub fn run(args: MixArgs) -> anyhow::Result<()> {
    ensure!(args.dm_users >= 2 && args.groups >= 1 && args.members >= 2, "at least a pair and a group of two");
    let addr = args.addr.to_string();
    let some = |value: String| Some(value);
    let (duration, workers) = (some(args.duration_s.to_string()), some(args.workers.to_string()));
    let mut parts = Vec::new();
    if args.idle_connections > 0 {
        parts.push(procs::child_args(
            "idle",
            vec![
                ("--addr", some(addr.clone())),
                ("--connections", some(args.idle_connections.to_string())),
                ("--users", some(args.idle_connections.div_ceil(10).to_string())),
                ("--hold-s", duration.clone()),
                ("--users-file", some(users_file(&args, "idle"))),
            ],
        ));
    }
    parts.push(procs::child_args(
        "dm",
        vec![
            ("--addr", some(addr.clone())),
            ("--users", some(args.dm_users.to_string())),
            ("--rate", some(args.dm_rate.to_string())),
            ("--duration-s", duration.clone()),
            ("--workers", workers.clone()),
            ("--users-file", some(users_file(&args, "dm"))),
        ],
    ));
    parts.push(procs::child_args(
        "fanout",
        vec![
            ("--addr", some(addr.clone())),
            ("--groups", some(args.groups.to_string())),
            ("--members", some(args.members.to_string())),
            ("--window", some(args.window.to_string())),
            ("--sends-per-s", args.fanout_sends_per_s.map(|per_s| per_s.to_string())),
            ("--typing-every", some(args.typing_every.to_string())),
            ("--read-every", some(args.read_every.to_string())),
            ("--duration-s", duration.clone()),
            ("--workers", workers),
            ("--users-file", some(users_file(&args, "fanout"))),
        ],
    ));
    if args.churn_users > 0 {
        parts.push(procs::child_args(
            "churn",
            vec![
                ("--addr", some(addr.clone())),
                ("--users", some(args.churn_users.to_string())),
                ("--duration-s", duration.clone()),
                ("--users-file", some(users_file(&args, "churn"))),
            ],
        ));
    }
    if args.hostile {
        parts.push(procs::child_args(
            "hostile",
            vec![
                ("--addr", some(addr.clone())),
                ("--duration-s", duration),
                ("--round-every-s", some(args.hostile_round_every_s.to_string())),
                ("--max-devices-per-user", some(args.max_devices_per_user.to_string())),
                ("--users-file", some(users_file(&args, "hostile"))),
            ],
        ));
    }
    let reports = procs::run_children(parts)?;
    let find =
        |scenario: &str| reports.iter().find(|report| report["scenario"] == scenario).cloned().unwrap_or(Value::Null);
    let (idle, dm, fanout, churn, hostile) = (find("idle"), find("dm"), find("fanout"), find("churn"), find("hostile"));
    if args.json {
        println!(
            "{}",
            json!({ "scenario": "mix", "idle": idle, "dm": dm, "fanout": fanout, "churn": churn, "hostile": hostile })
        );
    } else {
        println!("mix against {addr}, {} s:", args.duration_s);
        if !idle.is_null() {
            println!("  idle: {} connections held", idle["connections"]);
        }
        println!(
            "  dm: {} users at {} msg/s offered: delivered {}, p50 {} ms, p99 {} ms",
            dm["users"],
            dm["offered_rate"],
            dm["delivered"],
            dm["delivery_latency"]["p50_ms"],
            dm["delivery_latency"]["p99_ms"]
        );
        println!(
            "  fanout: {} groups of {}: {:.0} deliveries/s, p50 {} ms, p99 {} ms; typing and reads {}",
            fanout["groups"],
            fanout["members"],
            fanout["deliveries_per_s"].as_f64().unwrap_or(0.0),
            fanout["delivery_latency"]["p50_ms"],
            fanout["delivery_latency"]["p99_ms"],
            fanout["events"]
        );
        if !churn.is_null() {
            println!(
                "  churn: {} devices, {} connects, {} acked; acked missing {}, device gaps {}",
                churn["users"], churn["connects"], churn["acked"], churn["acked_missing"], churn["device_gaps"]
            );
        }
        if !hostile.is_null() {
            println!(
                "  hostile: {} rounds, error answers {}, slow consumers closed {}",
                hostile["rounds"], hostile["server_errors"], hostile["slow_consumer_closes"]
            );
        }
    }
    Ok(())
}
