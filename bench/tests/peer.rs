//! The comparison's peer server as a real process on an ephemeral loopback
//! port, driven by real HTTP and WebSocket clients: the protocol subset the
//! benchmarks use behaves as chatgw's contract says.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

struct Peer {
    child: Child,
    addr: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(secret: &str) -> Peer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgw-peer"))
        .args(["--listen", "127.0.0.1:0", "--jwt-secret", secret, "--threads", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatgw-peer starts");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().expect("the address it listens on").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    Peer { child, addr }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn signup(peer: &Peer, username: &str) -> String {
    let mut response = agent()
        .post(format!("http://{}/v1/signup", peer.addr))
        .send_json(json!({ "username": username, "password": "a-long-password" }))
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.body_mut().read_json().unwrap();
    body["token"].as_str().unwrap().to_string()
}

type Ws = WebSocket<TcpStream>;

fn connect(peer: &Peer, token: &str, device: &str) -> Result<(Ws, Value), tungstenite::Error> {
    let mut request = format!("ws://{}/v1/ws?device={device}", peer.addr).into_client_request()?;
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let stream = TcpStream::connect(&peer.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (mut ws, _) = tungstenite::client(request, stream).map_err(|error| match error {
        tungstenite::HandshakeError::Failure(error) => error,
        tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
    })?;
    let hello = read(&mut ws);
    Ok((ws, hello))
}

fn read(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn command(ws: &mut Ws, id: u64, method: &str, params: Value) {
    ws.send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string())).unwrap();
}

/// Reads frames until the reply to `id`, keeping the events seen before it.
fn reply(ws: &mut Ws, id: u64, events: &mut Vec<Value>) -> Value {
    loop {
        let frame = read(ws);
        if frame["id"] == id {
            return frame;
        }
        events.push(frame);
    }
}

#[test]
fn the_peer_serves_signup_direct_and_group_messages_history_and_refusals() {
    let peer = start("test-secret");
    let alice = signup(&peer, "alice");
    let bob = signup(&peer, "bob");
    let carol = signup(&peer, "carol");
    let taken = agent()
        .post(format!("http://{}/v1/signup", peer.addr))
        .send_json(json!({ "username": "alice", "password": "a-long-password" }))
        .unwrap();
    assert_eq!(taken.status(), 409);
    assert!(connect(&peer, "forged.token.here", "x").is_err(), "a bad token is refused before the upgrade");

    let (mut a, hello) = connect(&peer, &alice, "phone").unwrap();
    assert_eq!((hello["event"].as_str(), hello["data"]["username"].as_str()), (Some("hello"), Some("alice")));
    assert_eq!(hello["data"]["heartbeat_ms"], 15_000);
    let (mut b, _) = connect(&peer, &bob, "laptop").unwrap();
    let (mut c, _) = connect(&peer, &carol, "tablet").unwrap();

    // 1:1: the reply, and the event on both sides (the sender's own too).
    command(&mut a, 1, "send", json!({ "to_user": "bob", "text": "hi bob" }));
    let mut events = Vec::new();
    let sent = reply(&mut a, 1, &mut events);
    let direct = sent["result"]["channel_id"].as_str().unwrap().to_string();
    assert!(sent["result"]["message_id"].is_string());
    assert!(
        events.iter().any(|event| event["event"] == "message" && event["data"]["text"] == "hi bob"),
        "the sending device gets the message too: {events:?}"
    );
    let delivered = read(&mut b);
    assert_eq!((delivered["event"].as_str(), delivered["data"]["sender"].as_str()), (Some("message"), Some("alice")));
    assert_eq!(delivered["data"]["channel_id"], direct.as_str());

    // A group: every member hears of it and gets its messages.
    command(&mut a, 2, "channel.create", json!({ "name": "team", "members": ["bob", "carol"] }));
    let mut events = Vec::new();
    let created = reply(&mut a, 2, &mut events);
    let group = created["result"]["channel"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["result"]["channel"]["kind"], "group");
    assert_eq!(read(&mut c)["data"]["kind"], "added");
    assert_eq!(read(&mut b)["event"], "channel");
    command(&mut c, 3, "send", json!({ "channel_id": group, "text": "hello team" }));
    let mut events = Vec::new();
    assert!(reply(&mut c, 3, &mut events)["result"]["message_id"].is_string());
    assert_eq!(read(&mut b)["data"]["text"], "hello team");

    // History, ascending; only members read it.
    command(&mut b, 4, "history", json!({ "channel_id": direct }));
    let mut events = Vec::new();
    let history = reply(&mut b, 4, &mut events);
    assert_eq!(history["result"]["messages"][0]["text"], "hi bob");
    command(&mut c, 5, "history", json!({ "channel_id": direct }));
    let mut events = Vec::new();
    assert_eq!(reply(&mut c, 5, &mut events)["error"]["code"], "forbidden");

    // Refusals keep the connection open.
    a.send(Message::text("not json")).unwrap();
    // (Alice has the group's message queued before the answer.)
    let refused = loop {
        let frame = read(&mut a);
        if frame.get("error").is_some() {
            break frame;
        }
        assert_eq!(frame["data"]["text"], "hello team");
    };
    assert_eq!((refused["id"].clone(), refused["error"]["code"].as_str()), (Value::Null, Some("bad_request")));
    command(&mut a, 6, "sync", json!({ "since": "0" }));
    let mut events = Vec::new();
    assert_eq!(reply(&mut a, 6, &mut events)["error"]["code"], "bad_request", "the peer serves a subset");
    command(&mut a, 7, "heartbeat", json!({}));
    let mut events = Vec::new();
    assert_eq!(reply(&mut a, 7, &mut events)["result"], json!({}));
}

#[test]
fn tokens_stay_valid_across_a_restart_with_the_same_secret() {
    let first = start("same-secret");
    let token = signup(&first, "dave");
    drop(first);
    let second = start("same-secret");
    let (_, hello) = connect(&second, &token, "phone").unwrap();
    assert_eq!(hello["data"]["username"], "dave");
    let other = start("other-secret");
    assert!(connect(&other, &token, "phone").is_err(), "another secret refuses it");
}
