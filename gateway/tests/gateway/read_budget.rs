//! Reads with a budget: `history` and `sync` of a channel of long, costly
//! texts load only what one reply carries, keep every reply frame under
//! the frame limit, page on with `has_more`/`next_since`, never make a
//! device that pipelines reads a slow consumer, and leave the core free to
//! answer other connections meanwhile.
//!
//! `CHATGW_READ_BUDGET_MESSAGES` sets how many 100,000-char messages the
//! channel holds (default 40); with 250, in release, this is the figure of
//! the hostile-clients issue:
//! `CHATGW_READ_BUDGET_MESSAGES=250 cargo test --release -p chatgw-gateway --test gateway read_budget -- --nocapture`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, TestServer, User, users};

/// The protocol's default frame limit (`limits::FRAME_BYTES_MAX`).
const FRAME_BYTES_MAX: usize = 2 << 20;
const TEXT_CHARS: usize = 100_000;

fn message_count() -> usize {
    std::env::var("CHATGW_READ_BUDGET_MESSAGES").ok().and_then(|count| count.parse().ok()).unwrap_or(40)
}

/// A text of `TEXT_CHARS` chars whose JSON is as large as it gets: each
/// control char is escaped as `\u00XX`, 6 bytes.
fn costly_text(n: usize) -> String {
    let mut text = format!("{n:06}|");
    text.extend(std::iter::repeat_n('\u{1}', TEXT_CHARS - text.len()));
    text
}

/// A 20-member channel (read at sync time: fan-out on read) holding
/// `count` costly messages; returns its id and the members.
fn costly_channel(server: &TestServer, count: usize) -> (String, Vec<User>) {
    let people = users(server, "reader", 20);
    let names: Vec<&str> = people[1..].iter().map(|user| user.username.as_str()).collect();
    let (status, body) =
        server.post_auth("/v1/rpc/channel.create", &people[0].token, &json!({ "name": "costly", "members": names }));
    assert_eq!(status, 200, "{body}");
    let channel = body["result"]["channel"]["id"].as_str().unwrap().to_string();
    for n in 0..count {
        let (status, body) = server.post_auth(
            "/v1/rpc/send",
            &people[0].token,
            &json!({ "channel_id": channel, "text": costly_text(n) }),
        );
        assert_eq!(status, 200, "{body}");
    }
    (channel, people)
}

/// Reads the next reply and checks its frame is under the frame limit.
fn bounded_reply(client: &mut Client) -> Value {
    let reply = client.next_reply();
    assert!(
        client.last_frame_bytes <= FRAME_BYTES_MAX,
        "a reply frame of {} bytes passes the frame limit",
        client.last_frame_bytes
    );
    assert!(reply.get("error").is_none(), "{reply}");
    reply
}

/// The message numbers (the texts' prefixes) of a reply.
fn numbers(result: &Value) -> Vec<usize> {
    result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["text"].as_str().unwrap()[..6].parse().unwrap())
        .collect()
}

#[test]
fn sync_and_history_of_costly_texts_stay_under_the_frame_limit_and_page_through_everything() {
    let count = message_count();
    let server = TestServer::start(1);
    let (channel, people) = costly_channel(&server, count);
    let mut device = server.connect(&people[1], "phone");

    // Sync from the start, page by page, as a device does.
    let mut seen = Vec::new();
    let mut since = "0".to_string();
    let mut pages = 0;
    loop {
        device.send_command("sync", json!({ "since": since }));
        let result = bounded_reply(&mut device)["result"].clone();
        pages += 1;
        assert!(pages <= count, "sync pages on");
        seen.extend(numbers(&result));
        since = result["next_since"].as_str().unwrap().to_string();
        if result["has_more"] == false {
            break;
        }
        assert!(!result["messages"].as_array().unwrap().is_empty(), "a page with more carries a message");
    }
    assert_eq!(seen, (0..count).collect::<Vec<_>>(), "every message once, in order");
    assert!(pages > 1, "{count} texts of 600 KB each do not fit one reply");

    // Every history anchor is bounded too, and keeps the messages nearest it.
    for (params, first_or_last) in [
        (json!({ "channel_id": channel, "limit": 200 }), count - 1),
        (json!({ "channel_id": channel, "limit": 200, "after": "0" }), 0),
    ] {
        device.send_command("history", params.clone());
        let got = numbers(&bounded_reply(&mut device)["result"]);
        assert!(!got.is_empty() && got.len() < count, "{params}: {} of {count}", got.len());
        assert!(got.windows(2).all(|pair| pair[0] < pair[1]), "ascending");
        assert!(got.first() == Some(&first_or_last) || got.last() == Some(&first_or_last), "{params}: {got:?}");
    }
    // Over HTTP as well.
    let (status, body) = server.post_auth("/v1/rpc/sync", &people[2].token, &json!({ "since": "0", "limit": 1000 }));
    assert_eq!(status, 200);
    assert_eq!(body["result"]["has_more"], true, "{}", body["error"]);
    assert!(serde_json::to_vec(&body).unwrap().len() <= FRAME_BYTES_MAX);
}

#[test]
fn devices_pipelining_syncs_are_answered_and_the_core_keeps_answering_heartbeats() {
    let count = message_count();
    // One shard: every connection is on the core doing the reads.
    let server = TestServer::start(1);
    let (_channel, people) = costly_channel(&server, count);
    let mut prober = server.connect(&people[0], "prober");

    // A heartbeat round trip, measured while no one reads.
    let mut calm = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        prober.result("heartbeat", json!({}));
        calm.push(started.elapsed());
    }

    // Six devices, each pipelining three syncs from the start, and slow to
    // read their replies.
    let hostile_deadline = Instant::now() + Duration::from_secs(120);
    let readers: Vec<_> = (1..=6)
        .map(|n| {
            let mut device = server.connect(&people[n], "phone");
            for _ in 0..3 {
                device.send_command("sync", json!({ "since": "0", "limit": 1000 }));
            }
            device
        })
        .collect();
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut device| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut ids = Vec::new();
                for _ in 0..3 {
                    let result = bounded_reply(&mut device)["result"].clone();
                    assert_eq!(result["has_more"], true);
                    ids.push(numbers(&result));
                }
                assert!(ids.windows(2).all(|pair| pair[0] == pair[1]), "the same sync, the same page");
                // Then pages through the rest.
                let mut seen: BTreeSet<usize> = ids[0].iter().copied().collect();
                let mut since = String::new();
                device.send_command("sync", json!({ "since": "0" }));
                loop {
                    let result = bounded_reply(&mut device)["result"].clone();
                    seen.extend(numbers(&result));
                    if result["has_more"] == false {
                        break;
                    }
                    let next = result["next_since"].as_str().unwrap().to_string();
                    assert_ne!(next, since, "the cursor moves");
                    since = next;
                    device.send_command("sync", json!({ "since": since }));
                }
                seen.len()
            })
        })
        .collect();

    // Meanwhile, heartbeats on the same core.
    let mut busy = Vec::new();
    while readers.iter().any(|reader| !reader.is_finished()) {
        assert!(Instant::now() < hostile_deadline, "the readers finish");
        let started = Instant::now();
        prober.result("heartbeat", json!({}));
        busy.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    for reader in readers {
        assert_eq!(reader.join().unwrap(), count, "every message reached every device");
    }
    let percentile = |samples: &mut Vec<Duration>, p: f64| {
        samples.sort();
        samples[((samples.len() as f64 - 1.0) * p).round() as usize]
    };
    let (calm_p99, busy_p50, busy_p99) =
        (percentile(&mut calm, 0.99), percentile(&mut busy, 0.5), percentile(&mut busy, 0.99));
    eprintln!(
        "heartbeat round trip: calm p99 {calm_p99:?}; under 6 devices x 3 pipelined syncs of {count} costly texts: \
         p50 {busy_p50:?}, p99 {busy_p99:?}, max {:?} over {} heartbeats",
        busy.last().unwrap(),
        busy.len()
    );
    assert!(!busy.is_empty());
    // Not a speed figure: a core that held its other connections for a
    // whole read (as it did, for 1.1 s, before reads had a budget) fails.
    assert!(busy_p99 < Duration::from_secs(1), "a heartbeat waited {busy_p99:?} behind other devices' reads");
}
