//! Work an owner started runs to completion whatever happens to its caller:
//! a request whose client goes away right after sending it, then a retry
//! of the same send.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use crate::common::{TestServer, users};
use serde_json::{Value, json};

#[test]
fn a_send_whose_client_went_away_completes_and_its_retry_is_answered() {
    // One shard, so the HTTP send runs inline on the owner; fsync, so its
    // commit takes long enough for the client's close to arrive first.
    let server = TestServer::start_with(1, |config| config.durability = chatgw_gateway::Durability::Fsync);
    let people = users(&server, "gone", 2);
    let (alice, bob) = (&people[0], &people[1]);
    let mut ws = server.connect(alice, "phone");
    let channel = ws.result("send", json!({ "to_user": bob.username, "text": "hello" }))["channel_id"].clone();
    let rounds = 20;
    for round in 0..rounds {
        let params =
            json!({ "channel_id": channel, "text": format!("m{round}"), "client_msg_id": format!("gone-{round}") });
        let body = params.to_string();
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        write!(
            stream,
            "POST /v1/rpc/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            alice.token,
            body.len()
        )
        .unwrap();
        // The client closes its side right after the body; hyper then drops
        // the request's future (and closes), with the send still at its
        // group commit.
        let _ = stream.shutdown(Shutdown::Write);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        drop(stream);
        // The retry is answered (within the client's frame wait), with the
        // one message's ids whichever of the two came first.
        let reply = ws.call("send", params);
        assert!(reply.get("result").is_some(), "round {round}: the retry failed: {reply}");
    }
    // Every send is stored once, and was fanned out: the sender's own
    // device got each message's event.
    let history = ws.result("history", json!({ "channel_id": channel, "limit": 50 }));
    let texts: Vec<&str> = history["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    for round in 0..rounds {
        let text = format!("m{round}");
        assert_eq!(texts.iter().filter(|t| **t == text).count(), 1, "{text} once in {texts:?}");
    }
    let mut seen: Vec<String> = Vec::new();
    while seen.len() < rounds {
        let event: Value = ws.next_event("message");
        if let Some(text) = event["text"].as_str().filter(|text| text.starts_with('m')) {
            seen.push(text.to_string());
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), rounds, "every message was delivered: {seen:?}");
}
