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
