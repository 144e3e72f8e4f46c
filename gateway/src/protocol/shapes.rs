//! Every JSON shape the gateway sends (protocol §2 to §4): replies, events
//! and what they carry, and the push webhook's body. Built here only, so
//! the wire's field names live in one file.

use chatgw_idgen::{MessageId, UserId};
use chatgw_storage::{Channel, ChannelKind, Message};
use serde_json::{Value, json};

use crate::error::ApiError;

/// A reply frame's JSON: `{"id", "result"}` or `{"id", "error"}`.
pub fn reply_json(id: &Value, result: &Result<Value, ApiError>) -> Vec<u8> {
    let value = match result {
        Ok(result) => json!({ "id": id, "result": result }),
        Err(error) => json!({ "id": id, "error": error.to_json() }),
    };
    serde_json::to_vec(&value).expect("JSON values always serialize")
}

/// An event frame's JSON: `{"event", "data"}`.
pub fn event_json(event: &str, data: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "event": event, "data": data })).expect("JSON values always serialize")
}

/// A `Message` shape.
pub fn message_json(message: &Message, sender: &str) -> Value {
    let mut value = json!({
        "id": message.id.to_string(),
        "channel_id": message.channel_id.to_string(),
        "sender_id": message.sender_id.to_string(),
        "sender": sender,
        "text": message.text,
        "created_at": message.created_at_ms,
    });
    if let Some(client_msg_id) = &message.client_msg_id {
        value["client_msg_id"] = json!(client_msg_id);
    }
    value
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
/// and how many messages the push stands for.
pub fn push_json(user_id: UserId, username: &str, message: &Value, count: usize) -> Value {
    json!({
        "user_id": user_id.to_string(),
        "username": username,
        "message": message,
        "count": count,
    })
}
