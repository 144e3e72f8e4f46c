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
