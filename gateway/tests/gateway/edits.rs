//! Edits and deletes over real WebSockets on four shards (more than the
//! cores): every device hears them, `history` shows the current text with
//! `edited_at` or a tombstone, who may edit or delete and within what
//! window, a device offline during edits and deletes of messages older than
//! its cursor converges through `sync` to exactly what `history` shows (in
//! a small channel, read from the inbox, and in a large one, read per
//! channel), and a deleted text is gone from the data directory's files
//! once compacted.

use std::collections::BTreeMap;
use std::time::Duration;

use chatgw_gateway::limits::INBOX_FAN_OUT_MEMBERS_MAX;
use serde_json::{Value, json};

use crate::common::{Client, TestServer, User, users, users_on_every_shard};

const SHARDS: u16 = 4;

fn send(client: &mut Client, channel: &str, text: &str) -> String {
    client.result("send", json!({ "channel_id": channel, "text": text }))["message_id"].as_str().unwrap().to_string()
}

fn edit(client: &mut Client, channel: &str, message: &str, text: &str) -> Value {
    client.call("message.edit", json!({ "channel_id": channel, "message_id": message, "text": text }))
}

fn delete(client: &mut Client, channel: &str, message: &str) -> Value {
    client.call("message.delete", json!({ "channel_id": channel, "message_id": message }))
}

fn error_of(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or_else(|| panic!("did not fail: {reply}"))
}

fn history(client: &mut Client, channel: &str) -> Vec<Value> {
    let page = client.result("history", json!({ "channel_id": channel, "limit": 200 }));
    page["messages"].as_array().unwrap().clone()
}

fn group(creator: &mut Client, members: &[&User]) -> String {
    let names: Vec<&str> = members.iter().map(|user| user.username.as_str()).collect();
    let made = creator.result("channel.create", json!({ "name": "crew", "members": names }));
    made["channel"]["id"].as_str().unwrap().to_string()
}

#[test]
fn edits_and_deletes_reach_every_device_and_history_shows_them() {
    let server = TestServer::start(SHARDS);
    let people = users_on_every_shard(&server, "ed", 3, SHARDS);
    let (ann, bob, eve) = (&people[0], &people[1], &people[2]);
    let mut phone = server.connect(ann, "phone");
    let mut laptop = server.connect(ann, "laptop");
    let mut watcher = server.connect(bob, "phone");
    let mut stranger = server.connect(eve, "phone");
    let channel = group(&mut phone, &[bob]);
    let first = send(&mut phone, &channel, "first");
    let second = send(&mut phone, &channel, "second");
    let third = send(&mut watcher, &channel, "bob's");

    let edited = edit(&mut phone, &channel, &first, "first, edited");
    let message = &edited["result"]["message"];
    assert_eq!((message["id"].as_str(), message["text"].as_str()), (Some(first.as_str()), Some("first, edited")));
    assert!(message["edited_at"].as_u64().is_some(), "{edited}");
    for device in [&mut phone, &mut laptop, &mut watcher] {
        assert_eq!(&device.next_event("message_edited"), message, "every device hears the edit");
    }
    assert_eq!(delete(&mut phone, &channel, &second)["result"], json!({}));
    let tombstone = json!({ "id": second, "channel_id": channel, "deleted": true });
    for device in [&mut phone, &mut laptop, &mut watcher] {
        assert_eq!(device.next_event("message_deleted"), tombstone);
    }

    // Who may: only the sender edits; the sender or the group's owner
    // deletes; strangers neither; a deleted message is gone for both.
    assert_eq!(error_of(&edit(&mut watcher, &channel, &first, "bob was here")), "forbidden");
    assert_eq!(error_of(&delete(&mut watcher, &channel, &first)), "forbidden");
    assert_eq!(error_of(&edit(&mut stranger, &channel, &third, "eve")), "forbidden");
    assert_eq!(error_of(&delete(&mut stranger, &channel, &third)), "forbidden");
    assert_eq!(error_of(&edit(&mut phone, &channel, &second, "back")), "not_found");
    assert_eq!(error_of(&delete(&mut phone, &channel, &second)), "not_found");
    assert_eq!(error_of(&edit(&mut phone, &channel, "12345", "none")), "not_found");
    assert_eq!(error_of(&edit(&mut phone, "12345", &first, "none")), "not_found");
    assert_eq!(error_of(&edit(&mut phone, &channel, &first, "")), "bad_request");
    let too_long = "x".repeat(100_001);
    assert_eq!(error_of(&edit(&mut phone, &channel, &first, &too_long)), "message_too_long");

    // History: the edit's text with edited_at, the tombstone in place.
    let shown = history(&mut watcher, &channel);
    assert_eq!(shown.len(), 3);
    assert_eq!(&shown[0], message);
    assert_eq!(shown[1], tombstone);
    assert_eq!((shown[2]["text"].as_str(), shown[2].get("edited_at")), (Some("bob's"), None));

    // The group's owner deletes a member's message.
    assert_eq!(delete(&mut phone, &channel, &third)["result"], json!({}));
    assert_eq!(watcher.next_event("message_deleted")["id"], third.as_str());

    // In a direct channel nobody but the sender deletes.
    let direct = phone.result("send", json!({ "to_user": bob.username, "text": "dm" }));
    let (direct_channel, direct_message) =
        (direct["channel_id"].as_str().unwrap().to_string(), direct["message_id"].as_str().unwrap().to_string());
    assert_eq!(error_of(&delete(&mut watcher, &direct_channel, &direct_message)), "forbidden");
    assert_eq!(delete(&mut phone, &direct_channel, &direct_message)["result"], json!({}));

    // Over HTTP, the same commands.
    let fourth = send(&mut phone, &channel, "fourth");
    let (status, body) = server.post_auth(
        "/v1/rpc/message.edit",
        &ann.token,
        &json!({ "channel_id": channel, "message_id": fourth, "text": "fourth, by http" }),
    );
    assert_eq!((status, body["result"]["message"]["text"].as_str()), (200, Some("fourth, by http")));
    let (status, _) =
        server.post_auth("/v1/rpc/message.delete", &bob.token, &json!({ "channel_id": channel, "message_id": fourth }));
    assert_eq!(status, 403);
}

#[test]
fn an_edit_past_the_window_is_refused_and_a_delete_is_not() {
    let server = TestServer::start_with(2, |config| config.edit_window_s = 1);
    let people = users(&server, "ew", 2);
    let mut phone = server.connect(&people[0], "phone");
    let channel = group(&mut phone, &[&people[1]]);
    let message = send(&mut phone, &channel, "soon too old");
    assert_eq!(edit(&mut phone, &channel, &message, "in time")["result"]["message"]["text"], "in time");
    std::thread::sleep(Duration::from_millis(1_300));
    let late = edit(&mut phone, &channel, &message, "too late");
    assert_eq!(error_of(&late), "bad_request");
    assert_eq!(late["error"]["message"], "a message can be edited only within 1 s of its sending");
    assert_eq!(delete(&mut phone, &channel, &message)["result"], json!({}));
}

/// A device's view of its channels as `sync` builds it: every message by
/// id, each change applied (its message as it is now).
#[derive(Default)]
struct Replica {
    messages: BTreeMap<u64, Value>,
    cursor: String,
}

impl Replica {
    fn sync(&mut self, client: &mut Client) {
        loop {
            let page = client.result("sync", json!({ "since": self.cursor, "limit": 3 }));
            for message in page["messages"].as_array().unwrap() {
                self.messages.insert(message["id"].as_str().unwrap().parse().unwrap(), message.clone());
            }
            let mut last_change = 0u64;
            for change in page.get("changes").and_then(Value::as_array).into_iter().flatten() {
                let id: u64 = change["id"].as_str().unwrap().parse().unwrap();
                assert!(id > last_change, "changes ascend by their own ids");
                last_change = id;
                let message_id: u64 = change["message_id"].as_str().unwrap().parse().unwrap();
                assert_eq!(change["message"]["id"], change["message_id"]);
                assert!(["edited", "deleted"].contains(&change["kind"].as_str().unwrap()), "{change}");
                self.messages.insert(message_id, change["message"].clone());
            }
            self.cursor = page["next_since"].as_str().unwrap().to_string();
            if page["has_more"] == false {
                return;
            }
        }
    }

    fn of(&self, channel: &str) -> Vec<Value> {
        self.messages.values().filter(|message| message["channel_id"] == channel).cloned().collect()
    }
}

/// Edits and deletes of messages older than a device's cursor, made while
/// it is away, reach it through `sync` from that cursor, in a channel of
/// `members` members besides its creator.
fn converges_through_sync(members: usize) {
    let server = TestServer::start(SHARDS);
    let people = users_on_every_shard(&server, "cv", members + 1, SHARDS);
    let (ann, others) = (&people[0], &people[1..=members]);
    let mut phone = server.connect(ann, "phone");
    let channel = group(&mut phone, &others.iter().collect::<Vec<_>>());
    let mut other = server.connect(&others[0], "phone");
    let ids: Vec<String> = (0..6).map(|n| send(&mut phone, &channel, &format!("m{n}"))).collect();
    let by_other = send(&mut other, &channel, "theirs");

    // The laptop syncs everything, then goes away.
    let mut laptop = server.connect(ann, "laptop");
    let mut replica = Replica { cursor: "0".into(), ..Replica::default() };
    replica.sync(&mut laptop);
    assert_eq!(replica.of(&channel).len(), 7);
    laptop.close();

    // While it is away: edits and deletes of messages older than its
    // cursor, an edit then a delete of one, a new message edited, and the
    // owner deleting another member's message.
    assert!(edit(&mut phone, &channel, &ids[0], "m0 edited").get("result").is_some());
    assert!(delete(&mut phone, &channel, &ids[1]).get("result").is_some());
    assert!(edit(&mut phone, &channel, &ids[2], "m2 edited").get("result").is_some());
    assert!(delete(&mut phone, &channel, &ids[2]).get("result").is_some());
    assert!(edit(&mut phone, &channel, &ids[3], "m3 edited once").get("result").is_some());
    assert!(edit(&mut phone, &channel, &ids[3], "m3 edited twice").get("result").is_some());
    let late = send(&mut phone, &channel, "late");
    assert!(edit(&mut phone, &channel, &late, "late, edited").get("result").is_some());
    assert!(delete(&mut phone, &channel, &by_other).get("result").is_some());

    let mut laptop = server.connect(ann, "laptop");
    replica.sync(&mut laptop);
    let shown = history(&mut laptop, &channel);
    assert_eq!(replica.of(&channel), shown, "the device converged to what history shows");
    let texts: Vec<Value> = shown.iter().map(|message| message.get("text").cloned().unwrap_or(json!(null))).collect();
    assert_eq!(
        texts,
        vec![
            json!("m0 edited"),
            json!(null),
            json!(null),
            json!("m3 edited twice"),
            json!("m4"),
            json!("m5"),
            json!(null),
            json!("late, edited")
        ]
    );
    // And a sync from the end brings nothing more.
    let again = laptop.result("sync", json!({ "since": replica.cursor }));
    assert_eq!((again["messages"].as_array().unwrap().len(), again.get("changes")), (0, None));
}

#[test]
fn a_device_offline_during_edits_and_deletes_converges_in_a_small_channel() {
    converges_through_sync(2);
}

#[test]
fn a_device_offline_during_edits_and_deletes_converges_in_a_large_channel() {
    converges_through_sync(INBOX_FAN_OUT_MEMBERS_MAX + 2);
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|window| window == needle) {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_deleted_text_is_gone_from_the_data_directory_once_compacted() {
    // Uncompressed table files, so that their bytes can be searched.
    let server = TestServer::start_with(2, |config| config.storage_compression = false);
    let people = users(&server, "gone", 2);
    let mut phone = server.connect(&people[0], "phone");
    let channel = group(&mut phone, &[&people[1]]);
    let kept = format!("kept-{}-words-that-stay", crate::common::now_ms());
    let secret = format!("secret-{}-words-that-go", crate::common::now_ms());
    send(&mut phone, &channel, &kept);
    let message = send(&mut phone, &channel, &secret);
    let edited = send(&mut phone, &channel, "an old text");
    assert!(edit(&mut phone, &channel, &edited, "a new text").get("result").is_some());
    assert_eq!(delete(&mut phone, &channel, &message)["result"], json!({}));

    // The operator's compaction flushes every memtable and rewrites every
    // table file: the overwritten records, and the logs that held them,
    // are gone.
    let token = server.handle.as_ref().unwrap().admin_token.clone();
    let response = server
        .http
        .post(server.url("/admin/v1/compact"))
        .header("Authorization", format!("Bearer {token}"))
        .send_empty()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = crate::common::admin_get(&server, "/admin/v1/compact");
        if status["running"] == false {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the compaction ends");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["last"]["ok"], true, "{status}");
    let path = server.dir.path().join("db");
    assert!(!files_holding(&path, kept.as_bytes()).is_empty(), "the search finds a text that is stored");
    assert_eq!(files_holding(&path, secret.as_bytes()), Vec::<std::path::PathBuf>::new(), "the deleted text");
    assert_eq!(files_holding(&path, b"an old text"), Vec::<std::path::PathBuf>::new(), "an edit's old text");
    // Still served as it was.
    let shown = history(&mut phone, &channel);
    assert_eq!(shown[1], json!({ "id": message, "channel_id": channel, "deleted": true }));
    assert_eq!(shown[2]["text"], "a new text");
}
