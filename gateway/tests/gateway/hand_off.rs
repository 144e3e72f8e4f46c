//! A WebSocket session runs on the core that owns its user: the accepting
//! core hands the socket over after the upgrade (`net::hand_off`).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::common::{TestServer, User, mesh_kind_total, owner, scrape, users_on_every_shard};

/// Every connection on the server: (username, device) → the shard it is on.
fn connection_shards(server: &TestServer) -> HashMap<(String, String), u16> {
    let page = crate::common::admin_get(server, "/admin/v1/connections?limit=1000");
    page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|conn| {
            let key = (conn["username"].as_str().unwrap().to_string(), conn["device"].as_str().unwrap().to_string());
            (key, conn["shard"].as_u64().unwrap() as u16)
        })
        .collect()
}

fn metric(server: &TestServer, name: &str) -> f64 {
    crate::common::sample_sum(&scrape(server), name)
}

#[test]
fn every_device_of_a_user_lands_on_the_users_owning_core() {
    let shards = 4;
    let server = TestServer::start(shards);
    let people = users_on_every_shard(&server, "owned", 6, shards);
    let devices = ["phone", "laptop", "tablet"];
    let mut clients = Vec::new();
    for user in &people {
        for device in devices {
            clients.push(server.connect(user, device));
        }
    }
    let on = connection_shards(&server);
    assert_eq!(on.len(), people.len() * devices.len());
    for user in &people {
        for device in devices {
            let shard = on[&(user.username.clone(), device.to_string())];
            assert_eq!(shard, owner(user, shards), "{}'s {device} is on shard {shard}", user.username);
        }
    }
    // Most were accepted elsewhere (the kernel picks by address and port):
    // those crossed once, as hand-offs.
    let handed = mesh_kind_total(&server, "hand_off");
    assert!(handed > 0.0, "{handed} hand-offs for {} connections on {shards} shards", clients.len());
    assert_eq!(metric(&server, "chatgw_hand_offs_kept_total"), 0.0);
    // A 1:1 between users of two cores: the sender's rate check is on its
    // own core now, so no rate check crosses.
    let (alice, bob) =
        (&people[0], people.iter().find(|user| owner(user, shards) != owner(&people[0], shards)).unwrap());
    let before = mesh_kind_total(&server, "rate_check");
    let alice_phone = 0;
    let bob_phone = people.iter().position(|user| user.username == bob.username).unwrap() * devices.len();
    for n in 0..10 {
        clients[alice_phone].result("send", json!({ "to_user": bob.username, "text": format!("m{n}") }));
        let message = clients[bob_phone].next_event("message");
        assert_eq!(message["text"], format!("m{n}"));
    }
    assert_eq!(mesh_kind_total(&server, "rate_check"), before, "{} sent to {}", alice.username, bob.username);
}

#[test]
fn a_full_hand_off_queue_keeps_the_session_where_it_was_accepted() {
    let shards = 2;
    let server = TestServer::start_with(shards, |config| config.fault_hand_off_queue_full = true);
    let people = users_on_every_shard(&server, "kept", 2, shards);
    let (alice, bob): (&User, &User) =
        (&people[0], people.iter().find(|user| owner(user, shards) != owner(&people[0], shards)).unwrap());
    // Devices until one of each is accepted away from its owner.
    let mut alice_devices = Vec::new();
    let mut bob_devices = Vec::new();
    for n in 0..24 {
        alice_devices.push(server.connect(alice, &format!("a{n}")));
        bob_devices.push(server.connect(bob, &format!("b{n}")));
    }
    let on = connection_shards(&server);
    let away = on.iter().filter(|((name, _), shard)| {
        let user = if *name == alice.username { alice } else { bob };
        **shard != owner(user, shards)
    });
    let away = away.count();
    assert!(away > 0, "every one of 48 connections was accepted on its owner");
    assert_eq!(metric(&server, "chatgw_hand_offs_kept_total"), away as f64);
    assert_eq!(mesh_kind_total(&server, "hand_off"), 0.0);
    // They work as before: every device of bob gets alice's message.
    alice_devices[0].result("send", json!({ "to_user": bob.username, "text": "kept" }));
    for device in &mut bob_devices {
        assert_eq!(device.next_event("message")["text"], "kept");
    }
}

#[test]
fn a_connection_handed_off_as_the_server_stops_is_closed_with_1001() {
    let shards = 2;
    // The owner takes 800 ms to start a session handed to it: the stop
    // comes in between.
    let mut server = TestServer::start_with(shards, |config| config.fault_hand_off_delay_ms = 800);
    let people = users_on_every_shard(&server, "stopping", 2, shards);
    let mut clients = Vec::new();
    for user in &people[..2] {
        for n in 0..6 {
            clients.push(server.try_connect(Some(&user.token), &format!("d{n}")).expect("upgrade succeeds"));
        }
    }
    let readers: Vec<_> =
        clients.into_iter().map(|mut client| std::thread::spawn(move || client.close_code())).collect();
    std::thread::sleep(Duration::from_millis(100));
    server.stop();
    for reader in readers {
        assert_eq!(reader.join().expect("a close frame, not a reset"), Some(1001));
    }
}
