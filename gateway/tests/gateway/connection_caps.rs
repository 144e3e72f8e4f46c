//! The connection caps, each refused at the upgrade with an HTTP status a
//! client can read, and each making room again when a connection ends.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Client, TestServer, User, users};

/// Connects, retrying for a while: a closed connection's room comes back
/// once the server has seen it go.
fn connect_within(server: &TestServer, user: &User, device: &str, within: Duration) -> Client {
    let deadline = Instant::now() + within;
    loop {
        match server.try_connect(Some(&user.token), device) {
            Ok(client) => return client,
            Err(status) => assert!(Instant::now() < deadline, "still refused ({status})"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_user_holds_at_most_its_devices() {
    let server = TestServer::start_with(2, |config| config.max_devices_per_user = 2);
    let people = users(&server, "devices", 2);
    let mut first = server.connect(&people[0], "one");
    let _second = server.connect(&people[0], "two");
    assert_eq!(server.try_connect(Some(&people[0].token), "three").err(), Some(429));
    let _other = server.connect(&people[1], "one");
    first.close();
    let _third = connect_within(&server, &people[0], "three", Duration::from_secs(5));
}

#[test]
fn one_address_holds_at_most_its_connections() {
    let server = TestServer::start_with(2, |config| config.max_connections_per_ip = 3);
    let people = users(&server, "address", 4);
    let mut open: Vec<Client> = people[..3].iter().map(|user| server.connect(user, "d")).collect();
    assert_eq!(server.try_connect(Some(&people[3].token), "d").err(), Some(429));
    open[0].close();
    let _fourth = connect_within(&server, &people[3], "d", Duration::from_secs(5));
}

#[test]
fn new_connections_from_one_address_come_at_their_rate() {
    let server = TestServer::start_with(2, |config| config.max_new_connections_per_ip_per_s = 5);
    let user = server.signup("rate");
    // A burst of twice the rate, then refused until a token comes.
    let mut open = Vec::new();
    let mut refused = None;
    for n in 0..20 {
        match server.try_connect(Some(&user.token), &format!("d{n}")) {
            Ok(client) => open.push(client),
            Err(status) => {
                refused = Some((n, status));
                break;
            }
        }
    }
    let (at, status) = refused.expect("a burst of 20 at once was let in");
    assert_eq!(status, 429);
    assert!((10..=11).contains(&at), "refused at connection {at}");
    let _later = connect_within(&server, &user, "later", Duration::from_secs(3));
}

#[test]
fn the_process_cap_refuses_with_503_and_health_still_answers() {
    let server = TestServer::start_with(2, |config| config.max_connections = Some(2));
    let people = users(&server, "process", 3);
    let _open: Vec<Client> = people[..2].iter().map(|user| server.connect(user, "d")).collect();
    assert_eq!(server.try_connect(Some(&people[2].token), "d").err(), Some(503));
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn a_second_connection_of_a_device_replaces_the_first_wherever_it_is() {
    let server = TestServer::start_with(2, |config| config.max_devices_per_user = 1);
    let user = server.signup("replaced");
    // Several rounds, so that the two land on the same core and on
    // different ones.
    let mut current = server.connect(&user, "phone");
    for round in 0..6 {
        let mut newer = server.connect(&user, "phone");
        assert_eq!(current.close_code(), Some(4002), "round {round}: the older one is replaced");
        // The newer one works, and the cap of one device let it in.
        newer.result("heartbeat", json!({}));
        current = newer;
    }
    // Another device still meets the cap.
    assert_eq!(server.try_connect(Some(&user.token), "laptop").err(), Some(429));
}
