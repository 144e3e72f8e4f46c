//! Presence over real WebSockets: online and offline with the grace period,
//! no flicker on a quick reconnect, subscriptions across shards, queries,
//! and the heartbeat timeout turning a silent user offline.

use std::time::{Duration, Instant};

use crate::common::{Client, TestServer, User};
use serde_json::{Value, json};

const GRACE_MS: u64 = 600;

fn server() -> TestServer {
    TestServer::start_with(3, |config| config.presence_grace_ms = GRACE_MS)
}

/// Users spread over at least two owner shards.
fn users_on_two_shards(server: &TestServer) -> (User, User) {
    let watcher = server.signup("watcher");
    for n in 0..32 {
        let user = server.signup(&format!("friend{n}"));
        if crate::common::owner(&user, 3) != crate::common::owner(&watcher, 3) {
            return (watcher, user);
        }
    }
    panic!("no user on another shard");
}

fn presence_of(client: &mut Client, username: &str) -> Value {
    let answer = client.result("presence.query", json!({ "users": [username] }));
    answer["presence"][0].clone()
}

/// Waits for the next `presence` event, or `None` after `wait`.
fn presence_event_within(client: &mut Client, wait: Duration) -> Option<Value> {
    client.next_event_within("presence", wait)
}

#[test]
fn online_then_offline_after_the_grace_period_without_flicker() {
    let server = server();
    let (watcher, friend) = users_on_two_shards(&server);
    let mut watching = server.connect(&watcher, "w");
    let answer = watching.result("presence.subscribe", json!({ "users": [friend.username] }));
    assert_eq!(answer["presence"][0]["status"], "offline");
    assert_eq!(answer["presence"][0]["username"], friend.username.as_str());
    assert_eq!(answer["presence"][0]["user_id"], friend.user_id.as_str());

    let before = crate::common::now_ms();
    let phone = server.connect(&friend, "phone");
    let online = watching.next_event("presence");
    assert_eq!(
        (online["status"].as_str(), online["username"].as_str()),
        (Some("online"), Some(friend.username.as_str()))
    );
    assert!(online["last_active_at"].as_u64().unwrap() >= before);

    // A second device, and a quick reconnect of the first: no event at all.
    let laptop = server.connect(&friend, "laptop");
    drop(phone);
    drop(laptop);
    std::thread::sleep(Duration::from_millis(GRACE_MS / 4));
    let mut phone = server.connect(&friend, "phone");
    assert_eq!(presence_event_within(&mut watching, Duration::from_millis(GRACE_MS * 2)), None, "no flicker");
    assert_eq!(presence_of(&mut watching, &friend.username)["status"], "online");

    // Activity moves last_active_at.
    std::thread::sleep(Duration::from_millis(50));
    let active = crate::common::now_ms();
    phone.result("heartbeat", json!({}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while presence_of(&mut watching, &friend.username)["last_active_at"].as_u64().unwrap() < active {
        assert!(Instant::now() < deadline, "last_active_at moved with the heartbeat");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The last device goes: offline, but only after the grace period.
    let gone = Instant::now();
    phone.close();
    let offline = watching.next_event("presence");
    assert_eq!(offline["status"], "offline");
    assert!(gone.elapsed() >= Duration::from_millis(GRACE_MS - 50), "{:?}", gone.elapsed());
    assert!(offline["last_active_at"].as_u64().unwrap() >= active);
    assert_eq!(presence_of(&mut watching, &friend.username)["status"], "offline");
}

#[test]
fn subscriptions_end_with_unsubscribe_and_queries_work_over_http() {
    let server = server();
    let (watcher, friend) = users_on_two_shards(&server);
    let mut watching = server.connect(&watcher, "w");
    watching.result("presence.subscribe", json!({ "users": [friend.username] }));
    assert_eq!(watching.result("presence.unsubscribe", json!({ "users": [friend.username] })), json!({}));
    let _friend = server.connect(&friend, "phone");
    assert_eq!(presence_event_within(&mut watching, Duration::from_millis(500)), None, "unsubscribed");
    assert_eq!(presence_of(&mut watching, &friend.username)["status"], "online");
    assert_eq!(watching.error_code("presence.query", json!({ "users": ["nobody_here"] })), "not_found");
    assert_eq!(watching.error_code("presence.subscribe", json!({ "users": "x" })), "bad_request");

    let (status, body) = server.post_auth(
        "/v1/rpc/presence.query",
        &watcher.token,
        &json!({ "users": [friend.username, watcher.username] }),
    );
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> =
        body["result"]["presence"].as_array().unwrap().iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["online", "online"]);
    let (status, _) =
        server.post_auth("/v1/rpc/presence.subscribe", &watcher.token, &json!({ "users": [friend.username] }));
    assert_eq!(status, 400, "subscribing needs a WebSocket");
}

#[test]
fn a_subscriber_that_goes_takes_its_subscription_along() {
    let server = server();
    let (watcher, friend) = users_on_two_shards(&server);
    let mut first = server.connect(&watcher, "first");
    first.result("presence.subscribe", json!({ "users": [friend.username] }));
    first.close();
    let mut second = server.connect(&watcher, "second");
    let _friend = server.connect(&friend, "phone");
    assert_eq!(presence_event_within(&mut second, Duration::from_millis(500)), None, "never subscribed");
    second.result("presence.subscribe", json!({ "users": [friend.username] }));
    let friend_two = server.connect(&friend, "tablet");
    drop(friend_two);
    drop(_friend);
    // An `online` may come first, if the friend's connect reached its owner
    // after the subscription did.
    let mut event = second.next_event("presence");
    if event["status"] == "online" {
        event = second.next_event("presence");
    }
    assert_eq!(event["status"], "offline");
}

#[test]
fn a_silent_user_is_closed_and_turns_offline() {
    let server = TestServer::start_with(2, |config| {
        config.presence_grace_ms = 100;
        config.heartbeat_ms = 300;
    });
    let watcher = server.signup("watcher");
    let friend = server.signup("friend");
    let mut watching = server.connect(&watcher, "w");
    let mut silent = server.connect(&friend, "phone");
    watching.result("presence.subscribe", json!({ "users": ["friend"] }));
    // The watcher keeps talking; the friend says nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let offline = loop {
        assert!(Instant::now() < deadline, "the silent user went offline");
        watching.result("heartbeat", json!({}));
        // An `online` may come first, if the friend's connect reached its
        // owner after the subscription did.
        if let Some(event) = presence_event_within(&mut watching, Duration::from_millis(100))
            && event["status"] == "offline"
        {
            break event;
        }
    };
    assert_eq!(offline["status"], "offline");
    assert_eq!(silent.close_code(), Some(4000));
}

#[test]
fn under_the_shared_scope_presence_is_shown_only_to_users_who_share_a_channel() {
    let server = TestServer::start_with(3, |config| {
        config.presence_grace_ms = GRACE_MS;
        config.presence_scope = chatgw_gateway::PresenceScope::Shared;
    });
    let (watcher, friend) = users_on_two_shards(&server);
    let stranger = server.signup("stranger");
    let pen_pal = server.signup("pen_pal");
    let mut watching = server.connect(&watcher, "w");

    // Nobody shares a channel yet: refused, naming the user, over WebSocket
    // and HTTP, for queries and subscriptions; the caller's own is shown.
    let refused = watching.call("presence.subscribe", json!({ "users": [friend.username] }));
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains(&friend.username), "{refused}");
    assert_eq!(
        watching.error_code("presence.query", json!({ "users": [watcher.username, stranger.username] })),
        "forbidden"
    );
    let (status, _) =
        server.post_auth("/v1/rpc/presence.query", &watcher.token, &json!({ "users": [friend.username] }));
    assert_eq!(status, 403);
    assert_eq!(presence_of(&mut watching, &watcher.username)["status"], "online");

    // A group channel, and a direct one made by a first message.
    watching.result("channel.create", json!({ "name": "pals", "members": [friend.username] }));
    watching.result("send", json!({ "to_user": pen_pal.username, "text": "hi" }));
    let answer = watching.result("presence.subscribe", json!({ "users": [friend.username, pen_pal.username] }));
    assert_eq!(answer["presence"].as_array().unwrap().len(), 2);
    let (status, body) = server.post_auth(
        "/v1/rpc/presence.query",
        &watcher.token,
        &json!({ "users": [friend.username, pen_pal.username] }),
    );
    assert_eq!(status, 200, "{body}");
    let _phone = server.connect(&friend, "phone");
    let online = watching.next_event("presence");
    assert_eq!(
        (online["username"].as_str(), online["status"].as_str()),
        (Some(friend.username.as_str()), Some("online"))
    );

    // The stranger still shares nothing with anyone.
    let mut strange = server.connect(&stranger, "s");
    assert_eq!(strange.error_code("presence.query", json!({ "users": [friend.username] })), "forbidden");
    assert_eq!(watching.error_code("presence.subscribe", json!({ "users": [stranger.username] })), "forbidden");
}

#[test]
fn a_subscribe_from_a_connection_that_went_leaves_no_watch_behind() {
    // The connection sends `presence.subscribe` and drops its socket in
    // the same breath: the session ends and leaves the registry before the
    // command runs. Before, the command still told the watched user's
    // owner to send this core its presence, a bit that no unsubscribe or
    // detach would ever clear.
    let server = TestServer::start_with(2, |config| config.presence_grace_ms = GRACE_MS);
    let watcher = server.signup("gone_watcher");
    let watched: Vec<User> = (0..8).map(|n| server.signup(&format!("gone_watched{n}"))).collect();
    let names: Vec<&str> = watched.iter().map(|user| user.username.as_str()).collect();
    for round in 0..30 {
        let mut client = server.connect(&watcher, &format!("d{round}"));
        client.send_command("presence.subscribe", json!({ "users": names }));
        // No close handshake: the TCP connection just goes.
        client.ws.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
    }
    let watched_users = || crate::common::sample_sum(&crate::common::scrape(&server), "chatgw_presence_watched_users");
    let deadline = Instant::now() + Duration::from_secs(10);
    while watched_users() > 0.0 {
        assert!(Instant::now() < deadline, "{} users still watched by no connection", watched_users());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A live subscription is still counted, and cleared when it goes.
    let mut live = server.connect(&watcher, "live");
    live.result("presence.subscribe", json!({ "users": names }));
    assert_eq!(watched_users(), names.len() as f64);
    live.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    while watched_users() > 0.0 {
        assert!(Instant::now() < deadline, "the live watch was not cleared");
        std::thread::sleep(Duration::from_millis(50));
    }
}
