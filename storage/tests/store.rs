//! Storage against a real RocksDB in a temp dir.

use chatgw_idgen::{ChannelId, MessageId, ShardId, UserId};
use chatgw_storage::{
    Change, ChangeKind, Channel, ChannelKind, DEDUPE_TTL_MS, DedupeEntry, Durability, InboxEntry, Message, OutboxEntry,
    PushDue, StorageError, Store, StoreConfig, User,
};

const SHARD: ShardId = ShardId(1);

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&StoreConfig::new(dir.path(), 2)).expect("open store")
}

fn message(channel: u64, id: u64) -> Message {
    Message {
        id: MessageId(id),
        channel_id: ChannelId(channel),
        sender_id: UserId(7),
        created_at_ms: 1_800_000_000_000 + id,
        client_msg_id: id.is_multiple_of(2).then(|| format!("c-{id}")),
        text: format!("message {id} ✓"),
        edited_at_ms: None,
        deleted_at_ms: None,
    }
}

fn append(store: &Store, channel: u64, ids: impl IntoIterator<Item = u64>) {
    let mut batch = store.batch();
    for id in ids {
        batch.put_message(SHARD, &message(channel, id)).unwrap();
    }
    store.write(batch).unwrap();
}

fn ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|message| message.id.0).collect()
}

#[test]
fn messages_round_trip_in_id_order_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Interleave three channels, written out of order.
    append(&store, 20, [30, 10, 20]);
    append(&store, 10, [15, 5]);
    append(&store, 30, [1]);
    assert_eq!(ids(&store.latest(SHARD, ChannelId(20), 50).unwrap()), [10, 20, 30]);
    assert_eq!(ids(&store.latest(SHARD, ChannelId(10), 50).unwrap()), [5, 15]);
    assert_eq!(store.latest(SHARD, ChannelId(20), 50).unwrap()[1], message(20, 20));
    assert_eq!(store.message(SHARD, ChannelId(30), MessageId(1)).unwrap(), Some(message(30, 1)));
    assert_eq!(store.message(SHARD, ChannelId(30), MessageId(2)).unwrap(), None);
    assert_eq!(store.last_message_id(SHARD, ChannelId(20)).unwrap(), Some(MessageId(30)));
    assert_eq!(store.last_message_id(SHARD, ChannelId(99)).unwrap(), None);
    // Other shard: nothing.
    assert!(store.latest(ShardId(0), ChannelId(20), 50).unwrap().is_empty());
}

#[test]
fn edits_and_deletes_rewrite_the_message_and_are_read_by_their_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    append(&store, 20, [10, 11]);
    let mut edited = message(20, 10);
    edited.text = "edited ✓".into();
    edited.edited_at_ms = Some(1_800_000_000_500);
    let mut deleted = message(20, 11);
    deleted.deleted_at_ms = Some(1_800_000_000_600);
    let edit =
        Change { id: MessageId(12), channel_id: ChannelId(20), message_id: MessageId(10), kind: ChangeKind::Edited };
    let delete =
        Change { id: MessageId(13), channel_id: ChannelId(20), message_id: MessageId(11), kind: ChangeKind::Deleted };
    let mut batch = store.batch();
    batch.put_message(SHARD, &edited).unwrap();
    batch.put_message(SHARD, &deleted).unwrap();
    batch.put_change(SHARD, &edit).unwrap();
    batch.put_change(SHARD, &delete).unwrap();
    batch.put_inbox(SHARD, UserId(7), MessageId(10), ChannelId(20)).unwrap();
    batch.put_inbox_change(SHARD, UserId(7), MessageId(12), ChannelId(20)).unwrap();
    store.write(batch).unwrap();

    assert_eq!(store.message(SHARD, ChannelId(20), MessageId(10)).unwrap(), Some(edited));
    let tombstone = store.message(SHARD, ChannelId(20), MessageId(11)).unwrap().unwrap();
    assert_eq!((tombstone.text.as_str(), tombstone.deleted_at_ms), ("", Some(1_800_000_000_600)), "no text kept");
    assert_eq!(ids(&store.latest(SHARD, ChannelId(20), 50).unwrap()), [10, 11], "changes are not messages");
    assert_eq!(store.change(SHARD, ChannelId(20), MessageId(12)).unwrap(), Some(edit));
    assert_eq!(store.change(SHARD, ChannelId(20), MessageId(10)).unwrap(), None);
    let all = store.change_ids(SHARD, ChannelId(20), MessageId(0), MessageId(u64::MAX), 10).unwrap();
    assert_eq!(all, [MessageId(12), MessageId(13)]);
    assert_eq!(store.change_ids(SHARD, ChannelId(20), MessageId(13), MessageId(20), 10).unwrap(), [MessageId(13)]);
    assert_eq!(store.change_ids(SHARD, ChannelId(20), MessageId(0), MessageId(12), 1).unwrap(), [MessageId(12)]);
    let inbox = store.inbox_after(SHARD, UserId(7), MessageId(0), 10).unwrap();
    assert_eq!(
        inbox,
        [
            InboxEntry { message_id: MessageId(10), channel_id: ChannelId(20), change: false },
            InboxEntry { message_id: MessageId(12), channel_id: ChannelId(20), change: true },
        ]
    );
}

#[test]
fn history_range_edges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let empty = ChannelId(1);
    assert!(store.latest(SHARD, empty, 10).unwrap().is_empty());
    assert!(store.before(SHARD, empty, MessageId(5), 10).unwrap().is_empty());
    assert!(store.after(SHARD, empty, MessageId(0), 10).unwrap().is_empty());
    assert!(store.around(SHARD, empty, MessageId(5), 10).unwrap().is_empty());

    // Channel 2 holds ids 10, 20, ..., 100; its neighbours hold messages too
    // so that a range overrunning its channel would show.
    append(&store, 1, [1000]);
    append(&store, 2, (1..=10).map(|n| n * 10));
    append(&store, 3, [1, 2]);
    let channel = ChannelId(2);
    assert_eq!(ids(&store.latest(SHARD, channel, 3).unwrap()), [80, 90, 100]);
    assert_eq!(ids(&store.before(SHARD, channel, MessageId(50), 2).unwrap()), [30, 40]);
    assert_eq!(ids(&store.before(SHARD, channel, MessageId(10), 5).unwrap()), Vec::<u64>::new(), "before the first");
    assert_eq!(ids(&store.before(SHARD, channel, MessageId(0), 5).unwrap()), Vec::<u64>::new());
    assert_eq!(ids(&store.before(SHARD, channel, MessageId(u64::MAX), 2).unwrap()), [90, 100]);
    assert_eq!(ids(&store.after(SHARD, channel, MessageId(50), 2).unwrap()), [60, 70]);
    assert_eq!(ids(&store.after(SHARD, channel, MessageId(100), 5).unwrap()), Vec::<u64>::new(), "after the last");
    assert_eq!(ids(&store.after(SHARD, channel, MessageId(0), 3).unwrap()), [10, 20, 30]);
    assert_eq!(ids(&store.after(SHARD, channel, MessageId(u64::MAX), 3).unwrap()), Vec::<u64>::new());
    // Around the middle: half older, the rest from it on.
    assert_eq!(ids(&store.around(SHARD, channel, MessageId(50), 4).unwrap()), [30, 40, 50, 60]);
    assert_eq!(ids(&store.around(SHARD, channel, MessageId(55), 4).unwrap()), [40, 50, 60, 70]);
    // Around the first and the last: the short side is made up from the other.
    assert_eq!(ids(&store.around(SHARD, channel, MessageId(10), 4).unwrap()), [10, 20, 30, 40]);
    assert_eq!(ids(&store.around(SHARD, channel, MessageId(100), 4).unwrap()), [70, 80, 90, 100]);
    assert_eq!(ids(&store.around(SHARD, channel, MessageId(100), 1).unwrap()), [100]);
    assert_eq!(ids(&store.around(SHARD, channel, MessageId(50), 200).unwrap()).len(), 10);
    // Ids from keys alone, either way, bounded at both ends and by the limit.
    let key_ids = |start: u64, end: u64, limit: usize| -> Vec<u64> {
        store
            .message_ids(SHARD, channel, MessageId(start), MessageId(end), limit)
            .unwrap()
            .iter()
            .map(|id| id.0)
            .collect()
    };
    assert_eq!(key_ids(25, 60, 10), [30, 40, 50, 60]);
    assert_eq!(key_ids(25, 60, 2), [30, 40]);
    assert_eq!(key_ids(60, 25, 10), [60, 50, 40, 30]);
    assert_eq!(key_ids(u64::MAX, 0, 3), [100, 90, 80]);
    assert_eq!(key_ids(0, u64::MAX, 3), [10, 20, 30]);
    assert_eq!(key_ids(101, u64::MAX, 3), Vec::<u64>::new(), "past the last, the next channel's keys are not read");
    assert_eq!(key_ids(9, 0, 3), Vec::<u64>::new(), "below the first");
    assert_eq!(key_ids(50, 50, 3), [50]);
}

#[test]
fn limits_and_shards_out_of_range_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(store.latest(SHARD, ChannelId(1), 0), Err(StorageError::InvalidLimit { .. })));
    assert!(matches!(store.latest(SHARD, ChannelId(1), 1_000_000), Err(StorageError::InvalidLimit { .. })));
    assert!(matches!(store.latest(ShardId(2), ChannelId(1), 5), Err(StorageError::NoSuchShard { .. })));
    let mut batch = store.batch();
    assert!(matches!(batch.put_message(ShardId(9), &message(1, 1)), Err(StorageError::NoSuchShard { .. })));
    let long_id = "x".repeat(200);
    assert!(matches!(
        store.dedupe(SHARD, UserId(1), &long_id, 0),
        Err(StorageError::InvalidKeyPart { what: "client_msg_id", .. })
    ));
}

#[test]
fn inbox_channels_users_direct_dedupe_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (alice, bob) = (UserId(11), UserId(12));
    let group = ChannelId(500);
    let mut batch = store.batch();
    for id in [3, 1, 2] {
        batch.put_inbox(SHARD, alice, MessageId(id), group).unwrap();
    }
    batch.put_inbox(SHARD, bob, MessageId(9), group).unwrap();
    let channel = Channel {
        id: group,
        name: "general".into(),
        kind: ChannelKind::Group,
        owner_id: alice,
        created_at_ms: 5,
        fan_out_on_read: false,
    };
    batch.put_channel(SHARD, &channel).unwrap();
    batch.add_member(SHARD, group, bob).unwrap();
    batch.add_member(SHARD, group, alice).unwrap();
    batch.put_user_channel(SHARD, alice, group, false).unwrap();
    batch.put_user_channel(SHARD, alice, ChannelId(600), true).unwrap();
    let user = User {
        id: alice,
        username: "alice".into(),
        display_name: "Alice".into(),
        password_hash: "$argon2id$...".into(),
        created_at_ms: 1,
        disabled: false,
    };
    batch.put_user(SHARD, &user).unwrap();
    batch.put_username(ShardId(0), "alice", alice).unwrap();
    batch.put_direct(SHARD, bob, alice, ChannelId(77)).unwrap();
    let dedupe = DedupeEntry { channel_id: group, message_id: MessageId(3), created_at_ms: 1_000 };
    batch.put_dedupe(SHARD, alice, "c-1", &dedupe).unwrap();
    for push_id in [30, 10, 20] {
        let entry =
            OutboxEntry { push_id, user_id: bob, channel_id: group, message_id: MessageId(push_id), created_at_ms: 9 };
        batch.put_outbox(SHARD, &entry).unwrap();
    }
    assert_eq!(batch.len(), 16);
    store.write(batch).unwrap();

    let inbox = store.inbox_after(SHARD, alice, MessageId(0), 10).unwrap();
    assert_eq!(inbox.iter().map(|entry| entry.message_id.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(inbox.iter().all(|entry| entry.channel_id == group));
    assert_eq!(store.inbox_after(SHARD, alice, MessageId(1), 1).unwrap()[0].message_id, MessageId(2));
    assert!(store.inbox_after(SHARD, alice, MessageId(3), 10).unwrap().is_empty());

    assert_eq!(store.channel(SHARD, group).unwrap(), Some(channel));
    assert_eq!(store.channel(SHARD, ChannelId(501)).unwrap(), None);
    assert_eq!(store.members(SHARD, group).unwrap(), [alice, bob]);
    assert_eq!(store.members_from(SHARD, group, UserId(0), 1).unwrap(), [alice], "a page of one");
    assert_eq!(store.members_from(SHARD, group, UserId(alice.0 + 1), 10).unwrap(), [bob], "the next page");
    assert!(store.members_from(SHARD, group, UserId(bob.0 + 1), 10).unwrap().is_empty());
    assert!(store.is_member(SHARD, group, bob).unwrap());
    assert!(!store.is_member(SHARD, group, UserId(13)).unwrap());
    let channels = store.user_channels(SHARD, alice).unwrap();
    assert_eq!(channels.len(), 2);
    assert!(!channels[0].fan_out_on_read && channels[1].fan_out_on_read);
    let mut seen = Vec::new();
    let found = store
        .any_user_channel(SHARD, alice, |channel| {
            seen.push(channel.0);
            channel == group
        })
        .unwrap();
    assert!(found);
    assert_eq!(seen, [500], "the scan stops at the first channel wanted");
    assert!(!store.any_user_channel(SHARD, alice, |channel| channel.0 == 601).unwrap());
    assert!(!store.any_user_channel(SHARD, bob, |_| true).unwrap(), "bob has no channel index here");
    assert_eq!(store.user(SHARD, alice).unwrap(), Some(user.clone()));
    assert_eq!(store.user_and_token_version(SHARD, alice).unwrap(), Some((user.clone(), 0)), "0 until raised");
    assert_eq!(store.user_and_token_version(SHARD, bob).unwrap(), None);
    // A password change writes the hash and the raised version in one
    // batch; the pair reads both.
    let changed = User { password_hash: "$argon2id$changed".into(), ..user.clone() };
    let mut batch = store.batch();
    batch.put_user(SHARD, &changed).unwrap();
    batch.put_token_version(SHARD, alice, 3).unwrap();
    store.write(batch).unwrap();
    assert_eq!(store.user_and_token_version(SHARD, alice).unwrap(), Some((changed, 3)));
    assert_eq!(store.token_version(SHARD, alice).unwrap(), 3);
    assert_eq!(store.user_id_by_name(ShardId(0), "alice").unwrap(), Some(alice));
    assert_eq!(store.user_id_by_name(ShardId(0), "alicia").unwrap(), None);
    assert_eq!(store.direct_channel(SHARD, alice, bob).unwrap(), Some(ChannelId(77)));

    assert_eq!(store.dedupe(SHARD, alice, "c-1", 2_000).unwrap(), Some(dedupe));
    assert_eq!(store.dedupe(SHARD, alice, "c-1", 1_000 + DEDUPE_TTL_MS + 1).unwrap(), None, "expired");
    assert_eq!(store.dedupe(SHARD, bob, "c-1", 2_000).unwrap(), None);

    let outbox = store.outbox(SHARD, 0, 10).unwrap();
    assert_eq!(outbox.iter().map(|entry| entry.push_id).collect::<Vec<_>>(), [10, 20, 30]);
    let mut batch = store.batch();
    batch.delete_outbox(SHARD, 20).unwrap();
    batch.remove_member(SHARD, group, bob).unwrap();
    batch.remove_user_channel(SHARD, alice, ChannelId(600)).unwrap();
    store.write(batch).unwrap();
    assert_eq!(store.outbox(SHARD, 10, 10).unwrap().iter().map(|entry| entry.push_id).collect::<Vec<_>>(), [30]);
    assert_eq!(store.members(SHARD, group).unwrap(), [alice]);
    assert_eq!(store.user_channels(SHARD, alice).unwrap().len(), 1);
}

#[test]
fn pending_push_checks_come_back_oldest_first_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let due = |message: u64| PushDue { message_id: MessageId(message), channel_id: ChannelId(7), sender_id: UserId(9) };
    let mut batch = store.batch();
    for message in [30, 10, 20] {
        batch.put_push_due(SHARD, &due(message)).unwrap();
    }
    store.write(batch).unwrap();
    assert_eq!(store.pushes_due(SHARD, MessageId(0), 10).unwrap(), [due(10), due(20), due(30)]);
    assert_eq!(store.pushes_due(SHARD, MessageId(0), 2).unwrap(), [due(10), due(20)]);
    assert_eq!(store.pushes_due(SHARD, MessageId(20), 2).unwrap(), [due(30)]);
    let mut batch = store.batch();
    batch.delete_push_due(SHARD, MessageId(10)).unwrap();
    store.write(batch).unwrap();
    assert_eq!(store.pushes_due(SHARD, MessageId(0), 10).unwrap(), [due(20), due(30)]);
    assert!(store.outbox(SHARD, 0, 10).unwrap().is_empty(), "a separate key range from the outbox");
}

#[test]
fn a_large_channel_keeps_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let channel = ChannelId(42);
    let mut batch = store.batch();
    for user in 1..=100_000u64 {
        batch.add_member(SHARD, channel, UserId(user)).unwrap();
    }
    store.write(batch).unwrap();
    let members = store.members(SHARD, channel).unwrap();
    assert_eq!(members.len(), 100_000);
    assert!(members.windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn reopen_keeps_data_and_refuses_another_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        append(&store, 5, [1, 2, 3]);
        let mut batch = store.batch();
        batch.set_high_water(SHARD, MessageId(3)).unwrap();
        store.write(batch).unwrap();
        store.put_meta("jwt-secret", b"s3cret").unwrap();
        assert_eq!(store.id_lease().unwrap(), None);
        store.set_id_lease(MessageId(40)).unwrap();
        store.set_id_lease(MessageId(90)).unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.id_lease().unwrap(), Some(MessageId(90)), "the id lease survives a reopen");
    assert_eq!(ids(&store.latest(SHARD, ChannelId(5), 10).unwrap()), [1, 2, 3]);
    assert_eq!(store.high_water(SHARD).unwrap(), Some(MessageId(3)));
    assert_eq!(store.high_water(ShardId(0)).unwrap(), None);
    assert_eq!(store.meta("jwt-secret").unwrap().as_deref(), Some(&b"s3cret"[..]));
    drop(store);
    let error = Store::open(&StoreConfig::new(dir.path(), 3)).unwrap_err();
    assert!(matches!(error, StorageError::ShardCountMismatch { stored: 2, configured: 3 }), "{error}");
    assert!(Store::open(&StoreConfig::new(dir.path(), 0)).is_err());
}

#[test]
fn fsync_durability_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path(), 1);
    config.durability = Durability::Fsync;
    let store = Store::open(&config).unwrap();
    assert_eq!(store.durability(), Durability::Fsync);
    let mut batch = store.batch();
    batch.put_message(ShardId(0), &message(1, 1)).unwrap();
    store.write(batch).unwrap();
    assert_eq!(store.latest(ShardId(0), ChannelId(1), 1).unwrap().len(), 1);
}

#[test]
fn a_second_open_of_the_same_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(&dir);
    let error = Store::open(&StoreConfig::new(dir.path(), 2)).unwrap_err();
    assert!(matches!(error, StorageError::Engine(_)), "{error}");
}
