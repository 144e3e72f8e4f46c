//! Messaging against a real server: direct and group delivery across
//! shards, devices, history, sync, dedupe.

use std::time::Duration;

use crate::common::{TestServer, owner, users, users_on_every_shard};
use serde_json::{Value, json};

fn ids(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().map(|message| message["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_direct_message_crosses_shards_and_reaches_both_sides() {
    let server = TestServer::start(2);
    let people = users_on_every_shard(&server, "dm", 3, 2);
    // Two users owned by different shards.
    let alice = &people[0];
    let bob = people.iter().find(|user| owner(user, 2) != owner(alice, 2)).expect("users on both shards");
    let mut alice_ws = server.connect(alice, "phone");
    let mut bob_ws = server.connect(bob, "laptop");

    let sent = alice_ws.result("send", json!({ "to_user": bob.username, "text": "hi bob" }));
    assert_eq!(sent["duplicate"], false);
    let channel_id = sent["channel_id"].as_str().unwrap().to_string();
    let event = bob_ws.next_event("message");
    assert_eq!(event["id"], sent["message_id"]);
    assert_eq!(event["text"], "hi bob");
    assert_eq!(event["sender"], alice.username.as_str());
    assert_eq!(event["sender_id"], alice.user_id.as_str());
    assert_eq!(event["channel_id"], channel_id.as_str());
    // The sending device gets the event too.
    assert_eq!(alice_ws.next_event("message")["id"], sent["message_id"]);

    // The reply goes the other way through the same direct channel.
    let back = bob_ws.result("send", json!({ "to_user": alice.username, "text": "hi alice" }));
    assert_eq!(back["channel_id"], channel_id.as_str());
    assert_eq!(alice_ws.next_event("message")["text"], "hi alice");

    let info = bob_ws.result("channel.info", json!({ "channel_id": channel_id }));
    assert_eq!(info["channel"]["kind"], "direct");
    assert_eq!(info["channel"]["last_message_id"], back["message_id"]);
    let history = bob_ws.result("history", json!({ "channel_id": channel_id }));
    assert_eq!(
        ids(&history["messages"]),
        vec![sent["message_id"].as_str().unwrap(), back["message_id"].as_str().unwrap()]
    );
    // A third user may not read it.
    let carol = people.iter().find(|user| user.user_id != alice.user_id && user.user_id != bob.user_id).unwrap();
    let mut carol_ws = server.connect(carol, "d");
    assert_eq!(carol_ws.error_code("history", json!({ "channel_id": channel_id })), "forbidden");
    assert_eq!(carol_ws.error_code("send", json!({ "channel_id": channel_id, "text": "x" })), "forbidden");
    assert_eq!(carol_ws.error_code("send", json!({ "to_user": "nobody_here", "text": "x" })), "not_found");
}

#[test]
fn a_group_of_100_fans_out_to_every_connected_member_across_shards() {
    let server = TestServer::start(2);
    let members = users(&server, "grp", 100);
    let mut sockets: Vec<_> = members.iter().map(|user| server.connect(user, "d1")).collect();
    let names: Vec<&str> = members[1..].iter().map(|user| user.username.as_str()).collect();
    let created = sockets[0].result("channel.create", json!({ "name": "everyone", "members": names }));
    let channel = &created["channel"];
    assert_eq!(channel["members"].as_array().unwrap().len(), 100);
    assert_eq!(channel["owner_id"], members[0].user_id.as_str());
    let channel_id = channel["id"].as_str().unwrap().to_string();
    // Every member (not the creator's own reply) hears it was added.
    for socket in sockets.iter_mut().skip(1) {
        assert_eq!(socket.next_event("channel")["channel"]["id"], channel_id.as_str());
    }
    assert!(members.iter().any(|user| owner(user, 2) == 0) && members.iter().any(|user| owner(user, 2) == 1));

    for round in 0..3 {
        let sender = round * 37 % 100;
        let sent =
            sockets[sender].result("send", json!({ "channel_id": channel_id, "text": format!("round {round}") }));
        for socket in sockets.iter_mut() {
            let event = socket.next_event("message");
            assert_eq!(event["id"], sent["message_id"]);
            assert_eq!(event["text"], format!("round {round}"));
        }
    }
    // A 101st member is refused.
    let extra = server.signup("grp_extra");
    assert_eq!(
        sockets[0].error_code("channel.add_members", json!({ "channel_id": channel_id, "members": [extra.username] })),
        "channel_full"
    );
}

#[test]
fn every_device_of_a_user_gets_every_message() {
    let server = TestServer::start(2);
    let people = users(&server, "md", 2);
    let (alice, bob) = (&people[0], &people[1]);
    let mut phone = server.connect(alice, "phone");
    let mut laptop = server.connect(alice, "laptop");
    let mut bob_ws = server.connect(bob, "only");
    let sent = bob_ws.result("send", json!({ "to_user": alice.username, "text": "to both" }));
    assert_eq!(phone.next_event("message")["id"], sent["message_id"]);
    assert_eq!(laptop.next_event("message")["id"], sent["message_id"]);
    // Alice's own send from the phone reaches her laptop.
    let own = phone.result("send", json!({ "to_user": bob.username, "text": "from phone" }));
    assert_eq!(laptop.next_event("message")["id"], own["message_id"]);
    // A device that connects later gets new messages too (subscribed at connect).
    let mut tablet = server.connect(alice, "tablet");
    let later = bob_ws.result("send", json!({ "to_user": alice.username, "text": "later" }));
    assert_eq!(tablet.next_event("message")["id"], later["message_id"]);
}

#[test]
fn history_reads_newest_before_after_and_around() {
    let server = TestServer::start(2);
    let people = users(&server, "hist", 2);
    let mut alice = server.connect(&people[0], "d");
    let created = alice.result("channel.create", json!({ "name": "h", "members": [people[1].username] }));
    let channel_id = created["channel"]["id"].as_str().unwrap().to_string();
    let sent: Vec<String> = (0..10)
        .map(|n| {
            alice.result("send", json!({ "channel_id": channel_id, "text": format!("m{n}") }))["message_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let read = |alice: &mut crate::common::Client, params: Value| ids(&alice.result("history", params)["messages"]);
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id })), sent);
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id, "limit": 3 })), sent[7..]);
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id, "before": sent[5], "limit": 2 })), sent[3..5]);
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id, "after": sent[5], "limit": 2 })), sent[6..8]);
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id, "around": sent[5], "limit": 4 })), sent[3..7]);
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id, "before": sent[0] })), Vec::<String>::new());
    assert_eq!(read(&mut alice, json!({ "channel_id": channel_id, "after": sent[9] })), Vec::<String>::new());
    assert_eq!(alice.error_code("history", json!({ "channel_id": channel_id, "limit": 0 })), "bad_request");
    assert_eq!(alice.error_code("history", json!({ "channel_id": "12345" })), "not_found");
    let message = &alice.result("history", json!({ "channel_id": channel_id, "limit": 1 }))["messages"][0];
    assert_eq!(message["text"], "m9");
    assert_eq!(message["sender"], people[0].username.as_str());
}

#[test]
fn sync_after_a_reconnect_pages_through_everything_missed() {
    let server = TestServer::start(2);
    let people = users(&server, "sy", 3);
    let (alice, bob, carol) = (&people[0], &people[1], &people[2]);
    let mut alice_ws = server.connect(alice, "d");
    let group = alice_ws.result("channel.create", json!({ "name": "s", "members": [bob.username, carol.username] }));
    let group_id = group["channel"]["id"].as_str().unwrap().to_string();
    let mut bob_ws = server.connect(bob, "phone");
    let first = alice_ws.result("send", json!({ "channel_id": group_id, "text": "before" }));
    let cur_max = bob_ws.next_event("message")["id"].as_str().unwrap().to_string();
    assert_eq!(cur_max, first["message_id"].as_str().unwrap());
    drop(bob_ws);

    // While bob is away: 25 messages in the group and DMs from carol,
    // and one from bob's other device.
    let mut carol_ws = server.connect(carol, "d");
    let mut bob_tablet = server.connect(bob, "tablet");
    let mut missed = Vec::new();
    for n in 0..25u32 {
        let reply = if n.is_multiple_of(5) {
            carol_ws.result("send", json!({ "to_user": bob.username, "text": format!("dm {n}") }))
        } else if n == 7 {
            bob_tablet.result("send", json!({ "channel_id": group_id, "text": "own" }))
        } else {
            alice_ws.result("send", json!({ "channel_id": group_id, "text": format!("group {n}") }))
        };
        missed.push(reply["message_id"].as_str().unwrap().to_string());
    }

    let mut bob_ws = server.connect(bob, "phone");
    let mut since = cur_max;
    let mut got = Vec::new();
    loop {
        let page = bob_ws.result("sync", json!({ "since": since, "limit": 10 }));
        let page_ids = ids(&page["messages"]);
        got.extend(page_ids.iter().cloned());
        if page["has_more"] == false {
            break;
        }
        assert_eq!(page_ids.len(), 10);
        since = page_ids.last().unwrap().clone();
    }
    // Ids from different shards in one millisecond sort by worker, not by
    // send order: sync's contract is id order.
    missed.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(got, missed, "every missed message once, in id order");
    let all = bob_ws.result("sync", json!({ "since": "0" }));
    assert_eq!(all["messages"].as_array().unwrap().len(), 26);
    assert_eq!(all["has_more"], false);
}

#[test]
fn a_repeated_client_msg_id_answers_the_first_ids() {
    let server = TestServer::start(2);
    let people = users(&server, "dd", 2);
    let mut alice = server.connect(&people[0], "d");
    let mut bob = server.connect(&people[1], "d");
    let params = json!({ "to_user": people[1].username, "text": "once", "client_msg_id": "c-42" });
    let first = alice.result("send", params.clone());
    let again = alice.result("send", params.clone());
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["created_at"], first["created_at"]);
    // Pipelined duplicates: all answer the same id.
    let pipelined: Vec<u64> = (0..5).map(|_| alice.send_command("send", params.clone())).collect();
    for _ in &pipelined {
        let reply = alice.next_reply();
        assert_eq!(reply["result"]["message_id"], first["message_id"]);
    }
    assert_eq!(bob.next_event("message")["client_msg_id"], "c-42");
    let history = bob.result("history", json!({ "channel_id": first["channel_id"] }));
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn channel_membership_commands_and_events() {
    let server = TestServer::start(2);
    let people = users(&server, "ch", 4);
    let mut owner_ws = server.connect(&people[0], "d");
    let mut second = server.connect(&people[1], "d");
    let mut third = server.connect(&people[2], "d");
    let created = owner_ws.result("channel.create", json!({ "name": "team", "members": [people[1].username] }));
    let channel_id = created["channel"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["channel"]["kind"], "group");
    assert_eq!(second.next_event("channel")["kind"], "added");

    // Only the owner adds; the added member hears of it and gets messages.
    assert_eq!(
        second.error_code("channel.add_members", json!({ "channel_id": channel_id, "members": [people[2].username] })),
        "forbidden"
    );
    let added =
        owner_ws.result("channel.add_members", json!({ "channel_id": channel_id, "members": [people[2].username] }));
    assert_eq!(added["channel"]["members"].as_array().unwrap().len(), 3);
    assert_eq!(third.next_event("channel")["kind"], "added");
    let sent = owner_ws.result("send", json!({ "channel_id": channel_id, "text": "welcome" }));
    assert_eq!(third.next_event("message")["id"], sent["message_id"]);

    let list = third.result("channel.list", json!({}));
    assert!(list["channels"].as_array().unwrap().iter().any(|channel| channel["id"] == channel_id.as_str()));

    // Removal: the removed member hears it and gets nothing after.
    owner_ws.result("channel.remove_members", json!({ "channel_id": channel_id, "members": [people[2].username] }));
    assert_eq!(third.next_event("channel")["kind"], "removed");
    // Leave: the member goes, the owner may not leave while others stay.
    assert_eq!(second.result("channel.leave", json!({ "channel_id": channel_id })), json!({}));
    assert_eq!(second.next_event("channel")["kind"], "removed");
    let after = owner_ws.result("send", json!({ "channel_id": channel_id, "text": "alone" }));
    assert_eq!(owner_ws.next_event("message")["id"], sent["message_id"]);
    assert_eq!(owner_ws.next_event("message")["id"], after["message_id"]);
    assert_eq!(third.error_code("history", json!({ "channel_id": channel_id })), "forbidden");
    let info = owner_ws.result("channel.info", json!({ "channel_id": channel_id }));
    assert_eq!(info["channel"]["members"], json!([people[0].username]));
    // Nothing more reached the ones who left: their next frame is this reply.
    assert_eq!(third.result("heartbeat", json!({})), json!({}));
    assert_eq!(second.result("heartbeat", json!({})), json!({}));
    assert_eq!(
        owner_ws.error_code("channel.add_members", json!({ "channel_id": channel_id, "members": ["no_such_user"] })),
        "not_found"
    );
}

#[test]
fn a_client_msg_id_is_the_users_whatever_channel_a_retry_names() {
    let server = TestServer::start(2);
    let people = users(&server, "scope", 2);
    let (alice, bob) = (&people[0], &people[1]);
    let mut ws = server.connect(alice, "d");
    // Two channels whose owners differ (a channel is owned by the core
    // that made it; HTTP connections land on either core).
    let mut by_owner: std::collections::HashMap<u16, String> = std::collections::HashMap::new();
    for attempt in 0..40 {
        // A new HTTP connection each time: it may land on either core.
        let created: serde_json::Value = ureq::post(server.url("/v1/rpc/channel.create"))
            .header("Authorization", format!("Bearer {}", alice.token))
            .header("Connection", "close")
            .send_json(json!({ "name": format!("scope{attempt}"), "members": [bob.username] }))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let id = created["result"]["channel"]["id"].as_str().unwrap().to_string();
        by_owner.entry(chatgw_gateway::placement::owner(id.parse().unwrap(), 2).0).or_insert(id);
        if by_owner.len() == 2 {
            break;
        }
    }
    assert_eq!(by_owner.len(), 2, "channels on both shards");
    let (first, second) = (by_owner[&0].clone(), by_owner[&1].clone());
    let sent = ws.result("send", json!({ "channel_id": first, "text": "once", "client_msg_id": "same-id" }));
    assert_eq!(sent["duplicate"], false);
    let again = ws.result("send", json!({ "channel_id": second, "text": "once", "client_msg_id": "same-id" }));
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["message_id"], sent["message_id"]);
    assert_eq!(again["channel_id"], first.as_str(), "the first message's ids");
    let history = ws.result("history", json!({ "channel_id": second }));
    assert!(history["messages"].as_array().unwrap().is_empty(), "nothing new stored: {history}");
}

#[test]
fn channel_list_pages_through_many_channels_in_id_order() {
    let server = TestServer::start(2);
    let people = users(&server, "pager", 2);
    let mut owner_ws = server.connect(&people[0], "phone");
    let mut made: Vec<u64> = (0..7)
        .map(|n| {
            let created =
                owner_ws.result("channel.create", json!({ "name": format!("c{n}"), "members": [people[1].username] }));
            created["channel"]["id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    made.sort_unstable();
    let mut member_ws = server.connect(&people[1], "phone");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let params = match &after {
            Some(after) => json!({ "limit": 3, "after": after }),
            None => json!({ "limit": 3 }),
        };
        let page = member_ws.result("channel.list", params);
        let ids: Vec<u64> =
            page["channels"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().parse().unwrap()).collect();
        assert!(ids.len() <= 3);
        seen.extend(ids);
        if page["has_more"] == false {
            assert!(page.get("next_after").is_none());
            break;
        }
        after = Some(page["next_after"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, made, "every channel once, in id order");
    // No params: one page of up to 500, as before paging.
    let all = member_ws.result("channel.list", json!({}));
    assert_eq!((all["channels"].as_array().unwrap().len(), all["has_more"].as_bool()), (7, Some(false)));
    assert_eq!(member_ws.error_code("channel.list", json!({ "limit": 0 })), "bad_request");
    assert_eq!(member_ws.error_code("channel.list", json!({ "after": "x" })), "bad_request");
}

/// Cross-core messages the shards sent: the sum over kinds of
/// `chatgw_mesh_messages_total`, and the sum over targets in the admin
/// stats (both count every message sent on either mesh).
fn mesh_sent(server: &TestServer) -> (f64, u64) {
    let by_kind = crate::common::sample_sum(&crate::common::scrape(server), "chatgw_mesh_messages_total");
    (by_kind, crate::common::mesh_sent_total(server))
}

#[test]
fn a_senders_own_copy_and_its_reply_go_out_in_one_write() {
    // One shard: the pair's messages are stored on the core that holds
    // both connections. The sender's device gets its message's event and
    // then the reply; the reply is written by the command's task, which the
    // owner's task wakes as it ends, after it queued the event. The event's
    // wake waits for that task (`tasks::wake_soon`), so both go in one
    // write: two writes a message (the sender's, the recipient's), three
    // before.
    let server = TestServer::start(1);
    let people = users(&server, "onewrite", 2);
    let (alice, bob) = (&people[0], &people[1]);
    let mut alice_ws = server.connect(alice, "phone");
    let mut bob_ws = server.connect(bob, "laptop");
    alice_ws.result("send", json!({ "to_user": bob.username, "text": "first" }));
    bob_ws.next_event("message");
    alice_ws.next_event("message");
    let writes = || crate::common::sample_sum(&crate::common::scrape(&server), "chatgw_socket_writes_total");
    const MESSAGES: usize = 40;
    let before = writes();
    for n in 0..MESSAGES {
        alice_ws.result("send", json!({ "to_user": bob.username, "text": format!("m{n}") }));
        bob_ws.next_event("message");
    }
    let per_message = (writes() - before) / MESSAGES as f64;
    eprintln!("{per_message:.2} socket writes per 1:1 message");
    assert!(per_message >= 2.0, "{per_message}: every message reaches both sides");
    // (A slow machine may let a few go apart.)
    assert!(per_message <= 2.3, "{per_message} socket writes per 1:1 message");
    for n in 0..MESSAGES {
        let event = alice_ws.next_event("message");
        assert_eq!(event["text"], format!("m{n}"), "the sender's own copies, in order");
    }
}

#[test]
fn cross_core_messages_are_counted_by_kind_per_stored_message() {
    let server = TestServer::start(2);
    let people = users_on_every_shard(&server, "mesh", 4, 2);
    let alice = &people[0];
    let bob = people.iter().find(|user| owner(user, 2) != owner(alice, 2)).expect("users on both shards");
    let mut alice_ws = server.connect(alice, "phone");
    let mut bob_ws = server.connect(bob, "laptop");
    alice_ws.result("send", json!({ "to_user": bob.username, "text": "first" }));
    bob_ws.next_event("message");
    const MESSAGES: usize = 50;
    // Each way: from the user whose core stores the pair's messages, and
    // to it. Each scrape's own stats ask counts too (2 messages).
    for alice_sends in [true, false] {
        let (from, to) = if alice_sends { (alice, bob) } else { (bob, alice) };
        let (from_ws, to_ws) = if alice_sends { (&mut alice_ws, &mut bob_ws) } else { (&mut bob_ws, &mut alice_ws) };
        let writes =
            || crate::common::sample_sum(&crate::common::scrape(&server), "chatgw_storage_write_seconds_count");
        let writes_before = writes();
        let before = mesh_sent(&server);
        for n in 0..MESSAGES {
            from_ws.result("send", json!({ "to_user": to.username, "text": format!("m{n}") }));
            to_ws.next_event("message");
        }
        let after = mesh_sent(&server);
        // One WAL write a message: each pending push check's removal rides
        // in the next message's batch (the last one's goes alone).
        let writes_per_message = (writes() - writes_before) / MESSAGES as f64;
        eprintln!("{writes_per_message:.2} group commits per stored message");
        // (Two before; a slow machine may let a few riders go alone.)
        assert!(writes_per_message <= 1.5, "{writes_per_message} group commits a message");
        let per_message = (after.0 - before.0) / MESSAGES as f64;
        eprintln!(
            "{per_message:.2} cross-core messages per stored 1:1 message on 2 shards, {} (shard {}) to {} (shard {})",
            from.username,
            owner(from, 2),
            to.username,
            owner(to, 2)
        );
        assert!(per_message > 0.0, "a 1:1 across two owners crosses cores");
        // Two a message between users of two cores (the send and its
        // answer with the frame, or the frame with the push check and the
        // check's answer); three and more before they rode together.
        assert!(per_message <= 2.2, "{per_message} cross-core messages per 1:1 message");
    }
    let scrape = crate::common::scrape(&server);
    for kind in
        ["send", "other_call", "reply", "deliver", "subscription", "presence", "rate_check", "push_check", "hand_off"]
    {
        eprintln!("  {kind}: {}", mesh_kind_in(&scrape, kind));
    }
    let (by_kind, by_target) = mesh_sent(&server);
    assert!(by_kind >= by_target as f64 - 4.0 && by_kind <= by_target as f64 + 4.0, "{by_kind} by kind, {by_target}");
}

/// `chatgw_mesh_messages_total` of one kind, scraped now.
fn mesh_of_kind(server: &TestServer, kind: &str) -> f64 {
    mesh_kind_in(&crate::common::scrape(server), kind)
}

/// `chatgw_mesh_messages_total` of one kind in a scrape.
fn mesh_kind_in(scrape: &prometheus_parse::Scrape, kind: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "chatgw_mesh_messages_total")
        .filter(|sample| sample.labels.get("kind") == Some(kind))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value) => value,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn a_members_owner_answers_many_push_checks_in_one_message() {
    let server = TestServer::start(2);
    let people = users_on_every_shard(&server, "batch", 4, 2);
    let alice = &people[0];
    let bob = people.iter().find(|user| owner(user, 2) != owner(alice, 2)).expect("users on both shards");
    // The sender is the one whose core stores the pair (the owner of the
    // lower id): each frame to the other core carries its push check, and
    // the checks' answers come back.
    let id = |user: &crate::common::User| user.user_id.parse::<u64>().unwrap();
    let (from, to) = if id(alice) < id(bob) { (alice, bob) } else { (bob, alice) };
    let mut from_ws = server.connect(from, "phone");
    let mut to_ws = server.connect(to, "laptop");
    from_ws.result("send", json!({ "to_user": to.username, "text": "first" }));
    to_ws.next_event("message");
    const MESSAGES: usize = 60;
    let replies_before = mesh_of_kind(&server, "reply");
    let delivers_before = mesh_of_kind(&server, "deliver");
    for n in 0..MESSAGES {
        from_ws.send_command("send", json!({ "to_user": to.username, "text": format!("p{n}") }));
    }
    for _ in 0..MESSAGES {
        let reply = from_ws.next_reply();
        assert!(reply.get("error").is_none(), "{reply}");
        to_ws.next_event("message");
    }
    // The answers' wait (5 ms) passes, and the last batch goes.
    std::thread::sleep(Duration::from_millis(300));
    let delivers = mesh_of_kind(&server, "deliver") - delivers_before;
    // The scrapes' own stats asks answer with a reply each: 2 here.
    let replies = mesh_of_kind(&server, "reply") - replies_before - 2.0;
    eprintln!("{delivers} deliveries to the other core, {replies} answers to their push checks");
    assert_eq!(delivers, MESSAGES as f64, "one frame a message to the recipient's core");
    // One answer a message before they were gathered.
    assert!(replies <= MESSAGES as f64 / 2.0, "{replies} messages answered {MESSAGES} push checks");
    // And every check was answered: no pending check is left to retry.
    let retries = crate::common::sample_sum(&crate::common::scrape(&server), "chatgw_push_check_retries_total");
    assert_eq!(retries, 0.0, "push checks asked again");
}

#[test]
fn shards_that_spin_before_they_park_deliver_as_ever() {
    let server = TestServer::start_with(2, |config| config.spin_before_park_us = 200);
    let people = users_on_every_shard(&server, "spin", 2, 2);
    let alice = &people[0];
    let bob = people.iter().find(|user| owner(user, 2) != owner(alice, 2)).expect("users on both shards");
    let mut alice_ws = server.connect(alice, "phone");
    let mut bob_ws = server.connect(bob, "laptop");
    for n in 0..20 {
        alice_ws.result("send", json!({ "to_user": bob.username, "text": format!("s{n}") }));
        assert_eq!(bob_ws.next_event("message")["text"], format!("s{n}"));
    }
}
