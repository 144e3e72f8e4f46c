//! Read receipts and unread counts over real WebSockets on four shards,
//! with several devices per user: a read on one device clears the count on
//! the other and sends it a `receipt`; pointers never move backward; counts
//! leave out the user's own messages and deleted ones, follow edits and
//! mentions, and start at the join for a member added to a channel with
//! history; reads kept private reach only the reader's devices, and a
//! group past the receipt bound hears none of them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Client, TestServer, users_on_every_shard};

const SHARDS: u16 = 4;
const QUIET: Duration = Duration::from_millis(300);

fn send(client: &mut Client, target: Value, text: &str) -> (String, String) {
    let mut params = target;
    params["text"] = json!(text);
    let sent = client.result("send", params);
    (sent["channel_id"].as_str().unwrap().to_string(), sent["message_id"].as_str().unwrap().to_string())
}

/// `(unread, unread_mentions)` of one channel in the caller's `channel.list`.
fn unread(client: &mut Client, channel: &str) -> (u64, u64) {
    let list = client.result("channel.list", json!({}));
    let entry = list["channels"].as_array().unwrap().iter().find(|entry| entry["id"] == channel).cloned();
    let entry = entry.unwrap_or_else(|| panic!("{channel} not in {list}"));
    (entry["unread"].as_u64().unwrap(), entry["unread_mentions"].as_u64().unwrap())
}

fn read(client: &mut Client, channel: &str, message: &str) -> Value {
    client.result("channel.read", json!({ "channel_id": channel, "message_id": message }))
}

fn no_receipt(client: &mut Client, why: &str) {
    if let Some(event) = client.next_event_within("receipt", QUIET) {
        panic!("{why}: got {event}");
    }
}

#[test]
fn a_read_on_one_device_clears_the_count_on_the_other_and_tells_the_pair() {
    let server = TestServer::start(SHARDS);
    let people = users_on_every_shard(&server, "rd", 2, SHARDS);
    let (ann, bob) = (&people[0], &people[1]);
    let mut phone = server.connect(ann, "phone");
    let mut laptop = server.connect(ann, "laptop");
    let mut other = server.connect(bob, "phone");
    let to_ann = json!({ "to_user": ann.username });
    let (direct, first) = send(&mut other, to_ann.clone(), &format!("hi @{}", ann.username));
    let (_, second) = send(&mut other, to_ann.clone(), "two");
    let (_, third) = send(&mut other, to_ann.clone(), "three");
    assert_eq!(unread(&mut laptop, &direct), (3, 1));
    assert_eq!(unread(&mut other, &direct), (0, 0), "one's own messages are never unread");
    let counts = laptop.result("counts", json!({}));
    assert_eq!(counts, json!({ "unread": 3, "unread_mentions": 1, "channels_unread": 1 }));

    // A read on the phone: the laptop and bob hear it, the phone does not.
    assert_eq!(read(&mut phone, &direct, &second), json!({ "channel_id": direct, "read": second }));
    let receipt =
        json!({ "channel_id": direct, "user_id": ann.user_id, "username": ann.username, "message_id": second });
    assert_eq!(laptop.next_event("receipt"), receipt);
    assert_eq!(other.next_event("receipt"), receipt);
    no_receipt(&mut phone, "the reading device has its reply");
    assert_eq!(unread(&mut laptop, &direct), (1, 0), "cleared on the other device, the mention with it");

    // A late, older read changes nothing and tells no one.
    assert_eq!(read(&mut laptop, &direct, &first), json!({ "channel_id": direct, "read": second }));
    no_receipt(&mut phone, "an older read");
    no_receipt(&mut other, "an older read");
    assert_eq!(unread(&mut phone, &direct), (1, 0));

    // Deleting the unread message clears it; an edit that mentions ann
    // counts as a mention; a new message of ann's own is not unread.
    assert_eq!(other.result("message.delete", json!({ "channel_id": direct, "message_id": third })), json!({}));
    assert_eq!(unread(&mut phone, &direct), (0, 0));
    let (_, fourth) = send(&mut other, to_ann.clone(), "four");
    assert_eq!(unread(&mut phone, &direct), (1, 0));
    let edit = json!({ "channel_id": direct, "message_id": fourth, "text": format!("four, @{}", ann.username) });
    other.result("message.edit", edit);
    assert_eq!(unread(&mut phone, &direct), (1, 1));
    send(&mut phone, json!({ "channel_id": direct }), "mine");
    assert_eq!(unread(&mut phone, &direct), (1, 1));

    // Refused: a message of another channel, a channel not the caller's.
    let (group, in_group) = {
        let made = other.result("channel.create", json!({ "name": "solo", "members": [] }));
        let id = made["channel"]["id"].as_str().unwrap().to_string();
        let (_, message) = send(&mut other, json!({ "channel_id": id }), "alone");
        (id, message)
    };
    let refused = phone.call("channel.read", json!({ "channel_id": group, "message_id": in_group }));
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let refused = phone.call("channel.read", json!({ "channel_id": direct, "message_id": in_group }));
    assert_eq!(refused["error"]["code"], "not_found", "{refused}");
    let refused = phone.call("channel.read", json!({ "channel_id": direct }));
    assert_eq!(refused["error"]["code"], "bad_request", "{refused}");
}

#[test]
fn private_reads_and_large_groups_keep_receipts_to_the_readers_devices() {
    let server = TestServer::start_with(SHARDS, |config| config.receipt_members_max = 2);
    let people = users_on_every_shard(&server, "rp", 3, SHARDS);
    let (ann, bob, cat) = (&people[0], &people[1], &people[2]);
    let mut ann_phone = server.connect(ann, "phone");
    let mut bob_phone = server.connect(bob, "phone");
    let mut bob_tablet = server.connect(bob, "tablet");

    // Bob keeps his reads private: only his own devices hear them.
    assert_eq!(bob_phone.result("settings.get", json!({})), json!({ "private_reads": false }));
    assert_eq!(bob_phone.result("settings.set", json!({ "private_reads": true })), json!({ "private_reads": true }));
    assert_eq!(bob_tablet.result("settings.get", json!({})), json!({ "private_reads": true }));
    let (direct, message) = send(&mut ann_phone, json!({ "to_user": bob.username }), "psst");
    read(&mut bob_phone, &direct, &message);
    assert_eq!(bob_tablet.next_event("receipt")["message_id"], message.as_str());
    no_receipt(&mut ann_phone, "bob's reads are private");

    // A group of three with a bound of two: ann's read reaches only her
    // own devices.
    let made = ann_phone.result("channel.create", json!({ "name": "three", "members": [bob.username, cat.username] }));
    let group = made["channel"]["id"].as_str().unwrap().to_string();
    let mut ann_laptop = server.connect(ann, "laptop");
    let (_, in_group) = send(&mut bob_phone, json!({ "channel_id": group }), "hello all");
    read(&mut ann_phone, &group, &in_group);
    assert_eq!(ann_laptop.next_event("receipt")["message_id"], in_group.as_str());
    no_receipt(&mut bob_phone, "past the group bound");
}

#[test]
fn a_member_added_to_a_channel_with_history_has_read_what_came_before() {
    let server = TestServer::start(SHARDS);
    let people = users_on_every_shard(&server, "rn", 3, SHARDS);
    let (ann, bob, cat) = (&people[0], &people[1], &people[2]);
    let mut ann_phone = server.connect(ann, "phone");
    let mut bob_phone = server.connect(bob, "phone");
    let made = ann_phone.result("channel.create", json!({ "name": "crew", "members": [bob.username] }));
    let group = made["channel"]["id"].as_str().unwrap().to_string();
    for n in 0..3 {
        send(&mut ann_phone, json!({ "channel_id": group }), &format!("old {n} @{}", cat.username));
    }
    assert_eq!(unread(&mut bob_phone, &group), (3, 0), "bob was a member all along");
    ann_phone.result("channel.add_members", json!({ "channel_id": group, "members": [cat.username] }));
    let mut cat_phone = server.connect(cat, "phone");
    assert_eq!(unread(&mut cat_phone, &group), (0, 0), "history from before the join is not unread");
    send(&mut ann_phone, json!({ "channel_id": group }), &format!("welcome @{}", cat.username));
    assert_eq!(unread(&mut cat_phone, &group), (1, 1));
    assert_eq!(unread(&mut bob_phone, &group), (4, 0));
}
