//! A writer process killed with SIGKILL loses no acknowledged write.
//!
//! The test re-runs its own binary as the writer (selected by an
//! environment variable): it prints each message id once `Store::write`
//! returns, in `wal` mode; the parent kills it mid-stream and reopens.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{Message, Store, StoreConfig};

const WRITER_DIR_ENV: &str = "CHATGW_CRASH_WRITER_DIR";
const CHANNEL: ChannelId = ChannelId(9);

/// The writer: runs only in the child.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(WRITER_DIR_ENV) else { return };
    let store = Store::open(&StoreConfig::new(dir, 1)).unwrap();
    // Bounded: the parent kills it long before this runs out.
    for id in 1..=1_000_000u64 {
        let mut batch = store.batch();
        batch
            .put_message(
                ShardId(0),
                &Message {
                    id: MessageId(id),
                    channel_id: CHANNEL,
                    sender_id: UserId(1),
                    created_at_ms: id,
                    client_msg_id: None,
                    text: format!("acknowledged {id}"),
                    edited_at_ms: None,
                    deleted_at_ms: None,
                },
            )
            .unwrap();
        store.write(batch).unwrap();
        println!("\nack={id}");
    }
}

/// The id of an `ack=N` line (libtest may print its own text before it).
fn acked_id(line: &str) -> Option<u64> {
    line.split("ack=").nth(1)?.trim().parse().ok()
}

#[test]
fn sigkill_after_wal_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_writer_child", "--nocapture", "--test-threads=1"])
        .env(WRITER_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = 0u64;
    while acknowledged < 2_000 {
        let line = lines.next().expect("writer ended early").unwrap();
        if let Some(id) = acked_id(&line) {
            assert_eq!(id, acknowledged + 1);
            acknowledged = id;
        }
    }
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    // Any id printed after our last read was acknowledged too; count them.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = acked_id(&line) {
            acknowledged = acknowledged.max(id);
        }
    }

    let store = Store::open(&StoreConfig::new(dir.path(), 1)).unwrap();
    let stored = store.after(ShardId(0), CHANNEL, MessageId(0), 10_000).unwrap();
    assert!(stored.len() as u64 >= acknowledged, "{} stored, {acknowledged} acknowledged", stored.len());
    for (index, message) in stored.iter().enumerate().take(acknowledged as usize) {
        assert_eq!(message.id, MessageId(index as u64 + 1));
        assert_eq!(message.text, format!("acknowledged {}", index + 1));
    }
}
