//! A burst of first-time direct messages across every pair of shards: each
//! makes the pair's direct channel at the pair's owner while the others do
//! the same, so no owner may wait on another while it holds a permit.

use std::time::{Duration, Instant};

use crate::common::{TestServer, users};
use serde_json::json;

#[test]
fn thousands_of_first_direct_messages_at_once_all_complete() {
    // Few calls in flight per shard, so that a cycle of owners each
    // holding its permits while waiting on another would show at once.
    let server = TestServer::start_with(4, |config| config.calls_in_flight_per_shard_max = 4);
    let count = 100;
    let people = users(&server, "burst", count);
    let started = Instant::now();
    let results: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..count)
            .map(|me| {
                let (server, people) = (&server, &people);
                scope.spawn(move || {
                    let mut client = server.connect(&people[me], "d");
                    // Pipelined: every first message to each later user at once.
                    let targets: Vec<usize> = (me + 1..count).collect();
                    for target in &targets {
                        client.send_command(
                            "send",
                            json!({ "to_user": people[*target].username, "text": format!("first to {target}") }),
                        );
                    }
                    let mut answered = 0;
                    for _ in &targets {
                        let reply = client.next_reply();
                        assert!(reply.get("result").is_some(), "user {me}: {reply}");
                        answered += 1;
                    }
                    (answered, targets.len())
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    let answered: usize = results.iter().map(|(answered, _)| answered).sum();
    assert_eq!(answered, count * (count - 1) / 2, "every first message answered");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    // One direct channel per pair, whoever raced to make it.
    let mut first = server.connect(&people[0], "check");
    let channels = first.result("channel.list", json!({}));
    assert_eq!(channels["channels"].as_array().unwrap().len(), count - 1);
}
