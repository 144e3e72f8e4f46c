//! The `chatgw` binary as a real process: killed with SIGKILL while a
//! client pipelines sends (every acknowledged message survives a restart),
//! and stopped with SIGTERM (clients get 1001, the process exits 0).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

struct Node {
    child: Child,
    addr: SocketAddr,
}

/// Starts `chatgw serve` on an ephemeral port and waits for its
/// `listening on` line.
fn serve(data_dir: &Path) -> Node {
    // Load generation and pipelining send faster than a person may.
    serve_with(data_dir, &["--rate-limit", "0"])
}

/// `serve` with more flags.
fn serve_with(data_dir: &Path, extra: &[&str]) -> Node {
    serve_shards(data_dir, "2", extra)
}

/// `serve_with` on `shards` shards.
fn serve_shards(data_dir: &Path, shards: &str, extra: &[&str]) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            shards,
            "--max-signups-per-ip-per-min",
            "0",
            "--channel-changes-per-min",
            "0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("CHATGW_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        assert!(Instant::now() < deadline, "no listening line");
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '\u{1b}').collect();
            break addr.parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Node { child, addr }
}

impl Drop for Node {
    /// SIGKILL, if still running: no server outlives its test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn signup(addr: SocketAddr, username: &str) -> Value {
    let mut response = http()
        .post(format!("http://{addr}/v1/signup"))
        .send_json(json!({ "username": username, "password": "password123" }))
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    response.body_mut().read_json().unwrap()
}

fn login(addr: SocketAddr, username: &str) -> String {
    let mut response = http()
        .post(format!("http://{addr}/v1/login"))
        .send_json(json!({ "username": username, "password": "password123" }))
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.body_mut().read_json().unwrap();
    body["token"].as_str().unwrap().to_string()
}

fn connect(addr: SocketAddr, token: &str) -> tungstenite::WebSocket<TcpStream> {
    let mut request = format!("ws://{addr}/v1/ws?device=test").into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (ws, _) = tungstenite::client(request, stream).unwrap();
    ws
}

fn read_json(ws: &mut tungstenite::WebSocket<TcpStream>) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Sends a command and returns its reply (events on the way are skipped).
fn call(ws: &mut tungstenite::WebSocket<TcpStream>, command: Value) -> Value {
    ws.send(Message::text(command.to_string())).unwrap();
    loop {
        let frame = read_json(ws).expect("connection open");
        if frame.get("id").is_some() {
            return frame;
        }
    }
}

#[test]
fn sigkill_during_pipelined_sends_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve(dir.path());
    let alice = signup(node.addr, "crash_alice");
    signup(node.addr, "crash_bob");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");

    // Pipeline 400 sends without waiting, then collect acknowledgements and
    // kill the server once 150 are in: many are still in flight then.
    const SENDS: u64 = 400;
    for n in 1..=SENDS {
        let command = json!({ "id": n, "method": "send", "params": { "to_user": "crash_bob", "text": format!("pipelined {n}") } });
        ws.send(Message::text(command.to_string())).unwrap();
    }
    let mut acknowledged: Vec<String> = Vec::new();
    let mut channel_id = String::new();
    while acknowledged.len() < 150 {
        let frame = read_json(&mut ws).expect("server alive until killed");
        if let Some(result) = frame.get("result") {
            acknowledged.push(result["message_id"].as_str().unwrap().to_string());
            channel_id = result["channel_id"].as_str().unwrap().to_string();
        }
    }
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    // Acknowledgements already on the wire count too.
    while let Some(frame) = read_json(&mut ws) {
        if let Some(result) = frame.get("result") {
            acknowledged.push(result["message_id"].as_str().unwrap().to_string());
        }
    }

    let node = serve(dir.path());
    let token = login(node.addr, "crash_alice");
    let mut ws = connect(node.addr, &token);
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    let mut stored = std::collections::HashSet::new();
    let mut after = "0".to_string();
    loop {
        let command = json!({ "id": 1, "method": "history", "params": { "channel_id": channel_id, "after": after, "limit": 200 } });
        let reply = call(&mut ws, command);
        let messages = reply["result"]["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        after = messages.last().unwrap()["id"].as_str().unwrap().to_string();
        stored.extend(messages.iter().map(|message| message["id"].as_str().unwrap().to_string()));
    }
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acknowledged, {} lost: {lost:?}", acknowledged.len(), lost.len());
    assert!(acknowledged.len() >= 150);
    // And ids still grow after the restart.
    let command = json!({ "id": 2, "method": "send", "params": { "to_user": "crash_bob", "text": "after restart" } });
    let reply = call(&mut ws, command);
    let new_id: u64 = reply["result"]["message_id"].as_str().unwrap().parse().unwrap();
    assert!(stored.iter().all(|id| id.parse::<u64>().unwrap() < new_id));
}

#[test]
fn sigkill_with_pushes_in_the_outbox_loses_none() {
    // The webhook's port refuses connections until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let webhook = format!("http://127.0.0.1:{port}/push");
    let flags = ["--push-webhook", webhook.as_str(), "--admin-token", "push-test-admin-token", "--rate-limit", "0"];
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve_with(dir.path(), &flags);
    let alice = signup(node.addr, "push_alice");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    let mut expected = std::collections::BTreeSet::new();
    for n in 0..10 {
        let username = format!("push_user{n}");
        let user = signup(node.addr, &username);
        let reply = call(
            &mut ws,
            json!({ "id": n, "method": "send", "params": { "to_user": username, "text": format!("hi {n}") } }),
        );
        let message_id = reply["result"]["message_id"].as_str().unwrap().to_string();
        expected.insert(format!("{}-{message_id}", user["user_id"].as_str().unwrap()));
    }
    // Every record is in the outbox (the webhook is down), then SIGKILL.
    wait_for_outbox(node.addr, "push-test-admin-token", 10, Duration::from_secs(20));
    node.child.kill().unwrap();
    node.child.wait().unwrap();

    // The webhook comes up; the restarted server sends every record.
    let receiver = tiny_http::Server::http(("127.0.0.1", port)).unwrap();
    let _node = serve_with(dir.path(), &flags);
    let mut received = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !expected.is_subset(&received) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "pushes missing: {:?}", expected.difference(&received).collect::<Vec<_>>());
        if let Some(request) = receiver.recv_timeout(left).unwrap() {
            let key = request
                .headers()
                .iter()
                .find(|header| header.field.equiv("Idempotency-Key"))
                .map(|header| header.value.to_string())
                .expect("an Idempotency-Key header");
            received.insert(key);
            request.respond(tiny_http::Response::empty(200)).unwrap();
        }
    }
}

#[test]
fn sigkill_between_a_message_and_its_push_records_loses_no_push() {
    // The owner waits 5 s after each commit before the members' owners
    // record pushes: the kill lands in between.
    let dir = tempfile::tempdir().unwrap();
    let admin = ["--admin-token", "push-gap-admin-token", "--rate-limit", "0"];
    let mut flags = admin.to_vec();
    flags.extend(["--fault-push-check-delay-ms", "5000"]);
    let mut node = serve_with(dir.path(), &flags);
    let alice = signup(node.addr, "gap_alice");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    for n in 0..3 {
        // Each user is offline: each message owes a push.
        signup(node.addr, &format!("gap_user{n}"));
        let send = json!({ "id": n, "method": "send", "params": { "to_user": format!("gap_user{n}"), "text": "hi" } });
        let reply = call(&mut ws, send);
        assert!(reply.get("result").is_some(), "{reply}");
    }
    wait_for_outbox(node.addr, "push-gap-admin-token", 0, Duration::from_secs(1));
    node.child.kill().unwrap(); // SIGKILL, before any push is recorded
    node.child.wait().unwrap();
    // The restart checks those messages again: every push is recorded.
    let node = serve_with(dir.path(), &admin);
    wait_for_outbox(node.addr, "push-gap-admin-token", 3, Duration::from_secs(20));
}

#[test]
fn a_panicking_shard_aborts_the_process_and_a_restart_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut node =
        serve_with(dir.path(), &["--rate-limit", "0", "--fault-hooks", "--admin-token", "operator-admin-token"]);
    let alice = signup(node.addr, "panic_alice");
    signup(node.addr, "panic_bob");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    let reply =
        call(&mut ws, json!({ "id": 1, "method": "send", "params": { "to_user": "panic_bob", "text": "before" } }));
    assert!(reply.get("result").is_some(), "{reply}");
    // Shard 1's thread panics: the whole process goes, not just the shard.
    let _ = http()
        .post(format!("http://{}/admin/v1/faults/panic", node.addr))
        .header("Authorization", "Bearer operator-admin-token")
        .send_json(json!({ "shard": 1 }));
    let status = wait_for_exit(&mut node, Duration::from_secs(10), "the process outlived its shard's panic");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "aborted: {status:?}");
    // A supervisor's restart: the acknowledged message is there.
    let node = serve(dir.path());
    let mut ws = connect(node.addr, &login(node.addr, "panic_alice"));
    let channel = reply["result"]["channel_id"].clone();
    let history = call(&mut ws, json!({ "id": 1, "method": "history", "params": { "channel_id": channel } }));
    assert_eq!(history["result"]["messages"][0]["text"], "before", "{history}");
}

/// SIGTERM, and waits for a clean exit.
fn stop(node: &mut Node) {
    let status = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for_exit(node, Duration::from_secs(20), "did not exit after SIGTERM");
}

/// Waits for the process to end within `within`; its exit status.
fn wait_for_exit(node: &mut Node, within: Duration, failure: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the push outbox holds `depth` records, asking the admin API.
fn wait_for_outbox(addr: SocketAddr, admin_token: &str, depth: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut response = http()
            .get(format!("http://{addr}/admin/v1/outbox"))
            .header("Authorization", format!("Bearer {admin_token}"))
            .call()
            .unwrap();
        let outbox: Value = response.body_mut().read_json().unwrap();
        if outbox["depth"] == depth {
            return;
        }
        assert!(Instant::now() < deadline, "the outbox did not reach {depth} records: {outbox}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_kind_of_id_lifts_its_issuers_high_water_mark() {
    use chatgw_gateway::placement::{owner, username_owner};
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve_with(dir.path(), &["--rate-limit", "0", "--admin-token", "operator-admin-token"]);
    let alice = signup(node.addr, "mark_alice");
    let bob = signup(node.addr, "mark_bob");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    let created = call(
        &mut ws,
        json!({ "id": 1, "method": "channel.create", "params": { "name": "marks", "members": ["mark_bob"] } }),
    );
    let channel: u64 = created["result"]["channel"]["id"].as_str().unwrap().parse().unwrap();
    // Bob has no device: the message leaves a push in his owner's outbox.
    let params = json!({ "channel_id": channel.to_string(), "text": "for the outbox" });
    assert!(call(&mut ws, json!({ "id": 2, "method": "send", "params": params })).get("result").is_some());
    wait_for_outbox(node.addr, "operator-admin-token", 1, Duration::from_secs(10));
    stop(&mut node);

    let store = chatgw_storage::Store::open(&chatgw_storage::StoreConfig::new(dir.path().join("db"), 2)).unwrap();
    let mark = |shard| store.high_water(shard).unwrap().map_or(0, |id| id.0);
    for user in [&alice, &bob] {
        let (name, id) = (user["username"].as_str().unwrap(), user["user_id"].as_str().unwrap().parse().unwrap());
        assert!(mark(username_owner(name, 2)) >= id, "{name}'s id is above its issuer's mark");
    }
    assert!(mark(owner(channel, 2)) >= channel, "the channel's id is above its issuer's mark");
    let bob_owner = owner(bob["user_id"].as_str().unwrap().parse().unwrap(), 2);
    let pushes = store.outbox(bob_owner, 0, 10).unwrap();
    assert_eq!(pushes.len(), 1);
    assert!(mark(bob_owner) >= pushes[0].push_id, "the push's id is above its issuer's mark");
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve(dir.path());
    let alice = signup(node.addr, "term_alice");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    let status = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame.map(|frame| u16::from(frame.code)),
            Ok(_) => continue,
            Err(error) => panic!("no close frame: {error}"),
        }
    };
    assert_eq!(code, Some(1001));
    let exit = wait_for_exit(&mut node, Duration::from_secs(20), "did not exit after SIGTERM");
    assert_eq!(exit.code(), Some(0));
    // The data survives a clean stop: the account is still there.
    let node = serve(dir.path());
    login(node.addr, "term_alice");
}

#[test]
fn loadgen_idle_opens_connections_and_reports_server_memory() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.json");
    let node = serve(&dir.path().join("data"));
    let loadgen = |node: &Node| {
        Command::new(env!("CARGO_BIN_EXE_chatgw"))
            .args(["loadgen", "idle", "--connections", "60", "--users", "4", "--hold-s", "0", "--json", "--addr"])
            .arg(node.addr.to_string())
            .arg("--users-file")
            .arg(&users_file)
            .output()
            .unwrap()
    };
    // First run: makes the accounts (and says to restart the server).
    let first = loadgen(&node);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stderr).contains("restart the server"));
    drop(node);
    // Second run, against a server that hashed nothing: measures.
    let node = serve(&dir.path().join("data"));
    let second = loadgen(&node);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["connections"], 60);
    assert!(report["server_rss_after_bytes"].as_u64().unwrap() > 0);
    assert!(report["server_rss_per_connection_bytes"].as_f64().is_some());
    // Past its memory budget, the run reports and then fails (a budget
    // below zero is past for any reading).
    let over = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args(["loadgen", "idle", "--connections", "20", "--users", "4", "--hold-s", "0", "--json"])
        .arg("--max-kib-per-connection=-1")
        .arg("--addr")
        .arg(node.addr.to_string())
        .arg("--users-file")
        .arg(&users_file)
        .output()
        .unwrap();
    assert!(!over.status.success(), "a run past its budget failed");
    let report: Value = serde_json::from_slice(&over.stdout).unwrap();
    assert_eq!(report["connections"], 20, "the report came first");
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("more than the -1 KiB allowed"),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );
}

fn run_loadgen(args: &[&str], addr: SocketAddr, users_file: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .arg("loadgen")
        .args(args)
        .args(["--json", "--workers", "2", "--addr"])
        .arg(addr.to_string())
        .arg("--users-file")
        .arg(users_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn loadgen_dm_delivers_every_message_at_the_offered_rate() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let args = ["dm", "--users", "20", "--rate", "400", "--duration-s", "2", "--drain-s", "10"];
    let report = run_loadgen(&args, node.addr, &users_file);
    // Open loop: the schedule is the schedule, whatever the latency.
    assert_eq!(report["sent"], 800);
    assert_eq!(report["delivered"], 800);
    assert_eq!(report["acked"], 800);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["delivery_latency"]["count"], 800);
    let p50 = report["delivery_latency"]["p50_ms"].as_f64().unwrap();
    let max = report["delivery_latency"]["max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
    // Every message's send lag, and its delivery filed under the second it
    // was due: two seconds of 400 a second (a late one may spill over).
    assert_eq!(report["send_lag"]["count"], 800);
    // The server's counters over the measured phase: every message stored
    // in it (the warm-up's are before it), and the cross-core messages
    // they cost.
    assert_eq!(report["server_counters"]["messages_stored"], 800.0, "{report}");
    let per = report["server_mesh_messages_per_message"].as_f64().unwrap();
    assert!((0.0..=4.0).contains(&per), "{per} cross-core messages per message");
    let timeline = report["timeline"].as_array().unwrap();
    let counts: u64 = timeline.iter().map(|second| second["count"].as_u64().unwrap()).sum();
    assert_eq!(counts, 800, "{report}");
    assert_eq!((timeline[0]["second"].as_u64(), timeline[0]["count"].as_u64()), (Some(0), Some(400)), "{report}");
    let worst = report["worst_seconds"].as_array().unwrap();
    assert!(!worst.is_empty() && worst.len() <= 3, "{report}");
    assert!(worst[0]["p99_ms"].as_f64().unwrap() <= max + 0.05, "{report}");
    // The seconds against the default 5 ms budget, from the same timeline.
    let spread = &report["seconds_spread"];
    let p99s: Vec<f64> = timeline.iter().map(|second| second["p99_ms"].as_f64().unwrap()).collect();
    assert_eq!(spread["seconds"].as_u64(), Some(timeline.len() as u64), "{report}");
    assert_eq!(spread["budget_ms"].as_f64(), Some(5.0), "{report}");
    let over = p99s.iter().filter(|p99| **p99 > 5.0).count() as u64;
    assert_eq!(spread["over_budget"].as_u64(), Some(over), "{report}");
    let median = spread["median_p99_ms"].as_f64().unwrap();
    let (low, high) = p99s.iter().fold((f64::MAX, 0.0_f64), |(low, high), p99| (low.min(*p99), high.max(*p99)));
    assert!(low <= median && median <= high, "{report}");
}

#[test]
fn loadgen_idle_spreads_connections_over_processes() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.json");
    let node = serve(&dir.path().join("data"));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chatgw"))
            .args(["loadgen", "idle", "--users", "4", "--hold-s", "0", "--json", "--addr"])
            .arg(node.addr.to_string())
            .arg("--users-file")
            .arg(&users_file)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["--connections", "1"]).status.success(), "accounts made");
    let output = run(&["--connections", "90", "--procs", "3", "--source-ips", "127.0.0.2-127.0.0.3"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((report["connections"].as_u64(), report["procs"].as_u64()), (Some(90), Some(3)), "{report}");
    assert!(report["server_rss_after_bytes"].as_u64().unwrap() > 0);
    let too_many = run(&["--connections", "40000"]);
    assert!(!too_many.status.success());
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("use --procs"));
}

#[test]
fn loadgen_spreads_connections_over_source_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let args = ["dm", "--users", "20", "--rate", "200", "--duration-s", "1", "--source-ips", "127.0.0.2-127.0.0.4"];
    let report = run_loadgen(&args, node.addr, &users_file);
    assert_eq!((report["sent"].as_u64(), report["delivered"].as_u64()), (Some(200), Some(200)), "{report}");
    let bad = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args(["loadgen", "dm", "--source-ips", "127.0.0.9-127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap refuses a backwards range");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("runs backwards"));
}

#[test]
fn loadgen_dm_closed_loop_keeps_a_window_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let args = ["dm", "--users", "20", "--in-flight", "4", "--duration-s", "1", "--ramp-per-s", "40"];
    let report = run_loadgen(&args, node.addr, &users_file);
    assert_eq!(report["mode"], "closed");
    assert!(report["connect_s"].as_f64().unwrap() >= 0.3, "20 connections at 40 a second: {report}");
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 8, "more than one window went out: {report}");
    assert_eq!(report["acked"].as_u64(), Some(sent));
    assert_eq!(report["delivered"].as_u64(), Some(sent));
    assert_eq!(report["lost"], 0);
}

#[test]
fn loadgen_dm_spreads_pairs_over_processes_and_adds_them_up() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let out = dir.path().join("procs");
    let args =
        ["dm", "--users", "24", "--rate", "480", "--duration-s", "2", "--procs", "3", "--out", out.to_str().unwrap()];
    let report = run_loadgen(&args, node.addr, &users_file);
    assert_eq!(report["procs"], 3);
    assert_eq!((report["sent"].as_u64(), report["delivered"].as_u64()), (Some(960), Some(960)), "{report}");
    assert_eq!(report["delivery_latency"]["count"], 960, "the children's histograms added up");
    assert_eq!(report["connect_latency"]["count"], 24, "one connection time per user");
    assert_eq!(report["send_lag"]["count"], 960, "{report}");
    let seconds = report["timeline"].as_array().unwrap();
    let counts: u64 = seconds.iter().map(|second| second["count"].as_u64().unwrap()).sum();
    assert_eq!(counts, 960, "the children's timelines added up: {report}");
    let hgrm = std::fs::read_to_string(out.join("delivery.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =          960]"), "{hgrm}");
    let log = std::fs::read_to_string(out.join("latency.hlog")).unwrap();
    assert!(log.contains("Tag=delivery-1s,0.000,1.000,"), "{log}");
}

#[test]
fn loadgen_fanout_delivers_each_message_to_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let args = ["fanout", "--groups", "2", "--members", "5", "--window", "4", "--duration-s", "1"];
    let report = run_loadgen(&args, node.addr, &users_file);
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["acked"].as_u64().unwrap(), sent);
    assert_eq!(report["delivered"].as_u64().unwrap(), sent * 5, "every member, the sender's device too");
    assert!(report["deliveries_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["errors"], serde_json::json!({}));

    // The same plan over two processes: their groups and counts add up.
    let args = [
        "fanout",
        "--groups",
        "4",
        "--members",
        "5",
        "--window",
        "4",
        "--duration-s",
        "1",
        "--procs",
        "2",
        "--ramp-per-s",
        "200",
    ];
    let report = run_loadgen(&args, node.addr, &users_file);
    let sent = report["sent"].as_u64().unwrap();
    assert_eq!(report["procs"], 2);
    assert_eq!(report["delivered"].as_u64().unwrap(), sent * 5, "{report}");
    assert_eq!(report["delivery_latency"]["count"].as_u64().unwrap(), sent * 5);
}

#[test]
fn loadgen_fanout_with_never_readers_expects_the_others_deliveries_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let args =
        ["fanout", "--groups", "2", "--members", "6", "--never-readers", "2", "--window", "4", "--duration-s", "2"];
    let report = run_loadgen(&args, node.addr, &users_file);
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["never_readers"], 2);
    assert_eq!(report["delivered"].as_u64().unwrap(), sent * 4, "every member that reads: {report}");
    assert_eq!(report["errors"], serde_json::json!({}));
}

#[test]
fn loadgen_mix_runs_idle_pairs_and_groups_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let output = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args(["loadgen", "mix", "--json", "--idle-connections", "30", "--dm-users", "20", "--dm-rate", "200"])
        .args(["--groups", "2", "--members", "5", "--duration-s", "2", "--workers", "1", "--addr"])
        .arg(node.addr.to_string())
        .args(["--typing-every", "2", "--read-every", "3"])
        .arg("--users-prefix")
        .arg(dir.path().join("users"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["idle"]["connections"], 30, "{report}");
    assert_eq!(report["dm"]["delivered"], 400, "{report}");
    let sent = report["fanout"]["sent"].as_u64().unwrap();
    assert!(sent > 0 && report["fanout"]["delivered"].as_u64().unwrap() == sent * 5, "{report}");
    // Typing and reads alongside the sends: each made its events, and none
    // was refused.
    let events = &report["fanout"]["events"];
    for kind in ["typing_sent", "typing_received", "reads_sent", "receipt_received"] {
        assert!(events[kind].as_u64().is_some_and(|count| count > 0), "{kind}: {report}");
    }
    assert_eq!(report["fanout"]["errors"], serde_json::json!({}), "{report}");
}

/// Runs `chatgw admin` against `addr`; its exit code, stdout and stderr.
fn admin(addr: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args(["admin", "--url", addr, "--token", token])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[test]
fn admin_commands_work_and_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve_with(dir.path(), &["--admin-token", "admin-cli-test-token", "--rate-limit", "0"]);
    let url = format!("http://{}", node.addr);
    let alice = signup(node.addr, "cli_alice");
    signup(node.addr, "cli_bob");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    let ok = |args: &[&str]| {
        let (code, stdout, stderr) = admin(&url, "admin-cli-test-token", args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout
    };

    let stats = ok(&["stats"]);
    assert!(stats.contains("shard") && stats.contains("conns"), "{stats}");
    let stats: Value = serde_json::from_str(ok(&["--json", "stats"]).trim()).unwrap();
    assert_eq!(stats["shards"].as_array().unwrap().len(), 2);
    let conns = ok(&["conns"]);
    assert!(conns.contains("cli_alice") && conns.contains("127.0.0.1"), "{conns}");
    let page: Value = serde_json::from_str(ok(&["conns", "--json", "--limit", "1"]).trim()).unwrap();
    assert_eq!(page["connections"][0]["username"], "cli_alice");

    let words = ok(&["banned-words", "set", "spam", "buy now"]);
    assert!(words.contains("buy now, spam"), "{words}");
    ok(&["banned-words", "add", "scam"]);
    ok(&["banned-words", "remove", "spam"]);
    let listed: Value = serde_json::from_str(ok(&["banned-words", "list", "--json"]).trim()).unwrap();
    assert_eq!(listed["words"], json!(["buy now", "scam"]));
    assert!(ok(&["outbox"]).contains("total: 0"));
    assert!(ok(&["outbox", "dead"]).contains("0 dead push(es)"));
    assert!(ok(&["outbox", "retry"]).contains("0 dead push(es) back in the outbox"));
    let top = ok(&["top", "--iterations", "2", "--interval-ms", "100"]);
    assert_eq!(top.matches("chatgw top:").count(), 2, "{top}");

    assert!(ok(&["kick", "cli_alice"]).contains("kicked 1"));
    assert!(read_json(&mut ws).is_none(), "kicked");
    assert!(ok(&["user", "disable", "cli_bob"]).contains("cli_bob is disabled"));
    let refused = http()
        .post(format!("{url}/v1/login"))
        .send_json(json!({ "username": "cli_bob", "password": "password123" }))
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(ok(&["user", "enable", "cli_bob"]).contains("cli_bob is enabled"));

    // Errors: a clear message, exit status 1, no panic.
    let (code, _, stderr) = admin(&url, "wrong-token", &["stats"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("refused the admin token") && !stderr.contains("panicked"), "{stderr}");
    let user_token = login(node.addr, "cli_alice");
    let (code, _, stderr) = admin(&url, &user_token, &["stats"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not the admin token"), "{stderr}");
    let (code, _, stderr) = admin(&url, "admin-cli-test-token", &["kick", "nobody_at_all"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("404 not_found"), "{stderr}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, stderr) = admin(&format!("http://{closed}"), "admin-cli-test-token", &["stats"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach the server") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn doctor_gives_a_verdict_per_check() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatgw")).args(["doctor", "--json"]).output().unwrap();
    let code = output.status.code().unwrap();
    assert!(code == 0 || code == 2, "0 when nothing fails, 2 otherwise: {code}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 10, "{report}");
    for check in checks {
        assert!(["pass", "warn", "fail"].contains(&check["verdict"].as_str().unwrap()), "{check}");
        assert!(!check["current"].as_str().unwrap().is_empty());
        if check["verdict"] != "pass" {
            assert!(!check["recommended"].as_str().unwrap().is_empty(), "{check}");
        }
    }
    assert_eq!(code == 2, checks.iter().any(|check| check["verdict"] == "fail"));
    // This machine's hard open-file limit is 20,000: below a million.
    let files = checks.iter().find(|check| check["check"] == "open files (hard)").unwrap();
    assert_ne!(files["verdict"], "pass", "{files}");
    assert!(files["fix"].as_str().unwrap().contains("nofile"));
    let table = Command::new(env!("CARGO_BIN_EXE_chatgw")).args(["doctor", "--connections", "1000"]).output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("checks for 1000 connections") && text.contains("io_uring works"), "{text}");
}

#[test]
fn loadgen_writes_histograms_and_plots_and_report_compares_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(&dir.path().join("data"));
    let users_file = dir.path().join("users.json");
    let out = dir.path().join("run");
    // Bounded: 200 connections, 5 seconds at 1,000 messages a second.
    let args = ["dm", "--users", "200", "--rate", "1000", "--duration-s", "5", "--out", out.to_str().unwrap()];
    let report = run_loadgen(&args, node.addr, &users_file);
    assert_eq!(report["delivered"], 5000);
    for file in ["delivery.hgrm", "ack.hgrm", "connect.hgrm", "latency.hlog", "latency.svg", "latency.png"] {
        assert!(out.join(file).metadata().unwrap().len() > 100, "{file}");
    }
    let hgrm = std::fs::read_to_string(out.join("delivery.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"), "{hgrm}");
    assert!(hgrm.contains("Total count    =         5000]"), "{hgrm}");
    assert!(std::fs::read_to_string(out.join("latency.svg")).unwrap().contains("<svg"));
    assert_eq!(&std::fs::read(out.join("latency.png")).unwrap()[..4], b"\x89PNG");
    assert!(std::fs::read_to_string(out.join("latency.hlog")).unwrap().contains("Tag=delivery,"));

    let compare = dir.path().join("compare");
    let output = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .arg("report")
        .arg(out.join("delivery.hgrm"))
        .arg(out.join("ack.hgrm"))
        .args(["--names", "delivery,ack", "--plot"])
        .arg(&compare)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("delivery (ms)") && text.contains("ack (ms)") && text.contains("ratio"), "{text}");
    assert!(text.contains("p99.99") && text.contains("x "), "a ratio column: {text}");
    assert!(compare.with_extension("svg").exists() && compare.with_extension("png").exists());
    let output = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args(["report", "--json"])
        .arg(out.join("delivery.hgrm"))
        .arg(out.join("delivery.hgrm"))
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["files"][1]["percentiles"]["p99_ms"]["ratio"], 1.0, "a file against itself");
    let missing = Command::new(env!("CARGO_BIN_EXE_chatgw")).args(["report", "/no/such.hgrm"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading /no/such.hgrm"));
}

#[test]
fn secrets_stay_private_short_ones_are_refused_and_the_token_file_is_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Too short a token: a clear error, no server.
    let refused = Command::new(env!("CARGO_BIN_EXE_chatgw"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", "short", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("admin token must be at least 16 bytes"), "{stderr}");
    // The token from a file (with its newline), the store private.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "a-token-from-a-file-1234\n").unwrap();
    let mut node = serve_with(&data, &["--admin-token-file", token_file.to_str().unwrap()]);
    let mut response = http()
        .get(format!("http://{}/admin/v1/stats", node.addr))
        .header("Authorization", "Bearer a-token-from-a-file-1234")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", response.body_mut().read_to_string().unwrap());
    stop(&mut node);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path) & 0o077, 0, "{} is readable by others: {:o}", path.display(), mode(&path));
        }
    }
}

fn ids_of(reply: &Value) -> Vec<u64> {
    let messages = reply["result"]["messages"].as_array().expect("sync answered messages");
    messages.iter().map(|message| message["id"].as_str().unwrap().parse().unwrap()).collect()
}

/// A device's cursor outlives a restart with the clock behind it: an idle
/// node's `next_since` is a fence at its clock, seconds past the last
/// message; killed and restarted with the id clock 60 s behind (the hidden
/// `--fault-id-clock-offset-ms`), the node's next message must still come
/// above that cursor, or sync from it never returns it. One shard: with
/// several, an idle shard's fence cannot follow a busy one's logical clock
/// ahead of a clock that stepped back, so sync from the cursor returns the
/// message only once the clock catches up (a delay, not a loss).
#[test]
fn a_cursor_from_before_a_restart_with_the_clock_behind_gets_the_messages_sent_after() {
    const IDLE: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve_shards(dir.path(), "1", &["--rate-limit", "0"]);
    let alice = signup(node.addr, "clock_alice");
    signup(node.addr, "clock_bob");
    let mut ws = connect(node.addr, alice["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    let send = |ws: &mut tungstenite::WebSocket<TcpStream>, text: &str| -> u64 {
        let reply = call(ws, json!({ "id": 1, "method": "send", "params": { "to_user": "clock_bob", "text": text } }));
        reply["result"]["message_id"].as_str().expect("sent").parse().unwrap()
    };
    let before = send(&mut ws, "before the restart");
    std::thread::sleep(IDLE);
    let reply = call(&mut ws, json!({ "id": 2, "method": "sync", "params": { "since": "0" } }));
    assert_eq!(ids_of(&reply), [before]);
    let cursor: u64 = reply["result"]["next_since"].as_str().unwrap().parse().unwrap();
    let ahead_ms = (cursor >> 22).saturating_sub(before >> 22);
    eprintln!("clock_behind: message {before}, cursor {cursor}: {ahead_ms} ms past it");
    assert!(ahead_ms >= 1_000, "the premise: the cursor {cursor} is a fence well past {before}");
    node.child.kill().unwrap(); // SIGKILL: nothing gets written on the way out
    node.child.wait().unwrap();

    let node = serve_shards(dir.path(), "1", &["--rate-limit", "0", "--fault-id-clock-offset-ms", "-60000"]);
    let mut ws = connect(node.addr, &login(node.addr, "clock_alice"));
    assert_eq!(read_json(&mut ws).unwrap()["event"], "hello");
    let after = send(&mut ws, "after the restart");
    let reply = call(&mut ws, json!({ "id": 3, "method": "sync", "params": { "since": cursor.to_string() } }));
    let got = ids_of(&reply);
    eprintln!(
        "clock_behind: restarted 60 s behind: message {after}, {} the cursor; sync from the cursor got {got:?}",
        if after > cursor { "above" } else { "at or below" }
    );
    assert!(after > cursor, "the new id {after} is at or below the cursor {cursor} handed out before the restart");
    assert_eq!(got, [after], "sync from the old cursor returns the new message");
    // And from the cursor that sync gave, the next message.
    let next = reply["result"]["next_since"].as_str().unwrap().to_string();
    let third = send(&mut ws, "and one more");
    let reply = call(&mut ws, json!({ "id": 4, "method": "sync", "params": { "since": next } }));
    assert_eq!(ids_of(&reply), [third]);
}

#[test]
fn a_pair_indexed_where_earlier_versions_put_it_keeps_its_channel() {
    use chatgw_gateway::placement::{legacy_pair_owner, pair_owner};
    use chatgw_idgen::{ChannelId, UserId};
    use chatgw_storage::{Store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let shards = 4;
    let mut node = serve_shards(dir.path(), "4", &["--rate-limit", "0"]);
    // A pair whose index the earlier placement put elsewhere than the
    // present one (about 3 pairs in 4 on 4 shards).
    let first = signup(node.addr, "legacy_first");
    let first_id = UserId(first["user_id"].as_str().unwrap().parse().unwrap());
    let (second_name, second_id) = (0..64)
        .find_map(|n| {
            let name = format!("legacy_second{n}");
            let id = UserId(signup(node.addr, &name)["user_id"].as_str().unwrap().parse().unwrap());
            (legacy_pair_owner(first_id, id, shards) != pair_owner(first_id, id, shards)).then_some((name, id))
        })
        .expect("a pair placed apart");
    // Their channel, with a message in it.
    let mut ws = connect(node.addr, first["token"].as_str().unwrap());
    let made = call(
        &mut ws,
        json!({ "id": 1, "method": "channel.create", "params": { "name": "theirs", "members": [second_name] } }),
    );
    let channel: u64 = made["result"]["channel"]["id"].as_str().unwrap().parse().unwrap();
    let sent = call(
        &mut ws,
        json!({ "id": 2, "method": "send", "params": { "channel_id": channel.to_string(), "text": "before" } }),
    );
    assert!(sent.get("result").is_some(), "{sent}");
    drop(ws);
    stop(&mut node);
    // The data as an earlier version left it: the pair's index at the
    // earlier place, naming that channel.
    {
        let store = Store::open(&StoreConfig::new(dir.path().join("db"), shards)).unwrap();
        let legacy = legacy_pair_owner(first_id, second_id, shards);
        let mut batch = store.batch();
        batch.put_direct(legacy, first_id, second_id, ChannelId(channel)).unwrap();
        store.write(batch).unwrap();
    }
    let node = serve_shards(dir.path(), "4", &["--rate-limit", "0"]);
    let mut ws = connect(node.addr, &login(node.addr, "legacy_first"));
    let sent =
        call(&mut ws, json!({ "id": 3, "method": "send", "params": { "to_user": second_name, "text": "after" } }));
    assert_eq!(sent["result"]["channel_id"], channel.to_string(), "{sent}");
    // And again, from the other side (the index was copied to the pair's
    // present owner on first use).
    let mut other = connect(node.addr, &login(node.addr, &second_name));
    let back =
        call(&mut other, json!({ "id": 4, "method": "send", "params": { "to_user": "legacy_first", "text": "back" } }));
    assert_eq!(back["result"]["channel_id"], channel.to_string(), "{back}");
    let history = call(
        &mut ws,
        json!({ "id": 5, "method": "history", "params": { "channel_id": channel.to_string(), "limit": 10 } }),
    );
    let texts: Vec<&str> = history["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 3, "{history}");
    for text in ["before", "after", "back"] {
        assert!(texts.contains(&text), "{text} missing: {history}");
    }
}

#[test]
fn read_pointers_edits_and_deletes_survive_a_sigkill_and_counts_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = serve_shards(dir.path(), "4", &["--rate-limit", "0"]);
    let ann = signup(node.addr, "count_ann");
    let bob = signup(node.addr, "count_bob");
    let mut ann_ws = connect(node.addr, ann["token"].as_str().unwrap());
    assert_eq!(read_json(&mut ann_ws).unwrap()["event"], "hello");
    let mut bob_ws = connect(node.addr, bob["token"].as_str().unwrap());
    assert_eq!(read_json(&mut bob_ws).unwrap()["event"], "hello");
    let mut sent = Vec::new();
    for (n, text) in ["one @count_bob", "two", "three @count_bob", "four", "five"].iter().enumerate() {
        let params = json!({ "to_user": "count_bob", "text": text });
        let reply = call(&mut ann_ws, json!({ "id": n, "method": "send", "params": params }));
        sent.push(reply["result"]["message_id"].as_str().expect("sent").to_string());
    }
    let channel =
        call(&mut ann_ws, json!({ "id": 9, "method": "channel.list" }))["result"]["channels"][0]["id"].clone();
    let read = json!({ "channel_id": channel, "message_id": sent[1] });
    assert_eq!(
        call(&mut bob_ws, json!({ "id": 1, "method": "channel.read", "params": read }))["result"]["read"],
        sent[1]
    );
    let deleted = json!({ "channel_id": channel, "message_id": sent[3] });
    assert!(
        call(&mut ann_ws, json!({ "id": 10, "method": "message.delete", "params": deleted })).get("result").is_some()
    );
    let edited = json!({ "channel_id": channel, "message_id": sent[4], "text": "five @count_bob" });
    assert!(call(&mut ann_ws, json!({ "id": 11, "method": "message.edit", "params": edited })).get("result").is_some());
    let counts =
        |ws: &mut tungstenite::WebSocket<TcpStream>| call(ws, json!({ "id": 2, "method": "counts" }))["result"].clone();
    let before = counts(&mut bob_ws);
    // Unread after the read: three and five (four is deleted); both mention bob.
    assert_eq!(before, json!({ "unread": 2, "unread_mentions": 2, "channels_unread": 1 }));
    node.child.kill().unwrap(); // SIGKILL: nothing gets written on the way out
    node.child.wait().unwrap();

    let node = serve_shards(dir.path(), "4", &["--rate-limit", "0"]);
    let mut bob_ws = connect(node.addr, &login(node.addr, "count_bob"));
    assert_eq!(read_json(&mut bob_ws).unwrap()["event"], "hello");
    assert_eq!(counts(&mut bob_ws), before, "the same counts after a restart");
    let history = call(&mut bob_ws, json!({ "id": 3, "method": "history", "params": { "channel_id": channel } }));
    let messages = history["result"]["messages"].as_array().unwrap().clone();
    assert_eq!(messages[3], json!({ "id": sent[3], "channel_id": channel, "deleted": true }));
    assert_eq!(messages[4]["text"], "five @count_bob");
    // The pointer still only moves forward.
    let older = json!({ "channel_id": channel, "message_id": sent[0] });
    assert_eq!(
        call(&mut bob_ws, json!({ "id": 4, "method": "channel.read", "params": older }))["result"]["read"],
        sent[1]
    );
}
