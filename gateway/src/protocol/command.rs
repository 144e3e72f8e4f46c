//! Commands parsed from client frames (protocol §2): the only serde types
//! of the wire's input side, and the one parser behind WebSocket frames and
//! HTTP `/v1/rpc/{method}`.

use chatgw_idgen::{ChannelId, MessageId, UserId};
use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::limits;

/// A parsed command: its id (echoed in the reply) and what it asks.
#[derive(Debug)]
pub struct Envelope {
    /// The client's id for the command, echoed back (`null` if none was readable).
    pub id: Value,
    /// The method and its params.
    pub command: Result<Command, ApiError>,
}

/// Where a `send` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTarget {
    /// A channel the sender belongs to.
    Channel(ChannelId),
    /// The direct channel with this user.
    User(String),
}

/// Which part of a channel's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryAnchor {
    /// The newest messages.
    Latest,
    /// Older than this id.
    Before(MessageId),
    /// Newer than this id.
    After(MessageId),
    /// Around this id.
    Around(MessageId),
}

/// Every method of protocol §2 this gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `send`.
    Send {
        /// Channel or user.
        target: SendTarget,
        /// The text, checked against `max_message_chars`.
        text: String,
        /// The client's own id, for dedupe.
        client_msg_id: Option<String>,
    },
    /// `history`.
    History {
        /// The channel.
        channel_id: ChannelId,
        /// Which part.
        anchor: HistoryAnchor,
        /// 1 to 200.
        limit: usize,
    },
    /// `sync`.
    Sync {
        /// The device's `cur_max_message_id`.
        since: MessageId,
        /// 1 to 1000.
        limit: usize,
    },
    /// `channel.create`.
    ChannelCreate {
        /// Its name.
        name: String,
        /// Usernames to add besides the creator.
        members: Vec<String>,
    },
    /// `channel.add_members`.
    ChannelAddMembers {
        /// The channel.
        channel_id: ChannelId,
        /// Usernames.
        members: Vec<String>,
    },
    /// `channel.remove_members`.
    ChannelRemoveMembers {
        /// The channel.
        channel_id: ChannelId,
        /// Usernames.
        members: Vec<String>,
    },
    /// `channel.leave`.
    ChannelLeave {
        /// The channel.
        channel_id: ChannelId,
    },
    /// `channel.info`.
    ChannelInfo {
        /// The channel.
        channel_id: ChannelId,
    },
    /// `channel.list`: a page of the caller's channels, in id order.
    ChannelList {
        /// Only channels with ids above this one.
        after: Option<ChannelId>,
        /// At most this many.
        limit: usize,
    },
    /// `channel.members`: a page of a channel's members, in user id order.
    ChannelMembers {
        /// The channel.
        channel_id: ChannelId,
        /// Only members with ids above this one.
        after: Option<UserId>,
        /// At most this many.
        limit: usize,
    },
    /// `message.edit`: a new text for one of the caller's messages.
    MessageEdit {
        /// Its channel.
        channel_id: ChannelId,
        /// The message.
        message_id: MessageId,
        /// The new text, checked against `max_message_chars`.
        text: String,
    },
    /// `message.delete`: the caller's message, or one of a group it owns.
    MessageDelete {
        /// Its channel.
        channel_id: ChannelId,
        /// The message.
        message_id: MessageId,
    },
    /// `channel.read`: the caller has read the channel up to a message.
    ChannelRead {
        /// The channel.
        channel_id: ChannelId,
        /// The last message read.
        message_id: MessageId,
    },
    /// `counts`: the caller's unread totals.
    Counts,
    /// `settings.get`.
    SettingsGet,
    /// `settings.set`: the fields given change.
    SettingsSet {
        /// Tell reads to the caller's own devices only.
        private_reads: Option<bool>,
    },
    /// `heartbeat`.
    Heartbeat,
    /// `typing`: the caller starts (or goes on) typing in a channel, or stops.
    Typing {
        /// The channel.
        channel_id: ChannelId,
        /// `start` (true) or `stop`.
        start: bool,
    },
    /// `presence.subscribe`.
    PresenceSubscribe {
        /// Usernames.
        users: Vec<String>,
    },
    /// `presence.unsubscribe`.
    PresenceUnsubscribe {
        /// Usernames.
        users: Vec<String>,
    },
    /// `presence.query`.
    PresenceQuery {
        /// Usernames.
        users: Vec<String>,
    },
}

impl Command {
    /// Whether it is a read whose reply can be as large as a frame
    /// (`history`, `sync`, `channel.list`, `channel.info`,
    /// `channel.members`): a connection's reads run one at a time, each
    /// once its queue has room for a whole reply.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::History { .. }
                | Command::Sync { .. }
                | Command::Counts
                | Command::ChannelList { .. }
                | Command::ChannelInfo { .. }
                | Command::ChannelMembers { .. }
        )
    }
}

#[derive(Deserialize)]
struct UsersParams {
    users: Vec<String>,
}

/// A frame read in one pass: `params` stays text until its method's
/// struct reads it, and `method` borrows the frame where it can.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(default)]
    id: Value,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SendParams {
    channel_id: Option<String>,
    to_user: Option<String>,
    text: String,
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct HistoryParams {
    channel_id: String,
    before: Option<String>,
    after: Option<String>,
    around: Option<String>,
    limit: Option<i64>,
}

#[derive(Deserialize)]
struct SyncParams {
    since: String,
    limit: Option<i64>,
}

#[derive(Deserialize)]
struct CreateParams {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
struct MembersParams {
    channel_id: String,
    members: Vec<String>,
}

#[derive(Deserialize)]
struct ChannelParams {
    channel_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    channel_id: String,
    message_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsParams {
    private_reads: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditParams {
    channel_id: String,
    message_id: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    channel_id: String,
    message_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingParams {
    channel_id: String,
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersPageParams {
    channel_id: String,
    after: Option<String>,
    limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    after: Option<String>,
    limit: Option<i64>,
}

/// Where a method's params are read from: a frame's text (WebSocket) or a
/// parsed body (HTTP `/v1/rpc`). Missing or `null` params are `{}`.
pub trait Params {
    /// The params as the method's struct.
    fn read<T: DeserializeOwned>(self, method: &str) -> Result<T, ApiError>;
}

fn invalid_params(method: &str, error: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("{method}: invalid params: {error}"))
}

impl Params for Value {
    fn read<T: DeserializeOwned>(self, method: &str) -> Result<T, ApiError> {
        let params = if self.is_null() { json!({}) } else { self };
        serde_json::from_value(params).map_err(|error| invalid_params(method, error))
    }
}

impl Params for Option<&RawValue> {
    fn read<T: DeserializeOwned>(self, method: &str) -> Result<T, ApiError> {
        let text = match self.map(RawValue::get) {
            None | Some("null") => "{}",
            Some(text) => text,
        };
        serde_json::from_str(text).map_err(|error| invalid_params(method, error))
    }
}

fn params<T: DeserializeOwned>(method: &str, params: impl Params) -> Result<T, ApiError> {
    params.read(method)
}

fn channel_id(text: &str) -> Result<ChannelId, ApiError> {
    ChannelId::parse(text).map_err(|error| ApiError::bad_request(format!("channel_id: {error}")))
}

fn message_id(name: &str, text: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(text).map_err(|error| ApiError::bad_request(format!("{name}: {error}")))
}

fn limit(value: Option<i64>, default: usize, max: usize) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(limit) if limit >= 1 && limit as u64 <= max as u64 => Ok(limit as usize),
        Some(limit) => Err(ApiError::bad_request(format!("limit {limit} is out of range 1..={max}"))),
    }
}

fn members(members: Vec<String>) -> Result<Vec<String>, ApiError> {
    if members.len() > limits::MEMBERS_PER_COMMAND_MAX {
        return Err(ApiError::bad_request(format!("at most {} members per command", limits::MEMBERS_PER_COMMAND_MAX)));
    }
    Ok(members)
}

/// Parses a method and its params: the one parser behind WebSocket commands
/// and HTTP `/v1/rpc/{method}`.
pub fn parse_command(method: &str, raw: impl Params) -> Result<Command, ApiError> {
    match method {
        "send" => parse_send(params(method, raw)?),
        "history" => parse_history(params(method, raw)?),
        "sync" => {
            let raw: SyncParams = params(method, raw)?;
            Ok(Command::Sync {
                since: message_id("since", &raw.since)?,
                limit: limit(raw.limit, limits::SYNC_LIMIT_DEFAULT, limits::SYNC_LIMIT_MAX)?,
            })
        }
        "channel.create"
        | "channel.add_members"
        | "channel.remove_members"
        | "channel.leave"
        | "channel.info"
        | "channel.members"
        | "channel.list" => parse_channel(method, raw),
        "heartbeat" => Ok(Command::Heartbeat),
        "channel.read" => {
            let raw: ReadParams = params(method, raw)?;
            Ok(Command::ChannelRead {
                channel_id: channel_id(&raw.channel_id)?,
                message_id: message_id("message_id", &raw.message_id)?,
            })
        }
        "counts" => params::<NoParams>(method, raw).map(|_| Command::Counts),
        "settings.get" => params::<NoParams>(method, raw).map(|_| Command::SettingsGet),
        "settings.set" => {
            let raw: SettingsParams = params(method, raw)?;
            Ok(Command::SettingsSet { private_reads: raw.private_reads })
        }
        "message.edit" => {
            let raw: EditParams = params(method, raw)?;
            Ok(Command::MessageEdit {
                channel_id: channel_id(&raw.channel_id)?,
                message_id: message_id("message_id", &raw.message_id)?,
                text: raw.text,
            })
        }
        "message.delete" => {
            let raw: DeleteParams = params(method, raw)?;
            Ok(Command::MessageDelete {
                channel_id: channel_id(&raw.channel_id)?,
                message_id: message_id("message_id", &raw.message_id)?,
            })
        }
        "typing" => {
            let raw: TypingParams = params(method, raw)?;
            let start = match raw.state.as_str() {
                "start" => true,
                "stop" => false,
                _ => return Err(ApiError::bad_request("typing: state must be \"start\" or \"stop\"")),
            };
            Ok(Command::Typing { channel_id: channel_id(&raw.channel_id)?, start })
        }
        "presence.subscribe" | "presence.unsubscribe" | "presence.query" => {
            let raw: UsersParams = params(method, raw)?;
            let users = members(raw.users)?;
            Ok(match method {
                "presence.subscribe" => Command::PresenceSubscribe { users },
                "presence.unsubscribe" => Command::PresenceUnsubscribe { users },
                _ => Command::PresenceQuery { users },
            })
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            Err(ApiError::bad_request(format!("unknown method {shown:?}")))
        }
    }
}

fn parse_send(raw: SendParams) -> Result<Command, ApiError> {
    let target = match (raw.channel_id, raw.to_user) {
        (Some(id), None) => SendTarget::Channel(channel_id(&id)?),
        (None, Some(user)) => SendTarget::User(user),
        _ => return Err(ApiError::bad_request("send: give exactly one of channel_id and to_user")),
    };
    if let Some(id) = &raw.client_msg_id
        && (id.is_empty() || id.len() > limits::CLIENT_MSG_ID_BYTES_MAX)
    {
        return Err(ApiError::bad_request(format!(
            "client_msg_id must be 1 to {} bytes",
            limits::CLIENT_MSG_ID_BYTES_MAX
        )));
    }
    Ok(Command::Send { target, text: raw.text, client_msg_id: raw.client_msg_id })
}

fn parse_history(raw: HistoryParams) -> Result<Command, ApiError> {
    let anchor = match (raw.before, raw.after, raw.around) {
        (None, None, None) => HistoryAnchor::Latest,
        (Some(id), None, None) => HistoryAnchor::Before(message_id("before", &id)?),
        (None, Some(id), None) => HistoryAnchor::After(message_id("after", &id)?),
        (None, None, Some(id)) => HistoryAnchor::Around(message_id("around", &id)?),
        _ => return Err(ApiError::bad_request("history: at most one of before, after, around")),
    };
    Ok(Command::History {
        channel_id: channel_id(&raw.channel_id)?,
        anchor,
        limit: limit(raw.limit, limits::HISTORY_LIMIT_DEFAULT, limits::HISTORY_LIMIT_MAX)?,
    })
}

/// The `channel.*` methods.
fn parse_channel(method: &str, raw: impl Params) -> Result<Command, ApiError> {
    Ok(match method {
        "channel.create" => {
            let raw: CreateParams = params(method, raw)?;
            let chars = raw.name.chars().count();
            if chars == 0 || chars > limits::CHANNEL_NAME_CHARS_MAX {
                return Err(ApiError::bad_request(format!(
                    "name must be 1 to {} chars",
                    limits::CHANNEL_NAME_CHARS_MAX
                )));
            }
            Command::ChannelCreate { name: raw.name, members: members(raw.members)? }
        }
        "channel.add_members" => {
            let raw: MembersParams = params(method, raw)?;
            Command::ChannelAddMembers { channel_id: channel_id(&raw.channel_id)?, members: members(raw.members)? }
        }
        "channel.remove_members" => {
            let raw: MembersParams = params(method, raw)?;
            Command::ChannelRemoveMembers { channel_id: channel_id(&raw.channel_id)?, members: members(raw.members)? }
        }
        "channel.leave" => {
            let raw: ChannelParams = params(method, raw)?;
            Command::ChannelLeave { channel_id: channel_id(&raw.channel_id)? }
        }
        "channel.info" => {
            let raw: ChannelParams = params(method, raw)?;
            Command::ChannelInfo { channel_id: channel_id(&raw.channel_id)? }
        }
        "channel.members" => {
            let raw: MembersPageParams = params(method, raw)?;
            let after = match raw.after.as_deref() {
                Some(text) => {
                    Some(UserId::parse(text).map_err(|error| ApiError::bad_request(format!("after: {error}")))?)
                }
                None => None,
            };
            Command::ChannelMembers {
                channel_id: channel_id(&raw.channel_id)?,
                after,
                limit: limit(raw.limit, limits::CHANNEL_MEMBERS_DEFAULT, limits::CHANNEL_MEMBERS_MAX)?,
            }
        }
        _ => {
            let raw: ListParams = params(method, raw)?;
            Command::ChannelList {
                after: raw.after.as_deref().map(channel_id).transpose()?,
                limit: limit(raw.limit, limits::CHANNEL_LIST_DEFAULT, limits::CHANNEL_LIST_MAX)?,
            }
        }
    })
}

/// Parses one client frame, in one pass over its text (no intermediate
/// `Value`). Never fails: a frame that cannot be read is an envelope whose
/// command is the error to answer.
pub fn parse_frame(text: &str) -> Envelope {
    let failed = |message: String| Envelope { id: Value::Null, command: Err(ApiError::bad_request(message)) };
    // An object only: serde would also read a struct from an array.
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {}
        Some(_) if serde_json::from_str::<&RawValue>(text).is_ok() => {
            return failed("a command is a JSON object".into());
        }
        _ => {}
    }
    let raw: RawEnvelope<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(error) if error.is_data() => return failed(format!("not a command: {error}")),
        Err(error) => return failed(format!("not a JSON command: {error}")),
    };
    // The id is an integer chosen by the client; anything else is not echoed.
    let id = match raw.id {
        Value::Number(number) if number.is_i64() || number.is_u64() => Value::Number(number),
        Value::Null => Value::Null,
        _ => return failed("id must be an integer".into()),
    };
    let command = match raw.method.map(method_name) {
        Some(Some(method)) => parse_command(&method, raw.params),
        Some(None) => Err(ApiError::bad_request("method must be a string")),
        None => Err(ApiError::bad_request("missing method")),
    };
    Envelope { id, command }
}

/// A method's name from its JSON: borrowed from the frame unless it has
/// escapes. `None` if it is not a string.
fn method_name(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(name) => Some(Cow::Borrowed(name)),
        Err(_) => serde_json::from_str::<String>(raw.get()).ok().map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn commands_parse_with_typed_ids() {
        let envelope = parse_frame(r#"{"id":7,"method":"send","params":{"channel_id":"42","text":"hi","extra":1}}"#);
        assert_eq!(envelope.id, json!(7));
        assert_eq!(
            envelope.command.unwrap(),
            Command::Send { target: SendTarget::Channel(ChannelId(42)), text: "hi".into(), client_msg_id: None }
        );
        let history = parse_frame(r#"{"id":1,"method":"history","params":{"channel_id":"5","before":"9","limit":10}}"#);
        assert_eq!(
            history.command.unwrap(),
            Command::History { channel_id: ChannelId(5), anchor: HistoryAnchor::Before(MessageId(9)), limit: 10 }
        );
        // A method name with escapes, whitespace around the object, and
        // params given as null are read as they always were.
        let escaped = parse_frame(" {\"id\":9,\"method\":\"he\\u0061rtbeat\",\"params\":null} ");
        assert_eq!((escaped.id, escaped.command.unwrap()), (json!(9), Command::Heartbeat));
        let sync = parse_frame(r#"{"id":2,"method":"sync","params":{"since":"0"}}"#);
        assert_eq!(sync.command.unwrap(), Command::Sync { since: MessageId(0), limit: 500 });
        assert_eq!(
            parse_frame(r#"{"id":3,"method":"channel.list"}"#).command.unwrap(),
            Command::ChannelList { after: None, limit: limits::CHANNEL_LIST_DEFAULT }
        );
        assert_eq!(
            parse_frame(r#"{"id":4,"method":"channel.members","params":{"channel_id":"8","after":"3","limit":2}}"#)
                .command
                .unwrap(),
            Command::ChannelMembers { channel_id: ChannelId(8), after: Some(UserId(3)), limit: 2 }
        );
        let page = parse_frame(r#"{"id":5,"method":"channel.members","params":{"channel_id":"8","limit":1001}}"#);
        assert_eq!(page.command.unwrap_err().code, crate::error::ErrorCode::BadRequest);
        let typing = parse_frame(r#"{"id":6,"method":"typing","params":{"channel_id":"8","state":"start"}}"#);
        assert_eq!(typing.command.unwrap(), Command::Typing { channel_id: ChannelId(8), start: true });
        let stop = parse_frame(r#"{"id":7,"method":"typing","params":{"channel_id":"8","state":"stop"}}"#);
        assert_eq!(stop.command.unwrap(), Command::Typing { channel_id: ChannelId(8), start: false });
        let edit =
            parse_frame(r#"{"id":8,"method":"message.edit","params":{"channel_id":"8","message_id":"9","text":"t"}}"#);
        assert_eq!(
            edit.command.unwrap(),
            Command::MessageEdit { channel_id: ChannelId(8), message_id: MessageId(9), text: "t".into() }
        );
        let delete = parse_frame(r#"{"id":9,"method":"message.delete","params":{"channel_id":"8","message_id":"9"}}"#);
        assert_eq!(
            delete.command.unwrap(),
            Command::MessageDelete { channel_id: ChannelId(8), message_id: MessageId(9) }
        );
    }

    #[test]
    fn bad_commands_are_bad_requests_with_the_id_when_readable() {
        let cases = [
            ("not json", Value::Null),
            ("[1,2,3]", Value::Null),
            ("\"send\"", Value::Null),
            (r#"{"id":1}"#, json!(1)),
            (r#"{"id":"x","method":"heartbeat"}"#, Value::Null),
            (r#"{"id":2,"method":"nope"}"#, json!(2)),
            (r#"{"id":3,"method":"send","params":{"channel_id":42,"text":"x"}}"#, json!(3)),
            (r#"{"id":4,"method":"send","params":{"channel_id":"1","to_user":"bob","text":"x"}}"#, json!(4)),
            (r#"{"id":5,"method":"history","params":{"channel_id":"1","limit":0}}"#, json!(5)),
            (r#"{"id":6,"method":"history","params":{"channel_id":"1","limit":201}}"#, json!(6)),
            (r#"{"id":7,"method":"history","params":{"channel_id":"1","before":"1","after":"2"}}"#, json!(7)),
            (r#"{"id":8,"method":"sync","params":{"since":"-1"}}"#, json!(8)),
            (r#"{"id":9,"method":"channel.create","params":{"name":""}}"#, json!(9)),
            (r#"{"id":10,"method":5}"#, json!(10)),
            (" [1]", Value::Null),
            (r#"{"id":11,"method":"send","params":{"text":"#, Value::Null),
            (r#"{"id":12,"method":"heartbeat","method":"sync"}"#, Value::Null),
            (r#"{"id":13,"method":"typing","params":{"channel_id":"1","state":"typing"}}"#, json!(13)),
            (r#"{"id":14,"method":"typing","params":{"channel_id":"1"}}"#, json!(14)),
            (r#"{"id":15,"method":"typing","params":{"channel_id":"x","state":"stop"}}"#, json!(15)),
            (r#"{"id":16,"method":"message.edit","params":{"channel_id":"1","message_id":"2"}}"#, json!(16)),
            (r#"{"id":17,"method":"message.delete","params":{"message_id":"2"}}"#, json!(17)),
        ];
        for (frame, id) in cases {
            let envelope = parse_frame(frame);
            assert_eq!(envelope.id, id, "{frame}");
            assert_eq!(envelope.command.unwrap_err().code, ErrorCode::BadRequest, "{frame}");
        }
    }
}
