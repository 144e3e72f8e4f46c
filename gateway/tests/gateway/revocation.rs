//! Revocation that really cuts sessions: a logout whose client goes away
//! mid-request still closes every session (the revocation runs to its end
//! as owner work, not inside the request's future), and a session that
//! registers while a logout runs is closed too (it checks the token
//! version again once registered).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{TestServer, User};
use serde_json::json;

fn login(server: &TestServer, user: &User) -> User {
    let (status, body) = server.post("/v1/login", &json!({ "username": user.username, "password": "correct horse" }));
    assert_eq!(status, 200, "{body}");
    User { token: body["token"].as_str().unwrap().to_string(), ..user.clone() }
}

#[test]
fn a_logout_whose_client_half_closes_still_closes_every_session() {
    // Each commit takes 300 ms, as a slow disk would make it: the client
    // half-closes while the revocation's commit is in flight, and hyper
    // drops the request's future at that EOF (before the fix, the version
    // was raised and no session was ever kicked).
    let server = TestServer::start_with(1, |config| config.fault_commit_delay_ms = 300);
    let alice = server.signup("halfclose");
    let mut sessions = vec![server.connect(&alice, "phone"), server.connect(&login(&server, &alice), "laptop")];
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    let request = format!(
        "POST /v1/logout HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
        alice.token
    );
    raw.write_all(request.as_bytes()).unwrap();
    raw.shutdown(Shutdown::Write).unwrap();
    // What the server says (if anything) before it closes: not waited for.
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    for session in &mut sessions {
        session.ws.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(session.close_code(), Some(1008), "every session is closed by the revocation");
    }
    assert_eq!(server.try_connect(Some(&alice.token), "again").err(), Some(401));
}

#[test]
fn a_session_that_registers_during_a_logout_is_closed() {
    // Each connection waits 400 ms between its upgrade's token check and
    // its registration, as a busy core would make it; the logout commits
    // and kicks inside that window. Before the check at registration, the
    // connection then registered with its revoked token, got its `hello`,
    // and stayed open.
    let server = TestServer::start_with(2, |config| config.fault_attach_delay_ms = 400);
    let alice = server.signup("racing");
    for round in 0..3 {
        let user = login(&server, &alice);
        let connecting: Vec<_> = (0..4)
            .map(|n| {
                let (url, token) = (server.addr(), user.token.clone());
                std::thread::spawn(move || {
                    let stream = TcpStream::connect(url).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
                        "ws://{url}/v1/ws?device=r{round}n{n}&token={token}"
                    ))
                    .unwrap();
                    let (mut ws, _) = tungstenite::client(request, stream).expect("the upgrade passes its check");
                    // What comes next: a hello (it registered with a
                    // revoked token) or a close.
                    loop {
                        match ws.read() {
                            Ok(tungstenite::Message::Text(text)) => return Some(text.to_string()),
                            Ok(tungstenite::Message::Close(frame)) => {
                                assert_eq!(frame.map(|frame| u16::from(frame.code)), Some(1008));
                                return None;
                            }
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let (status, body) = server.post_auth("/v1/logout", &user.token, &json!({}));
        assert_eq!(status, 200, "{body}");
        let started = Instant::now();
        for connection in connecting {
            let first = connection.join().unwrap();
            assert_eq!(first, None, "round {round}: a connection registered with a revoked token");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
