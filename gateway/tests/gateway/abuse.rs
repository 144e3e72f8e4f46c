//! Rate limits and flood control (protocol §5) over real WebSocket and HTTP.

use crate::common::TestServer;
use serde_json::{Value, json};

#[test]
fn sends_past_the_burst_are_rate_limited_with_a_retry_time() {
    let server = TestServer::start_with(2, |config| {
        config.rate_limit_per_s = 2;
        config.rate_burst = 5;
    });
    let alice = server.signup("alice");
    server.signup("bob");
    let mut ws = server.connect(&alice, "phone");
    for n in 0..5 {
        ws.result("send", json!({ "to_user": "bob", "text": format!("burst {n}") }));
    }
    let reply = ws.call("send", json!({ "to_user": "bob", "text": "one too many" }));
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    let retry_after_ms = reply["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=500).contains(&retry_after_ms), "a token every 500 ms: {retry_after_ms}");
    assert_eq!(ws.result("heartbeat", json!({})), json!({}), "only sends are limited; the connection stays");

    let mut response = server
        .http
        .post(server.url("/v1/rpc/send"))
        .header("Authorization", format!("Bearer {}", alice.token))
        .send_json(json!({ "to_user": "bob", "text": "over http" }))
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers().get("retry-after").unwrap().to_str().unwrap(), "1");
    let body: Value = response.body_mut().read_json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retry_after_ms"].as_u64().is_some());

    std::thread::sleep(std::time::Duration::from_millis(600));
    ws.result("send", json!({ "to_user": "bob", "text": "after waiting" }));
}

#[test]
fn the_same_text_over_and_over_is_refused() {
    let server = TestServer::start(2);
    let alice = server.signup("alice");
    server.signup("bob");
    let mut ws = server.connect(&alice, "phone");
    for _ in 0..5 {
        ws.result("send", json!({ "to_user": "bob", "text": "BUY NOW" }));
    }
    let reply = ws.call("send", json!({ "to_user": "bob", "text": "BUY NOW" }));
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert!(reply["error"]["retry_after_ms"].as_u64().unwrap() > 20_000);
    ws.result("send", json!({ "to_user": "bob", "text": "a different text" }));
}

#[test]
fn rotating_five_texts_is_refused_too() {
    let server = TestServer::start(2);
    let alice = server.signup("alice");
    server.signup("bob");
    let mut ws = server.connect(&alice, "phone");
    // Five texts in turn, each five times: the next of any is a flood.
    for round in 0..5 {
        for n in 0..5 {
            let reply = ws.call("send", json!({ "to_user": "bob", "text": format!("cheap offer {n}") }));
            assert!(reply.get("result").is_some(), "round {round}, text {n}: {reply}");
        }
    }
    let reply = ws.call("send", json!({ "to_user": "bob", "text": "cheap offer 0" }));
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    ws.result("send", json!({ "to_user": "bob", "text": "a text of its own" }));
}

#[test]
fn thousands_of_banned_phrases_are_matched_in_a_long_text() {
    let server = TestServer::start(2);
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let alice = server.signup("alice");
    server.signup("bob");
    let phrases: Vec<String> = (0..10_000).map(|n| format!("forbidden phrase number {n}")).collect();
    let mut response = server
        .http
        .put(server.url("/admin/v1/banned-words"))
        .header("Authorization", format!("Bearer {admin}"))
        .send_json(json!({ "words": phrases }))
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", response.body_mut().read_to_string().unwrap());
    let mut ws = server.connect(&alice, "phone");
    // 100,000 chars of clean words, then one phrase at the very end.
    let clean = "plain words only ".repeat(100_000 / 17);
    ws.result("send", json!({ "to_user": "bob", "text": clean }));
    let mut dirty = clean[..clean.len() - 40].to_string();
    dirty.push_str(" FORBIDDEN phrase number 9999!");
    assert!(dirty.chars().count() <= 100_000);
    let reply = ws.call("send", json!({ "to_user": "bob", "text": dirty }));
    assert_eq!(reply["error"]["code"], "forbidden_content", "{}", reply["error"]);
    let near_miss = format!("{} forbidden phrase number 99999", &clean[..1000]);
    ws.result("send", json!({ "to_user": "bob", "text": near_miss }));
}

#[test]
fn channel_creations_and_additions_past_the_rate_are_refused_from_any_device() {
    let server = TestServer::start_with(2, |config| config.channel_changes_per_min = 4);
    let alice = server.signup("alice");
    for name in ["bob", "carol", "dave"] {
        server.signup(name);
    }
    // Two devices (whichever cores they land on) share the user's bucket.
    let mut phone = server.connect(&alice, "phone");
    let mut laptop = server.connect(&alice, "laptop");
    let first = phone.result("channel.create", json!({ "name": "one", "members": ["bob"] }))["channel"]["id"].clone();
    laptop.result("channel.create", json!({ "name": "two", "members": [] }));
    phone.result("channel.add_members", json!({ "channel_id": first, "members": ["carol"] }));
    laptop.result("channel.create", json!({ "name": "three", "members": [] }));
    for (device, method, params) in [
        (&mut phone, "channel.create", json!({ "name": "four", "members": [] })),
        (&mut laptop, "channel.add_members", json!({ "channel_id": first, "members": ["dave"] })),
    ] {
        let reply = device.call(method, params);
        assert_eq!(reply["error"]["code"], "rate_limited", "{method}: {reply}");
        let retry_after_ms = reply["error"]["retry_after_ms"].as_u64().unwrap();
        assert!((1..=15_000).contains(&retry_after_ms), "four a minute: one every 15 s, {retry_after_ms}");
    }
    // Nothing half-done: dave was not added.
    let info = phone.result("channel.info", json!({ "channel_id": first }));
    assert_eq!(info["channel"]["members"].as_array().unwrap().len(), 3, "{info}");
    // Sends and other users are not limited by it.
    phone.result("send", json!({ "channel_id": first, "text": "still talking" }));
    let bob = server.signup("bob2");
    let mut bob_ws = server.connect(&bob, "phone");
    bob_ws.result("channel.create", json!({ "name": "bob's", "members": [] }));
}

#[test]
fn a_user_in_the_most_channels_allowed_joins_no_more() {
    let server = TestServer::start_with(2, |config| config.max_channels_per_user = 3);
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let mut bob_ws = server.connect(&bob, "phone");
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            alice_ws.result("channel.create", json!({ "name": format!("c{n}"), "members": [] }))["channel"]["id"]
                .clone(),
        );
    }
    // Alice is in three: she can neither make a fourth nor be added to one.
    let reply = alice_ws.call("channel.create", json!({ "name": "c3", "members": [] }));
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("alice"), "{reply}");
    let bobs = bob_ws.result("channel.create", json!({ "name": "bob's", "members": [] }))["channel"]["id"].clone();
    let reply = bob_ws.call("channel.add_members", json!({ "channel_id": bobs, "members": ["alice"] }));
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    let reply = bob_ws.call("channel.create", json!({ "name": "with alice", "members": ["alice"] }));
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    // Adding her where she is already a member is no change, and allowed.
    alice_ws.result("channel.add_members", json!({ "channel_id": ids[0], "members": ["bob"] }));
    alice_ws.result("channel.add_members", json!({ "channel_id": ids[0], "members": ["alice"] }));
    // Once she leaves one, there is room again.
    alice_ws.result("channel.leave", json!({ "channel_id": ids[1] }));
    bob_ws.result("channel.add_members", json!({ "channel_id": bobs, "members": ["alice"] }));
    let list = alice_ws.result("channel.list", json!({}));
    assert_eq!(list["channels"].as_array().unwrap().len(), 3, "{list}");
}
