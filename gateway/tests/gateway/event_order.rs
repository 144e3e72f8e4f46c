//! Per channel, a connection receives `message` events in id order, while
//! senders on every core pipeline into the same channels (4 shards on 2
//! cores, so owners, senders' cores and receivers' cores interleave).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::common::{TestServer, users};

const CHANNELS: usize = 6;
const SENDERS_PER_CHANNEL: usize = 4;
const RECEIVERS_PER_CHANNEL: usize = 4;
const SENDS_PER_SENDER: usize = 60;

#[test]
fn every_connection_gets_each_channels_messages_in_id_order() {
    let server = TestServer::start(4);
    let per_channel = SENDERS_PER_CHANNEL + RECEIVERS_PER_CHANNEL;
    let people = users(&server, "order", CHANNELS * per_channel);
    let mut channels = Vec::new();
    for group in people.chunks(per_channel) {
        let mut owner = server.connect(&group[0], "setup");
        let names: Vec<&str> = group[1..].iter().map(|user| user.username.as_str()).collect();
        let created = owner.result("channel.create", json!({ "name": "order", "members": names }));
        channels.push(created["channel"]["id"].as_str().unwrap().to_string());
    }
    let expected = SENDERS_PER_CHANNEL * SENDS_PER_SENDER;
    std::thread::scope(|scope| {
        // Receivers first, so that every message is live for them.
        let mut receivers = Vec::new();
        for (group, channel) in people.chunks(per_channel).zip(&channels) {
            for receiver in &group[SENDERS_PER_CHANNEL..] {
                let mut client = server.connect(receiver, "reader");
                let channel = channel.clone();
                receivers.push(scope.spawn(move || {
                    let mut last: HashMap<String, u64> = HashMap::new();
                    let mut got = 0;
                    while got < expected {
                        let Some(event) = client.next_event_within("message", Duration::from_secs(60)) else {
                            panic!("{} of {expected} messages arrived", got);
                        };
                        let id: u64 = event["id"].as_str().unwrap().parse().unwrap();
                        let in_channel = event["channel_id"].as_str().unwrap().to_string();
                        assert_eq!(in_channel, channel);
                        let previous = last.insert(in_channel, id).unwrap_or(0);
                        assert!(id > previous, "message {id} arrived after {previous}");
                        got += 1;
                    }
                }));
            }
        }
        let mut senders = Vec::new();
        for (group, channel) in people.chunks(per_channel).zip(&channels) {
            for sender in &group[..SENDERS_PER_CHANNEL] {
                let mut client = server.connect(sender, "writer");
                let channel = channel.clone();
                senders.push(scope.spawn(move || {
                    // Pipelined: every send before the first answer.
                    for n in 0..SENDS_PER_SENDER {
                        client.send_command("send", json!({ "channel_id": channel, "text": format!("m{n}") }));
                    }
                    for _ in 0..SENDS_PER_SENDER {
                        let reply = client.next_reply();
                        assert!(reply.get("result").is_some(), "{reply}");
                    }
                }));
            }
        }
        for sender in senders {
            sender.join().unwrap();
        }
        for receiver in receivers {
            receiver.join().unwrap();
        }
    });
}

/// The connections of `user`, by device, with the shard each is on.
fn shards_of(server: &TestServer, user: &crate::common::User) -> HashMap<String, u16> {
    let page = crate::common::admin_get(server, "/admin/v1/connections?limit=1000");
    page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|conn| conn["username"] == user.username.as_str())
        .map(|conn| (conn["device"].as_str().unwrap().to_string(), conn["shard"].as_u64().unwrap() as u16))
        .collect()
}

#[test]
fn a_send_whose_answer_waits_does_not_let_a_later_message_of_the_channel_deliver_first() {
    // The owner takes 1 s to answer a sender on another core (as a full
    // queue back would make it): a later message sent on the owner's own
    // core, ready meanwhile, must still be delivered after it.
    let shards = 2;
    let server = TestServer::start_with(shards, |config| config.fault_early_reply_delay_ms = 1_000);
    let home = 1;
    // Sessions run on their user's owner: the remote sender is owned by
    // the other core, the local one by the channel's.
    let people = crate::common::users_on_every_shard(&server, "turn", 3, shards);
    let remote = people.iter().find(|user| crate::common::owner(user, shards) == 1 - home).unwrap();
    let local = people.iter().find(|user| crate::common::owner(user, shards) == home).unwrap();
    let reader = people.iter().find(|user| !std::ptr::eq(*user, remote) && !std::ptr::eq(*user, local)).unwrap();
    let channel =
        crate::common::create_channel_owned_by(&server, remote, &[&local.username, &reader.username], home, shards);
    // A device of each sender on the core it needs: the remote sender's on
    // the other core, the local sender's on the owner's.
    let pick = |user: &crate::common::User, wanted: u16| {
        let mut kept = Vec::new();
        for n in 0..24 {
            let device = format!("d{n}");
            let client = server.connect(user, &device);
            if shards_of(&server, user).get(&device) == Some(&wanted) {
                return (client, kept);
            }
            kept.push(client);
        }
        panic!("no connection of {} landed on shard {wanted}", user.username);
    };
    let (mut far, _far_others) = pick(remote, 1 - home);
    let (mut near, _near_others) = pick(local, home);
    let mut watcher = server.connect(reader, "watcher");
    far.send_command("send", json!({ "channel_id": channel, "text": "first" }));
    std::thread::sleep(Duration::from_millis(300));
    near.send_command("send", json!({ "channel_id": channel, "text": "second" }));
    let first = watcher.next_event_within("message", Duration::from_secs(10)).expect("a message");
    let second = watcher.next_event_within("message", Duration::from_secs(10)).expect("another message");
    assert_eq!((first["text"].as_str(), second["text"].as_str()), (Some("first"), Some("second")));
    assert!(
        first["id"].as_str().unwrap().parse::<u64>().unwrap() < second["id"].as_str().unwrap().parse::<u64>().unwrap()
    );
    assert!(far.next_reply().get("result").is_some());
    assert!(near.next_reply().get("result").is_some());
}
