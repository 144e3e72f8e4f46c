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
