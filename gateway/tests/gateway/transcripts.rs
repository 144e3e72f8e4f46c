//! Command tests as transcripts: frames in, frames out, one file per method
//! group of `cmd/` (send; history and sync; channel; presence; typing;
//! edits and deletes), all through one check helper over real WebSocket
//! connections to a real server.
//!
//! A transcript is a list of lines:
//! - `who> {json}`: `who` sends this text frame (`"$name"` is replaced by
//!   the value bound to it);
//! - `who< {json}`: the next frame `who` receives must match this pattern.
//!   Consecutive `<` lines of one client may arrive in any order (an event
//!   and a reply race across cores);
//! - `who: close`: `who` closes its connection.
//!
//! In a pattern, `"*"` matches any value, `"$name"` binds the value the
//! first time it is seen and must equal it after, and objects match only
//! with exactly the same keys, so a transcript pins the whole shape. Every
//! client starts bound as `$who` to its user id. After the last line no
//! client may receive anything more.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Client, TestServer, User};

/// How long a client must stay silent after its transcript ends.
const SILENCE: Duration = Duration::from_millis(300);

type Bindings = HashMap<String, Value>;

/// Whether `actual` matches `pattern`, binding new `$names` in `binds`.
fn matches(pattern: &Value, actual: &Value, binds: &mut Bindings) -> bool {
    match pattern {
        Value::String(any) if any == "*" => true,
        Value::String(name) if name.starts_with('$') => match binds.get(name) {
            Some(bound) => bound == actual,
            None => {
                binds.insert(name.clone(), actual.clone());
                true
            }
        },
        Value::Object(fields) => actual.as_object().is_some_and(|got| {
            got.len() == fields.len()
                && fields.iter().all(|(key, want)| got.get(key).is_some_and(|value| matches(want, value, binds)))
        }),
        Value::Array(items) => actual.as_array().is_some_and(|got| {
            got.len() == items.len() && items.iter().zip(got).all(|(want, value)| matches(want, value, binds))
        }),
        other => other == actual,
    }
}

/// `text` with every bound `"$name"` replaced by its value.
fn substitute(text: &str, binds: &Bindings, line: usize) -> String {
    let mut out = text.to_string();
    for (name, value) in binds {
        out = out.replace(&format!("\"{name}\""), &value.to_string());
    }
    assert!(!out.contains("\"$"), "line {line}: an unbound name in {out}");
    out
}

enum Step<'a> {
    Send(&'a str, &'a str),
    Expect(&'a str, Value),
    Close(&'a str),
}

fn parse(script: &str) -> Vec<(usize, Step<'_>)> {
    let mut steps = Vec::new();
    for (index, line) in script.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = line.find(['>', '<', ':']).unwrap_or_else(|| panic!("line {line_no}: no > < or : in {line}"));
        let (who, rest) = (&line[..at], line[at + 1..].trim());
        let step = match &line[at..=at] {
            ">" => Step::Send(who, rest),
            "<" => Step::Expect(
                who,
                serde_json::from_str(rest).unwrap_or_else(|error| panic!("line {line_no}: {error}: {rest}")),
            ),
            _ if rest == "close" => Step::Close(who),
            _ => panic!("line {line_no}: unknown action {rest}"),
        };
        steps.push((line_no, step));
    }
    steps
}

/// Runs `script` with one connected client per name (a user of that name,
/// device `phone`), and checks every frame each client receives.
fn check(server: &TestServer, names: &[&str], script: &str) {
    let users: Vec<User> = names.iter().map(|name| server.signup(name)).collect();
    let mut clients: HashMap<&str, Client> =
        names.iter().zip(&users).map(|(name, user)| (*name, server.connect(user, "phone"))).collect();
    let mut binds: Bindings =
        names.iter().zip(&users).map(|(name, user)| (format!("${name}"), Value::from(user.user_id.clone()))).collect();
    let steps = parse(script);
    let mut index = 0;
    while index < steps.len() {
        match &steps[index].1 {
            Step::Send(who, text) => {
                let frame = substitute(text, &binds, steps[index].0);
                client(&mut clients, who).send_text(&frame);
                index += 1;
            }
            Step::Close(who) => {
                client(&mut clients, who).close();
                clients.remove(who);
                index += 1;
            }
            Step::Expect(who, _) => {
                // A run of expectations for one client, matched in any order.
                let mut wanted: Vec<(usize, &Value)> = Vec::new();
                while let Some((line, Step::Expect(next, pattern))) = steps.get(index) {
                    if next != who {
                        break;
                    }
                    wanted.push((*line, pattern));
                    index += 1;
                }
                expect(client(&mut clients, who), who, wanted, &mut binds);
            }
        }
    }
    for (who, client) in &mut clients {
        if let Some(frame) = client.next_frame_within(SILENCE) {
            panic!("{who} received a frame the transcript does not expect: {frame}");
        }
    }
}

fn client<'c>(clients: &'c mut HashMap<&str, Client>, who: &str) -> &'c mut Client {
    clients.get_mut(who).unwrap_or_else(|| panic!("no connected client {who}"))
}

/// Reads as many frames as `wanted` holds and matches each against one of
/// them (in any order).
fn expect(client: &mut Client, who: &str, mut wanted: Vec<(usize, &Value)>, binds: &mut Bindings) {
    while !wanted.is_empty() {
        let frame = client.next_frame();
        let found = wanted.iter().position(|(_, pattern)| {
            let mut trial = binds.clone();
            let fits = matches(pattern, &frame, &mut trial);
            if fits {
                *binds = trial;
            }
            fits
        });
        match found {
            Some(position) => {
                wanted.remove(position);
            }
            None => {
                let lines: Vec<String> =
                    wanted.iter().map(|(line, pattern)| format!("  line {line}: {pattern}")).collect();
                panic!("{who} received {frame}\nwhich matches none of:\n{}\nbound: {binds:?}", lines.join("\n"));
            }
        }
    }
}

#[test]
fn the_matcher_binds_names_and_pins_shapes() {
    let mut binds = Bindings::new();
    let pattern: Value = serde_json::from_str(r#"{"id":"$x","at":"*","list":["$x",1]}"#).unwrap();
    let good: Value = serde_json::from_str(r#"{"id":"7","at":123,"list":["7",1]}"#).unwrap();
    assert!(matches(&pattern, &good, &mut binds));
    assert_eq!(binds["$x"], "7");
    let mismatch: Value = serde_json::from_str(r#"{"id":"7","at":1,"list":["8",1]}"#).unwrap();
    assert!(!matches(&pattern, &mismatch, &mut binds.clone()), "a bound name must keep its value");
    let extra: Value = serde_json::from_str(r#"{"id":"7","at":1,"list":["7",1],"more":true}"#).unwrap();
    assert!(!matches(&pattern, &extra, &mut binds.clone()), "an extra field is a different shape");
    assert_eq!(substitute(r#"{"channel_id":"$x"}"#, &binds, 1), r#"{"channel_id":"7"}"#);
}

#[test]
fn send_to_a_user_makes_a_direct_channel_and_dedupes_retries() {
    let server = TestServer::start(2);
    check(
        &server,
        &["alice", "bob"],
        r#"
        # The first message to a user makes the pair's direct channel: both
        # hear of it, then of the message; the sender also gets its reply.
        alice> {"id":1,"method":"send","params":{"to_user":"bob","text":"hi bob"}}
        alice< {"event":"channel","data":{"kind":"added","channel":{"id":"$dm","name":"alice,bob","kind":"direct","owner_id":"$alice","members":"*","created_at":"*"}}}
        alice< {"event":"message","data":{"id":"$m1","channel_id":"$dm","sender_id":"$alice","sender":"alice","text":"hi bob","created_at":"*"}}
        alice< {"id":1,"result":{"message_id":"$m1","channel_id":"$dm","created_at":"*","duplicate":false}}
        bob< {"event":"channel","data":{"kind":"added","channel":{"id":"$dm","name":"alice,bob","kind":"direct","owner_id":"$alice","members":"*","created_at":"*"}}}
        bob< {"event":"message","data":{"id":"$m1","channel_id":"$dm","sender_id":"$alice","sender":"alice","text":"hi bob","created_at":"*"}}

        # The reply by channel id; a client_msg_id retried is a duplicate.
        bob> {"id":1,"method":"send","params":{"channel_id":"$dm","text":"hello","client_msg_id":"c-1"}}
        bob< {"id":1,"result":{"message_id":"$m2","channel_id":"$dm","created_at":"*","duplicate":false}}
        bob< {"event":"message","data":{"id":"$m2","channel_id":"$dm","sender_id":"$bob","sender":"bob","text":"hello","created_at":"*","client_msg_id":"c-1"}}
        alice< {"event":"message","data":{"id":"$m2","channel_id":"$dm","sender_id":"$bob","sender":"bob","text":"hello","created_at":"*","client_msg_id":"c-1"}}
        bob> {"id":2,"method":"send","params":{"channel_id":"$dm","text":"hello","client_msg_id":"c-1"}}
        bob< {"id":2,"result":{"message_id":"$m2","channel_id":"$dm","created_at":"*","duplicate":true}}

        # What is refused, with the id echoed.
        alice> {"id":2,"method":"send","params":{"to_user":"alice","text":"me"}}
        alice< {"id":2,"error":{"code":"bad_request","message":"to_user must be another user"}}
        alice> {"id":3,"method":"send","params":{"to_user":"nobody","text":"hi"}}
        alice< {"id":3,"error":{"code":"not_found","message":"no user \"nobody\""}}
        alice> {"id":4,"method":"send","params":{"channel_id":"$dm","text":""}}
        alice< {"id":4,"error":{"code":"bad_request","message":"text must not be empty"}}
        alice> {"id":5,"method":"heartbeat"}
        alice< {"id":5,"result":{}}
        "#,
    );
}

#[test]
fn history_and_sync_page_through_a_channel() {
    let server = TestServer::start(2);
    check(
        &server,
        &["alice", "bob"],
        r#"
        alice> {"id":1,"method":"channel.create","params":{"name":"team","members":["bob"]}}
        alice< {"event":"channel","data":{"kind":"added","channel":{"id":"$g","name":"team","kind":"group","owner_id":"$alice","members":"*","created_at":"*"}}}
        alice< {"id":1,"result":{"channel":{"id":"$g","name":"team","kind":"group","owner_id":"$alice","members":"*","created_at":"*"}}}
        bob< {"event":"channel","data":{"kind":"added","channel":{"id":"$g","name":"team","kind":"group","owner_id":"$alice","members":"*","created_at":"*"}}}

        alice> {"id":2,"method":"send","params":{"channel_id":"$g","text":"one"}}
        alice< {"id":2,"result":{"message_id":"$m1","channel_id":"$g","created_at":"$t1","duplicate":false}}
        alice< {"event":"message","data":{"id":"$m1","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"one","created_at":"$t1"}}
        bob< {"event":"message","data":{"id":"$m1","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"one","created_at":"$t1"}}
        alice> {"id":3,"method":"send","params":{"channel_id":"$g","text":"two"}}
        alice< {"id":3,"result":{"message_id":"$m2","channel_id":"$g","created_at":"$t2","duplicate":false}}
        alice< {"event":"message","data":{"id":"$m2","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"two","created_at":"$t2"}}
        bob< {"event":"message","data":{"id":"$m2","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"two","created_at":"$t2"}}
        alice> {"id":4,"method":"send","params":{"channel_id":"$g","text":"three"}}
        alice< {"id":4,"result":{"message_id":"$m3","channel_id":"$g","created_at":"$t3","duplicate":false}}
        alice< {"event":"message","data":{"id":"$m3","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"three","created_at":"$t3"}}
        bob< {"event":"message","data":{"id":"$m3","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"three","created_at":"$t3"}}

        # Latest two, oldest first; before, after and around an anchor.
        bob> {"id":1,"method":"history","params":{"channel_id":"$g","limit":2}}
        bob< {"id":1,"result":{"messages":[{"id":"$m2","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"two","created_at":"$t2"},{"id":"$m3","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"three","created_at":"$t3"}]}}
        bob> {"id":2,"method":"history","params":{"channel_id":"$g","before":"$m2"}}
        bob< {"id":2,"result":{"messages":[{"id":"$m1","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"one","created_at":"$t1"}]}}
        bob> {"id":3,"method":"history","params":{"channel_id":"$g","after":"$m2"}}
        bob< {"id":3,"result":{"messages":[{"id":"$m3","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"three","created_at":"$t3"}]}}

        # Sync from the start, and from a cursor.
        bob> {"id":4,"method":"sync","params":{"since":"0","limit":2}}
        bob< {"id":4,"result":{"has_more":true,"next_since":"$m2","messages":[{"id":"$m1","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"one","created_at":"$t1"},{"id":"$m2","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"two","created_at":"$t2"}]}}
        bob> {"id":5,"method":"sync","params":{"since":"$m2"}}
        bob< {"id":5,"result":{"has_more":false,"next_since":"$cursor","messages":[{"id":"$m3","channel_id":"$g","sender_id":"$alice","sender":"alice","text":"three","created_at":"$t3"}]}}
        # The cursor to keep is next_since: nothing more from it.
        bob> {"id":8,"method":"sync","params":{"since":"$cursor"}}
        bob< {"id":8,"result":{"has_more":false,"next_since":"*","messages":[]}}

        # Bad anchors and limits.
        bob> {"id":6,"method":"history","params":{"channel_id":"$g","limit":0}}
        bob< {"id":6,"error":{"code":"bad_request","message":"limit 0 is out of range 1..=200"}}
        bob> {"id":7,"method":"history","params":{"channel_id":"1"}}
        bob< {"id":7,"error":{"code":"not_found","message":"no such channel"}}
        "#,
    );
}

#[test]
fn channels_are_created_changed_and_left() {
    let server = TestServer::start(2);
    check(
        &server,
        &["alice", "bob", "carol"],
        r#"
        alice> {"id":1,"method":"channel.create","params":{"name":"crew","members":["bob"]}}
        alice< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        alice< {"id":1,"result":{"channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        bob< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}

        # A newcomer hears of the channel; the members already in do not.
        alice> {"id":2,"method":"channel.add_members","params":{"channel_id":"$c","members":["carol"]}}
        alice< {"id":2,"result":{"channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob","carol"],"created_at":"$at"}}}
        carol< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob","carol"],"created_at":"$at"}}}

        carol> {"id":1,"method":"channel.info","params":{"channel_id":"$c"}}
        carol< {"id":1,"result":{"channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob","carol"],"created_at":"$at"}}}
        carol> {"id":2,"method":"channel.list"}
        # channel.list carries each channel's unread counts too.
        carol< {"id":2,"result":{"has_more":false,"channels":[{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob","carol"],"created_at":"$at","unread":0,"unread_mentions":0}]}}

        # Only the owner changes members; a member may leave.
        bob> {"id":1,"method":"channel.remove_members","params":{"channel_id":"$c","members":["carol"]}}
        bob< {"id":1,"error":{"code":"forbidden","message":"only the channel's owner changes its members"}}
        alice> {"id":3,"method":"channel.remove_members","params":{"channel_id":"$c","members":["bob"]}}
        alice< {"id":3,"result":{"channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","carol"],"created_at":"$at"}}}
        bob< {"event":"channel","data":{"kind":"removed","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","carol"],"created_at":"$at"}}}
        carol> {"id":3,"method":"channel.leave","params":{"channel_id":"$c"}}
        carol< {"event":"channel","data":{"kind":"removed","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice"],"created_at":"$at"}}}
        carol< {"id":3,"result":{}}

        # Those who left read nothing; the owner may leave once alone.
        bob> {"id":2,"method":"channel.info","params":{"channel_id":"$c"}}
        bob< {"id":2,"error":{"code":"forbidden","message":"not a member of this channel"}}
        alice> {"id":4,"method":"channel.leave","params":{"channel_id":"$c"}}
        alice< {"event":"channel","data":{"kind":"removed","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":[],"created_at":"$at"}}}
        alice< {"id":4,"result":{}}
        alice> {"id":5,"method":"channel.create","params":{"name":""}}
        alice< {"id":5,"error":{"code":"bad_request","message":"name must be 1 to 100 chars"}}
        "#,
    );
}

#[test]
fn presence_is_asked_subscribed_and_published() {
    // Four shards: a `hello` goes out only once the user's owner has the
    // connection, so a query from any core right after it finds the user
    // online.
    let server = TestServer::start_with(4, |config| config.presence_grace_ms = 100);
    check(
        &server,
        &["alice", "bob"],
        r#"
        alice> {"id":1,"method":"presence.query","params":{"users":["bob"]}}
        alice< {"id":1,"result":{"presence":[{"user_id":"$bob","username":"bob","status":"online","last_active_at":"*"}]}}
        alice> {"id":2,"method":"presence.subscribe","params":{"users":["bob"]}}
        alice< {"id":2,"result":{"presence":[{"user_id":"$bob","username":"bob","status":"online","last_active_at":"*"}]}}

        # Bob's last device goes: after the grace, subscribers hear it once.
        bob: close
        alice< {"event":"presence","data":{"user_id":"$bob","username":"bob","status":"offline","last_active_at":"*"}}
        alice> {"id":3,"method":"presence.unsubscribe","params":{"users":["bob"]}}
        alice< {"id":3,"result":{}}
        alice> {"id":4,"method":"presence.query","params":{"users":["nobody"]}}
        alice< {"id":4,"error":{"code":"not_found","message":"no user \"nobody\""}}
        "#,
    );
}

#[test]
fn typing_reaches_the_other_members_and_ends_by_itself() {
    let server = TestServer::start_with(2, |config| config.typing_ttl_ms = 300);
    check(
        &server,
        &["alice", "bob", "eve"],
        r#"
        alice> {"id":1,"method":"channel.create","params":{"name":"crew","members":["bob"]}}
        alice< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        alice< {"id":1,"result":{"channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        bob< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}

        # The others hear a start, then the server's own stop once the
        # typist goes quiet; the typist hears only its reply.
        alice> {"id":2,"method":"typing","params":{"channel_id":"$c","state":"start"}}
        alice< {"id":2,"result":{}}
        bob< {"event":"typing","data":{"channel_id":"$c","user_id":"$alice","username":"alice","state":"start"}}
        bob< {"event":"typing","data":{"channel_id":"$c","user_id":"$alice","username":"alice","state":"stop"}}

        # A stop of one's own.
        bob> {"id":1,"method":"typing","params":{"channel_id":"$c","state":"start"}}
        bob< {"id":1,"result":{}}
        alice< {"event":"typing","data":{"channel_id":"$c","user_id":"$bob","username":"bob","state":"start"}}
        bob> {"id":2,"method":"typing","params":{"channel_id":"$c","state":"stop"}}
        bob< {"id":2,"result":{}}
        alice< {"event":"typing","data":{"channel_id":"$c","user_id":"$bob","username":"bob","state":"stop"}}

        # What is refused.
        eve> {"id":1,"method":"typing","params":{"channel_id":"$c","state":"start"}}
        eve< {"id":1,"error":{"code":"forbidden","message":"not a member of this channel"}}
        alice> {"id":3,"method":"typing","params":{"channel_id":"$c","state":"later"}}
        alice< {"id":3,"error":{"code":"bad_request","message":"typing: state must be \"start\" or \"stop\""}}
        "#,
    );
}

#[test]
fn messages_are_edited_and_deleted() {
    let server = TestServer::start(2);
    check(
        &server,
        &["alice", "bob"],
        r#"
        alice> {"id":1,"method":"channel.create","params":{"name":"crew","members":["bob"]}}
        alice< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        alice< {"id":1,"result":{"channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        bob< {"event":"channel","data":{"kind":"added","channel":{"id":"$c","name":"crew","kind":"group","owner_id":"$alice","members":["alice","bob"],"created_at":"$at"}}}
        alice> {"id":2,"method":"send","params":{"channel_id":"$c","text":"helo"}}
        alice< {"id":2,"result":{"message_id":"$m","channel_id":"$c","created_at":"$sent","duplicate":false}}
        alice< {"event":"message","data":{"id":"$m","channel_id":"$c","sender_id":"$alice","sender":"alice","text":"helo","created_at":"$sent"}}
        bob< {"event":"message","data":{"id":"$m","channel_id":"$c","sender_id":"$alice","sender":"alice","text":"helo","created_at":"$sent"}}

        # An edit: the message as it is now, to every device.
        alice> {"id":3,"method":"message.edit","params":{"channel_id":"$c","message_id":"$m","text":"hello"}}
        alice< {"id":3,"result":{"message":{"id":"$m","channel_id":"$c","sender_id":"$alice","sender":"alice","text":"hello","created_at":"$sent","edited_at":"$edited"}}}
        alice< {"event":"message_edited","data":{"id":"$m","channel_id":"$c","sender_id":"$alice","sender":"alice","text":"hello","created_at":"$sent","edited_at":"$edited"}}
        bob< {"event":"message_edited","data":{"id":"$m","channel_id":"$c","sender_id":"$alice","sender":"alice","text":"hello","created_at":"$sent","edited_at":"$edited"}}

        # Only the sender edits; the sender or the group's owner deletes.
        bob> {"id":1,"method":"message.edit","params":{"channel_id":"$c","message_id":"$m","text":"bob was here"}}
        bob< {"id":1,"error":{"code":"forbidden","message":"only its sender edits a message"}}
        bob> {"id":2,"method":"message.delete","params":{"channel_id":"$c","message_id":"$m"}}
        bob< {"id":2,"error":{"code":"forbidden","message":"only its sender or the channel's owner deletes a message"}}
        alice> {"id":4,"method":"message.delete","params":{"channel_id":"$c","message_id":"$m"}}
        alice< {"id":4,"result":{}}
        alice< {"event":"message_deleted","data":{"id":"$m","channel_id":"$c","deleted":true}}
        bob< {"event":"message_deleted","data":{"id":"$m","channel_id":"$c","deleted":true}}

        # History shows the tombstone; sync carries the changes by their
        # own ids, each with its message as it is now.
        bob> {"id":3,"method":"history","params":{"channel_id":"$c"}}
        bob< {"id":3,"result":{"messages":[{"id":"$m","channel_id":"$c","deleted":true}]}}
        bob> {"id":4,"method":"sync","params":{"since":"0"}}
        bob< {"id":4,"result":{"messages":[{"id":"$m","channel_id":"$c","deleted":true}],"changes":[{"id":"$e1","kind":"edited","channel_id":"$c","message_id":"$m","message":{"id":"$m","channel_id":"$c","deleted":true}},{"id":"$e2","kind":"deleted","channel_id":"$c","message_id":"$m","message":{"id":"$m","channel_id":"$c","deleted":true}}],"has_more":false,"next_since":"*"}}
        alice> {"id":5,"method":"message.edit","params":{"channel_id":"$c","message_id":"$m","text":"again"}}
        alice< {"id":5,"error":{"code":"not_found","message":"no such message"}}
        "#,
    );
}

#[test]
fn reads_are_told_and_counted() {
    let server = TestServer::start(2);
    check(
        &server,
        &["alice", "bob"],
        r#"
        alice> {"id":1,"method":"send","params":{"to_user":"bob","text":"hi @bob"}}
        alice< {"event":"channel","data":{"kind":"added","channel":{"id":"$dm","name":"alice,bob","kind":"direct","owner_id":"$alice","members":"*","created_at":"*"}}}
        alice< {"event":"message","data":{"id":"$m1","channel_id":"$dm","sender_id":"$alice","sender":"alice","text":"hi @bob","created_at":"*"}}
        alice< {"id":1,"result":{"message_id":"$m1","channel_id":"$dm","created_at":"*","duplicate":false}}
        bob< {"event":"channel","data":{"kind":"added","channel":{"id":"$dm","name":"alice,bob","kind":"direct","owner_id":"$alice","members":"*","created_at":"*"}}}
        bob< {"event":"message","data":{"id":"$m1","channel_id":"$dm","sender_id":"$alice","sender":"alice","text":"hi @bob","created_at":"*"}}
        bob> {"id":1,"method":"counts"}
        bob< {"id":1,"result":{"unread":1,"unread_mentions":1,"channels_unread":1}}

        # A read: the reply, and the receipt to the other side of the pair.
        bob> {"id":2,"method":"channel.read","params":{"channel_id":"$dm","message_id":"$m1"}}
        bob< {"id":2,"result":{"channel_id":"$dm","read":"$m1"}}
        alice< {"event":"receipt","data":{"channel_id":"$dm","user_id":"$bob","username":"bob","message_id":"$m1"}}
        bob> {"id":3,"method":"counts"}
        bob< {"id":3,"result":{"unread":0,"unread_mentions":0,"channels_unread":0}}

        # Settings: reads kept private.
        bob> {"id":4,"method":"settings.set","params":{"private_reads":true}}
        bob< {"id":4,"result":{"private_reads":true}}
        bob> {"id":5,"method":"settings.get"}
        bob< {"id":5,"result":{"private_reads":true}}
        bob> {"id":6,"method":"channel.read","params":{"channel_id":"$dm","message_id":"12345"}}
        bob< {"id":6,"error":{"code":"not_found","message":"no such message in this channel"}}
        "#,
    );
}
