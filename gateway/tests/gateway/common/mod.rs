//! A real server on an ephemeral loopback port, with real HTTP and
//! WebSocket clients, for the gateway's integration tests.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chatgw_gateway::{Config, ServerHandle};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long a test waits for any one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A server in this process on its own temp dir.
pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub http: ureq::Agent,
}

pub fn config(dir: &std::path::Path, shards: u16) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        shards: Some(shards),
        node: Some("test-node".into()),
        pin_cores: false,
        block_cache_bytes: 8 << 20,
        // Tests send faster than a person may; tests/abuse.rs sets limits.
        rate_limit_per_s: 0,
        // And sign up more users from one address than anyone may.
        max_signups_per_ip_per_min: 0,
        // And make channels faster; tests/abuse.rs limits them.
        channel_changes_per_min: 0,
        ..Config::default()
    }
}

impl TestServer {
    pub fn start(shards: u16) -> Self {
        Self::start_with(shards, |_| {})
    }

    pub fn start_with(shards: u16, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), shards);
        adjust(&mut config);
        let handle = chatgw_gateway::start(config).expect("server starts");
        let http = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        TestServer { handle: Some(handle), dir, http }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().unwrap().local_addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// POSTs JSON; returns the status and the JSON body.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut response = self.http.post(self.url(path)).send_json(body).unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_json().unwrap_or(Value::Null))
    }

    /// POSTs JSON with a bearer token; returns the status and the JSON body.
    pub fn post_auth(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let mut response =
            self.http.post(self.url(path)).header("Authorization", format!("Bearer {token}")).send_json(body).unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_json().unwrap_or(Value::Null))
    }

    /// GETs a path; returns the status and the body text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut response = self.http.get(self.url(path)).call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
    }

    /// Signs a user up; returns their user id and token.
    pub fn signup(&self, username: &str) -> User {
        let (status, body) = self.post("/v1/signup", &json!({ "username": username, "password": "correct horse" }));
        assert_eq!(status, 201, "signup {username}: {body}");
        User {
            username: username.to_string(),
            user_id: body["user_id"].as_str().unwrap().to_string(),
            token: body["token"].as_str().unwrap().to_string(),
        }
    }

    /// Opens a WebSocket as `user` on `device` and reads the hello.
    pub fn connect(&self, user: &User, device: &str) -> Client {
        let mut client = self.try_connect(Some(&user.token), device).expect("upgrade succeeds");
        let hello = client.next_event("hello");
        assert_eq!(hello["user_id"], user.user_id.as_str());
        assert_eq!(hello["device"], device);
        client
    }

    /// Opens a WebSocket; the HTTP status on refusal.
    pub fn try_connect(&self, token: Option<&str>, device: &str) -> Result<Client, u16> {
        let mut request = format!("ws://{}/v1/ws?device={device}", self.addr()).into_client_request().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
        }
        let stream = TcpStream::connect(self.addr()).unwrap();
        stream.set_read_timeout(Some(FRAME_WAIT)).unwrap();
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => Ok(Client { ws, next_id: 1, events: VecDeque::new(), last_frame_bytes: 0 }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("handshake: {error}"),
        }
    }

    /// Stops the server and waits for it.
    pub fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop();
            handle.join().expect("clean stop");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop();
            let _ = handle.join();
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub user_id: String,
    pub token: String,
}

/// A WebSocket client that keeps events seen while waiting for replies.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    next_id: u64,
    events: VecDeque<Value>,
    /// The size of the last text frame read, in bytes.
    pub last_frame_bytes: usize,
}

impl Client {
    fn read_json(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    self.last_frame_bytes = text.len();
                    return serde_json::from_str(&text).unwrap();
                }
                Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
                Ok(_) => continue,
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// Sends a command without waiting; returns its id.
    pub fn send_command(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({ "id": id, "method": method, "params": params }).to_string());
        id
    }

    /// The next reply (any id), keeping events aside.
    pub fn next_reply(&mut self) -> Value {
        loop {
            let frame = self.read_json();
            if frame.get("event").is_some() {
                self.events.push_back(frame);
            } else {
                return frame;
            }
        }
    }

    /// Sends a command and returns its whole reply.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_command(method, params);
        let reply = self.next_reply();
        assert_eq!(reply["id"], id, "replies in order for a lone command: {reply}");
        reply
    }

    /// Sends a command and returns its result; panics on an error reply.
    pub fn result(&mut self, method: &str, params: Value) -> Value {
        let reply = self.call(method, params);
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// Sends a command and returns its error code.
    pub fn error_code(&mut self, method: &str, params: Value) -> String {
        let reply = self.call(method, params);
        reply["error"]["code"].as_str().unwrap_or_else(|| panic!("{method} did not fail: {reply}")).to_string()
    }

    /// The next event named `name` (events of other names are dropped).
    pub fn next_event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + FRAME_WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {name} event");
            let frame = match self.events.pop_front() {
                Some(frame) => frame,
                None => self.read_json(),
            };
            if frame["event"] == name {
                return frame["data"].clone();
            }
        }
    }

    /// The next event named `name` within `wait`, or `None` (events of
    /// other names are dropped).
    pub fn next_event_within(&mut self, name: &str, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let frame = self.next_frame_within(deadline.saturating_duration_since(Instant::now()))?;
            if frame["event"] == name {
                return Some(frame["data"].clone());
            }
        }
    }

    /// The next frame (reply or event, events kept aside first), waiting
    /// for it as long as a test waits for any frame.
    pub fn next_frame(&mut self) -> Value {
        match self.events.pop_front() {
            Some(frame) => frame,
            None => self.read_json(),
        }
    }

    /// The next frame (reply or event, events kept aside first) within
    /// `wait`, or `None`.
    pub fn next_frame_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(frame) = self.events.pop_front() {
            return Some(frame);
        }
        if wait.is_zero() {
            return None;
        }
        self.ws.get_ref().set_read_timeout(Some(wait)).unwrap();
        let deadline = Instant::now() + wait;
        let found = loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => break Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
                Ok(_) if Instant::now() < deadline => continue,
                Ok(_) => break None,
                Err(tungstenite::Error::Io(error))
                    if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break None;
                }
                Err(error) => panic!("read: {error}"),
            }
        };
        self.ws.get_ref().set_read_timeout(Some(FRAME_WAIT)).unwrap();
        found
    }

    /// Closes the connection cleanly and waits for the server's close.
    pub fn close(&mut self) {
        let _ = self.ws.close(None);
        while self.ws.read().is_ok() {}
    }

    /// Reads until the server closes; returns the close code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|CloseFrame { code, .. }| code.into()),
                Ok(_) => continue,
                Err(tungstenite::Error::Protocol(_)) | Err(tungstenite::Error::ConnectionClosed) => return None,
                Err(error) => panic!("read while waiting for close: {error}"),
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Signs up `count` users named `{prefix}{n}`.
pub fn users(server: &TestServer, prefix: &str, count: usize) -> Vec<User> {
    (0..count).map(|n| server.signup(&format!("{prefix}{n}"))).collect()
}

/// Signs up at least `count` users named `{prefix}{n}`, and more until each
/// of `shards` owns one of them: ownership is a hash of a time-based id, so
/// a fixed few can all land on one shard.
pub fn users_on_every_shard(server: &TestServer, prefix: &str, count: usize, shards: u16) -> Vec<User> {
    let mut people = users(server, prefix, count);
    while (0..shards).any(|shard| !people.iter().any(|user| owner(user, shards) == shard)) {
        assert!(people.len() < count + 256, "no user landed on some shard after {} signups", people.len());
        let next = server.signup(&format!("{prefix}{}", people.len()));
        people.push(next);
    }
    people
}

/// The shard that owns a user, by the gateway's own function.
pub fn owner(user: &User, shards: u16) -> u16 {
    chatgw_gateway::placement::owner(user.user_id.parse().unwrap(), shards).0
}

/// Creates a channel owned by shard `owner` with `members` (besides its
/// creator): a channel is owned by the core that made it, which is the core
/// that accepted the connection, so each try goes over a new connection
/// until one lands there; the members are added to that one only.
pub fn create_channel_owned_by(
    server: &TestServer,
    creator: &User,
    members: &[&str],
    owner: u16,
    shards: u16,
) -> String {
    for _ in 0..200 {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent
            .post(server.url("/v1/rpc/channel.create"))
            .header("Authorization", format!("Bearer {}", creator.token))
            .send_json(json!({ "name": "owned", "members": [] }))
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.body_mut().read_json().unwrap();
        let id = body["result"]["channel"]["id"].as_str().unwrap().to_string();
        if chatgw_gateway::placement::owner(id.parse().unwrap(), shards).0 == owner {
            let (status, body) = server.post_auth(
                "/v1/rpc/channel.add_members",
                &creator.token,
                &json!({ "channel_id": id, "members": members }),
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["result"]["channel"]["members"].as_array().unwrap().len(), members.len() + 1);
            return id;
        }
    }
    panic!("no connection landed on shard {owner}");
}

/// `chatgw_mesh_messages_total` of one kind, summed over the shards.
pub fn mesh_kind_total(server: &TestServer, kind: &str) -> f64 {
    labelled(&scrape(server), "chatgw_mesh_messages_total", "kind", kind)
}

/// `/metrics`, parsed (its content type checked).
pub fn scrape(server: &TestServer) -> prometheus_parse::Scrape {
    let mut response = server.http.get(server.url("/metrics")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.body_mut().read_to_string().unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("Prometheus text parses")
}

/// The sum of a metric's samples over its labels.
pub fn sample_sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Gauge(value) => value,
            prometheus_parse::Value::Untyped(value) => value,
            _ => 0.0,
        })
        .sum()
}

/// Connections a [`hanging_webhook`] accepted and holds open.
pub type Held = std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>;

/// A push webhook on an ephemeral loopback port that takes every
/// connection and never answers; its URL and the connections it holds.
pub fn hanging_webhook() -> (String, Held) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let held: Held = Held::default();
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    (url, held)
}

/// `GET` of an admin API path with the server's admin token: the JSON answer.
pub fn admin_get(server: &TestServer, path: &str) -> Value {
    let token = server.handle.as_ref().unwrap().admin_token.clone();
    let mut response =
        server.http.get(server.url(path)).header("Authorization", format!("Bearer {token}")).call().unwrap();
    response.body_mut().read_json().unwrap()
}

/// Cross-core messages every shard sent so far (admin stats).
pub fn mesh_sent_total(server: &TestServer) -> u64 {
    let stats = admin_get(server, "/admin/v1/stats");
    stats["shards"].as_array().unwrap().iter().map(|shard| shard["mesh_sent"].as_u64().unwrap()).sum()
}

/// A TCP connection to `addr` from `source`, a loopback address of the
/// 127.0.0.0/8 block (each its own client IP to the server).
pub fn connect_from(source: std::net::IpAddr, addr: std::net::SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::new(source, 0).into()).unwrap();
    socket.connect_timeout(&addr.into(), FRAME_WAIT).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(FRAME_WAIT)).unwrap();
    stream.set_write_timeout(Some(FRAME_WAIT)).unwrap();
    stream
}

/// One HTTP/1.1 request written on `stream` (kept alive unless `close`).
pub fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    close: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: chatgw\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Reads one HTTP/1.1 response with a `Content-Length` off `stream`: its
/// status and body (JSON, or the text as a JSON string; `Null` if empty).
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, Value)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        bytes.extend_from_slice(&chunk[..count]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|status| status.parse().ok()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside a response"));
        }
        bytes.extend_from_slice(&chunk[..count]);
    }
    let body = &bytes[head_end..head_end + length];
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    Ok((status, value))
}

/// One request on a fresh connection from `source`, closed after: the
/// status and the body.
pub fn http_from(
    source: std::net::IpAddr,
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = connect_from(source, server.addr());
    write_request(&mut stream, method, path, token, body, true).unwrap();
    read_response(&mut stream).unwrap()
}

/// `/metrics`, parsed, asked from `source`.
pub fn scrape_from(source: std::net::IpAddr, server: &TestServer) -> prometheus_parse::Scrape {
    let (status, text) = http_from(source, server, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_string();
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("Prometheus text parses")
}

/// The value of a metric's sample whose `label` is `value`.
pub fn labelled(scrape: &prometheus_parse::Scrape, name: &str, label: &str, value: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name && sample.labels.get(label) == Some(value))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Gauge(value) => value,
            prometheus_parse::Value::Untyped(value) => value,
            _ => 0.0,
        })
        .sum()
}

/// The loopback address 127.a.b.c.
pub fn loopback(a: u8, b: u8, c: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, c))
}
