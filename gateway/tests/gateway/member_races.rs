//! Membership changes of one channel pipelined in one write: the owner
//! takes them one at a time, each planned from the state the one before
//! left, so the member cap holds and every member reads the channel the
//! way the channel writes it (its inbox while small, the channel once
//! large). Before the owner's line, two changes planned from the same
//! state: with a channel of 7, adding 1 (stays small) beside adding 2
//! (grows past `INBOX_FAN_OUT_MEMBERS_MAX`, 8) left the one added alone
//! reading an inbox the channel no longer wrote, and with a cap of 4 two
//! additions of 3 to a channel of 1 made it 7.

use std::time::Duration;

use crate::common::{Client, TestServer, users};
use serde_json::{Value, json};
use tungstenite::Message;

/// Writes both commands in one write (one system call), then reads both
/// replies (any order); returns them by command id.
fn pipelined(client: &mut Client, first: Value, second: Value) -> (Value, Value) {
    let frames = [(1_001u64, first), (1_002, second)];
    for (id, command) in &frames {
        let mut command = command.clone();
        command["id"] = json!(id);
        client.ws.write(Message::text(command.to_string())).unwrap();
    }
    client.ws.flush().unwrap();
    let (mut one, mut two) = (None, None);
    while one.is_none() || two.is_none() {
        let reply = client.next_reply();
        match reply["id"].as_u64() {
            Some(1_001) => one = Some(reply),
            Some(1_002) => two = Some(reply),
            _ => panic!("a reply to neither: {reply}"),
        }
    }
    (one.unwrap(), two.unwrap())
}

fn add(channel: &str, members: &[&str]) -> Value {
    json!({ "method": "channel.add_members", "params": { "channel_id": channel, "members": members } })
}

fn names(users: &[crate::common::User]) -> Vec<&str> {
    users.iter().map(|user| user.username.as_str()).collect()
}

#[test]
fn pipelined_additions_leave_every_member_syncing_the_channel() {
    for round in 0..5 {
        let server = TestServer::start(1);
        let people = users(&server, &format!("mr{round}_"), 10);
        let mut owner = server.connect(&people[0], "d");
        let channel = owner.result("channel.create", json!({ "name": "seven", "members": names(&people[1..7]) }));
        let channel = channel["channel"]["id"].as_str().unwrap().to_string();
        // The one added alone, and the two whose addition makes it large.
        let (alone, pair) = (&people[7], &people[8..10]);
        let (first, second) = pipelined(&mut owner, add(&channel, &[&alone.username]), add(&channel, &names(pair)));
        assert!(first.get("result").is_some(), "{first}");
        assert!(second.get("result").is_some(), "{second}");

        let mut reader = server.connect(alone, "d");
        let start = reader.result("sync", json!({ "since": "0" }));
        let since = start["next_since"].as_str().unwrap().to_string();
        let sent = owner.result("send", json!({ "channel_id": channel, "text": "after both" }));
        let id = sent["message_id"].as_str().unwrap().to_string();
        // Sync is complete up to what is stored; poll until the id shows.
        let mut found = false;
        for _ in 0..50 {
            let page = reader.result("sync", json!({ "since": since }));
            if page["messages"].as_array().unwrap().iter().any(|message| message["id"] == id.as_str()) {
                found = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(found, "round {round}: the member added alone never synced the message after both additions");
        let info = owner.result("channel.info", json!({ "channel_id": channel }));
        assert_eq!(info["channel"]["members"].as_array().unwrap().len(), 10);
    }
}

#[test]
fn pipelined_additions_never_pass_the_member_cap() {
    for round in 0..5 {
        let server = TestServer::start_with(1, |config| config.max_channel_members = 4);
        let people = users(&server, &format!("cap{round}_"), 7);
        let mut owner = server.connect(&people[0], "d");
        let channel = owner.result("channel.create", json!({ "name": "one", "members": [] }));
        let channel = channel["channel"]["id"].as_str().unwrap().to_string();
        let (first, second) =
            pipelined(&mut owner, add(&channel, &names(&people[1..4])), add(&channel, &names(&people[4..7])));
        let passed = [&first, &second].iter().filter(|reply| reply.get("result").is_some()).count();
        assert_eq!(passed, 1, "round {round}: exactly one addition fits: {first} {second}");
        let refused = if first.get("error").is_some() { &first } else { &second };
        assert_eq!(refused["error"]["code"], "channel_full", "{refused}");
        let info = owner.result("channel.info", json!({ "channel_id": channel }));
        assert_eq!(info["channel"]["members"].as_array().unwrap().len(), 4, "round {round}: {info}");
    }
}
