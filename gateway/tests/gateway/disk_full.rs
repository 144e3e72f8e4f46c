//! A full disk, for real: the data directory on a small tmpfs, filled up.
//! Sends are refused with `overloaded` and a message that names storage,
//! `/readyz` answers 503, nothing acknowledged is lost, and the server
//! recovers by itself once space returns. Mounting a tmpfs needs root (or
//! `sudo -n`); without it the test says so on stderr and checks nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::TestServer;

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
    sudo: bool,
}

impl Tmpfs {
    fn mount(megabytes: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={megabytes}m,mode=0700");
        let args = ["-t", "tmpfs", "-o", options.as_str(), "tmpfs"];
        let mounted = |program: &str, prefix: &[&str]| {
            Command::new(program)
                .args(prefix)
                .args(args)
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if mounted("mount", &[]) {
            return Some(Tmpfs { dir, sudo: false });
        }
        if mounted("sudo", &["-n", "mount"]) {
            return Some(Tmpfs { dir, sudo: true });
        }
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let (program, prefix): (&str, &[&str]) = if self.sudo { ("sudo", &["-n", "umount"]) } else { ("umount", &[]) };
        let _ = Command::new(program).args(prefix).arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes zeros into `path` until the file system refuses; returns how
/// many bytes it took.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 << 10];
    let mut written = 0u64;
    while let Ok(count) = file.write(&chunk) {
        if count == 0 {
            break;
        }
        written += count as u64;
    }
    let _ = file.sync_all();
    written
}

fn readyz(server: &TestServer) -> (u16, String) {
    server.get("/readyz")
}

#[test]
fn a_full_disk_refuses_sends_fails_readiness_and_recovers_when_space_returns() {
    let Some(disk) = Tmpfs::mount(48) else {
        eprintln!("disk_full: skipped: mounting a tmpfs needs root or sudo -n");
        return;
    };
    let data_dir: PathBuf = disk.path().join("data");
    let mut server = TestServer::start_with(1, |config| {
        config.data_dir = data_dir.clone();
        // A small memtable: RocksDB preallocates about this much log.
        config.write_buffer_bytes = 1 << 20;
    });
    let alice = server.signup("alice");
    server.signup("bob");
    let mut ws = server.connect(&alice, "phone");
    let mut acknowledged = Vec::new();
    let text = |n: usize| format!("{n:05} {}", "x".repeat(10_000));
    for n in 0..5 {
        acknowledged.push(ws.result("send", json!({ "to_user": "bob", "text": text(n) }))["message_id"].clone());
    }
    assert_eq!(readyz(&server).0, 200);

    let filler = disk.path().join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the filler took the free space");
    // Sends until the disk refuses one (the log's preallocated room goes
    // first): bounded in count.
    let mut refusal = None;
    for n in 5..5_000 {
        let reply = ws.call("send", json!({ "to_user": "bob", "text": text(n) }));
        if let Some(error) = reply.get("error") {
            refusal = Some(error.clone());
            break;
        }
        acknowledged.push(reply["result"]["message_id"].clone());
    }
    let refusal = refusal.expect("a full disk refuses a send");
    assert_eq!(refusal["code"], "overloaded", "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("storage"), "{refusal}");
    let (status, body) = readyz(&server);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage"), "{body}");
    // Another refusal, over HTTP this time; the connection stays open.
    let (status, body) = server.post_auth("/v1/rpc/send", &alice.token, &json!({ "to_user": "bob", "text": "full?" }));
    assert_eq!(status, 503, "{body}");
    assert_eq!(ws.result("heartbeat", json!({})), json!({}));

    // Space returns: the store resumes by itself, readiness with it.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(&server).0 != 200 {
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(data_dir.join("db/LOG")).unwrap_or_default();
            for line in log
                .lines()
                .filter(|line| line.contains("space") || line.contains("hard error") || line.contains("esum"))
            {
                eprintln!("LOG: {line}");
            }
        }
        assert!(Instant::now() < deadline, "ready again once space returned: {:?}", readyz(&server));
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = ws.result("send", json!({ "to_user": "bob", "text": "space is back" }));
    acknowledged.push(after["message_id"].clone());

    // Nothing acknowledged was lost.
    let mut stored: Vec<Value> = Vec::new();
    let mut since = "0".to_string();
    loop {
        let page = ws.result("sync", json!({ "since": since, "limit": 1000 }));
        stored.extend(page["messages"].as_array().unwrap().iter().map(|message| message["id"].clone()));
        since = page["next_since"].as_str().unwrap().to_string();
        if page["has_more"] == false {
            break;
        }
    }
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged {id} is stored");
    }
    server.stop();
}

/// Text that does not compress (the store's SSTs take as much room as the
/// log): `bytes` letters from a xorshift seeded with `seed`.
fn noise(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

/// Every message sync returns from `since` "0": (id, client_msg_id).
fn synced(ws: &mut crate::common::Client) -> Vec<(u64, String)> {
    let mut stored = Vec::new();
    let mut since = "0".to_string();
    for _ in 0..1_000 {
        let page = ws.result("sync", json!({ "since": since, "limit": 1000 }));
        for message in page["messages"].as_array().unwrap() {
            let id = message["id"].as_str().unwrap().parse().unwrap();
            stored.push((id, message["client_msg_id"].as_str().unwrap_or_default().to_string()));
        }
        since = page["next_since"].as_str().unwrap().to_string();
        if page["has_more"] == false {
            return stored;
        }
    }
    panic!("sync did not end in 1,000 pages");
}

/// What a send was answered.
enum Answer {
    Stored(u64),
    Failed(Value),
}

fn send(ws: &mut crate::common::Client, client_msg_id: &str, text: &str) -> Answer {
    let reply = ws.call("send", json!({ "to_user": "bob", "text": text, "client_msg_id": client_msg_id }));
    match reply.get("error") {
        Some(error) => Answer::Failed(error.clone()),
        None => Answer::Stored(reply["result"]["message_id"].as_str().unwrap().parse().unwrap()),
    }
}

/// The production default memtables (64 MiB, whose log RocksDB
/// preallocates at 1.1 times that) on a 96 MiB disk, filled by sends of
/// text that does not compress: RocksDB's own recovery waits for a
/// memtable's size of free space, which this disk never has again. The
/// node must resume within seconds of the space coming back, keep every
/// acknowledged message, and answer a failed send so that a retry with its
/// `client_msg_id` stores it exactly once; and no sync cursor handed out
/// while the failed sends' outcome was unknown may pass one of them.
#[test]
fn a_full_disk_with_default_memtables_recovers_within_seconds_and_a_failed_send_is_retried_once() {
    const RECOVERY: Duration = Duration::from_secs(20);
    let Some(disk) = Tmpfs::mount(96) else {
        eprintln!("disk_full: skipped: mounting a tmpfs needs root or sudo -n");
        return;
    };
    let data_dir: PathBuf = disk.path().join("data");
    let mut server = TestServer::start_with(1, |config| {
        config.data_dir = data_dir.clone();
        config.write_buffer_bytes = chatgw_gateway::Config::default().write_buffer_bytes;
    });
    let alice = server.signup("alice");
    server.signup("bob");
    let mut ws = server.connect(&alice, "phone");
    // The syncing device connects once sends fail (it reads nothing
    // until then, and would be closed as a slow consumer of the events).
    let mut sync_ws = None;
    let text = |n: u64| noise(n, 60_000);
    let mut acknowledged: Vec<(u64, String)> = Vec::new();

    // Sends fill the disk (a filler takes what the log left) until it
    // refuses several; a device syncs from its cursor meanwhile.
    let filler = disk.path().join("filler");
    let mut filled = 0;
    let mut failed: Vec<String> = Vec::new();
    let mut cursors_while_unknown: Vec<u64> = Vec::new();
    let mut cursor = "0".to_string();
    for n in 0..4_000u64 {
        if n == 20 {
            filled = fill(&filler);
        }
        let client_msg_id = format!("m{n}");
        match send(&mut ws, &client_msg_id, &text(n)) {
            Answer::Stored(id) => acknowledged.push((id, client_msg_id)),
            Answer::Failed(error) => {
                assert_eq!(error["code"], "overloaded", "{error}");
                assert!(error["message"].as_str().unwrap().contains("client_msg_id"), "{error}");
                failed.push(client_msg_id);
            }
        }
        if !failed.is_empty() {
            let sync_ws = sync_ws.get_or_insert_with(|| server.connect(&alice, "tablet"));
            let page = sync_ws.result("sync", json!({ "since": cursor, "limit": 1000 }));
            cursor = page["next_since"].as_str().unwrap().to_string();
            cursors_while_unknown.push(cursor.parse().unwrap());
            if failed.len() >= 5 {
                break;
            }
        }
    }
    eprintln!(
        "disk_full: filler {} MiB; {} sends acknowledged, then {} refused",
        filled >> 20,
        acknowledged.len(),
        failed.len()
    );
    assert!(failed.len() >= 5, "the full disk refused sends");
    let (status, body) = readyz(&server);
    assert_eq!(status, 503, "{body}");

    // Space comes back: within seconds the node is ready and sends pass.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut probe = 0;
    let recovered = loop {
        if readyz(&server).0 == 200 {
            probe += 1;
            let client_msg_id = format!("after-{probe}");
            if let Answer::Stored(id) = send(&mut ws, &client_msg_id, "space is back") {
                acknowledged.push((id, client_msg_id));
                break freed.elapsed();
            }
        }
        if freed.elapsed() > RECOVERY {
            let log = std::fs::read_to_string(data_dir.join("db/LOG")).unwrap_or_default();
            for line in log.lines().filter(|line| line.contains("disk buffer") || line.contains("hard error")).take(5) {
                eprintln!("LOG: {line}");
            }
            panic!("not recovered {RECOVERY:?} after space returned: /readyz {:?}", readyz(&server));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("disk_full: ready and storing again {recovered:?} after the filler went");
    let mut sync_ws = sync_ws.expect("connected at the first refusal");

    // What was refused is not stored below any cursor handed out while its
    // outcome was unknown; then each retry with its client_msg_id is
    // stored once.
    let stored = synced(&mut sync_ws);
    let highest_cursor = cursors_while_unknown.iter().copied().max().unwrap_or(0);
    for (id, client_msg_id) in &stored {
        if failed.contains(client_msg_id) {
            assert!(*id > highest_cursor, "refused {client_msg_id} stored at {id}, below a cursor {highest_cursor}");
        }
    }
    let landed = stored.iter().filter(|(_, client_msg_id)| failed.contains(client_msg_id)).count();
    for client_msg_id in &failed {
        let n: u64 = client_msg_id[1..].parse().unwrap();
        match send(&mut ws, client_msg_id, &text(n)) {
            Answer::Stored(id) => acknowledged.push((id, client_msg_id.clone())),
            Answer::Failed(error) => panic!("the retry of {client_msg_id} failed: {error}"),
        }
    }

    // Everything acknowledged is stored, and each refused send once.
    let stored = synced(&mut sync_ws);
    for (id, client_msg_id) in &acknowledged {
        assert!(stored.contains(&(*id, client_msg_id.clone())), "acknowledged {client_msg_id} ({id}) is stored");
    }
    for client_msg_id in &failed {
        let copies = stored.iter().filter(|(_, stored_id)| stored_id == client_msg_id).count();
        assert_eq!(copies, 1, "{client_msg_id} is stored once after its retry");
    }
    eprintln!(
        "disk_full: {} acknowledged all stored; of {} refused, {landed} had landed before their retry, each stored once",
        acknowledged.len(),
        failed.len()
    );
    server.stop();
}
