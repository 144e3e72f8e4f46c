//! Pushes to offline members, received by a real HTTP server in the test:
//! the body and the `Idempotency-Key`, nothing for connected members or the
//! sender, retries through a webhook that answers 503, coalescing, and the
//! outbox counted when there is no webhook.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{TestServer, hanging_webhook, sample_sum, scrape};
use serde_json::{Value, json};

/// What the receiver got: the `Idempotency-Key` and the JSON body.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook on an ephemeral loopback port that answers `503` to the first
/// `refuse` requests and `200` after; returns its URL and what it received
/// (refused requests included).
fn receiver(refuse: usize) -> (String, Received) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push", server.server_addr().to_ip().unwrap());
    let received: Received = Arc::default();
    let log = received.clone();
    std::thread::spawn(move || {
        for (served, mut request) in server.incoming_requests().enumerate() {
            let key = request
                .headers()
                .iter()
                .find(|header| header.field.equiv("Idempotency-Key"))
                .map(|header| header.value.to_string())
                .unwrap_or_default();
            let mut body = String::new();
            request.as_reader().read_to_string(&mut body).unwrap();
            log.lock().unwrap().push((key, serde_json::from_str(&body).unwrap_or(Value::Null)));
            let status = if served < refuse { 503 } else { 200 };
            let _ = request.respond(tiny_http::Response::empty(status));
        }
    });
    (url, received)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn outbox_depth(server: &TestServer) -> u64 {
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let mut response = server
        .http
        .get(server.url("/admin/v1/outbox"))
        .header("Authorization", format!("Bearer {admin}"))
        .call()
        .unwrap();
    let body: Value = response.body_mut().read_json().unwrap();
    body["depth"].as_u64().unwrap()
}

#[test]
fn an_offline_member_gets_a_push_and_connected_ones_do_not() {
    let (url, received) = receiver(0);
    let server = TestServer::start_with(2, |config| config.push_webhook = Some(url));
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let carol = server.signup("carol");
    let mut alice_ws = server.connect(&alice, "phone");
    let mut carol_ws = server.connect(&carol, "phone");
    let channel = alice_ws.result("channel.create", json!({ "name": "trio", "members": ["bob", "carol"] }))["channel"]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = alice_ws.result("send", json!({ "channel_id": channel, "text": "are you there?" }));
    carol_ws.next_event("message");

    wait_for("bob's push", || !received.lock().unwrap().is_empty());
    // Give a wrong push (to alice or carol) time to show up too.
    std::thread::sleep(Duration::from_millis(1500));
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "only bob is offline: {received:?}");
    let (key, body) = &received[0];
    assert_eq!(key, &format!("{}-{}", bob.user_id, sent["message_id"].as_str().unwrap()));
    assert_eq!(body["user_id"], bob.user_id.as_str());
    assert_eq!(body["username"], "bob");
    assert_eq!(body["count"], 1);
    let message = &body["message"];
    assert_eq!(message["id"], sent["message_id"]);
    assert_eq!(message["channel_id"], channel.as_str());
    assert_eq!((message["sender"].as_str(), message["text"].as_str()), (Some("alice"), Some("are you there?")));
    wait_for("an empty outbox", || outbox_depth(&server) == 0);
}

#[test]
fn a_push_carries_the_users_unread_total_as_badge() {
    let (url, received) = receiver(0);
    let server = TestServer::start_with(2, |config| config.push_webhook = Some(url));
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let group = alice_ws.result("channel.create", json!({ "name": "two", "members": ["bob"] }))["channel"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Bob read one of two earlier messages of the group while connected.
    let first = alice_ws.result("send", json!({ "channel_id": group, "text": "one" }));
    alice_ws.result("send", json!({ "channel_id": group, "text": "two" }));
    let mut bob_ws = server.connect(&bob, "phone");
    bob_ws.result("channel.read", json!({ "channel_id": group, "message_id": first["message_id"] }));
    bob_ws.close();
    wait_for("the pushes of the first two", || !received.lock().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    received.lock().unwrap().clear();
    // Offline now: a direct message, whose push counts every unread one.
    alice_ws.result("send", json!({ "to_user": "bob", "text": "three, in private" }));
    wait_for("bob's push", || !received.lock().unwrap().is_empty());
    let received = received.lock().unwrap().clone();
    let (_, body) = received.last().unwrap();
    assert_eq!(body["message"]["text"], "three, in private");
    assert_eq!(body["badge"], 2, "the group's second message and the direct one: {body}");
}

#[test]
fn a_webhook_that_answers_503_gets_the_push_once_it_answers_200() {
    let (url, received) = receiver(3);
    let server = TestServer::start_with(2, |config| config.push_webhook = Some(url));
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let sent = alice_ws.result("send", json!({ "to_user": "bob", "text": "ping" }));
    wait_for("four tries", || received.lock().unwrap().len() >= 4);
    let expected = format!("{}-{}", bob.user_id, sent["message_id"].as_str().unwrap());
    let received = received.lock().unwrap().clone();
    assert!(received.iter().all(|(key, _)| *key == expected), "the same key on every try: {received:?}");
    assert_eq!(received.len(), 4, "deleted after the 200, not sent again");
    wait_for("an empty outbox", || outbox_depth(&server) == 0);
}

#[test]
fn several_messages_within_the_window_go_as_one_push() {
    let (url, received) = receiver(0);
    let server = TestServer::start_with(2, |config| config.push_webhook = Some(url));
    let alice = server.signup("alice");
    server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let mut last = Value::Null;
    for n in 0..3 {
        last = alice_ws.result("send", json!({ "to_user": "bob", "text": format!("message {n}") }));
    }
    wait_for("the push", || !received.lock().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    let received = received.lock().unwrap().clone();
    let counts: u64 = received.iter().map(|(_, body)| body["count"].as_u64().unwrap()).sum();
    assert_eq!(counts, 3, "every message is counted once: {received:?}");
    let newest = received.last().unwrap();
    assert_eq!(newest.1["message"]["id"], last["message_id"], "the newest message is in the last push");
    assert!(received.len() < 3, "coalesced: {received:?}");
}

#[test]
fn without_a_webhook_pushes_wait_in_the_outbox() {
    let server = TestServer::start(2);
    let alice = server.signup("alice");
    server.signup("bob");
    server.signup("carol");
    let mut alice_ws = server.connect(&alice, "phone");
    alice_ws.result("send", json!({ "to_user": "bob", "text": "one" }));
    alice_ws.result("send", json!({ "to_user": "carol", "text": "two" }));
    wait_for("two records", || outbox_depth(&server) == 2);
}

/// A counter's total over shards, from `/metrics`.
fn metric(server: &TestServer, name: &str) -> f64 {
    sample_sum(&scrape(server), name)
}

#[test]
fn the_outbox_keeps_a_users_newest_records_and_the_shards_bound() {
    // One shard: every record is in one outbox.
    let server = TestServer::start_with(1, |config| config.max_outbox_per_shard = 150);
    let alice = server.signup("alice");
    for name in ["bob", "carol", "dave"] {
        server.signup(name);
    }
    let mut alice_ws = server.connect(&alice, "phone");
    // 120 messages to bob, who is offline: he keeps his newest 100.
    for n in 0..120 {
        alice_ws.result("send", json!({ "to_user": "bob", "text": format!("bob {n}") }));
    }
    wait_for("bob's records", || outbox_depth(&server) == 100);
    assert_eq!(metric(&server, "chatgw_pushes_coalesced_total"), 20.0);
    // 60 to carol: the shard's bound (150) expires the oldest (bob's).
    for n in 0..60 {
        alice_ws.result("send", json!({ "to_user": "carol", "text": format!("carol {n}") }));
    }
    wait_for("the shard's bound", || outbox_depth(&server) == 150);
    assert_eq!(metric(&server, "chatgw_pushes_expired_total"), 10.0);
    assert_eq!(metric(&server, "chatgw_pushes_coalesced_total"), 20.0);

    // Dave's first record expires one more of the oldest.
    alice_ws.result("send", json!({ "to_user": "dave", "text": "hi dave" }));
    wait_for("one more expired", || metric(&server, "chatgw_pushes_expired_total") == 11.0);
    assert_eq!(outbox_depth(&server), 150);
}

/// A webhook that answers 400 to pushes for `refused_user` while `refusing`
/// is set, and 200 to everything else.
fn picky_receiver(refused_user: String, refusing: Arc<std::sync::atomic::AtomicBool>) -> (String, Received) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push", server.server_addr().to_ip().unwrap());
    let received: Received = Arc::default();
    let log = received.clone();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            request.as_reader().read_to_string(&mut body).unwrap();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let refuse =
                refusing.load(std::sync::atomic::Ordering::SeqCst) && body["username"] == refused_user.as_str();
            let status = if refuse { 400 } else { 200 };
            if !refuse {
                log.lock().unwrap().push((String::new(), body));
            }
            let _ = request.respond(tiny_http::Response::empty(status));
        }
    });
    (url, received)
}

fn admin(server: &TestServer, method: &str, path: &str) -> Value {
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let request = match method {
        "GET" => server.http.get(server.url(path)).header("Authorization", format!("Bearer {admin}")).call(),
        _ => server.http.post(server.url(path)).header("Authorization", format!("Bearer {admin}")).send_empty(),
    };
    request.unwrap().body_mut().read_json().unwrap()
}

#[test]
fn a_push_refused_for_good_goes_to_the_dead_pushes_without_holding_up_the_others() {
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (url, received) = picky_receiver("refused".into(), refusing.clone());
    // One shard: both pushes come from the same worker, in one round.
    let server = TestServer::start_with(1, |config| config.push_webhook = Some(url));
    let alice = server.signup("alice");
    server.signup("refused");
    server.signup("welcome");
    let mut alice_ws = server.connect(&alice, "phone");
    let refused_first = alice_ws.result("send", json!({ "to_user": "refused", "text": "first" }));
    alice_ws.result("send", json!({ "to_user": "welcome", "text": "second" }));
    // The 400 for one user does not stop the other's push.
    wait_for("welcome's push", || received.lock().unwrap().iter().any(|(_, body)| body["username"] == "welcome"));
    wait_for("the refused push among the dead", || {
        admin(&server, "GET", "/admin/v1/outbox/dead")["dead"].as_array().unwrap().len() == 1
    });
    let dead = admin(&server, "GET", "/admin/v1/outbox/dead");
    let entry = &dead["dead"][0];
    assert_eq!((entry["username"].as_str(), entry["status"].as_u64()), (Some("refused"), Some(400)), "{dead}");
    assert_eq!(entry["message_id"], refused_first["message_id"]);
    assert_eq!(outbox_depth(&server), 0, "nothing waits in the outbox");
    // The operator fixes the webhook and retries: the push goes.
    refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(admin(&server, "POST", "/admin/v1/outbox/dead/retry")["retried"], 1);
    wait_for("the retried push", || received.lock().unwrap().iter().any(|(_, body)| body["username"] == "refused"));
    assert!(admin(&server, "GET", "/admin/v1/outbox/dead")["dead"].as_array().unwrap().is_empty());
}

/// The test CA, and the key and certificate (for 127.0.0.1, signed by the
/// CA) of the https receiver: test fixtures, never secrets.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gateway/fixtures");

/// An https webhook on an ephemeral loopback port (rustls, the fixtures'
/// certificate) that answers 200 to every POST; its URL, what it received,
/// and how many TLS handshakes failed.
fn https_receiver() -> (String, Received, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(format!("{FIXTURES}/webhook-cert.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{FIXTURES}/webhook-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/push", listener.local_addr().unwrap().port());
    let received: Received = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (log, failures) = (received.clone(), failed.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, log, failures) = (config.clone(), log.clone(), failures.clone());
            std::thread::spawn(move || {
                if serve_https(config, stream, &log).is_err() {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (url, received, failed)
}

/// Serves one TLS connection's requests (keep-alive) until the client
/// closes; an error is a failed handshake or a broken request.
fn serve_https(config: Arc<rustls::ServerConfig>, stream: std::net::TcpStream, log: &Received) -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let connection = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = std::io::BufReader::new(rustls::StreamOwned::new(connection, stream));
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line)? == 0 {
            return Ok(());
        }
        assert!(line.starts_with("POST /push "), "{line}");
        let (mut length, mut key) = (0, String::new());
        loop {
            let mut header = String::new();
            tls.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "idempotency-key" => key = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        tls.read_exact(&mut body)?;
        log.lock().unwrap().push((key, serde_json::from_slice(&body).unwrap_or(Value::Null)));
        tls.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
        tls.get_mut().flush()?;
    }
}

#[test]
fn pushes_go_to_an_https_webhook_whose_server_chains_to_the_configured_ca() {
    let (url, received, failed) = https_receiver();
    let webhook = url.clone();
    let server = TestServer::start_with(1, |config| {
        config.push_webhook = Some(webhook);
        config.push_webhook_ca = Some(format!("{FIXTURES}/webhook-ca.pem").into());
    });
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let sent = alice_ws.result("send", json!({ "to_user": "bob", "text": "over tls" }));
    wait_for("bob's push over https", || !received.lock().unwrap().is_empty());
    let (key, body) = received.lock().unwrap()[0].clone();
    assert_eq!(key, format!("{}-{}", bob.user_id, sent["message_id"].as_str().unwrap()));
    assert_eq!((body["username"].as_str(), body["message"]["text"].as_str()), (Some("bob"), Some("over tls")));
    wait_for("an empty outbox", || outbox_depth(&server) == 0);
    assert_eq!(failed.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(server);

    // Without the CA, the same server certificate chains to none of
    // Mozilla's roots: the handshake fails and the push waits in the outbox.
    let (url, received, failed) = https_receiver();
    let server = TestServer::start_with(1, |config| config.push_webhook = Some(url));
    let alice = server.signup("alice");
    server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    alice_ws.result("send", json!({ "to_user": "bob", "text": "over tls" }));
    wait_for("a refused handshake", || failed.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert!(received.lock().unwrap().is_empty(), "nothing is sent to a server the agent does not trust");
    assert_eq!(outbox_depth(&server), 1, "the push stays in the outbox");
}

#[test]
fn a_webhook_that_is_not_an_http_url_is_refused_at_start() {
    for bad in ["ftp://example.com/push", "not a url", "http://", "/push"] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::common::config(dir.path(), 1);
        config.push_webhook = Some(bad.into());
        let error = chatgw_gateway::start(config).err().unwrap_or_else(|| panic!("{bad:?} was taken"));
        assert!(error.to_string().contains("--push-webhook"), "{bad:?}: {error}");
    }
    // https is built in (rustls with the webpki roots).
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::config(dir.path(), 1);
    config.push_webhook = Some("https://127.0.0.1:9/hook".into());
    let handle = chatgw_gateway::start(config).expect("an https webhook is taken");
    handle.stop();
    handle.join().unwrap();
    // A CA file that holds no certificate is refused at start too.
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::config(dir.path(), 1);
    config.push_webhook = Some("https://127.0.0.1:9/hook".into());
    config.push_webhook_ca = Some(format!("{FIXTURES}/webhook-key.pem").into());
    let Err(error) = chatgw_gateway::start(config) else { panic!("a CA file without certificates was taken") };
    assert!(error.to_string().contains("--push-webhook-ca"), "{error}");
}

#[test]
fn a_webhook_that_hangs_does_not_hold_up_acknowledgements() {
    // A webhook that takes every connection and never answers.
    let (url, held) = hanging_webhook();
    // One shard, fsync: its group commits run off the core, where webhook
    // POSTs ran too (one blocking thread per executor), 10 s each when the
    // webhook hangs.
    let server = TestServer::start_with(1, |config| {
        config.push_webhook = Some(url);
        config.durability = chatgw_gateway::Durability::Fsync;
    });
    let alice = server.signup("alice");
    server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    // Bob is offline: a push goes to the webhook, which hangs.
    alice_ws.result("send", json!({ "to_user": "bob", "text": "are you there?" }));
    wait_for("the push's POST", || !held.lock().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        let started = Instant::now();
        alice_ws.result("send", json!({ "to_user": "bob", "text": format!("still there? {n}") }));
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest of 20 acknowledgements while the webhook hangs: {slowest:?}");
    // Not a speed figure: behind a hanging POST an fsync commit waited out
    // the POST's 10 s timeout.
    assert!(slowest < Duration::from_secs(5), "an acknowledgement waited {slowest:?} behind a hanging webhook");
}

#[test]
fn a_push_check_that_fails_is_asked_again_while_the_server_runs() {
    // The first three recordings fail on every shard, as a full disk at
    // the members' owner would make them: the check is asked again (with
    // a growing wait) and the push goes out without a restart. Before,
    // it waited for the next start.
    let (url, received) = receiver(0);
    let server = TestServer::start_with(2, |config| {
        config.push_webhook = Some(url);
        config.fault_push_record_failures = 3;
    });
    let alice = server.signup("retry_alice");
    let bob = server.signup("retry_bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let sent = alice_ws.result("send", json!({ "to_user": bob.username, "text": "you there?" }));
    wait_for("bob's push after the retries", || !received.lock().unwrap().is_empty());
    let (key, body) = received.lock().unwrap()[0].clone();
    assert_eq!(body["message"]["id"], sent["message_id"], "{body}");
    assert!(key.contains(&bob.user_id), "{key}");
    let retries = sample_sum(&scrape(&server), "chatgw_push_check_retries_total");
    assert!(retries >= 3.0, "{retries} retries counted");
}

/// The metric of messages stored with no pending push check.
const SKIPPED: &str = "chatgw_push_checks_skipped_total";

#[test]
fn a_message_to_members_connected_to_its_channels_core_owes_no_pending_check() {
    let (url, received) = receiver(0);
    let server = TestServer::start_with(2, |config| config.push_webhook = Some(url));
    // Five users on two shards: two share a core (and one is on the other).
    let people = crate::common::users_on_every_shard(&server, "skip", 5, 2);
    let on = |shard: u16| people.iter().filter(|user| crate::common::owner(user, 2) == shard).collect::<Vec<_>>();
    let (home, away) = if on(0).len() >= 2 { (on(0), on(1)) } else { (on(1), on(0)) };
    let pairs = [(home[0], home[1]), (home[0], away[0])];
    // Two users of one core, both connected: the direct channel is theirs
    // (one core), so each send owes nothing and skips the check.
    let mut expected = 0.0;
    for (a, b) in pairs {
        let mut a_ws = server.connect(a, "phone");
        let mut b_ws = server.connect(b, "phone");
        for n in 0..3 {
            a_ws.result("send", json!({ "to_user": b.username, "text": format!("a{n}") }));
            b_ws.next_event("message");
            b_ws.result("send", json!({ "to_user": a.username, "text": format!("b{n}") }));
            a_ws.next_event("message");
        }
        // Same core: all 6 sends skip. Two cores: the channel's owner is
        // one of the pair's, so exactly the 3 sends to its own user skip.
        let same_core = crate::common::owner(a, 2) == crate::common::owner(b, 2);
        expected += if same_core { 6.0 } else { 3.0 };
        wait_for("the skipped checks counted", || metric(&server, SKIPPED) == expected);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(received.lock().unwrap().is_empty(), "nobody was offline: {:?}", received.lock().unwrap());
    assert_eq!(outbox_depth(&server), 0);
    assert_eq!(metric(&server, SKIPPED), expected);
}

#[test]
fn a_member_who_leaves_while_a_skipped_checks_message_is_written_still_gets_the_push() {
    // One shard: every member is the channel's core's. The commit is slow,
    // so bob's only device leaves after the send chose to skip the check
    // and before the message is fanned out: the check after the fan-out
    // finds him gone and records his push.
    let (url, received) = receiver(0);
    let server = TestServer::start_with(1, |config| {
        config.push_webhook = Some(url);
        config.fault_commit_delay_ms = 600;
    });
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let mut alice_ws = server.connect(&alice, "phone");
    let mut bob_ws = server.connect(&bob, "phone");
    alice_ws.result("send", json!({ "to_user": bob.username, "text": "channel" }));
    bob_ws.next_event("message");
    assert_eq!(metric(&server, SKIPPED), 1.0);
    let request = alice_ws.send_command("send", json!({ "to_user": bob.username, "text": "are you still there?" }));
    std::thread::sleep(Duration::from_millis(150));
    bob_ws.close();
    drop(bob_ws);
    let reply = alice_ws.next_reply();
    assert_eq!(reply["id"], request);
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(metric(&server, SKIPPED), 2.0, "the send skipped its check: bob was connected when it came");
    wait_for("bob's push", || !received.lock().unwrap().is_empty());
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].1["user_id"], bob.user_id.as_str());
    assert_eq!(received[0].1["message"]["id"], reply["result"]["message_id"]);
}
