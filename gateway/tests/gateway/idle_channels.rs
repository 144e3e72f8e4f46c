//! The owners' in-memory channel states are bounded: states no core hosts
//! are dropped at `max_idle_channels_per_shard`, least recently used first,
//! and read again from storage when next used; states that a core hosts stay.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestServer, sample_sum, scrape};

const SHARDS: u16 = 2;
const MAX_IDLE: usize = 8;

fn figures(server: &TestServer) -> (f64, f64) {
    let scrape = scrape(server);
    (sample_sum(&scrape, "chatgw_channels_in_memory"), sample_sum(&scrape, "chatgw_channels_evicted_total"))
}

#[test]
fn idle_channel_states_are_dropped_at_the_bound_and_read_again_on_use() {
    let server = TestServer::start_with(SHARDS, |config| config.max_idle_channels_per_shard = MAX_IDLE);
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let carol = server.signup("carol");

    // Alice is connected while she makes 40 channels with Bob: her core
    // hosts every one, so none is dropped, whatever the bound.
    let mut alice_ws = server.connect(&alice, "a");
    let channels: Vec<String> = (0..40)
        .map(|n| {
            let made = alice_ws.result("channel.create", json!({ "name": format!("c{n}"), "members": [bob.username] }));
            made["channel"]["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(figures(&server), (40.0, 0.0), "hosted states stay");

    // Alice goes: her 40 states turn idle as her core's words land, and
    // the owners drop those beyond the bound, least recently used first.
    alice_ws.close();
    drop(alice_ws);
    // At most the bound and an eighth (plus one) idle per shard.
    let idle_max = (SHARDS as usize * (MAX_IDLE + MAX_IDLE / 8 + 1)) as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (in_memory, evicted) = loop {
        let (in_memory, evicted) = figures(&server);
        if in_memory <= idle_max || Instant::now() > deadline {
            break (in_memory, evicted);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(in_memory <= idle_max, "{in_memory} idle states in memory");
    assert_eq!(in_memory + evicted, 40.0);

    // Carol's channels are hosted by her connection: none is dropped, and
    // the idle ones stay within the bound meanwhile.
    let mut carol_ws = server.connect(&carol, "c");
    let carols = 30;
    for n in 0..carols {
        carol_ws.result("channel.create", json!({ "name": format!("carol{n}"), "members": [] }));
    }
    let (in_memory, _) = figures(&server);
    assert!(in_memory >= carols as f64, "hosted states are never dropped: {in_memory} < {carols}");
    assert!(in_memory <= carols as f64 + idle_max, "{in_memory} states in memory, {carols} hosted");

    // Every dropped channel still works: Bob's connect subscribes all 40
    // (read again from storage), and each message reaches him, in order.
    let mut bob_ws = server.connect(&bob, "b");
    let mut alice_ws = server.connect(&alice, "a2");
    for (n, channel) in channels.iter().enumerate() {
        alice_ws.result("send", json!({ "channel_id": channel, "text": format!("to c{n}") }));
    }
    for (n, channel) in channels.iter().enumerate() {
        let event = bob_ws.next_event("message");
        assert_eq!(event["channel_id"], channel.as_str());
        assert_eq!(event["text"], format!("to c{n}"));
    }
    let history = bob_ws.result("history", json!({ "channel_id": channels[0], "limit": 10 }));
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    let listed = carol_ws.result("channel.list", json!({}));
    assert_eq!(listed["channels"].as_array().unwrap().len(), carols);
}
