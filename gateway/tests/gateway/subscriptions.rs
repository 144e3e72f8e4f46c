//! Subscriptions race: members reconnect in storms while others are added
//! to and removed from the channel; afterwards every connected member
//! receives the next message. A core's word on whether it hosts a channel
//! must never be overwritten by an older one.

use std::time::Duration;

use crate::common::{Client, TestServer, User, users};
use serde_json::{Value, json};

fn rpc(server: &TestServer, user: &User, method: &str, params: Value) -> Value {
    let (status, body) = server.post_auth(&format!("/v1/rpc/{method}"), &user.token, &params);
    assert_eq!(status, 200, "{method}: {body}");
    body["result"].clone()
}

#[test]
fn after_reconnect_storms_and_member_changes_every_connected_member_receives() {
    let server = TestServer::start(4);
    let owner = server.signup("storm_owner");
    let members = users(&server, "storm_m", 12);
    let flappers = users(&server, "storm_f", 4);
    let names: Vec<&str> = members.iter().map(|member| member.username.as_str()).collect();
    let created = rpc(&server, &owner, "channel.create", json!({ "name": "storm", "members": names }));
    let channel = created["channel"]["id"].as_str().unwrap().to_string();
    let flapper_names: Vec<String> = flappers.iter().map(|flapper| flapper.username.clone()).collect();
    for round in 0..8 {
        let done = std::sync::atomic::AtomicBool::new(false);
        let final_clients: Vec<Client> = std::thread::scope(|scope| {
            let storms: Vec<_> = members
                .iter()
                .enumerate()
                .map(|(index, member)| {
                    let server = &server;
                    let _ = index;
                    scope.spawn(move || {
                        // Connect and drop at once, several times; keep the last.
                        for turn in 0..20 {
                            let mut client = server.connect(member, &format!("r{round}t{turn}"));
                            if turn % 2 == 0 {
                                client.close();
                            } else {
                                drop(client);
                            }
                        }
                        server.connect(member, &format!("keep{round}"))
                    })
                })
                .collect();
            // Meanwhile the owner adds and removes other members, until
            // the storms are over (bounded in count).
            let (server, owner, channel, flapper_names, done) = (&server, &owner, &channel, &flapper_names, &done);
            let flapping = scope.spawn(move || {
                for _ in 0..200 {
                    if done.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let add = json!({ "channel_id": channel, "members": flapper_names });
                    rpc(server, owner, "channel.add_members", add.clone());
                    rpc(server, owner, "channel.remove_members", add);
                }
            });
            let kept = storms.into_iter().map(|storm| storm.join().unwrap()).collect();
            done.store(true, std::sync::atomic::Ordering::Release);
            flapping.join().unwrap();
            kept
        });
        // Let late unsubscribes of the dropped connections land.
        std::thread::sleep(Duration::from_millis(200));
        let text = format!("after storm {round}");
        rpc(&server, &owner, "send", json!({ "channel_id": channel, "text": text }));
        for (index, mut client) in final_clients.into_iter().enumerate() {
            let mut got = false;
            while let Some(event) = client.next_event_within("message", Duration::from_secs(5)) {
                if event["text"] == text.as_str() {
                    got = true;
                    break;
                }
            }
            assert!(got, "round {round}: member {index} is connected but did not receive {text:?}");
            client.close();
        }
    }
}
