//! Sync from a cursor has no gap while shards commit concurrently
//! (protocol §4): one reader in 24 small channels and 2 large ones, owned by
//! different shards, 24 senders posting over `/v1/rpc/send` at once, and
//! the reader syncing from its cursor in a loop, as a device does. With
//! more shards than cores and fsync durability, one shard's group commit
//! often lags another's, so a larger id is stored before a smaller one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chatgw_gateway::Durability;
use serde_json::{Value, json};

use crate::common::{TestServer, User, create_channel_owned_by, users};

const SENDERS: usize = 24;
/// Members of each large channel besides the reader (above the inbox
/// fan-out bound of 8, so it is read per channel at sync).
const LARGE_SENDERS: usize = 10;
/// How long the senders send, and how many sends each makes at most: 4 s
/// and 400 in the suite; `CHATGW_SYNC_GAP_SECS` sets a longer run for a
/// measurement (with no cap on sends).
fn send_for() -> (Duration, usize) {
    match std::env::var("CHATGW_SYNC_GAP_SECS").ok().and_then(|secs| secs.parse().ok()) {
        Some(secs) => (Duration::from_secs(secs), usize::MAX),
        None => (Duration::from_secs(4), 400),
    }
}

fn rpc(server: &TestServer, user: &User, method: &str, params: Value) -> Value {
    let (status, body) = server.post_auth(&format!("/v1/rpc/{method}"), &user.token, &params);
    assert_eq!(status, 200, "{method}: {body}");
    body["result"].clone()
}

/// How a device moves its cursor after a sync.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    /// To the `next_since` the server returned.
    NextSince,
    /// To the last message id returned (a client from before `next_since`).
    LastId,
}

/// Syncs from `cursor` once; returns the ids, whether there is more, and
/// the next cursor.
fn sync_once(server: &TestServer, reader: &User, cursor: &str, style: Cursor) -> (Vec<u64>, bool, String) {
    let body = rpc(server, reader, "sync", json!({ "since": cursor, "limit": 200 }));
    let ids: Vec<u64> =
        body["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect();
    let has_more = body["has_more"].as_bool().unwrap();
    let next = match style {
        Cursor::NextSince => body["next_since"].as_str().expect("next_since").to_string(),
        Cursor::LastId => ids.last().map_or(cursor.to_string(), u64::to_string),
    };
    (ids, has_more, next)
}

/// A device syncing from its cursor until `done`, then until it has caught
/// up; returns every id it was given, in order.
fn read_from_cursor(server: &TestServer, reader: &User, style: Cursor, done: &AtomicBool) -> Vec<u64> {
    let mut cursor = "0".to_string();
    let mut received = Vec::new();
    let mut quiet_rounds = 0;
    let deadline = Instant::now() + send_for().0 + Duration::from_secs(60);
    while Instant::now() < deadline {
        let finished = done.load(Ordering::Acquire);
        let (ids, has_more, next) = sync_once(server, reader, &cursor, style);
        let empty = ids.is_empty();
        received.extend(ids);
        cursor = next;
        if finished && empty && !has_more {
            // Nothing more after the senders stopped: twice, a few
            // milliseconds apart, so that every shard's frontier has
            // passed the last millisecond.
            quiet_rounds += 1;
            if quiet_rounds == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        } else {
            quiet_rounds = 0;
        }
    }
    received
}

fn run(shards: u16, durability: Durability) {
    let server = TestServer::start_with(shards, |config| config.durability = durability);
    let reader = server.signup("reader");
    let senders = users(&server, "sender", SENDERS);
    // A small channel per sender with the reader, and two large ones, their
    // owners spread over every shard.
    let small: Vec<String> = senders
        .iter()
        .enumerate()
        .map(|(n, sender)| create_channel_owned_by(&server, sender, &[&reader.username], n as u16 % shards, shards))
        .collect();
    let large: Vec<String> = [&senders[..LARGE_SENDERS], &senders[LARGE_SENDERS..2 * LARGE_SENDERS]]
        .iter()
        .enumerate()
        .map(|(n, group)| {
            let mut members: Vec<&str> = group[1..].iter().map(|user| user.username.as_str()).collect();
            members.push(&reader.username);
            create_channel_owned_by(&server, &group[0], &members, (n as u16 + 1) % shards, shards)
        })
        .collect();

    let done = AtomicBool::new(false);
    let (acknowledged, by_style) = std::thread::scope(|scope| {
        let readers: Vec<_> = [Cursor::NextSince, Cursor::LastId]
            .into_iter()
            .map(|style| {
                let (server, reader, done) = (&server, &reader, &done);
                scope.spawn(move || (style, read_from_cursor(server, reader, style, done)))
            })
            .collect();
        let sending: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(n, sender)| {
                let (server, small, large) = (&server, &small, &large);
                scope.spawn(move || {
                    let started = Instant::now();
                    let mut acked = Vec::new();
                    let (send_for, sends_max) = send_for();
                    for round in 0..sends_max {
                        if started.elapsed() > send_for {
                            break;
                        }
                        let channel = match n / LARGE_SENDERS {
                            group @ (0 | 1) if round % 2 == 1 => &large[group],
                            _ => &small[n],
                        };
                        let body = rpc(
                            server,
                            sender,
                            "send",
                            json!({ "channel_id": channel, "text": format!("{n}:{round}") }),
                        );
                        acked.push(body["message_id"].as_str().unwrap().parse::<u64>().unwrap());
                    }
                    acked
                })
            })
            .collect();
        let acknowledged: BTreeSet<u64> = sending.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        let by_style: Vec<(Cursor, Vec<u64>)> = readers.into_iter().map(|thread| thread.join().unwrap()).collect();
        (acknowledged, by_style)
    });
    assert!(acknowledged.len() > 100, "the senders made progress: {}", acknowledged.len());
    for (style, received) in by_style {
        assert!(received.windows(2).all(|pair| pair[0] < pair[1]), "{style:?}: sync went back or repeated");
        let returned: BTreeSet<u64> = received.iter().copied().collect();
        let skipped = acknowledged.difference(&returned).count();
        eprintln!(
            "sync from the cursor ({style:?}), {shards} shards, {durability:?}: {} acknowledged, {} returned, {skipped} skipped",
            acknowledged.len(),
            acknowledged.intersection(&returned).count(),
        );
        assert_eq!(skipped, 0, "{style:?}: acknowledged messages the cursor skipped");
        assert_eq!(returned.len(), acknowledged.len(), "{style:?}: nothing but what was sent");
    }
}

#[test]
fn a_device_syncing_from_its_cursor_gets_every_acknowledged_message_on_four_shards_with_fsync() {
    run(4, Durability::Fsync);
}

#[test]
fn a_device_syncing_from_its_cursor_gets_every_acknowledged_message_on_two_shards() {
    run(2, Durability::Wal);
}
