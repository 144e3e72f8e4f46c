//! The send acknowledgement of an unrelated connection, calm, during a
//! login flood, and while the push webhook hangs, side by side on one
//! server (`--durability fsync`, one shard: every group commit runs off
//! the core on its executor's one blocking thread, where password hashing
//! and webhook POSTs used to run too). Prints the figures; fails only if a
//! phase's p99 shows a stall (a hash or a POST held the commits).
//!
//! `CHATGW_ACK_SENDS` sets the sends per phase (default 100). The figures
//! of the hostile-clients issue:
//! `CHATGW_ACK_SENDS=2000 cargo test --release -p chatgw-gateway --test gateway ack_latency -- --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Client, TestServer, hanging_webhook};

fn sends() -> usize {
    std::env::var("CHATGW_ACK_SENDS").ok().and_then(|count| count.parse().ok()).unwrap_or(100)
}

/// `count` sends, one at a time; their acknowledgement times, sorted.
fn acknowledgements(ws: &mut Client, to: &str, phase: &str, count: usize) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..count)
        .map(|n| {
            let started = Instant::now();
            ws.result("send", json!({ "to_user": to, "text": format!("{phase} {n}") }));
            started.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[test]
fn acknowledgements_hold_during_a_login_flood_and_while_the_webhook_hangs() {
    // A webhook that takes every connection and never answers.
    let (webhook, held) = hanging_webhook();
    let server = TestServer::start_with(1, |config| {
        config.durability = chatgw_gateway::Durability::Fsync;
        config.push_webhook = Some(webhook);
        config.presence_grace_ms = 100;
    });
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    server.signup("victim");
    let mut alice_ws = server.connect(&alice, "phone");
    let count = sends();
    let mut figures = Vec::new();

    // Calm: bob is online, so no pushes.
    let mut bob_ws = server.connect(&bob, "phone");
    figures.push(("calm", acknowledgements(&mut alice_ws, "bob", "calm", count)));

    // A login flood: 32 clients guessing the victim's password.
    let flooding = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicU64::new(0));
    let guessers: Vec<_> = (0..32)
        .map(|n| {
            let (flooding, attempts, url) = (flooding.clone(), attempts.clone(), server.url("/v1/login"));
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let deadline = Instant::now() + Duration::from_secs(300);
                while flooding.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let guess = json!({ "username": "victim", "password": format!("guess number {n}") });
                    let _ = agent.post(&url).send_json(guess);
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    figures.push(("login flood", acknowledgements(&mut alice_ws, "bob", "flood", count)));
    flooding.store(false, Ordering::Relaxed);
    for guesser in guessers {
        guesser.join().unwrap();
    }

    // The webhook hangs: bob is offline, so each message owes him a push.
    bob_ws.close();
    drop(bob_ws);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = server.post_auth("/v1/rpc/presence.query", &alice.token, &json!({ "users": ["bob"] }));
        if body["result"]["presence"][0]["status"] == "offline" {
            break;
        }
        assert!(Instant::now() < deadline, "bob goes offline: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    figures.push(("webhook hangs", acknowledgements(&mut alice_ws, "bob", "hang", count)));
    let deadline = Instant::now() + Duration::from_secs(15);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the pushes reach the hanging webhook");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And more sends while a POST hangs for sure.
    let mut more = acknowledgements(&mut alice_ws, "bob", "hanging", count);
    figures.last_mut().unwrap().1.append(&mut more);
    figures.last_mut().unwrap().1.sort();

    for (phase, times) in &figures {
        eprintln!(
            "ack {phase}: p50 {:?}, p99 {:?}, max {:?} over {} sends",
            quantile(times, 0.5),
            quantile(times, 0.99),
            times.last().unwrap(),
            times.len()
        );
    }
    eprintln!("login attempts during the flood: {}", attempts.load(Ordering::Relaxed));
    for (phase, times) in &figures {
        // Not a speed figure: a commit behind a hash or a 10 s POST fails.
        let p99 = quantile(times, 0.99);
        assert!(p99 < Duration::from_secs(1), "{phase}: p99 {p99:?}");
    }
}
