//! The server's first frame on a connection is its `hello` (protocol §2),
//! even when the connection's channels are busy while it attaches. The
//! connection joins its channels on its core before it has told every
//! owner; a message the core delivers meanwhile must queue after the
//! `hello`, not before it. The soak found it: a churning device got a
//! `message` first, once in about a thousand reconnects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestServer, users_on_every_shard};

const SHARDS: u16 = 2;
const RECONNECTS: usize = 300;

#[test]
fn hello_comes_first_while_the_channels_deliver() {
    // No rate limit: the senders keep the channel busy.
    let server = TestServer::start_with(SHARDS, |config| config.rate_limit_per_s = 0);
    let members = users_on_every_shard(&server, "hf", 2, SHARDS);
    let (sender, joiner) = (&members[0], &members[1]);
    let mut owner = server.connect(sender, "owner");
    let made = owner.result("channel.create", json!({ "name": "busy", "members": [joiner.username] }));
    let channel = made["channel"]["id"].as_str().unwrap().to_string();

    let done = AtomicBool::new(false);
    let (firsts, sent) = std::thread::scope(|scope| {
        // Four devices of the sender, on whichever cores they land, each
        // sending without pause and reading what comes: the channel is
        // hosted where they are, and busy.
        let senders: Vec<_> = (0..4)
            .map(|n| {
                let (server, done, channel) = (&server, &done, &channel);
                scope.spawn(move || {
                    let mut client = server.connect(sender, &format!("s{n}"));
                    let mut sent = 0u64;
                    while !done.load(Ordering::Acquire) {
                        for _ in 0..16 {
                            client.send_command("send", json!({ "channel_id": channel, "text": format!("m{sent}") }));
                            sent += 1;
                        }
                        // Their replies (and the events between them).
                        for _ in 0..16 {
                            let reply = client.next_reply();
                            assert!(reply["result"].is_object(), "{reply}");
                        }
                    }
                    sent
                })
            })
            .collect();
        // The joiner reconnects over and over and reads its first frame.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut firsts = Vec::with_capacity(RECONNECTS);
        for n in 0..RECONNECTS {
            if Instant::now() > deadline {
                break;
            }
            let mut client = server.try_connect(Some(&joiner.token), &format!("j{}", n % 2)).expect("upgrade");
            let first = client.next_frame();
            firsts.push(first["event"].as_str().unwrap_or("a reply").to_string());
            client.close();
        }
        done.store(true, Ordering::Release);
        let sent: u64 = senders.into_iter().map(|sender| sender.join().unwrap()).sum();
        (firsts, sent)
    });
    let not_hello: Vec<&String> = firsts.iter().filter(|event| *event != "hello").collect();
    println!(
        "{} reconnects while {sent} messages were sent: {} first frames were not a hello",
        firsts.len(),
        not_hello.len()
    );
    assert!(firsts.len() >= 100, "only {} reconnects in 60 s", firsts.len());
    assert!(not_hello.is_empty(), "first frames that were not a hello: {not_hello:?}");
}
