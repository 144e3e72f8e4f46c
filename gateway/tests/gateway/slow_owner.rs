//! What a `hello` promises when the owners it waits on are slow: an owner
//! that takes 1.5 s to apply a core's word (`fault_owner_delay_ms`, as a
//! busy core would) must not let a `hello` out before it has applied it.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestServer, create_channel_owned_by, owner, users, users_on_every_shard};

const DELAY_MS: u64 = 1_500;

#[test]
fn right_after_hello_a_user_is_online_for_a_query_from_any_core() {
    let server = TestServer::start_with(2, |config| config.fault_owner_delay_ms = DELAY_MS);
    let people = users(&server, "online", 9);
    let mut asker = server.connect(&people[8], "asker");
    // Half of these connections land on a core that does not own their
    // user: that core's word reaches the owner 1.5 s late.
    let mut devices = Vec::new();
    for user in &people[..8] {
        devices.push(server.connect(user, "phone"));
        let presence = asker.result("presence.query", json!({ "users": [user.username] }));
        assert_eq!(presence["presence"][0]["status"], "online", "{} right after its hello: {presence}", user.username);
    }
}

#[test]
fn a_second_device_on_a_core_gets_its_hello_only_once_the_owner_knows_the_core() {
    let shards = 2;
    let server = TestServer::start_with(shards, |config| config.fault_owner_delay_ms = DELAY_MS);
    let people = users_on_every_shard(&server, "second", 8, shards);
    // The member's devices run on its owner (sessions are handed to their
    // user's owner), and the channel is owned by the other shard: each
    // device's subscribe word there takes the owner's delay.
    let member = &people[0];
    let sender = people.iter().find(|user| owner(user, shards) != owner(member, shards)).expect("both shards");
    let elsewhere = owner(sender, shards);
    let channel = create_channel_owned_by(&server, sender, &[&member.username], elsewhere, shards);

    std::thread::scope(|scope| {
        // A first device whose subscribe is still on its way (its hello
        // takes the owner's delay; a device that found its core already
        // subscribed is kept open, and another tried).
        let mut first = None;
        let mut on_the_owners_core = Vec::new();
        for attempt in 0..12 {
            let device = format!("first{attempt}");
            let (server, member) = (&server, member);
            let connecting = scope.spawn(move || server.connect(member, &device));
            std::thread::sleep(Duration::from_millis(300));
            if connecting.is_finished() {
                // No wait. Keep it open and try again.
                on_the_owners_core.push(connecting.join().unwrap());
                continue;
            }
            first = Some(connecting);
            break;
        }
        let first = first.expect("a connection waited on the channel's owner");
        // More devices while the first one's word is on its way: every one
        // on the same core must receive a message sent right after its
        // hello.
        let mut devices = Vec::new();
        for n in 0..12 {
            let t = Instant::now();
            let mut device = server.connect(member, &format!("more{n}"));
            eprintln!("more{n} hello after {:?}", t.elapsed());
            let (status, body) = server.post_auth(
                "/v1/rpc/send",
                &sender.token,
                &json!({ "channel_id": channel, "text": format!("after hello {n}") }),
            );
            assert_eq!(status, 200, "{body}");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = device.next_event_within("message", left);
                let Some(event) = event else { panic!("device more{n} missed a message sent after its hello") };
                if event["text"] == format!("after hello {n}") {
                    break;
                }
            }
            devices.push(device);
        }
        first.join().unwrap();
    });
}
