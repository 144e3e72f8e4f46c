//! Sync from a cursor has no gap while shards commit concurrently
//! (protocol §4): one reader in 24 small channels and 2 large ones, owned by
//! different shards, 24 senders posting over `/v1/rpc/send` at once (and
//! editing and deleting some of what they sent), and the reader syncing
//! from its cursor in a loop, as a device does: it gets every message and
//! every change. With more shards than cores and fsync durability, one
//! shard's group commit often lags another's, so a larger id is stored
//! before a smaller one.

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

/// A change as a sync gives it: its own id, its message's id, and its kind.
type Seen = (u64, u64, String);

/// What a device got: every message id, in order, and every change.
type Received = (Vec<u64>, Vec<Seen>);

/// Syncs from `cursor` once; returns the message ids, the changes, whether
/// there is more, and the next cursor.
fn sync_once(server: &TestServer, reader: &User, cursor: &str, style: Cursor) -> (Vec<u64>, Vec<Seen>, bool, String) {
    let body = rpc(server, reader, "sync", json!({ "since": cursor, "limit": 200 }));
    let id = |value: &Value| value.as_str().unwrap().parse::<u64>().unwrap();
    let ids: Vec<u64> = body["messages"].as_array().unwrap().iter().map(|m| id(&m["id"])).collect();
    let changes: Vec<Seen> = body
        .get("changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|change| (id(&change["id"]), id(&change["message_id"]), change["kind"].as_str().unwrap().to_string()))
        .collect();
    let has_more = body["has_more"].as_bool().unwrap();
    let next = match style {
        Cursor::NextSince => body["next_since"].as_str().expect("next_since").to_string(),
        Cursor::LastId => ids.last().map_or(cursor.to_string(), u64::to_string),
    };
    (ids, changes, has_more, next)
}

/// A device syncing from its cursor until `done`, then until it has caught
/// up; returns every message id it was given, in order, and every change.
fn read_from_cursor(server: &TestServer, reader: &User, style: Cursor, done: &AtomicBool) -> Received {
    let mut cursor = "0".to_string();
    let mut received = Vec::new();
    let mut changes = Vec::new();
    let mut quiet_rounds = 0;
    let deadline = Instant::now() + send_for().0 + Duration::from_secs(60);
    while Instant::now() < deadline {
        let finished = done.load(Ordering::Acquire);
        let (ids, changed, has_more, next) = sync_once(server, reader, &cursor, style);
        // A client from before `next_since` knows nothing of changes either.
        let empty = ids.is_empty() && (changed.is_empty() || matches!(style, Cursor::LastId));
        received.extend(ids);
        changes.extend(changed);
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
    (received, changes)
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
                    let mut changed = Vec::new();
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
                        let id = body["message_id"].as_str().unwrap().parse::<u64>().unwrap();
                        acked.push(id);
                        // Every third message is edited, the one after it
                        // deleted, each just after it is acknowledged.
                        let change = match round % 6 {
                            2 => Some(("message.edit", json!({ "text": format!("{n}:{round} edited") }), "edited")),
                            4 => Some(("message.delete", json!({}), "deleted")),
                            _ => None,
                        };
                        if let Some((method, mut params, kind)) = change {
                            params["channel_id"] = json!(channel);
                            params["message_id"] = json!(id.to_string());
                            rpc(server, sender, method, params);
                            changed.push((id, kind.to_string()));
                        }
                    }
                    (acked, changed)
                })
            })
            .collect();
        let mut acknowledged = BTreeSet::new();
        let mut changed = BTreeSet::new();
        for thread in sending {
            let (acked, changes) = thread.join().unwrap();
            acknowledged.extend(acked);
            changed.extend(changes);
        }
        done.store(true, Ordering::Release);
        let by_style: Vec<(Cursor, Received)> = readers.into_iter().map(|thread| thread.join().unwrap()).collect();
        ((acknowledged, changed), by_style)
    });
    let (acknowledged, changed) = acknowledged;
    assert!(acknowledged.len() > 100, "the senders made progress: {}", acknowledged.len());
    assert!(changed.len() > 30, "the senders edited and deleted: {}", changed.len());
    for (style, (received, changes)) in by_style {
        if let Cursor::NextSince = style {
            assert!(changes.windows(2).all(|pair| pair[0].0 < pair[1].0), "{style:?}: a change went back or repeated");
            check_changes(&changed, changes, style, shards, durability);
        }
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

/// Every acknowledged edit and delete reached the device, once each.
fn check_changes(
    changed: &BTreeSet<(u64, String)>,
    changes: Vec<Seen>,
    style: Cursor,
    shards: u16,
    durability: Durability,
) {
    let seen: BTreeSet<(u64, String)> = changes.into_iter().map(|(_, message, kind)| (message, kind)).collect();
    let missed = changed.difference(&seen).count();
    eprintln!(
        "sync from the cursor ({style:?}), {shards} shards, {durability:?}: {} changes made, {missed} missed",
        changed.len()
    );
    assert_eq!(missed, 0, "{style:?}: acknowledged edits and deletes the cursor skipped");
    assert_eq!(seen.len(), changed.len(), "{style:?}: no change but those made");
}

#[test]
fn a_device_syncing_from_its_cursor_gets_every_acknowledged_message_on_four_shards_with_fsync() {
    run(4, Durability::Fsync);
}

#[test]
fn a_device_syncing_from_its_cursor_gets_every_acknowledged_message_on_two_shards() {
    run(2, Durability::Wal);
}
