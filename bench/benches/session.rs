//! The gateway's main paths end to end, on a real server in this process
//! (a temp data dir, a loopback port) with real WebSocket clients:
//!
//! - `session/one_to_one_send_one_core`: one shard, two users; a `send`
//!   from one, timed until its ack is back and the other has the
//!   message. Everything a 1:1 send does on one core is in it: the frame
//!   read and parsed, the rate check, the channel's owner (the router's
//!   local path), the group commit with its WAL write, the fan-out, the
//!   push check riding the batch, the frames written.
//! - `handshake/...`: a WebSocket connection of an existing user opened
//!   and its `hello` read, on two shards, with the hand-off to the user's
//!   owning core (`--hand-off true`) and without it: what the hand-off adds
//!   to a handshake, half of which land on the owner already.
//!
//! `cargo bench -p chatgw-bench --bench session`.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chatgw_gateway::{Config, ServerHandle};
use criterion::{Criterion, Throughput};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<TcpStream>;

/// A server on a loopback port with its data in a temp dir.
struct Server {
    handle: ServerHandle,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(shards: u16, hand_off: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            data_dir: dir.path().to_path_buf(),
            shards: Some(shards),
            pin_cores: false,
            rate_limit_per_s: 0,
            max_signups_per_ip_per_min: 0,
            max_new_connections_per_ip_per_s: 0,
            max_connections_per_ip: 0,
            hand_off,
            ..Config::default()
        };
        Server { handle: chatgw_gateway::start(config).expect("the server starts"), _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// A new account's token.
    fn signup(&self, username: &str) -> String {
        let body: Value = ureq::post(&format!("http://{}/v1/signup", self.addr()))
            .send_json(json!({ "username": username, "password": "correct horse" }))
            .expect("signup")
            .body_mut()
            .read_json()
            .expect("signup's JSON");
        body["token"].as_str().expect("a token").to_string()
    }

    /// A device's WebSocket, its `hello` read.
    fn connect(&self, token: &str, device: &str) -> Socket {
        let mut request =
            format!("ws://{}/v1/ws?device={device}", self.addr()).into_client_request().expect("a request");
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().expect("a header"));
        let stream = TcpStream::connect(self.addr()).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
        let (mut socket, _) = tungstenite::client(request, stream).expect("the upgrade");
        let hello = next_json(&mut socket);
        assert_eq!(hello["event"], "hello", "{hello}");
        socket
    }
}

fn next_json(socket: &mut Socket) -> Value {
    loop {
        match socket.read().expect("a frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn one_to_one(c: &mut Criterion) {
    let server = Server::start(1, true);
    let alice_token = server.signup("bench_alice");
    let bob_token = server.signup("bench_bob");
    let mut alice = server.connect(&alice_token, "laptop");
    let mut bob = server.connect(&bob_token, "phone");
    let mut id = 0u64;
    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_to_one_send_one_core", |b| {
        b.iter_custom(|sends| {
            let started = Instant::now();
            for _ in 0..sends {
                id += 1;
                let command =
                    json!({ "id": id, "method": "send", "params": { "to_user": "bench_bob", "text": "hi bob" } });
                alice.send(Message::text(command.to_string())).expect("send");
                // Alice's ack (her echo of the message may come before it).
                loop {
                    let frame = next_json(&mut alice);
                    if frame["id"] == id {
                        assert!(frame["result"]["message_id"].is_string(), "{frame}");
                        break;
                    }
                }
                // Bob's copy (the first send also tells him of the new
                // direct channel).
                while next_json(&mut bob)["event"] != "message" {}
            }
            started.elapsed()
        })
    });
    group.finish();
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    for (name, hand_off) in [("two_cores_with_hand_off", true), ("two_cores_kept_where_accepted", false)] {
        let server = Server::start(2, hand_off);
        // Users round robin, so that a user's device cap is never near.
        let tokens: Vec<String> = (0..32).map(|n| server.signup(&format!("hs{}_{n}", u8::from(hand_off)))).collect();
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_custom(|connections| {
                let started = Instant::now();
                for _ in 0..connections {
                    next += 1;
                    let mut socket = server.connect(&tokens[next % tokens.len()], "bench");
                    let _ = socket.close(None);
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion::criterion_group!(benches, one_to_one, handshakes);
criterion::criterion_main!(benches);
