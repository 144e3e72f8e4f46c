//! The `churn` scenario: devices that come and go, and then a check that
//! nothing was lost on the way.
//!
//! Users come in groups (a group channel each) and pairs (a direct channel
//! each); every user has one device. A device loops until the run ends:
//! connect, `sync` from its cursor (paging on `has_more`), stay a random
//! while sending to its group and its partner and taking `message` events,
//! then leave (half the time with a close handshake, half the time by
//! dropping the socket) and come back a moment later. Some devices are slow
//! readers: they pause after every frame they read, and may be closed as
//! slow consumers (1008), which only means they sync on return.
//!
//! At the end each device syncs once more, and the report checks, from the
//! server's own history (`channel.list`, then `history` over each channel):
//! every acknowledged send is in its channel's history, and every message
//! of every channel of a user reached its device, live or by sync. Any gap
//! fails the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{self, Message};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::accounts::{self, Account};
use super::latency;
use super::runtime::{self, within};
use super::ws::{self, Ws};

/// `chatgw loadgen churn`.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// The gateway's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Users, one churning device each (a multiple of the group size, and even).
    #[arg(long, default_value_t = 60)]
    users: usize,
    /// Members per group channel.
    #[arg(long, default_value_t = 6)]
    group_size: usize,
    /// Each connected device sends a message this often, ms (to its group
    /// and its partner in turn).
    #[arg(long, default_value_t = 250)]
    send_every_ms: u64,
    /// A device stays connected between these many ms, chosen at random.
    #[arg(long, default_value_t = 300)]
    stay_min_ms: u64,
    /// See `--stay-min-ms`.
    #[arg(long, default_value_t = 3000)]
    stay_max_ms: u64,
    /// A device stays away up to this many ms before reconnecting.
    #[arg(long, default_value_t = 500)]
    away_max_ms: u64,
    /// Every this-many-th device is a slow reader (0: none).
    #[arg(long, default_value_t = 5)]
    slow_every: usize,
    /// How long a slow reader pauses after each frame it reads, ms.
    #[arg(long, default_value_t = 20)]
    slow_read_ms: u64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Where accounts are kept between runs.
    #[arg(long, default_value = "loadgen-users.churn.json")]
    users_file: PathBuf,
    /// Worker threads (glommio executors).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seed of the devices' random choices (a run is still timing-dependent).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What one device did and saw.
#[derive(Debug, Default)]
struct Device {
    user: usize,
    /// Every message id it got, live or by sync.
    seen: HashSet<u64>,
    /// Its acknowledged sends: (channel id, message id).
    acked: Vec<(u64, u64)>,
    sends: u64,
    connects: u64,
    syncs: u64,
    synced_messages: u64,
    abrupt_leaves: u64,
    /// Closed by the server as a slow consumer (1008).
    slow_consumer_closes: u64,
    /// Error replies, by code.
    server_errors: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    users: usize,
    group_size: usize,
    slow_readers: usize,
    duration_s: u64,
    connects: u64,
    syncs: u64,
    synced_messages: u64,
    abrupt_leaves: u64,
    sends: u64,
    acked: u64,
    channels: usize,
    messages_in_history: usize,
    /// Acknowledged sends missing from their channel's history.
    acked_missing: usize,
    /// (device, message) pairs of its channels' history the device never got.
    device_gaps: usize,
    slow_consumer_closes: u64,
    /// Error replies the server answered, by code (compared with its counters).
    server_errors: BTreeMap<String, u64>,
}

struct Plan {
    args: ChurnArgs,
    accounts: Vec<Account>,
    /// Each group's channel id, by group.
    groups: Vec<u64>,
    /// Devices that have finished churning.
    done: AtomicUsize,
    failed: Arc<AtomicBool>,
    deadline_ns: u64,
}

/// Runs the scenario.
pub fn run(args: ChurnArgs) -> anyhow::Result<()> {
    ensure!(args.group_size >= 2 && args.users >= args.group_size, "at least one group of two");
    ensure!(args.users.is_multiple_of(args.group_size) && args.users.is_multiple_of(2), "whole groups and pairs");
    ensure!(args.stay_min_ms <= args.stay_max_ms && args.workers >= 1, "stay range and workers");
    let addr = args.addr.to_string();
    let (accounts, _) = accounts::load_or_make(&addr, &args.users_file, args.users)?;
    let agent = accounts::http_agent();
    let groups = (0..args.users / args.group_size)
        .map(|group| {
            let members: Vec<&str> =
                (0..args.group_size).map(|n| accounts[group * args.group_size + n].username.as_str()).collect();
            let result = rpc(
                &agent,
                &addr,
                &accounts[group * args.group_size],
                "channel.create",
                json!({ "name": format!("churn {group}"), "members": members }),
            )?;
            id_of(&result["channel"]["id"]).context("channel.create answered no id")
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let failed = Arc::new(AtomicBool::new(false));
    let plan = Arc::new(Plan {
        deadline_ns: latency::now_ns() + args.duration_s * 1_000_000_000,
        args: args.clone(),
        accounts,
        groups,
        done: AtomicUsize::new(0),
        failed: failed.clone(),
    });
    let outcomes = {
        let plan = plan.clone();
        runtime::on_workers(args.workers, &failed, move |worker| {
            let plan = plan.clone();
            async move { worker_main(plan, worker).await }
        })?
    };
    let devices: Vec<Device> = outcomes.into_iter().flatten().collect();
    let report = check(&plan, &agent, &devices)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "churn: {} devices ({} slow readers), {} s: {} connects, {} syncs ({} messages), {} abrupt leaves",
            report.users,
            report.slow_readers,
            report.duration_s,
            report.connects,
            report.syncs,
            report.synced_messages,
            report.abrupt_leaves
        );
        println!(
            "sent {} acked {}; {} channels hold {} messages; acked missing {}, device gaps {}; 1008 closes {}",
            report.sends,
            report.acked,
            report.channels,
            report.messages_in_history,
            report.acked_missing,
            report.device_gaps,
            report.slow_consumer_closes
        );
        if !report.server_errors.is_empty() {
            println!("error replies: {:?}", report.server_errors);
        }
    }
    ensure!(report.acked_missing == 0, "{} acknowledged messages are not in history", report.acked_missing);
    ensure!(report.device_gaps == 0, "devices missed {} messages of their channels", report.device_gaps);
    ensure!(report.server_errors.is_empty(), "commands failed: {:?}", report.server_errors);
    Ok(())
}

async fn worker_main(plan: Arc<Plan>, worker: usize) -> anyhow::Result<Vec<Device>> {
    let tasks: Vec<_> = (worker..plan.args.users)
        .step_by(plan.args.workers)
        .map(|user| {
            let plan = plan.clone();
            glommio::spawn_local(async move {
                let outcome = device_main(&plan, user).await;
                if let Err(error) = &outcome
                    && error.root_cause().to_string() != runtime::ANOTHER_FAILED
                {
                    // The others stop at once rather than wait for this one.
                    eprintln!("churn: the device of user {user} failed: {error:#}");
                    plan.failed.store(true, Ordering::Release);
                }
                outcome
            })
        })
        .collect();
    let mut devices = Vec::with_capacity(tasks.len());
    for task in tasks {
        devices.push(task.await?);
    }
    Ok(devices)
}

/// What ends a device's stay.
enum Leave {
    /// Its time was up.
    TimeUp,
    /// The server closed it (1008 for a slow consumer) or the socket broke.
    Closed,
}

async fn device_main(plan: &Plan, user: usize) -> anyhow::Result<Device> {
    let args = &plan.args;
    let mut rng = fastrand::Rng::with_seed(args.seed ^ (user as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut device = Device { user, ..Device::default() };
    let mut cursor = "0".to_string();
    let slow = args.slow_every > 0 && user % args.slow_every == args.slow_every - 1;
    let mut next_id = 10u64;
    while latency::now_ns() < plan.deadline_ns {
        ensure!(!plan.failed.load(Ordering::Acquire), runtime::ANOTHER_FAILED);
        let mut ws = connect(plan, user, &mut device).await?;
        let synced = sync_all(&mut ws, &mut device, &mut cursor, &mut next_id).await;
        if synced.is_ok() {
            let stay = Duration::from_millis(rng.u64(args.stay_min_ms..=args.stay_max_ms));
            let leave = stay_and_send(plan, &mut ws, &mut device, &mut next_id, stay, slow).await?;
            if let Leave::TimeUp = leave {
                if rng.bool() {
                    let _ = within(Duration::from_secs(2), ws.close(None)).await;
                } else {
                    device.abrupt_leaves += 1;
                }
            }
        } else {
            // The server closed it while it synced (a slow reader, most
            // likely): the next connection syncs from the same cursor.
            synced.or_else(|error| if is_closed(&error) { Ok(()) } else { Err(error) })?;
        }
        drop(ws);
        glommio::timer::sleep(Duration::from_millis(rng.u64(0..=args.away_max_ms))).await;
    }
    // Every device done sending, and the last in-flight writes stored: the
    // last sync must bring everything.
    plan.done.fetch_add(1, Ordering::AcqRel);
    runtime::wait_for("every device to finish", &plan.failed, Duration::from_secs(60), || {
        plan.done.load(Ordering::Acquire) == args.users
    })
    .await?;
    glommio::timer::sleep(Duration::from_secs(2)).await;
    let mut ws = connect(plan, user, &mut device).await?;
    sync_all(&mut ws, &mut device, &mut cursor, &mut next_id).await.context("the last sync")?;
    let _ = within(Duration::from_secs(2), ws.close(None)).await;
    Ok(device)
}

async fn connect(plan: &Plan, user: usize, device: &mut Device) -> anyhow::Result<Ws> {
    let token = &plan.accounts[user].token;
    // A device that comes back right away may find its last connection not
    // yet gone; a few tries.
    let mut tries = 0;
    loop {
        match ws::chatgw_session(plan.args.addr, None, token, &format!("churn{user}")).await {
            Ok((ws, _hello)) => {
                device.connects += 1;
                return Ok(ws);
            }
            Err(error) if tries < 5 => {
                tries += 1;
                tracing::debug!(%error, user, "churn connect failed; trying again");
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("device of user {user} connecting")),
        }
    }
}

/// A marker in errors: the server closed the connection, or it broke.
const CLOSED: &str = "connection closed";

fn is_closed(error: &anyhow::Error) -> bool {
    error.root_cause().to_string().starts_with(CLOSED)
}

/// Syncs from `cursor` until `has_more` is false, taking events meanwhile.
async fn sync_all(ws: &mut Ws, device: &mut Device, cursor: &mut String, next_id: &mut u64) -> anyhow::Result<()> {
    loop {
        *next_id += 1;
        let id = *next_id;
        let command = json!({ "id": id, "method": "sync", "params": { "since": *cursor, "limit": 500 } });
        within(Duration::from_secs(10), ws.send(Message::text(command.to_string())))
            .await
            .context("sending sync timed out")?
            .map_err(|error| anyhow::anyhow!("{CLOSED}: {error}"))?;
        device.syncs += 1;
        let reply = loop {
            let frame = read_frame(ws).await?;
            if let Some(reply) = take_frame(device, frame, id)? {
                break reply;
            }
        };
        let result = &reply["result"];
        for message in result["messages"].as_array().context("sync without messages")? {
            device.seen.insert(id_of(&message["id"]).context("a synced message without an id")?);
            device.synced_messages += 1;
        }
        *cursor = result["next_since"].as_str().context("sync without next_since")?.to_string();
        if result["has_more"] != true {
            return Ok(());
        }
    }
}

/// Reads one frame within 30 s as JSON; a close or a broken socket is
/// `CLOSED` (and a 1008 close is counted by the caller's `take_frame`).
async fn read_frame(ws: &mut Ws) -> anyhow::Result<Value> {
    frame_json(within(Duration::from_secs(30), ws.next()).await.context("no frame within 30 s")?)
}

/// What the socket gave, as JSON: a text frame parsed, a close as
/// `{"closed": code}`, any other frame as `{"other": true}`; the stream's
/// end or a broken socket is `CLOSED`.
fn frame_json(frame: Option<Result<Message, tungstenite::Error>>) -> anyhow::Result<Value> {
    match frame {
        None => bail!("{CLOSED}: end of stream"),
        Some(Err(error)) => bail!("{CLOSED}: {error}"),
        Some(Ok(Message::Text(text))) => {
            serde_json::from_str(&text).with_context(|| format!("a frame that is not JSON: {text:.200}"))
        }
        Some(Ok(Message::Close(frame))) => {
            Ok(json!({ "closed": frame.map(|frame| u16::from(frame.code)).unwrap_or(1005) }))
        }
        Some(Ok(_)) => Ok(json!({ "other": true })),
    }
}

/// Takes one frame: events add to what the device saw, replies to sends
/// count as acks, errors are counted; returns the reply to `waiting` if
/// this is it. A close frame ends the connection (`CLOSED`).
fn take_frame(device: &mut Device, frame: Value, waiting: u64) -> anyhow::Result<Option<Value>> {
    if let Some(code) = frame["closed"].as_u64() {
        if code == u64::from(u16::from(CloseCode::Policy)) {
            device.slow_consumer_closes += 1;
        }
        bail!("{CLOSED}: close {code}");
    }
    if frame["event"] == "message" {
        device.seen.insert(id_of(&frame["data"]["id"]).context("a message event without an id")?);
        return Ok(None);
    }
    if frame["event"].is_string() || frame["other"] == true {
        return Ok(None);
    }
    let id = frame["id"].as_u64().unwrap_or(0);
    if let Some(code) = frame["error"]["code"].as_str() {
        // Counted, and the run fails at its end: a plain client's commands
        // should all succeed. A failed sync ends the device now.
        *device.server_errors.entry(code.to_string()).or_default() += 1;
        ensure!(id != waiting, "sync failed: {frame}");
        tracing::warn!(%frame, "a churning device's command failed");
        return Ok(None);
    }
    if id == waiting {
        return Ok(Some(frame));
    }
    let result = &frame["result"];
    if let (Some(channel), Some(message)) = (id_of(&result["channel_id"]), id_of(&result["message_id"])) {
        device.acked.push((channel, message));
    }
    Ok(None)
}

/// Stays connected for `stay`, sending every `--send-every-ms` to the
/// device's group and its partner in turn and taking what comes.
async fn stay_and_send(
    plan: &Plan,
    ws: &mut Ws,
    device: &mut Device,
    next_id: &mut u64,
    stay: Duration,
    slow: bool,
) -> anyhow::Result<Leave> {
    let args = &plan.args;
    let user = device.user;
    let until = latency::now_ns() + stay.as_nanos() as u64;
    let every = args.send_every_ms * 1_000_000;
    let mut next_send = latency::now_ns();
    loop {
        let now = latency::now_ns();
        if now >= until {
            return Ok(Leave::TimeUp);
        }
        if now >= next_send {
            *next_id += 1;
            let params = if device.sends.is_multiple_of(2) {
                json!({ "channel_id": plan.groups[user / args.group_size].to_string(), "text": format!("churn {user} {}", device.sends) })
            } else {
                json!({ "to_user": plan.accounts[user ^ 1].username, "text": format!("churn {user} {}", device.sends) })
            };
            let command = json!({ "id": *next_id, "method": "send", "params": params });
            match within(Duration::from_secs(10), ws.send(Message::text(command.to_string()))).await {
                Some(Ok(())) => device.sends += 1,
                Some(Err(_)) => return Ok(Leave::Closed),
                None => bail!("sending a message timed out"),
            }
            next_send += every;
        }
        let wait = Duration::from_nanos(next_send.min(until).saturating_sub(latency::now_ns()).max(1));
        let Some(frame) = within(wait, ws.next()).await else { continue };
        let frame = match frame_json(frame) {
            Ok(frame) if frame["other"] == true => continue,
            Ok(frame) => frame,
            Err(error) if is_closed(&error) => return Ok(Leave::Closed),
            Err(error) => return Err(error),
        };
        match take_frame(device, frame, 0) {
            Ok(_) => {}
            Err(error) if is_closed(&error) => return Ok(Leave::Closed),
            Err(error) => return Err(error),
        }
        if slow {
            glommio::timer::sleep(Duration::from_millis(args.slow_read_ms)).await;
        }
    }
}

/// An id as the wire carries it (a decimal string).
fn id_of(value: &Value) -> Option<u64> {
    value.as_str()?.parse().ok()
}

/// `POST /v1/rpc/{method}` as `account`; its `result`.
fn rpc(agent: &ureq::Agent, addr: &str, account: &Account, method: &str, params: Value) -> anyhow::Result<Value> {
    let mut response = agent
        .post(format!("http://{addr}/v1/rpc/{method}"))
        .header("Authorization", format!("Bearer {}", account.token))
        .send_json(&params)
        .with_context(|| format!("{method} over HTTP"))?;
    let mut body: Value = response.body_mut().read_json().with_context(|| format!("{method}'s answer"))?;
    ensure!(body["result"].is_object(), "{method} failed: {body}");
    Ok(body["result"].take())
}

/// What was lost: acknowledged sends missing from their channel's history,
/// and (device, message) pairs of the device's channels' history that the
/// device never got.
fn losses(history: &HashMap<u64, HashSet<u64>>, channels_of: &[Vec<u64>], devices: &[Device]) -> (usize, usize) {
    let mut acked_missing = 0;
    let mut device_gaps = 0;
    for device in devices {
        for (channel, message) in &device.acked {
            if !history.get(channel).is_some_and(|ids| ids.contains(message)) {
                acked_missing += 1;
                eprintln!("churn: acknowledged message {message} of channel {channel} is not in its history");
            }
        }
        for channel in &channels_of[device.user] {
            let missed =
                history.get(channel).map_or(0, |ids| ids.iter().filter(|id| !device.seen.contains(id)).count());
            if missed > 0 {
                eprintln!("churn: user {}'s device missed {missed} messages of channel {channel}", device.user);
            }
            device_gaps += missed;
        }
    }
    (acked_missing, device_gaps)
}

/// Checks what the devices got against the server's history.
fn check(plan: &Plan, agent: &ureq::Agent, devices: &[Device]) -> anyhow::Result<Report> {
    let addr = plan.args.addr.to_string();
    // Each user's channels, and each channel's history, from the server.
    let mut channels_of: Vec<Vec<u64>> = Vec::with_capacity(plan.args.users);
    let mut reader_of: HashMap<u64, usize> = HashMap::new();
    for (user, account) in plan.accounts.iter().enumerate() {
        let mut channels = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let params = match &after {
                Some(after) => json!({ "limit": 1000, "after": after }),
                None => json!({ "limit": 1000 }),
            };
            let result = rpc(agent, &addr, account, "channel.list", params)?;
            for channel in result["channels"].as_array().context("channel.list without channels")? {
                let id = id_of(&channel["id"]).context("a channel without an id")?;
                channels.push(id);
                reader_of.entry(id).or_insert(user);
            }
            match result["next_after"].as_str() {
                Some(next) if result["has_more"] == true => after = Some(next.to_string()),
                _ => break,
            }
        }
        channels_of.push(channels);
    }
    let mut history: HashMap<u64, HashSet<u64>> = HashMap::new();
    for (&channel, &reader) in &reader_of {
        let mut ids = HashSet::new();
        let mut after = "0".to_string();
        loop {
            let params = json!({ "channel_id": channel.to_string(), "after": after, "limit": 200 });
            let result = rpc(agent, &addr, &plan.accounts[reader], "history", params)?;
            let messages = result["messages"].as_array().context("history without messages")?;
            for message in messages {
                ids.insert(id_of(&message["id"]).context("a message without an id")?);
            }
            match messages.last().and_then(|last| last["id"].as_str()) {
                Some(last) if messages.len() == 200 => after = last.to_string(),
                _ => break,
            }
        }
        history.insert(channel, ids);
    }
    let (acked_missing, device_gaps) = losses(&history, &channels_of, devices);
    let mut server_errors = BTreeMap::new();
    for device in devices {
        for (code, count) in &device.server_errors {
            *server_errors.entry(code.clone()).or_default() += count;
        }
    }
    let sum = |field: fn(&Device) -> u64| devices.iter().map(field).sum::<u64>();
    Ok(Report {
        scenario: "churn",
        users: plan.args.users,
        group_size: plan.args.group_size,
        slow_readers: plan.args.users.checked_div(plan.args.slow_every).unwrap_or(0),
        duration_s: plan.args.duration_s,
        connects: sum(|device| device.connects),
        syncs: sum(|device| device.syncs),
        synced_messages: sum(|device| device.synced_messages),
        abrupt_leaves: sum(|device| device.abrupt_leaves),
        sends: sum(|device| device.sends),
        acked: devices.iter().map(|device| device.acked.len() as u64).sum(),
        channels: history.len(),
        messages_in_history: history.values().map(HashSet::len).sum(),
        acked_missing,
        device_gaps,
        slow_consumer_closes: sum(|device| device.slow_consumer_closes),
        server_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_count_acks_missing_from_history_and_messages_a_device_missed() {
        let history: HashMap<u64, HashSet<u64>> =
            [(7, HashSet::from([1, 2, 3])), (8, HashSet::from([4]))].into_iter().collect();
        let channels_of = vec![vec![7, 8], vec![7]];
        let whole = |user| Device { user, seen: HashSet::from([1, 2, 3, 4]), ..Device::default() };
        // Everything seen, every ack stored: nothing lost.
        let mut devices = vec![whole(0), whole(1)];
        devices[0].acked = vec![(7, 2), (8, 4)];
        assert_eq!(losses(&history, &channels_of, &devices), (0, 0));
        // An ack the history lacks, and a device that missed 2 and 3 (4 is
        // not in its channels, so seeing it or not does not count).
        devices[0].acked.push((8, 9));
        devices[1].seen = HashSet::from([1]);
        assert_eq!(losses(&history, &channels_of, &devices), (1, 2));
    }
}
