//! Bad input and load against a real server: error replies that keep the
//! connection, closes for what breaks the protocol, refusals before the
//! upgrade, a slow reader hitting its bound, and a graceful stop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{TestServer, users};
use serde_json::json;
use tungstenite::Message;

#[test]
fn bad_commands_get_error_replies_and_the_connection_stays() {
    let server = TestServer::start(2);
    let people = users(&server, "bad", 2);
    let mut ws = server.connect(&people[0], "d");
    let cases = [
        ("not json at all", json!(null)),
        ("[1,2,3]", json!(null)),
        (r#"{"id":1}"#, json!(1)),
        (r#"{"id":2,"method":"no.such.method","params":{}}"#, json!(2)),
        (r#"{"id":3,"method":"send","params":{}}"#, json!(3)),
        (r#"{"id":4,"method":"send","params":{"channel_id":7,"text":"x"}}"#, json!(4)),
        (r#"{"id":5,"method":"send","params":{"channel_id":"abc","text":"x"}}"#, json!(5)),
        (r#"{"id":6,"method":"history","params":{"channel_id":"1","limit":"ten"}}"#, json!(6)),
        (r#"{"id":7,"method":"sync","params":{"since":"1","limit":1001}}"#, json!(7)),
        (r#"{"id":8,"method":"send","params":{"to_user":"x","text":""}}"#, json!(8)),
        (r#"{"id":9.5,"method":"heartbeat"}"#, json!(null)),
    ];
    for (frame, id) in cases {
        ws.send_text(frame);
        let reply = ws.next_reply();
        assert_eq!(reply["id"], id, "{frame}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{frame}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().len() > 3);
    }
    // Unknown fields are ignored.
    ws.send_text(r#"{"id":20,"method":"heartbeat","params":{},"extra":{"deep":[1]}}"#);
    assert_eq!(ws.next_reply()["result"], json!({}));
    // A binary frame of JSON is a command too; of non-UTF-8 an error.
    ws.ws.send(Message::binary(br#"{"id":21,"method":"heartbeat"}"#.to_vec())).unwrap();
    assert_eq!(ws.next_reply()["id"], 21);
    ws.ws.send(Message::binary(vec![0xff, 0xfe])).unwrap();
    assert_eq!(ws.next_reply()["error"]["code"], "bad_request");
    // A ping is answered with a pong and counts as activity.
    ws.ws.send(Message::Ping(b"are you there".to_vec().into())).unwrap();
    loop {
        match ws.ws.read().unwrap() {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Message::Text(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ws.result("heartbeat", json!({})), json!({}));
}

#[test]
fn text_above_the_limit_is_message_too_long_counted_in_chars() {
    let server = TestServer::start_with(1, |config| config.max_message_chars = 1000);
    let people = users(&server, "long", 2);
    let mut ws = server.connect(&people[0], "d");
    let exactly = "é".repeat(1000); // 2000 bytes, 1000 chars
    let ok = ws.result("send", json!({ "to_user": people[1].username, "text": exactly }));
    assert_eq!(ok["duplicate"], false);
    assert_eq!(
        ws.error_code("send", json!({ "to_user": people[1].username, "text": "é".repeat(1001) })),
        "message_too_long"
    );
    assert_eq!(ws.result("heartbeat", json!({})), json!({}));
}

#[test]
fn a_message_of_the_default_maximum_fits_and_a_bigger_frame_closes_1009() {
    let server = TestServer::start(2);
    let people = users(&server, "huge", 2);
    let mut ws = server.connect(&people[0], "d");
    // 100,000 chars that JSON escapes as \u00XX: 600 KB of frame, accepted.
    let text: String = std::iter::repeat_n('\u{1}', 100_000).collect();
    let sent = ws.result("send", json!({ "to_user": people[1].username, "text": text }));
    let history = ws.result("history", json!({ "channel_id": sent["channel_id"], "limit": 1 }));
    assert_eq!(history["messages"][0]["text"].as_str().unwrap().chars().count(), 100_000);
    // A frame above 2 MiB closes with 1009 (the server may close before
    // taking all of it, so the send itself may fail).
    let _ = ws.ws.send(tungstenite::Message::text("x".repeat((2 << 20) + 1)));
    assert_eq!(ws.close_code(), Some(1009));
}

#[test]
fn upgrades_without_a_valid_token_get_401_before_the_upgrade() {
    let server = TestServer::start(1);
    let alice = server.signup("tok_alice");
    assert_eq!(server.try_connect(None, "d").err(), Some(401));
    assert_eq!(server.try_connect(Some("garbage"), "d").err(), Some(401));
    let forged =
        chatgw_gateway::TokenKeys::new(b"another secret").mint(alice.user_id.parse().unwrap(), "tok_alice", 60, 0).0;
    assert_eq!(server.try_connect(Some(&forged), "d").err(), Some(401));
    // A token of the server's own secret for a user that does not exist.
    let secret = server.handle.as_ref().unwrap().jwt_secret.clone();
    let ghost = chatgw_gateway::TokenKeys::new(secret.as_bytes()).mint(chatgw_idgen::UserId(12345), "ghost", 60, 0).0;
    assert_eq!(server.try_connect(Some(&ghost), "d").err(), Some(401));
    assert_eq!(server.try_connect(Some(&alice.token), "bad/device").err(), Some(400));
    // The token in the query string works too (browsers).
    let stream = TcpStream::connect(server.addr()).unwrap();
    let url = format!("ws://{}/v1/ws?device=web&token={}", server.addr(), alice.token);
    let (mut ws, _) = tungstenite::client(url, stream).unwrap();
    let hello: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["data"]["heartbeat_ms"], 15000);
    assert_eq!(hello["data"]["max_message_chars"], 100000);
    assert_eq!(hello["data"]["node"], "test-node");
}

#[test]
fn raw_protocol_violations_close_the_connection() {
    let server = TestServer::start(1);
    let alice = server.signup("raw_alice");
    for (frame, expected) in [
        (vec![0x81u8, 0x02, b'h', b'i'], 1002u16), // unmasked client frame
        (vec![0x83, 0x80, 0, 0, 0, 0], 1002),      // reserved opcode
        // Closes (zero masks): 1005 is for "no code" and may not be sent,
        // a reason must be UTF-8, and a valid close gets 1000 (Autobahn
        // 7.9.x and 7.5.1 found the first two answered 1000).
        (vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed], 1002),
        (vec![0x88, 0x84, 0, 0, 0, 0, 0x03, 0xe8, 0xff, 0xfe], 1007),
        (vec![0x88, 0x82, 0, 0, 0, 0, 0x0f, 0xa0], 1000), // 4000
    ] {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = format!(
            "GET /v1/ws?device=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
            alice.token
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(&frame).unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        // The last frame is a close with the code.
        let close = received.windows(2).rposition(|pair| pair[0] == 0x88).expect("a close frame");
        let code = u16::from_be_bytes([received[close + 2], received[close + 3]]);
        assert_eq!(code, expected, "{text}");
    }
}

#[test]
fn a_client_that_stops_reading_is_closed_1008_and_others_are_unaffected() {
    let server = TestServer::start(2);
    let people = users(&server, "slow", 3);
    let mut sender = server.connect(&people[0], "d");
    let slow = server.connect(&people[1], "d");
    let mut other = server.connect(&people[2], "d");
    let group = sender
        .result("channel.create", json!({ "name": "flood", "members": [people[1].username, people[2].username] }));
    let channel_id = group["channel"]["id"].as_str().unwrap().to_string();
    // ~40 MB to a reader that reads nothing: far past socket buffers and the
    // 4 MiB queue bound. Bounded in count and time.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..450 {
        // Distinct texts: the same one over and over would be a flood.
        let text = format!("{n:05}{}", "y".repeat(90_000 - 5));
        sender.result("send", json!({ "channel_id": channel_id, "text": text }));
        let event = other.next_event("message");
        assert_eq!(event["text"].as_str().unwrap().len(), 90_000);
        assert!(Instant::now() < deadline);
    }
    // The slow reader now reads: some messages, then the close 1008.
    let mut slow = slow;
    assert_eq!(slow.close_code(), Some(1008));
    // The rest of the server is fine.
    assert_eq!(sender.result("heartbeat", json!({})), json!({}));
    // It recovers with sync after reconnecting.
    // Pages are cut at the reply's byte bound: 40 MB comes in several.
    let mut again = server.connect(&people[1], "d");
    let (mut since, mut total, mut pages) = ("0".to_string(), 0, 0);
    loop {
        let page = again.result("sync", json!({ "since": since, "limit": 1000 }));
        let messages = page["messages"].as_array().unwrap();
        total += messages.len();
        pages += 1;
        if page["has_more"] == false {
            break;
        }
        since = messages.last().unwrap()["id"].as_str().unwrap().to_string();
        assert!(pages < 100);
    }
    assert_eq!(total, 450);
    assert!(pages > 1, "one reply does not carry 40 MB");
}

#[test]
fn stop_closes_sessions_with_1001_and_returns() {
    let mut server = TestServer::start(2);
    let people = users(&server, "stop", 2);
    let mut alice = server.connect(&people[0], "d");
    let mut bob = server.connect(&people[1], "d");
    alice.result("send", json!({ "to_user": people[1].username, "text": "last words" }));
    let addr = server.addr();
    server.stop();
    assert_eq!(alice.close_code(), Some(1001));
    assert_eq!(bob.close_code(), Some(1001));
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn health_and_readiness_and_unknown_paths() {
    let server = TestServer::start(2);
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    let (status, body) = server.get("/no/such/path");
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
    let (status, body) = server.post("/v1/signup", &json!({ "username": "ab", "password": "long enough" }));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    let (status, _) = server.post("/v1/signup", &json!({ "username": "short_pw", "password": "1234567" }));
    assert_eq!(status, 400);
    server.signup("dup_name");
    let (status, body) = server.post("/v1/signup", &json!({ "username": "dup_name", "password": "long enough" }));
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("username_taken")));
    let (status, body) = server.post("/v1/login", &json!({ "username": "dup_name", "password": "wrong password" }));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = server.post("/v1/login", &json!({ "username": "dup_name", "password": "correct horse" }));
    assert_eq!(status, 200);
    assert_eq!(body["gateway"]["ws_url"], format!("ws://{}/v1/ws", server.addr()));
}

#[test]
fn a_request_body_trickled_byte_by_byte_meets_its_deadline() {
    let server = TestServer::start_with(1, |config| config.http_body_timeout_ms = 1_500);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let head =
        "POST /v1/login HTTP/1.1\r\nHost: chatgw\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // A byte every 300 ms: each one would reset an idle timer.
    while started.elapsed() < Duration::from_secs(8) {
        if stream.write_all(b" ").is_err() {
            break;
        }
        let mut buffer = [0u8; 4096];
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => answer.extend_from_slice(&buffer[..count]),
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock || error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "answered: {answer:?}");
    assert!(answer.contains("did not arrive within 1500 ms"), "{answer}");
    assert!(elapsed < Duration::from_secs(6), "the connection stayed open {elapsed:?}");
}

#[test]
fn one_read_of_many_frames_starts_at_most_64_commands() {
    // A slow disk: each group commit waits 300 ms, so sends pile up.
    let server = TestServer::start_with(1, |config| config.fault_commit_delay_ms = 300);
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let people = users(&server, "piled", 2);
    let mut ws = server.connect(&people[0], "phone");
    let channel = ws.result("send", json!({ "to_user": people[1].username, "text": "first" }))["channel_id"].clone();
    // 200 sends in one write: one read on the server's side.
    for n in 0..200 {
        let frame =
            json!({ "id": 1_000 + n, "method": "send", "params": { "channel_id": channel, "text": format!("m{n}") } });
        ws.ws.write(Message::text(frame.to_string())).unwrap();
    }
    ws.ws.flush().unwrap();
    let mut peak = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        let mut response = server
            .http
            .get(server.url("/admin/v1/connections"))
            .header("Authorization", format!("Bearer {admin}"))
            .call()
            .unwrap();
        let page: serde_json::Value = response.body_mut().read_json().unwrap();
        for conn in page["connections"].as_array().unwrap() {
            if conn["username"] == people[0].username.as_str() {
                peak = peak.max(conn["commands_in_flight"].as_u64().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(peak <= 64, "{peak} commands in flight at once");
    assert!(peak >= 32, "the sends did pile up: {peak}");
    let mut answered = 0;
    while answered < 200 {
        let reply = ws.next_reply();
        assert!(reply.get("result").is_some(), "{reply}");
        answered += 1;
    }
}
