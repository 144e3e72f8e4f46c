//! What the peer server holds, all of it in memory behind locks shared by
//! every thread: accounts, the devices connected per user, channels with
//! their members and their whole history.
//!
//! This is the mainstream shape of a chat server on a work-stealing
//! runtime: a `RwLock` over the directory of connected devices, a `Mutex`
//! per channel, and one bounded queue per connection that any thread may
//! push a frame into.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

use super::PeerError;

/// A connected device's queue of frames to write, and how to close it.
#[derive(Debug, Clone)]
pub struct Device {
    /// Unique per connection.
    pub conn: u64,
    /// Frames for its writer task.
    pub outbox: mpsc::Sender<Message>,
    /// Notified when its queue overflows: the session ends (slow consumer).
    pub kick: Arc<Notify>,
}

/// One stored message.
#[derive(Debug, Clone)]
struct Stored {
    id: u64,
    sender: Arc<str>,
    text: String,
    created_at: u64,
}

/// A channel, its members and its history (kept for the process's life).
#[derive(Debug)]
struct Channel {
    id: u64,
    name: String,
    direct: bool,
    owner: Arc<str>,
    members: Arc<[Arc<str>]>,
    created_at: u64,
    history: Vec<Stored>,
}

impl Channel {
    fn json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "name": self.name,
            "kind": if self.direct { "direct" } else { "group" },
            "owner_id": user_id(&self.owner),
            "members": self.members.iter().map(|member| member.as_ref()).collect::<Vec<_>>(),
            "created_at": self.created_at,
            "last_message_id": self.history.last().map(|message| message.id.to_string()),
        })
    }
}

/// Two usernames, in order: a direct channel's key.
type Pair = (Arc<str>, Arc<str>);

/// Everything the peer holds.
#[derive(Debug, Default)]
pub struct State {
    /// Username → Argon2 PHC hash, for signup and login.
    accounts: Mutex<HashMap<String, String>>,
    /// Users known to this process: signed up here, or seen with a valid
    /// token (tokens outlive a restart, the in-memory accounts do not).
    known: RwLock<HashMap<Arc<str>, ()>>,
    /// Username → its connected devices.
    online: RwLock<HashMap<Arc<str>, Vec<Device>>>,
    channels: RwLock<HashMap<u64, Arc<Mutex<Channel>>>>,
    /// The pair's direct channel, by the two usernames in order.
    directs: Mutex<HashMap<Pair, u64>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
}

/// A user's id as the wire shows it: a stable hash of the username (the
/// peer has no user table that survives a restart).
pub fn user_id(username: &str) -> String {
    // FNV-1a, 63 bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in username.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 1).to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn field<'a>(params: &'a Value, name: &str) -> Result<&'a str, PeerError> {
    params[name].as_str().ok_or_else(|| PeerError::BadRequest(format!("`{name}` is missing or not a string")))
}

impl State {
    /// Records a new account; `false` if the name is taken.
    pub fn add_account(&self, username: &str, hash: String) -> bool {
        let mut accounts = self.accounts.lock().unwrap();
        if accounts.contains_key(username) {
            return false;
        }
        accounts.insert(username.to_string(), hash);
        drop(accounts);
        self.know(username);
        true
    }

    /// The account's password hash.
    pub fn password_hash(&self, username: &str) -> Option<String> {
        self.accounts.lock().unwrap().get(username).cloned()
    }

    /// Remembers a user (from a valid token) and answers its shared name.
    pub fn know(&self, username: &str) -> Arc<str> {
        if let Some((name, _)) = self.known.read().unwrap().get_key_value(username) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(username);
        self.known.write().unwrap().entry(name.clone()).or_insert(());
        name
    }

    fn known(&self, username: &str) -> Option<Arc<str>> {
        self.known.read().unwrap().get_key_value(username).map(|(name, _)| name.clone())
    }

    /// Registers a connected device of `user`.
    pub fn attach(&self, user: &Arc<str>, outbox: mpsc::Sender<Message>, kick: Arc<Notify>) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.online.write().unwrap().entry(user.clone()).or_default().push(Device { conn, outbox, kick });
        conn
    }

    /// Forgets a device.
    pub fn detach(&self, user: &str, conn: u64) {
        let mut online = self.online.write().unwrap();
        if let Some(devices) = online.get_mut(user) {
            devices.retain(|device| device.conn != conn);
            if devices.is_empty() {
                online.remove(user);
            }
        }
    }

    /// Queues `frame` on every connected device of `members`; a device
    /// whose queue is full is kicked (it reads too slowly).
    fn deliver(&self, members: &[Arc<str>], frame: &Message) {
        let online = self.online.read().unwrap();
        for member in members {
            for device in online.get(member.as_ref()).into_iter().flatten() {
                if device.outbox.try_send(frame.clone()).is_err() {
                    device.kick.notify_one();
                }
            }
        }
    }

    fn channel(&self, id: &str) -> Result<Arc<Mutex<Channel>>, PeerError> {
        let id: u64 = id.parse().map_err(|_| PeerError::BadRequest(format!("`{id}` is not a channel id")))?;
        self.channels.read().unwrap().get(&id).cloned().ok_or(PeerError::NotFound("no such channel"))
    }

    fn new_channel(&self, name: String, direct: bool, owner: Arc<str>, members: Vec<Arc<str>>) -> Arc<Mutex<Channel>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let channel = Arc::new(Mutex::new(Channel {
            id,
            name,
            direct,
            owner,
            members: members.into(),
            created_at: now_ms(),
            history: Vec::new(),
        }));
        self.channels.write().unwrap().insert(id, channel.clone());
        channel
    }

    /// The direct channel of `from` and `to`, made on first use.
    fn direct(&self, from: &Arc<str>, to: &str) -> Result<Arc<Mutex<Channel>>, PeerError> {
        let to = self.known(to).ok_or(PeerError::NotFound("no such user"))?;
        let key = if from <= &to { (from.clone(), to.clone()) } else { (to.clone(), from.clone()) };
        let mut directs = self.directs.lock().unwrap();
        if let Some(id) = directs.get(&key) {
            return self.channel(&id.to_string());
        }
        let members = if from == &to { vec![from.clone()] } else { vec![key.0.clone(), key.1.clone()] };
        let channel = self.new_channel(String::new(), true, from.clone(), members);
        directs.insert(key, channel.lock().unwrap().id);
        Ok(channel)
    }

    /// Runs one command of `user`'s and answers its `result`.
    pub fn command(&self, user: &Arc<str>, method: &str, params: &Value) -> Result<Value, PeerError> {
        match method {
            "send" => self.send(user, params),
            "channel.create" => self.create(user, params),
            "history" => self.history(user, params),
            "heartbeat" => Ok(json!({})),
            other => Err(PeerError::BadRequest(format!("unknown method `{other}` (the peer serves a subset)"))),
        }
    }

    fn send(&self, user: &Arc<str>, params: &Value) -> Result<Value, PeerError> {
        let text = field(params, "text")?;
        if text.is_empty() || text.chars().count() > super::MAX_MESSAGE_CHARS {
            return Err(PeerError::MessageTooLong);
        }
        let channel = match params["to_user"].as_str() {
            Some(to) => self.direct(user, to)?,
            None => self.channel(field(params, "channel_id")?)?,
        };
        let (frame, result, members) = {
            let mut channel = channel.lock().unwrap();
            if !channel.members.iter().any(|member| member == user) {
                return Err(PeerError::Forbidden);
            }
            let stored = Stored {
                id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                sender: user.clone(),
                text: text.to_string(),
                created_at: now_ms(),
            };
            let event = json!({ "event": "message", "data": message_json(channel.id, &stored) });
            let result = json!({
                "message_id": stored.id.to_string(),
                "channel_id": channel.id.to_string(),
                "created_at": stored.created_at,
                "duplicate": false,
            });
            channel.history.push(stored);
            (Message::text(event.to_string()), result, channel.members.clone())
        };
        self.deliver(&members, &frame);
        Ok(result)
    }

    fn create(&self, user: &Arc<str>, params: &Value) -> Result<Value, PeerError> {
        let name = field(params, "name")?.to_string();
        let mut members = vec![user.clone()];
        for member in params["members"].as_array().ok_or(PeerError::BadRequest("`members` is missing".into()))? {
            let member = member.as_str().ok_or(PeerError::BadRequest("a member is not a string".into()))?;
            let member = self.known(member).ok_or(PeerError::NotFound("no such user"))?;
            if !members.contains(&member) {
                members.push(member);
            }
        }
        if members.len() > super::MAX_CHANNEL_MEMBERS {
            return Err(PeerError::BadRequest("too many members".into()));
        }
        let channel = self.new_channel(name, false, user.clone(), members);
        let (info, members) = {
            let channel = channel.lock().unwrap();
            (channel.json(), channel.members.clone())
        };
        let event = json!({ "event": "channel", "data": { "kind": "added", "channel": info } });
        self.deliver(&members, &Message::text(event.to_string()));
        Ok(json!({ "channel": info }))
    }

    fn history(&self, user: &Arc<str>, params: &Value) -> Result<Value, PeerError> {
        let channel = self.channel(field(params, "channel_id")?)?;
        let limit = params["limit"].as_u64().unwrap_or(50).clamp(1, 200) as usize;
        let before = match params["before"].as_str() {
            Some(id) => id.parse::<u64>().map_err(|_| PeerError::BadRequest("`before` is not an id".into()))?,
            None => u64::MAX,
        };
        let channel = channel.lock().unwrap();
        if !channel.members.iter().any(|member| member == user) {
            return Err(PeerError::Forbidden);
        }
        // Ids grow with time, so the history is sorted: find the end, take
        // the `limit` before it, ascending.
        let end = channel.history.partition_point(|message| message.id < before);
        let start = end.saturating_sub(limit);
        let messages: Vec<Value> =
            channel.history[start..end].iter().map(|message| message_json(channel.id, message)).collect();
        Ok(json!({ "messages": messages }))
    }
}

fn message_json(channel: u64, message: &Stored) -> Value {
    json!({
        "id": message.id.to_string(),
        "channel_id": channel.to_string(),
        "sender_id": user_id(&message.sender),
        "sender": message.sender.as_ref(),
        "text": message.text,
        "created_at": message.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(state: &State, name: &str) -> (Arc<str>, mpsc::Receiver<Message>) {
        let name = state.know(name);
        let (outbox, inbox) = mpsc::channel(16);
        state.attach(&name, outbox, Arc::new(Notify::new()));
        (name, inbox)
    }

    fn text(frame: Message) -> Value {
        serde_json::from_str(frame.to_text().unwrap()).unwrap()
    }

    #[test]
    fn a_direct_send_reaches_both_sides_and_stays_in_history() {
        let state = State::default();
        let (alice, mut alice_inbox) = user(&state, "alice");
        let (bob, mut bob_inbox) = user(&state, "bob");
        let sent = state.send(&alice, &json!({ "to_user": "bob", "text": "hi" })).unwrap();
        let again = state.send(&bob, &json!({ "to_user": "alice", "text": "yo" })).unwrap();
        assert_eq!(sent["channel_id"], again["channel_id"], "one direct channel per pair");
        for inbox in [&mut alice_inbox, &mut bob_inbox] {
            assert_eq!(text(inbox.try_recv().unwrap())["data"]["text"], "hi");
            assert_eq!(text(inbox.try_recv().unwrap())["data"]["text"], "yo");
        }
        let channel = sent["channel_id"].as_str().unwrap();
        let history = state.history(&bob, &json!({ "channel_id": channel })).unwrap();
        let texts: Vec<&str> =
            history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["hi", "yo"]);
        let carol = state.know("carol");
        assert!(matches!(state.history(&carol, &json!({ "channel_id": channel })), Err(PeerError::Forbidden)));
        assert!(matches!(
            state.send(&alice, &json!({ "to_user": "nobody", "text": "x" })),
            Err(PeerError::NotFound(_))
        ));
    }

    #[test]
    fn a_group_delivers_to_every_member_and_kicks_a_full_queue() {
        let state = State::default();
        let (owner, mut owner_inbox) = user(&state, "owner");
        let (_, mut member_inbox) = user(&state, "member");
        let slow = state.know("slow");
        let (slow_outbox, _slow_inbox) = mpsc::channel(1);
        let kick = Arc::new(Notify::new());
        state.attach(&slow, slow_outbox, kick.clone());
        let created = state.create(&owner, &json!({ "name": "g", "members": ["member", "slow"] })).unwrap();
        let channel = created["channel"]["id"].as_str().unwrap().to_string();
        assert_eq!(text(member_inbox.try_recv().unwrap())["data"]["kind"], "added");
        assert_eq!(text(owner_inbox.try_recv().unwrap())["event"], "channel");
        state.send(&owner, &json!({ "channel_id": channel, "text": "one" })).unwrap();
        assert_eq!(text(member_inbox.try_recv().unwrap())["data"]["text"], "one");
        assert_eq!(text(owner_inbox.try_recv().unwrap())["data"]["text"], "one");
        // The slow member's one slot held the `channel` event: it is kicked.
        let kicked = kick.notified();
        tokio::pin!(kicked);
        assert!(kicked.as_mut().enable(), "the full queue notified its session");
    }
}
