//! A command outlives its connection: a frame and the client's FIN close
//! together, and the session may be detached before the command runs. What
//! the command then registers must not point at the connection's freed
//! slot, which the next connection of the core reuses. (Through a socket,
//! glommio's next read after a frame is pending at first, so the command
//! ran first in every round here, before the fix too;
//! `shard::registry`'s unit test shows the slot reuse deterministically.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::common::{TestServer, User};
use serde_json::json;

/// A masked client text frame (RFC 6455), payload under 64 KiB.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    frame
}

/// Upgrades a raw socket by hand; returns it after the 101 head.
fn upgraded(server: &TestServer, user: &User) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET /v1/ws?device=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        user.token
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

#[test]
fn a_subscription_made_after_its_connection_went_reaches_no_one_else() {
    // One shard: every connection shares one registry, so the next
    // connection takes the freed slot.
    let server = TestServer::start_with(1, |config| config.presence_grace_ms = 100);
    let (alice, bob, carol) = (server.signup("life_alice"), server.signup("life_bob"), server.signup("life_carol"));
    let mut bob_client = server.connect(&bob, "phone");
    for round in 0..10 {
        // The subscribe and the FIN leave together (corked), so the
        // session reads the frame and then EOF before the command runs.
        let stream = upgraded(&server, &alice);
        socket2::SockRef::from(&stream).set_cork(true).unwrap();
        let command = json!({ "id": 1, "method": "presence.subscribe", "params": { "users": [bob.username] } });
        (&stream).write_all(&text_frame(command.to_string().as_bytes())).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        drop(stream);
        std::thread::sleep(Duration::from_millis(20));
        // The next connection of the core: it subscribed to nobody.
        let mut carol_client = server.connect(&carol, &format!("d{round}"));
        // Bob goes: after the grace, his subscribers hear he is offline.
        bob_client.close();
        let leaked = carol_client.next_event_within("presence", Duration::from_millis(400));
        assert!(leaked.is_none(), "round {round}: carol got an event she never subscribed to: {leaked:?}");
        carol_client.close();
        bob_client = server.connect(&bob, "phone");
    }
}
