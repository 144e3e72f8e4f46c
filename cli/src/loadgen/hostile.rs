//! The `hostile` scenario: a client that hits every limit it can, over and
//! over, and counts what the server answered, so that a soak can hold the
//! server's error counters to it.
//!
//! Each round, one after another:
//! - frames that are not commands: not JSON (`bad_request`), an unknown
//!   method (`bad_request`), a text above `--max-message-chars`
//!   (`message_too_long`), a send to a channel that is not the user's
//!   (`forbidden` or `not_found`);
//! - a burst of sends past the user's rate limit (some `rate_limited`);
//! - the same text again and again (`rate_limited` past the 5th in 30 s);
//! - a frame above the 2 MiB limit (closed 1009);
//! - one device more than `--max-devices-per-user` (refused, `rate_limited`);
//! - an upgrade with a forged token (`unauthorized`);
//! - logins with a wrong password (`unauthorized`, then `rate_limited` once
//!   the account's failures are throttled);
//! - a flood of large messages to a group whose `--never-readers` members
//!   read nothing: the server closes them as slow consumers (1008), which
//!   they see once they read again.
//!
//! Every answer must be one the step expects, or the run fails.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_tungstenite::tungstenite::{self, Message};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::accounts::{self, Account};
use super::latency;
use super::runtime::{self, within};
use super::ws::{self, Ws};

/// `chatgw loadgen hostile`.
#[derive(Debug, Clone, Args)]
pub struct HostileArgs {
    /// The gateway's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Seconds of the run; a round starts every `--round-every-s` until then.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Seconds from one round's start to the next.
    #[arg(long, default_value_t = 30)]
    round_every_s: u64,
    /// The server's `--max-message-chars`.
    #[arg(long, default_value_t = 100_000)]
    max_message_chars: usize,
    /// The server's `--max-devices-per-user`.
    #[arg(long, default_value_t = 32)]
    max_devices_per_user: usize,
    /// Sends in the burst past the rate limit (more than the server's
    /// `--rate-burst`).
    #[arg(long, default_value_t = 300)]
    burst: usize,
    /// Members of the flooded group that never read.
    #[arg(long, default_value_t = 3)]
    never_readers: usize,
    /// Messages in each round's flood.
    #[arg(long, default_value_t = 400)]
    flood_messages: usize,
    /// The flood's pace, messages a second (under the server's
    /// `--rate-limit`, so that its bytes arrive).
    #[arg(long, default_value_t = 400.0)]
    flood_per_s: f64,
    /// Chars of each flood message (a never-reader's server-side queue,
    /// 4 MiB, and both sockets' buffers must fill).
    #[arg(long, default_value_t = 64_000)]
    flood_chars: usize,
    /// Where accounts are kept between runs.
    #[arg(long, default_value = "loadgen-users.hostile.json")]
    users_file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The accounts' roles, by index.
const ABUSER: usize = 0;
const PARTNER: usize = 1;
const DEVICES: usize = 2;
const VICTIM: usize = 3;
const FLOODER: usize = 4;
const READER: usize = 5;
const NEVER_READERS: usize = 6;

#[derive(Debug, Default, Serialize)]
struct Report {
    scenario: &'static str,
    rounds: u64,
    /// Error answers the server gave, by code (WebSocket replies and HTTP).
    server_errors: BTreeMap<String, u64>,
    /// Connections closed for a frame above the limit (1009).
    too_big_closes: u64,
    /// Never-readers the server closed as slow consumers.
    slow_consumer_closes: u64,
    /// Never-readers the server did not close (their queues never filled).
    never_readers_left_open: u64,
    burst_sent: u64,
    burst_acked: u64,
    flood_sent: u64,
    flood_acked: u64,
    flood_delivered: u64,
}

impl Report {
    fn count(&mut self, code: &str) {
        *self.server_errors.entry(code.to_string()).or_default() += 1;
    }
}

/// Runs the scenario.
pub fn run(args: HostileArgs) -> anyhow::Result<()> {
    ensure!(args.burst >= 1 && args.round_every_s >= 1, "a burst and a round period");
    let (accounts, _) =
        accounts::load_or_make(&args.addr.to_string(), &args.users_file, NEVER_READERS + args.never_readers)?;
    let failed = Arc::new(AtomicBool::new(false));
    let reports = {
        let (args, accounts) = (args.clone(), accounts.clone());
        runtime::on_workers(1, &failed, move |_| {
            let (args, accounts) = (args.clone(), accounts.clone());
            async move { rounds(&args, &accounts).await }
        })?
    };
    let report = reports.into_iter().next().context("no report")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "hostile: {} rounds; error answers {:?}; 1009 closes {}, slow consumers closed {} (left open {})",
            report.rounds,
            report.server_errors,
            report.too_big_closes,
            report.slow_consumer_closes,
            report.never_readers_left_open
        );
        println!(
            "burst sent {} acked {}; flood sent {} acked {} delivered {}",
            report.burst_sent, report.burst_acked, report.flood_sent, report.flood_acked, report.flood_delivered
        );
    }
    Ok(())
}

async fn rounds(args: &HostileArgs, accounts: &[Account]) -> anyhow::Result<Report> {
    let mut report = Report { scenario: "hostile", ..Report::default() };
    let started = latency::now_ns();
    let end = started + args.duration_s * 1_000_000_000;
    let flood_channel = flood_group(args, accounts).await?;
    loop {
        let round_started = latency::now_ns();
        bad_commands(args, accounts, &mut report).await.context("bad commands")?;
        rate_burst(args, accounts, &mut report).await.context("the rate burst")?;
        repeats(args, accounts, &mut report).await.context("the repeated text")?;
        too_big(args, accounts, &mut report).await.context("the frame above the limit")?;
        device_cap(args, accounts, &mut report).await.context("the device cap")?;
        forged_token(args, &mut report).await.context("the forged token")?;
        wrong_password(args, accounts, &mut report).context("wrong passwords")?;
        flood(args, accounts, &flood_channel, &mut report).await.context("the flood")?;
        report.rounds += 1;
        let next = round_started + args.round_every_s * 1_000_000_000;
        if next >= end {
            return Ok(report);
        }
        glommio::timer::sleep(Duration::from_nanos(next.saturating_sub(latency::now_ns()))).await;
    }
}

async fn session(args: &HostileArgs, account: &Account, device: &str) -> anyhow::Result<Ws> {
    Ok(ws::chatgw_session(args.addr, None, &account.token, device).await?.0)
}

async fn send_text(ws: &mut Ws, text: String) -> anyhow::Result<()> {
    within(Duration::from_secs(10), ws.send(Message::text(text))).await.context("sending timed out")?.context("sending")
}

/// The next reply (a frame with no `event`), skipping events; `None` if the
/// connection closed, with the close code.
async fn next_reply(ws: &mut Ws) -> anyhow::Result<Result<Value, u16>> {
    loop {
        match within(Duration::from_secs(30), ws.next()).await.context("no frame within 30 s")? {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).context("a frame that is not JSON")?;
                if !frame["event"].is_string() {
                    return Ok(Ok(frame));
                }
            }
            Some(Ok(Message::Close(frame))) => return Ok(Err(frame.map_or(1005, |frame| u16::from(frame.code)))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(Err(1006)),
        }
    }
}

/// Sends `frame` and expects an error answer with one of `codes`.
async fn expect_error(ws: &mut Ws, frame: String, codes: &[&str], report: &mut Report) -> anyhow::Result<()> {
    send_text(ws, frame).await?;
    let reply = match next_reply(ws).await? {
        Ok(reply) => reply,
        Err(code) => bail!("closed ({code}) instead of answering"),
    };
    let code = reply["error"]["code"].as_str().with_context(|| format!("expected an error, got {reply}"))?;
    report.count(code);
    ensure!(codes.contains(&code), "expected {codes:?}, got {reply}");
    Ok(())
}

async fn bad_commands(args: &HostileArgs, accounts: &[Account], report: &mut Report) -> anyhow::Result<()> {
    let mut ws = session(args, &accounts[ABUSER], "hostile").await?;
    expect_error(&mut ws, "not json {".into(), &["bad_request"], report).await?;
    expect_error(
        &mut ws,
        json!({ "id": 2, "method": "no.such.method", "params": {} }).to_string(),
        &["bad_request"],
        report,
    )
    .await?;
    let long = "x".repeat(args.max_message_chars + 1);
    let send = json!({ "id": 3, "method": "send", "params": { "to_user": accounts[PARTNER].username, "text": long } });
    expect_error(&mut ws, send.to_string(), &["message_too_long"], report).await?;
    let stranger = json!({ "id": 4, "method": "send", "params": { "channel_id": "1234567", "text": "hi" } });
    expect_error(&mut ws, stranger.to_string(), &["forbidden", "not_found"], report).await?;
    let _ = within(Duration::from_secs(2), ws.close(None)).await;
    Ok(())
}

async fn rate_burst(args: &HostileArgs, accounts: &[Account], report: &mut Report) -> anyhow::Result<()> {
    // The burst goes out in one write, so that the server reads it at once:
    // sent frame by frame, a slow client refills its own bucket.
    let config = ws::config().write_buffer_size(1 << 20);
    let (mut ws, _) = ws::chatgw_session_with(args.addr, None, &accounts[ABUSER].token, "hostile", config).await?;
    for n in 0..args.burst {
        let params = json!({ "to_user": accounts[PARTNER].username, "text": format!("burst {n}") });
        let send = json!({ "id": 100 + n, "method": "send", "params": params }).to_string();
        within(Duration::from_secs(10), ws.feed(Message::text(send))).await.context("queueing timed out")??;
    }
    within(Duration::from_secs(10), ws.flush()).await.context("sending the burst timed out")??;
    report.burst_sent += args.burst as u64;
    let mut limited = 0;
    for _ in 0..args.burst {
        let reply = next_reply(&mut ws).await?.map_err(|code| anyhow::anyhow!("closed ({code}) in the burst"))?;
        match reply["error"]["code"].as_str() {
            None => report.burst_acked += 1,
            Some(code) => {
                report.count(code);
                ensure!(code == "rate_limited", "expected acks or rate_limited, got {reply}");
                limited += 1;
            }
        }
    }
    ensure!(limited > 0, "{} sends at once and none was rate limited", args.burst);
    let _ = within(Duration::from_secs(2), ws.close(None)).await;
    Ok(())
}

/// Sends that a run of the same text may hold: the server's
/// `FLOOD_REPEATS_MAX` (5 within 30 s).
const REPEATS_ALLOWED: usize = 5;

async fn repeats(args: &HostileArgs, accounts: &[Account], report: &mut Report) -> anyhow::Result<()> {
    let mut ws = session(args, &accounts[ABUSER], "hostile").await?;
    let params = json!({ "to_user": accounts[PARTNER].username, "text": "buy cheap watches" });
    let sends = REPEATS_ALLOWED + 3;
    for n in 0..sends {
        send_text(&mut ws, json!({ "id": 10 + n, "method": "send", "params": params }).to_string()).await?;
    }
    let mut refused = 0;
    for _ in 0..sends {
        let reply = next_reply(&mut ws).await?.map_err(|code| anyhow::anyhow!("closed ({code}) in the repeats"))?;
        if let Some(code) = reply["error"]["code"].as_str() {
            report.count(code);
            ensure!(code == "rate_limited", "expected acks or rate_limited, got {reply}");
            refused += 1;
        }
    }
    ensure!(refused >= sends - REPEATS_ALLOWED, "{sends} sends of one text and only {refused} refused");
    let _ = within(Duration::from_secs(2), ws.close(None)).await;
    Ok(())
}

async fn too_big(args: &HostileArgs, accounts: &[Account], report: &mut Report) -> anyhow::Result<()> {
    let mut ws = session(args, &accounts[ABUSER], "hostile-big").await?;
    send_text(&mut ws, "y".repeat((2 << 20) + 1)).await?;
    match next_reply(&mut ws).await? {
        Err(1009) => report.too_big_closes += 1,
        other => bail!("expected a 1009 close, got {other:?}"),
    }
    Ok(())
}

/// The code of an upgrade's refusal, from its JSON body.
fn refusal_code(error: &anyhow::Error) -> Option<String> {
    let tungstenite::Error::Http(response) = error.downcast_ref::<tungstenite::Error>()? else { return None };
    let body: Value = serde_json::from_slice(response.body().as_deref()?).ok()?;
    Some(body["error"]["code"].as_str()?.to_string())
}

async fn device_cap(args: &HostileArgs, accounts: &[Account], report: &mut Report) -> anyhow::Result<()> {
    let account = &accounts[DEVICES];
    let mut held = Vec::with_capacity(args.max_devices_per_user);
    for n in 0..args.max_devices_per_user {
        held.push(session(args, account, &format!("cap{n}")).await?);
    }
    let path = format!("/v1/ws?device=cap{}", args.max_devices_per_user);
    match ws::connect(args.addr, None, &path, Some(&account.token)).await {
        Ok(_) => bail!("device {} of a user was let in", args.max_devices_per_user + 1),
        Err(error) => {
            let code = refusal_code(&error).with_context(|| format!("refused without a code: {error:#}"))?;
            report.count(&code);
            ensure!(code == "rate_limited", "the device past the cap got {code}");
        }
    }
    for mut ws in held {
        let _ = within(Duration::from_secs(2), ws.close(None)).await;
    }
    Ok(())
}

async fn forged_token(args: &HostileArgs, report: &mut Report) -> anyhow::Result<()> {
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
    match ws::connect(args.addr, None, "/v1/ws", Some(forged)).await {
        Ok(_) => bail!("a forged token was let in"),
        Err(error) => {
            let code = refusal_code(&error).with_context(|| format!("refused without a code: {error:#}"))?;
            report.count(&code);
            ensure!(code == "unauthorized", "the forged token got {code}");
        }
    }
    Ok(())
}

fn wrong_password(args: &HostileArgs, accounts: &[Account], report: &mut Report) -> anyhow::Result<()> {
    let agent = accounts::http_agent();
    for _ in 0..3 {
        let mut response = agent
            .post(format!("http://{}/v1/login", args.addr))
            .send_json(json!({ "username": accounts[VICTIM].username, "password": "not the password" }))
            .context("login")?;
        let body: Value = response.body_mut().read_json().context("login's answer")?;
        let code = body["error"]["code"].as_str().with_context(|| format!("a wrong password answered {body}"))?;
        report.count(code);
        ensure!(["unauthorized", "rate_limited"].contains(&code), "a wrong password answered {body}");
    }
    Ok(())
}

/// The flooded group: the flooder, the reader and the never-readers.
async fn flood_group(args: &HostileArgs, accounts: &[Account]) -> anyhow::Result<String> {
    let mut ws = session(args, &accounts[FLOODER], "flood").await?;
    let members: Vec<&str> = accounts[READER..].iter().map(|account| account.username.as_str()).collect();
    let create = json!({ "id": 1, "method": "channel.create", "params": { "name": "flood", "members": members } });
    send_text(&mut ws, create.to_string()).await?;
    let reply = next_reply(&mut ws).await?.map_err(|code| anyhow::anyhow!("closed ({code})"))?;
    let channel = reply["result"]["channel"]["id"].as_str().with_context(|| format!("channel.create: {reply}"))?;
    let _ = within(Duration::from_secs(2), ws.close(None)).await;
    Ok(channel.to_string())
}

async fn flood(args: &HostileArgs, accounts: &[Account], channel: &str, report: &mut Report) -> anyhow::Result<()> {
    let mut never_readers = Vec::with_capacity(args.never_readers);
    for (n, account) in accounts[NEVER_READERS..].iter().enumerate() {
        never_readers.push(session(args, account, &format!("never{n}")).await?);
    }
    let reader = session(args, &accounts[READER], "reader").await?;
    let mut flooder = session(args, &accounts[FLOODER], "flood").await?;
    // The reader counts its group's messages until told how many to expect.
    let expected = Rc::new(Cell::new(None));
    let reading = glommio::spawn_local(read_flood(reader, expected.clone()));
    let text = "z".repeat(args.flood_chars);
    let window = 8;
    let (mut sent, mut answered, mut acked) = (0usize, 0usize, 0u64);
    let every_ns = (1e9 / args.flood_per_s.max(1.0)) as u64;
    let started = latency::now_ns();
    while answered < args.flood_messages {
        while sent < args.flood_messages && sent - answered < window {
            let due = started + sent as u64 * every_ns;
            let now = latency::now_ns();
            if due > now {
                glommio::timer::sleep(Duration::from_nanos(due - now)).await;
            }
            // Each text its own: the same text again and again is refused
            // as a flood of repeats (the `repeats` step).
            let params = json!({ "channel_id": channel, "text": format!("{sent} {text}") });
            let send = json!({ "id": 1000 + sent, "method": "send", "params": params });
            send_text(&mut flooder, send.to_string()).await?;
            sent += 1;
        }
        let reply = next_reply(&mut flooder).await?.map_err(|code| anyhow::anyhow!("the flooder closed ({code})"))?;
        answered += 1;
        match reply["error"]["code"].as_str() {
            None => acked += 1,
            Some(code) => {
                report.count(code);
                ensure!(code == "rate_limited", "a flood send answered {reply}");
            }
        }
    }
    report.flood_sent += args.flood_messages as u64;
    report.flood_acked += acked;
    let _ = within(Duration::from_secs(2), flooder.close(None)).await;
    // The reader gets every acknowledged message of this round.
    expected.set(Some(acked));
    report.flood_delivered += reading.await?;
    // The never-readers read now: what the server left them ends in its
    // close (1008, or the socket's end once its linger passed).
    for mut ws in never_readers {
        let ended = within(Duration::from_secs(30), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map_or(1006, |frame| u16::from(frame.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return 1006,
                }
            }
        })
        .await;
        match ended {
            // 1006: the socket's end, without a close frame.
            Some(1008 | 1006) => report.slow_consumer_closes += 1,
            Some(code) => bail!(
                "a never-reader was closed with {code}, not as a slow consumer (this flood: {acked} of {} acked)",
                args.flood_messages
            ),
            None => report.never_readers_left_open += 1,
        }
    }
    Ok(())
}

/// Counts the reader's `message` events until it has as many as the
/// flooder's acks (sent once the flood is over), within 60 s.
async fn read_flood(mut reader: Ws, expected: Rc<Cell<Option<u64>>>) -> anyhow::Result<u64> {
    let mut got = 0u64;
    let deadline = latency::now_ns() + 60_000_000_000;
    loop {
        let target = expected.get();
        if target.is_some_and(|target| got >= target) {
            let _ = within(Duration::from_secs(2), reader.close(None)).await;
            return Ok(got);
        }
        ensure!(latency::now_ns() < deadline, "the reader got {got} of {target:?} flood messages in 60 s");
        match within(Duration::from_millis(50), reader.next()).await {
            None => {}
            Some(Some(Ok(Message::Text(text)))) if text.contains(r#""event":"message""#) => got += 1,
            Some(Some(Ok(_))) => {}
            Some(Some(Err(error))) => bail!("the reader's connection broke: {error}"),
            Some(None) => bail!("the reader was closed"),
        }
    }
}
