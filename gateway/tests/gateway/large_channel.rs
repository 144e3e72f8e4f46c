//! A channel of 100,000 members, written through the storage API before the
//! server starts, with a few members connected: sends fan out to them, sync
//! reads the channel (fan-out on read), its shape lists the first members
//! and `channel.members` pages the rest, membership changes still work.

use crate::common::{TestServer, mesh_sent_total};
use chatgw_gateway::placement::{owner, username_owner};
use chatgw_idgen::{ChannelId, UserId};
use chatgw_storage::{Channel, ChannelKind, Store, StoreConfig, User};
use serde_json::json;

const SHARDS: u16 = 2;

const SECRET: &str = "a test secret of thirty-two bytes!";
const MEMBERS: u64 = 100_000;

fn user(id: u64, name: &str) -> User {
    User {
        id: UserId(id),
        username: name.into(),
        display_name: name.into(),
        password_hash: "unused: tokens are minted".into(),
        created_at_ms: 1,
        disabled: false,
    }
}

#[test]
fn a_channel_of_100_000_members_delivers_and_syncs() {
    // The data directory is written through the storage API first; the
    // server then opens it (the JWT secret is configured, so tests can mint
    // tokens for the users written here).
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let channel = ChannelId(7_000_000);
    let real = [(1_001u64, "big_alice"), (1_002, "big_bob"), (1_003, "big_carol")];
    {
        let store = Store::open(&StoreConfig::new(dir_path.join("db"), SHARDS)).unwrap();
        let channel_shard = owner(channel.0, SHARDS);
        let mut batch = store.batch();
        batch
            .put_channel(
                channel_shard,
                &Channel {
                    id: channel,
                    name: "everyone".into(),
                    kind: ChannelKind::Group,
                    owner_id: UserId(real[0].0),
                    created_at_ms: 1,
                    fan_out_on_read: true,
                },
            )
            .unwrap();
        for (id, name) in real {
            batch.put_user(owner(id, SHARDS), &user(id, name)).unwrap();
            batch.put_username(username_owner(name, SHARDS), name, UserId(id)).unwrap();
            batch.add_member(channel_shard, channel, UserId(id)).unwrap();
            batch.put_user_channel(owner(id, SHARDS), UserId(id), channel, true).unwrap();
        }
        for id in 10_000_000..10_000_000 + MEMBERS - 3 {
            batch.add_member(channel_shard, channel, UserId(id)).unwrap();
            batch.put_user_channel(owner(id, SHARDS), UserId(id), channel, true).unwrap();
        }
        store.write(batch).unwrap();
    }
    let mut server = TestServer::start_with(SHARDS, |config| {
        config.data_dir = dir_path.clone();
        config.jwt_secret = Some(SECRET.into());
        config.max_channel_members = 200_000;
    });
    let keys = chatgw_gateway::TokenKeys::new(SECRET.as_bytes());
    let connect = |server: &TestServer, (id, name): (u64, &str)| {
        let token = keys.mint(UserId(id), name, 600, 0).0;
        server.connect(&crate::common::User { username: name.into(), user_id: id.to_string(), token }, "d")
    };
    let mut alice = connect(&server, real[0]);
    let mut bob = connect(&server, real[1]);
    let mut carol = connect(&server, real[2]);
    let channel_id = channel.0.to_string();

    let sent = alice.result("send", json!({ "channel_id": channel_id, "text": "to a hundred thousand" }));
    for socket in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(socket.next_event("message")["id"], sent["message_id"]);
    }
    // No inbox entries for a large channel: sync reads the channel itself.
    let synced = bob.result("sync", json!({ "since": "0" }));
    assert_eq!(synced["messages"][0]["id"], sent["message_id"]);
    assert_eq!(synced["has_more"], false);
    // The shape lists the first members; channel.members pages the rest.
    let info = carol.result("channel.info", json!({ "channel_id": channel_id }));
    assert_eq!(info["channel"]["members"].as_array().unwrap().len(), 1_000);
    assert_eq!(info["channel"]["more_members"], true);
    assert!(carol.last_frame_bytes < 64 << 10, "{} bytes", carol.last_frame_bytes);
    let (mut counted, mut after) = (0, None::<String>);
    for _ in 0..200 {
        let mut params = json!({ "channel_id": channel_id, "limit": 1_000 });
        if let Some(after) = &after {
            params["after"] = json!(after);
        }
        let page = carol.result("channel.members", params);
        counted += page["members"].as_array().unwrap().len();
        if page["has_more"] == false {
            break;
        }
        after = Some(page["next_after"].as_str().unwrap().to_string());
    }
    assert_eq!(counted, MEMBERS as usize, "every member, a page at a time");

    // The owner removes a member: they hear it, the rest still get messages.
    alice.result("channel.remove_members", json!({ "channel_id": channel_id, "members": ["big_carol"] }));
    assert_eq!(carol.next_event("channel")["kind"], "removed");
    let next = alice.result("send", json!({ "channel_id": channel_id, "text": "one fewer" }));
    assert_eq!(bob.next_event("message")["id"], next["message_id"]);
    assert_eq!(carol.error_code("history", json!({ "channel_id": channel_id })), "forbidden");
    server.stop();
}

#[test]
fn a_user_in_10_000_channels_connects_with_a_few_words_to_each_owner() {
    const CHANNELS: u64 = 10_000;
    const SHARDS: u16 = 4;
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let (me, other) = ((2_001u64, "many_me"), (2_002u64, "many_other"));
    let first_channel = 8_000_000u64;
    {
        let store = Store::open(&StoreConfig::new(dir_path.join("db"), SHARDS)).unwrap();
        let mut batch = store.batch();
        for (id, name) in [me, other] {
            batch.put_user(owner(id, SHARDS), &user(id, name)).unwrap();
            batch.put_username(username_owner(name, SHARDS), name, UserId(id)).unwrap();
        }
        for id in first_channel..first_channel + CHANNELS {
            let channel = ChannelId(id);
            let channel_shard = owner(id, SHARDS);
            let record = Channel {
                id: channel,
                name: format!("c{id}"),
                kind: ChannelKind::Group,
                owner_id: UserId(other.0),
                created_at_ms: 1,
                fan_out_on_read: false,
            };
            batch.put_channel(channel_shard, &record).unwrap();
            for member in [me.0, other.0] {
                batch.add_member(channel_shard, channel, UserId(member)).unwrap();
                batch.put_user_channel(owner(member, SHARDS), UserId(member), channel, false).unwrap();
            }
        }
        store.write(batch).unwrap();
    }
    let mut server = TestServer::start_with(SHARDS, |config| {
        config.data_dir = dir_path.clone();
        config.jwt_secret = Some(SECRET.into());
    });
    let keys = chatgw_gateway::TokenKeys::new(SECRET.as_bytes());
    let login = |(id, name): (u64, &str)| crate::common::User {
        username: name.into(),
        user_id: id.to_string(),
        token: keys.mint(UserId(id), name, 600, 0).0,
    };
    let (me, other) = (login(me), login(other));

    let before = mesh_sent_total(&server);
    let started = std::time::Instant::now();
    let mut device = server.connect(&me, "phone");
    let hello_after = started.elapsed();
    let words = mesh_sent_total(&server) - before;
    eprintln!("hello after {hello_after:?} for a user in {CHANNELS} channels; {words} cross-core messages");
    // Three quarters of the channels have another owner than the core the
    // connection landed on: one word per 1,024 of them and its answer, the
    // presence word and its answer, the stats asks. One word per channel
    // was 7,500 and as many answers.
    assert!(words < 100, "{words} cross-core messages for one connect");

    // Every channel was subscribed: a message to the last one, and to the
    // first, arrives.
    for id in [first_channel + CHANNELS - 1, first_channel] {
        let (status, body) =
            server.post_auth("/v1/rpc/send", &other.token, &json!({ "channel_id": id.to_string(), "text": "hi" }));
        assert_eq!(status, 200, "{body}");
        assert_eq!(device.next_event("message")["channel_id"], id.to_string());
    }
    // And the connection leaves them all when it goes: a second device
    // comes and goes on the same terms.
    device.close();
    let mut again = server.connect(&me, "laptop");
    let (status, _) = server.post_auth(
        "/v1/rpc/send",
        &other.token,
        &json!({ "channel_id": first_channel.to_string(), "text": "back" }),
    );
    assert_eq!(status, 200);
    assert_eq!(again.next_event("message")["text"], "back");
    server.stop();
}

#[test]
fn a_connection_watches_at_most_1000_users() {
    const SHARDS: u16 = 2;
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let names: Vec<String> = (0..1_001).map(|n| format!("watched_{n}")).collect();
    {
        let store = Store::open(&StoreConfig::new(dir_path.join("db"), SHARDS)).unwrap();
        let mut batch = store.batch();
        for (n, name) in names.iter().enumerate() {
            let id = 3_000_000 + n as u64;
            batch.put_user(owner(id, SHARDS), &user(id, name)).unwrap();
            batch.put_username(username_owner(name, SHARDS), name, UserId(id)).unwrap();
        }
        store.write(batch).unwrap();
    }
    let mut server = TestServer::start_with(SHARDS, |config| {
        config.data_dir = dir_path.clone();
        config.jwt_secret = Some(SECRET.into());
    });
    let keys = chatgw_gateway::TokenKeys::new(SECRET.as_bytes());
    let watcher = crate::common::User {
        username: names[0].clone(),
        user_id: 3_000_000.to_string(),
        token: keys.mint(UserId(3_000_000), &names[0], 600, 0).0,
    };
    let mut ws = server.connect(&watcher, "phone");
    // 1,000 at once is the most one command names, and fits.
    let first = ws.result("presence.subscribe", json!({ "users": names[..1_000] }));
    assert_eq!(first["presence"].as_array().unwrap().len(), 1_000);
    // Again: nothing new, still fine.
    ws.result("presence.subscribe", json!({ "users": names[..10] }));
    // One more is past the bound, with a clear message.
    let reply = ws.call("presence.subscribe", json!({ "users": [names[1_000]] }));
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("at most 1000"), "{reply}");
    // After an unsubscribe there is room.
    ws.result("presence.unsubscribe", json!({ "users": [names[0]] }));
    ws.result("presence.subscribe", json!({ "users": [names[1_000]] }));
    server.stop();
}

#[test]
fn channel_list_pages_end_at_the_reply_budget() {
    // A user in 600 groups of 100 members with 32-character names: one
    // page of every channel was a frame of 2.06 MiB, past the 2 MiB that
    // clients are told to accept.
    const SHARDS: u16 = 2;
    const GROUPS: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let me = (4_000_000u64, "list_me".to_string());
    let others: Vec<(u64, String)> =
        (0..99).map(|n| (4_000_001 + n, format!("member_with_a_long_name_{n:08}"))).collect();
    assert_eq!(others[0].1.len(), 32);
    {
        let store = Store::open(&StoreConfig::new(dir_path.join("db"), SHARDS)).unwrap();
        let mut batch = store.batch();
        for (id, name) in std::iter::once(&me).chain(&others) {
            batch.put_user(owner(*id, SHARDS), &user(*id, name)).unwrap();
            batch.put_username(username_owner(name, SHARDS), name, UserId(*id)).unwrap();
        }
        for id in 9_000_000..9_000_000 + GROUPS {
            let channel = ChannelId(id);
            let channel_shard = owner(id, SHARDS);
            let record = Channel {
                id: channel,
                name: format!("g{id}"),
                kind: ChannelKind::Group,
                owner_id: UserId(me.0),
                created_at_ms: 1,
                fan_out_on_read: true,
            };
            batch.put_channel(channel_shard, &record).unwrap();
            for (member, _) in std::iter::once(&me).chain(&others) {
                batch.add_member(channel_shard, channel, UserId(*member)).unwrap();
            }
            batch.put_user_channel(owner(me.0, SHARDS), UserId(me.0), channel, true).unwrap();
        }
        store.write(batch).unwrap();
    }
    let mut server = TestServer::start_with(SHARDS, |config| {
        config.data_dir = dir_path.clone();
        config.jwt_secret = Some(SECRET.into());
    });
    let keys = chatgw_gateway::TokenKeys::new(SECRET.as_bytes());
    let token = keys.mint(UserId(me.0), &me.1, 600, 0).0;
    let mut ws = server.connect(&crate::common::User { username: me.1.clone(), user_id: me.0.to_string(), token }, "d");
    let (mut seen, mut pages, mut after) = (0usize, 0, None::<String>);
    loop {
        let mut params = json!({ "limit": 1_000 });
        if let Some(after) = &after {
            params["after"] = json!(after);
        }
        let page = ws.result("channel.list", params);
        pages += 1;
        assert!(ws.last_frame_bytes < 2 << 20, "page {pages}: a frame of {} bytes", ws.last_frame_bytes);
        let channels = page["channels"].as_array().unwrap();
        assert!(channels.iter().all(|channel| channel["members"].as_array().unwrap().len() == 100));
        seen += channels.len();
        if page["has_more"] == false {
            break;
        }
        after = Some(page["next_after"].as_str().unwrap().to_string());
        assert!(pages < 10, "pages end");
    }
    assert_eq!(seen, GROUPS as usize, "every channel, over {pages} pages");
    assert!(pages >= 2, "one page would pass the budget");
    server.stop();
}
