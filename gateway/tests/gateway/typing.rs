//! `typing` over real WebSockets on four shards (more than the cores): the
//! other members' devices see `start` once and the server's own `stop`
//! after the expiry, or the typist's `stop`; the typist's other devices
//! see nothing; a message ends typing without a `stop`; a vanished device
//! does not leave anyone typing; strangers and bad params are refused; the
//! rate limit counts it; and `/v1/rpc/typing` does the same over HTTP.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, TestServer, User, users_on_every_shard};

const SHARDS: u16 = 4;
const TTL_MS: u64 = 500;
/// Long enough for any event of a change to have arrived.
const QUIET: Duration = Duration::from_millis(300);

fn server() -> TestServer {
    TestServer::start_with(SHARDS, |config| config.typing_ttl_ms = TTL_MS)
}

/// A group of `creator` with `others`, every member's event taken.
fn group(creator: &mut Client, others: &[&User], watching: &mut [&mut Client]) -> String {
    let names: Vec<&str> = others.iter().map(|user| user.username.as_str()).collect();
    let made = creator.result("channel.create", json!({ "name": "crew", "members": names }));
    for client in watching.iter_mut() {
        client.next_event("channel");
    }
    made["channel"]["id"].as_str().unwrap().to_string()
}

fn typing(client: &mut Client, channel: &str, state: &str) {
    assert_eq!(client.result("typing", json!({ "channel_id": channel, "state": state })), json!({}));
}

fn typing_event(client: &mut Client) -> Value {
    client.next_event("typing")
}

fn no_typing_event(client: &mut Client, wait: Duration, why: &str) {
    if let Some(event) = client.next_event_within("typing", wait) {
        panic!("{why}: got {event}");
    }
}

#[test]
fn the_other_members_see_start_once_and_the_servers_own_stop() {
    let server = server();
    // Members owned by every shard, so that the channel's owner reaches
    // members' cores over the mesh as well as its own.
    let people = users_on_every_shard(&server, "ty", 4, SHARDS);
    let (ann, others) = (&people[0], &people[1..]);
    let mut phone = server.connect(ann, "phone");
    let mut laptop = server.connect(ann, "laptop");
    let mut clients: Vec<Client> = others.iter().map(|user| server.connect(user, "phone")).collect();
    let mut watching: Vec<&mut Client> = clients.iter_mut().collect();
    watching.push(&mut laptop);
    let channel = group(&mut phone, &others.iter().collect::<Vec<_>>(), &mut watching);

    let started = Instant::now();
    typing(&mut phone, &channel, "start");
    for client in &mut clients {
        let event = typing_event(client);
        assert_eq!(
            event,
            json!({ "channel_id": channel, "user_id": ann.user_id, "username": ann.username, "state": "start" })
        );
    }
    // Still typing: a second start only moves the expiry.
    std::thread::sleep(Duration::from_millis(TTL_MS / 2));
    let renewed = Instant::now();
    typing(&mut phone, &channel, "start");
    for client in &mut clients {
        let stop = typing_event(client);
        assert_eq!(stop["state"], "stop", "the next event is the expiry's stop, not a second start: {stop}");
        assert_eq!(stop["user_id"], ann.user_id.as_str());
        let after = renewed.elapsed();
        assert!(after >= Duration::from_millis(TTL_MS - 50), "expired {after:?} after the last start");
        assert!(after < Duration::from_secs(5), "expired {after:?} after the last start");
    }
    assert!(started.elapsed() >= Duration::from_millis(TTL_MS * 3 / 2 - 50), "the first start did not end it");
    no_typing_event(&mut laptop, QUIET, "the typist's other device sees nothing of its own typing");
    no_typing_event(&mut phone, Duration::ZERO, "nor does the typing device");
}

#[test]
fn a_stop_or_a_message_ends_typing_and_a_vanished_device_expires() {
    let server = server();
    let people = users_on_every_shard(&server, "ts", 2, SHARDS);
    let (ann, bob) = (&people[0], &people[1]);
    let mut phone = server.connect(ann, "phone");
    let mut watcher = server.connect(bob, "phone");
    let channel = group(&mut phone, &[bob], &mut [&mut watcher]);

    // An explicit stop: one stop event, and nothing at the expiry.
    typing(&mut phone, &channel, "start");
    assert_eq!(typing_event(&mut watcher)["state"], "start");
    typing(&mut phone, &channel, "stop");
    assert_eq!(typing_event(&mut watcher)["state"], "stop");
    typing(&mut phone, &channel, "stop");
    no_typing_event(&mut watcher, Duration::from_millis(TTL_MS) + QUIET, "a stop of no one typing, or a late expiry");

    // A message ends typing: the message comes, and no stop after it.
    typing(&mut phone, &channel, "start");
    assert_eq!(typing_event(&mut watcher)["state"], "start");
    phone.result("send", json!({ "channel_id": channel, "text": "done typing" }));
    assert_eq!(watcher.next_event("message")["text"], "done typing");
    no_typing_event(&mut watcher, Duration::from_millis(TTL_MS) + QUIET, "the message ended it");
    // Typing again after the message is a new start.
    typing(&mut phone, &channel, "start");
    assert_eq!(typing_event(&mut watcher)["state"], "start");
    typing(&mut phone, &channel, "stop");
    assert_eq!(typing_event(&mut watcher)["state"], "stop");

    // The typing device vanishes mid-word (no close handshake): the
    // server's expiry still ends it.
    typing(&mut phone, &channel, "start");
    assert_eq!(typing_event(&mut watcher)["state"], "start");
    drop(phone);
    let stop = watcher.next_event("typing");
    assert_eq!((stop["state"].as_str(), stop["user_id"].as_str()), (Some("stop"), Some(ann.user_id.as_str())));
}

#[test]
fn strangers_unknown_channels_and_bad_params_are_refused() {
    let server = server();
    let people = users_on_every_shard(&server, "tr", 3, SHARDS);
    let (ann, bob, eve) = (&people[0], &people[1], &people[2]);
    let mut phone = server.connect(ann, "phone");
    let mut watcher = server.connect(bob, "phone");
    let mut stranger = server.connect(eve, "phone");
    let channel = group(&mut phone, &[bob], &mut [&mut watcher]);
    let refused = stranger.call("typing", json!({ "channel_id": channel, "state": "start" }));
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert_eq!(refused["error"]["message"], "not a member of this channel");
    assert_eq!(stranger.error_code("typing", json!({ "channel_id": "12345", "state": "start" })), "not_found");
    assert_eq!(phone.error_code("typing", json!({ "channel_id": channel, "state": "maybe" })), "bad_request");
    assert_eq!(phone.error_code("typing", json!({ "channel_id": channel })), "bad_request");
    no_typing_event(&mut watcher, QUIET, "nothing refused reaches a member");

    // In a direct channel, every device of the other user hears it.
    let direct = phone.result("send", json!({ "to_user": bob.username, "text": "hi" }))["channel_id"].clone();
    let mut tablet = server.connect(bob, "tablet");
    typing(&mut phone, direct.as_str().unwrap(), "start");
    for device in [&mut watcher, &mut tablet] {
        let event = typing_event(device);
        assert_eq!((event["channel_id"].clone(), event["state"].clone()), (direct.clone(), json!("start")));
    }

    // Over HTTP, the same command with the same answers.
    let (status, body) =
        server.post_auth("/v1/rpc/typing", &bob.token, &json!({ "channel_id": direct, "state": "start" }));
    assert_eq!((status, body), (200, json!({ "result": {} })));
    assert_eq!(typing_event(&mut phone)["username"], bob.username.as_str());
    let (status, body) =
        server.post_auth("/v1/rpc/typing", &eve.token, &json!({ "channel_id": direct, "state": "start" }));
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
}

#[test]
fn typing_counts_toward_the_senders_rate_limit() {
    let server = TestServer::start_with(SHARDS, |config| {
        config.typing_ttl_ms = TTL_MS;
        config.rate_limit_per_s = 1;
        config.rate_burst = 3;
    });
    let people = users_on_every_shard(&server, "tl", 2, SHARDS);
    let (ann, bob) = (&people[0], &people[1]);
    let mut phone = server.connect(ann, "phone");
    let mut watcher = server.connect(bob, "phone");
    let channel = group(&mut phone, &[bob], &mut [&mut watcher]);
    // The create took no token of the send bucket; three commands do.
    typing(&mut phone, &channel, "start");
    typing(&mut phone, &channel, "stop");
    phone.result("send", json!({ "channel_id": channel, "text": "one" }));
    let refused = phone.call("typing", json!({ "channel_id": channel, "state": "start" }));
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    assert!(refused["error"]["retry_after_ms"].as_u64().is_some_and(|wait| wait > 0 && wait <= 1000), "{refused}");
    assert_eq!(phone.error_code("send", json!({ "channel_id": channel, "text": "two" })), "rate_limited");
}
