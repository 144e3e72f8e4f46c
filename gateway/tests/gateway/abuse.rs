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
