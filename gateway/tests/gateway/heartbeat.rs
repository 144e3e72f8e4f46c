//! Liveness (protocol §3): a connection silent for 2 × `heartbeat_ms` is
//! closed with 4000; one that sends heartbeats stays.

use std::time::{Duration, Instant};

use crate::common::TestServer;
use serde_json::json;

#[test]
fn a_silent_connection_is_closed_4000_and_a_heartbeating_one_stays() {
    let server = TestServer::start_with(2, |config| config.heartbeat_ms = 200);
    let user = server.signup("hb_alice");
    let mut silent = server.connect(&user, "silent");
    let mut alive = server.connect(&user, "alive");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        alive.result("heartbeat", json!({}));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(silent.close_code(), Some(4000));
    // Six silent periods later, the heartbeating device still works.
    alive.result("heartbeat", json!({}));
    let peer = server.signup("hb_bob");
    let sent = alive.result("send", json!({ "to_user": "hb_bob", "text": "still here" }));
    assert_eq!(sent["duplicate"], false);
    drop(peer);
}
