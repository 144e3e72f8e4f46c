//! Every JSON shape the gateway sends (protocol §2 to §4): replies, events
//! and what they carry, and the push webhook's body. Built here only, so
//! the wire's field names live in one file.

use bytes::Bytes;
use chatgw_idgen::{ChannelId, MessageId, UserId};
use chatgw_storage::{Change, ChangeKind, Channel, ChannelKind, Message};
use serde::Serialize;
use serde::ser::Serializer;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::protocol::frame;

/// A reply, borrowed: `{"id", "result"}` or `{"id", "error"}`.
#[derive(Serialize)]
struct Reply<'a> {
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

/// An event, borrowed: `{"event", "data"}`.
#[derive(Serialize)]
struct Event<'a, D: Serialize> {
    event: &'a str,
    data: &'a D,
}

/// An id as the wire writes it: a decimal string.
fn decimal<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

/// A `Message` shape, borrowed from the stored message (what an event
/// writes without building a `Value`).
#[derive(Serialize)]
struct MessageShape<'a> {
    #[serde(serialize_with = "decimal")]
    id: &'a u64,
    #[serde(serialize_with = "decimal")]
    channel_id: &'a u64,
    #[serde(serialize_with = "decimal")]
    sender_id: &'a u64,
    sender: &'a str,
    text: &'a str,
    created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<u64>,
}

/// A deleted message's place: `{id, channel_id, deleted: true}`.
#[derive(Serialize)]
struct TombstoneShape<'a> {
    #[serde(serialize_with = "decimal")]
    id: &'a u64,
    #[serde(serialize_with = "decimal")]
    channel_id: &'a u64,
    deleted: bool,
}

impl<'a> TombstoneShape<'a> {
    fn of(message: &'a Message) -> Self {
        TombstoneShape { id: &message.id.0, channel_id: &message.channel_id.0, deleted: true }
    }
}

impl<'a> MessageShape<'a> {
    fn of(message: &'a Message, sender: &'a str) -> Self {
        MessageShape {
            id: &message.id.0,
            channel_id: &message.channel_id.0,
            sender_id: &message.sender_id.0,
            sender,
            text: &message.text,
            created_at: message.created_at_ms,
            client_msg_id: message.client_msg_id.as_deref(),
            edited_at: message.edited_at_ms,
        }
    }
}

/// Writes `value`'s JSON into a frame's buffer.
fn write_json(buffer: &mut Vec<u8>, value: &impl Serialize) {
    serde_json::to_writer(buffer, value).expect("these shapes always serialize");
}

/// A reply frame, encoded once into its frame: `{"id", "result"}` or
/// `{"id", "error"}`.
pub fn reply_frame(id: &Value, result: &Result<Value, ApiError>) -> Bytes {
    let reply = match result {
        Ok(result) => Reply { id, result: Some(result), error: None },
        Err(error) => Reply { id, result: None, error: Some(error.to_json()) },
    };
    frame::text_with(|buffer| write_json(buffer, &reply))
}

/// An event frame, encoded once into its frame: `{"event", "data"}`.
pub fn event_frame(event: &str, data: &impl Serialize) -> Bytes {
    frame::text_with(|buffer| write_json(buffer, &Event { event, data }))
}

/// The `message` event's frame, written from the stored message itself.
pub fn message_event_frame(message: &Message, sender: &str) -> Bytes {
    event_frame("message", &MessageShape::of(message, sender))
}

/// The `typing` event's data: `{channel_id, user_id, username, state}`.
#[derive(Serialize)]
struct TypingShape<'a> {
    #[serde(serialize_with = "decimal")]
    channel_id: &'a u64,
    #[serde(serialize_with = "decimal")]
    user_id: &'a u64,
    username: &'a str,
    state: &'a str,
}

/// The `typing` event's frame: `user` (named `username`) started typing
/// in `channel`, or stopped (`start` false: by a `stop`, or the server's
/// expiry).
pub fn typing_event_frame(channel: ChannelId, user: UserId, username: &str, start: bool) -> Bytes {
    let state = if start { "start" } else { "stop" };
    event_frame("typing", &TypingShape { channel_id: &channel.0, user_id: &user.0, username, state })
}

/// The `receipt` event's frame: `user` (named `username`) has read
/// `channel` up to `message`.
pub fn receipt_event_frame(channel: ChannelId, user: UserId, username: &str, message: MessageId) -> Bytes {
    event_frame(
        "receipt",
        &json!({
            "channel_id": channel.to_string(),
            "user_id": user.to_string(),
            "username": username,
            "message_id": message.to_string(),
        }),
    )
}

/// A `Message` shape (with `edited_at` once edited), or a deleted
/// message's tombstone `{id, channel_id, deleted: true}`.
pub fn message_json(message: &Message, sender: &str) -> Value {
    let value = if message.deleted_at_ms.is_some() {
        serde_json::to_value(TombstoneShape::of(message))
    } else {
        serde_json::to_value(MessageShape::of(message, sender))
    };
    value.expect("a message always serializes")
}

/// The `message_edited` event's frame: the message as it is now.
pub fn message_edited_frame(message: &Message, sender: &str) -> Bytes {
    event_frame("message_edited", &MessageShape::of(message, sender))
}

/// The `message_deleted` event's frame: the message's tombstone.
pub fn message_deleted_frame(message: &Message) -> Bytes {
    event_frame("message_deleted", &TombstoneShape::of(message))
}

/// One entry of `sync`'s `changes`: the change's own id (ordered with
/// messages' ids), what it did, and the message as it is now (its
/// `Message` shape, or its tombstone), so that a device that applies the
/// changes it gets converges to what `history` shows.
pub fn change_json(change: &Change, message_now: Value) -> Value {
    json!({
        "id": change.id.to_string(),
        "kind": match change.kind { ChangeKind::Edited => "edited", ChangeKind::Deleted => "deleted" },
        "channel_id": change.channel_id.to_string(),
        "message_id": change.message_id.to_string(),
        "message": message_now,
    })
}

/// The result of `send`: the stored message's id, channel and time, and
/// whether it was a duplicate of an earlier send with its `client_msg_id`.
pub fn sent_json(message: &Message, duplicate: bool) -> Value {
    json!({
        "message_id": message.id.to_string(),
        "channel_id": message.channel_id.to_string(),
        "created_at": message.created_at_ms,
        "duplicate": duplicate,
    })
}

/// A `Channel` shape, with its members' usernames.
pub fn channel_json(channel: &Channel, members: &[String], last_message_id: Option<MessageId>) -> Value {
    let mut value = json!({
        "id": channel.id.to_string(),
        "name": channel.name,
        "kind": match channel.kind { ChannelKind::Direct => "direct", ChannelKind::Group => "group" },
        "owner_id": channel.owner_id.to_string(),
        "members": members,
        "created_at": channel.created_at_ms,
    });
    if let Some(id) = last_message_id {
        value["last_message_id"] = json!(id.to_string());
    }
    value
}

/// The `channel` event's data: what changed (`added`, `removed`) and the
/// channel's `Channel` shape.
pub fn channel_event_json(kind: &str, channel: &Value) -> Value {
    json!({ "kind": kind, "channel": channel })
}

/// A `Presence` shape.
pub fn presence_json(user_id: UserId, username: &str, online: bool, last_active_ms: u64) -> Value {
    json!({
        "user_id": user_id.to_string(),
        "username": username,
        "status": if online { "online" } else { "offline" },
        "last_active_at": last_active_ms,
    })
}

/// What a connection is told first: the `hello` event's data.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// The user.
    pub user_id: UserId,
    /// The username.
    pub username: &'a str,
    /// The device (given, or made up at the upgrade).
    pub device: &'a str,
    /// This node's name.
    pub node: &'a str,
    /// How often the client must send something.
    pub heartbeat_ms: u64,
    /// The longest text accepted.
    pub max_message_chars: usize,
}

/// The `hello` event's data.
pub fn hello_json(hello: &Hello<'_>) -> Value {
    json!({
        "user_id": hello.user_id.to_string(),
        "username": hello.username,
        "device": hello.device,
        "node": hello.node,
        "heartbeat_ms": hello.heartbeat_ms,
        "max_message_chars": hello.max_message_chars,
    })
}

/// The push webhook's body: the contract's `{user_id, username, message}`,
/// how many messages the push stands for, and the user's unread messages
/// over all its channels (`badge`).
pub fn push_json(user_id: UserId, username: &str, message: &Value, count: usize, badge: u64) -> Value {
    json!({
        "user_id": user_id.to_string(),
        "username": username,
        "message": message,
        "count": count,
        "badge": badge,
    })
}
