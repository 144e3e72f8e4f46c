//! Connections leave no task behind: `chatgw_tasks` (every task the
//! gateway spawns, counted while alive) comes back to where it was once
//! the connections that sent, read, watched presence and subscribed are
//! gone, whether they closed with a handshake or just dropped the socket.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestServer, sample_sum, scrape, users};

fn tasks_and_connections(server: &TestServer) -> (f64, f64) {
    let scrape = scrape(server);
    (sample_sum(&scrape, "chatgw_tasks"), sample_sum(&scrape, "chatgw_connections"))
}

/// The figures once they stop moving with no connection left (closes
/// linger up to 2 s), within 20 s.
fn settled(server: &TestServer) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = tasks_and_connections(server);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = tasks_and_connections(server);
        if (now == last && now.1 == 0.0) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn tasks_come_back_to_their_baseline_once_connections_go() {
    // A user's offline grace is a task of its own: short here, so that the
    // count settles soon after the last device goes.
    let server = TestServer::start_with(2, |config| config.presence_grace_ms = 200);
    let members = users(&server, "tc", 12);
    let (baseline, connections) = settled(&server);
    assert_eq!(connections, 0.0);
    assert!(baseline > 0.0, "the shards' own tasks are counted");

    let mut owner = server.connect(&members[0], "d0");
    let names: Vec<&str> = members.iter().map(|user| user.username.as_str()).collect();
    let made = owner.result("channel.create", json!({ "name": "tasks", "members": names }));
    let channel = made["channel"]["id"].as_str().unwrap().to_string();
    let mut clients: Vec<_> =
        members.iter().flat_map(|user| [server.connect(user, "a"), server.connect(user, "b")]).collect();
    for (n, client) in clients.iter_mut().enumerate() {
        client.result("send", json!({ "channel_id": channel, "text": format!("hello {n}") }));
        client.result("presence.subscribe", json!({ "users": [names[(n + 1) % names.len()]] }));
        client.result("sync", json!({ "since": "0" }));
    }
    let (busy, _) = tasks_and_connections(&server);
    assert!(busy > baseline, "{busy} tasks with {} connections", clients.len() + 1);

    // Half close with a handshake, half drop the socket mid-traffic.
    owner.close();
    for (n, mut client) in clients.into_iter().enumerate() {
        if n % 2 == 0 {
            client.close();
        } else {
            client.send_text(
                &json!({ "id": 9, "method": "send", "params": { "channel_id": channel, "text": "bye" } }).to_string(),
            );
            drop(client);
        }
    }
    let (after, connections) = settled(&server);
    assert_eq!(connections, 0.0, "connections left");
    assert_eq!(after, baseline, "tasks left behind by closed connections");
}
