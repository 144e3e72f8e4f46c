//! The stateless side over real HTTP against a real server: accounts, user
//! lookup, RPC, discovery, metrics, the admin API, and their errors.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::{TestServer, User, sample_sum, scrape};
use chatgw_gateway::auth::Claims;
use serde_json::{Value, json};

/// A request with an optional bearer token and JSON body; the status and
/// the JSON answer (`Null` when it is not JSON).
fn call(server: &TestServer, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let url = server.url(path);
    let auth = token.map(|token| format!("Bearer {token}"));
    macro_rules! with_auth {
        ($request:expr) => {{
            let request = $request;
            match &auth {
                Some(auth) => request.header("Authorization", auth),
                None => request,
            }
        }};
    }
    let result = match (method, body) {
        ("GET", _) => with_auth!(server.http.get(&url)).call(),
        ("POST", Some(body)) => with_auth!(server.http.post(&url)).send_json(body),
        ("POST", None) => with_auth!(server.http.post(&url)).send_empty(),
        ("PUT", Some(body)) => with_auth!(server.http.put(&url)).send_json(body),
        ("PATCH", Some(body)) => with_auth!(server.http.patch(&url)).send_json(body),
        other => panic!("no helper for {other:?}"),
    };
    let mut response = result.unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap_or(Value::Null))
}

fn error_code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {answer}"))
}

fn rpc(server: &TestServer, user: &User, method: &str, params: Value) -> (u16, Value) {
    call(server, "POST", &format!("/v1/rpc/{method}"), Some(&user.token), Some(&params))
}

fn raw_post(server: &TestServer, path: &str, body: &[u8]) -> (u16, Value) {
    let mut response = server.http.post(server.url(path)).content_type("application/json").send(body).unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap_or(Value::Null))
}

#[test]
fn accounts_and_user_lookup() {
    let server = TestServer::start(2);
    let (status, body) = call(
        &server,
        "POST",
        "/v1/signup",
        None,
        Some(&json!({ "username": "alice", "password": "correct horse", "display_name": "Alice A.", "extra": 1 })),
    );
    assert_eq!(status, 201, "unknown fields are ignored: {body}");
    assert_eq!(body["username"], "alice");
    assert!(body["token"].as_str().unwrap().len() > 20 && body["expires_at"].as_u64().unwrap() > 0);
    let alice = User {
        username: "alice".into(),
        user_id: body["user_id"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    };

    let again = json!({ "username": "alice", "password": "another one" });
    let (status, body) = call(&server, "POST", "/v1/signup", None, Some(&again));
    assert_eq!((status, error_code(&body)), (409, "username_taken"));
    for bad in [
        json!({ "username": "Al", "password": "correct horse" }),
        json!({ "username": "bob", "password": "short" }),
        json!({ "username": 7, "password": "correct horse" }),
        json!({ "password": "correct horse" }),
        json!({ "username": "bob", "password": "correct horse", "display_name": 3 }),
    ] {
        let (status, body) = call(&server, "POST", "/v1/signup", None, Some(&bad));
        assert_eq!((status, error_code(&body)), (400, "bad_request"), "{bad}");
    }
    assert_eq!(raw_post(&server, "/v1/signup", b"{not json").0, 400);
    assert_eq!(raw_post(&server, "/v1/signup", b"[1, 2]").0, 400);

    let (status, body) =
        call(&server, "POST", "/v1/login", None, Some(&json!({ "username": "alice", "password": "correct horse" })));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id.as_str());
    assert_eq!(body["gateway"]["node"], "test-node");
    assert_eq!(body["gateway"]["ws_url"], format!("ws://{}/v1/ws", server.addr()));
    for wrong in
        [json!({ "username": "alice", "password": "wrong horse" }), json!({ "username": "nobody", "password": "x" })]
    {
        let (status, body) = call(&server, "POST", "/v1/login", None, Some(&wrong));
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{wrong}");
    }

    let (status, body) = call(&server, "GET", "/v1/users/alice", Some(&alice.token), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id.as_str());
    assert_eq!(body["display_name"], "Alice A.");
    assert!(body["created_at"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(body.get("password_hash").is_none());
    let (status, body) = call(&server, "GET", "/v1/users/alice", None, None);
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, body) = call(&server, "GET", "/v1/users/nobody", Some(&alice.token), None);
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = call(&server, "GET", "/v1/no/such/path", None, None);
    assert_eq!((status, error_code(&body)), (404, "not_found"));
}

#[test]
fn expired_and_forged_tokens_are_refused() {
    let server = TestServer::start(2);
    let alice = server.signup("alice");
    let secret = server.handle.as_ref().unwrap().jwt_secret.clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let sign = |claims: &Claims, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let claims = |exp: u64| Claims { sub: alice.user_id.clone(), name: "alice".into(), exp, iat: now - 100, ver: 0 };
    let expired = sign(&claims(now - 5), &secret);
    let forged = sign(&claims(now + 3600), "another secret");
    let valid = sign(&claims(now + 3600), &secret);
    for (token, status) in [(expired.as_str(), 401), (forged.as_str(), 401), ("garbage", 401), (valid.as_str(), 200)] {
        let (got, body) = call(&server, "POST", "/v1/rpc/channel.list", Some(token), None);
        assert_eq!(got, status, "{token}: {body}");
        assert_eq!(server.try_connect(Some(token), "d1").map(|_| 101).unwrap_or_else(|status| status), {
            if status == 200 { 101 } else { 401 }
        });
    }
}

#[test]
fn rpc_runs_every_method_through_the_websocket_dispatch() {
    let server = TestServer::start_with(2, |config| config.max_message_chars = 50);
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let carol = server.signup("carol");
    let mut bob_ws = server.connect(&bob, "phone");

    let (status, body) = rpc(&server, &alice, "channel.create", json!({ "name": "team", "members": ["bob"] }));
    assert_eq!(status, 200, "{body}");
    let channel_id = body["result"]["channel"]["id"].as_str().unwrap().to_string();
    assert_eq!(bob_ws.next_event("channel")["kind"], "added");

    let (status, body) = rpc(&server, &alice, "send", json!({ "channel_id": channel_id, "text": "over http" }));
    assert_eq!(status, 200, "{body}");
    let message_id = body["result"]["message_id"].as_str().unwrap().to_string();
    assert_eq!(body["result"]["duplicate"], false);
    let event = bob_ws.next_event("message");
    assert_eq!((event["id"].as_str().unwrap(), event["text"].as_str().unwrap()), (message_id.as_str(), "over http"));

    let (status, body) = rpc(&server, &bob, "history", json!({ "channel_id": channel_id }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["messages"][0]["id"], message_id.as_str());
    let (status, body) = rpc(&server, &bob, "sync", json!({ "since": "0" }));
    assert_eq!((status, body["result"]["messages"].as_array().unwrap().len()), (200, 1), "{body}");
    let (status, body) = rpc(&server, &alice, "send", json!({ "to_user": "carol", "text": "direct" }));
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&server, "POST", "/v1/rpc/channel.list", Some(&carol.token), None);
    assert_eq!((status, body["result"]["channels"][0]["kind"].as_str()), (200, Some("direct")), "empty body is {{}}");
    let (status, body) = rpc(&server, &alice, "heartbeat", json!({}));
    assert_eq!((status, &body), (200, &json!({ "result": {} })));

    let cases = [
        (&alice, "no.such.method", json!({}), 400, "bad_request"),
        (&alice, "send", json!({ "channel_id": channel_id }), 400, "bad_request"),
        (&alice, "send", json!({ "channel_id": 12, "text": "x" }), 400, "bad_request"),
        (&alice, "send", json!({ "channel_id": channel_id, "text": "x".repeat(51) }), 413, "message_too_long"),
        (&carol, "history", json!({ "channel_id": channel_id }), 403, "forbidden"),
        (&carol, "send", json!({ "channel_id": channel_id, "text": "let me in" }), 403, "forbidden"),
        (&alice, "history", json!({ "channel_id": "12345" }), 404, "not_found"),
        (&alice, "send", json!({ "to_user": "nobody", "text": "x" }), 404, "not_found"),
    ];
    for (user, method, params, status, code) in cases {
        let (got, body) = rpc(&server, user, method, params.clone());
        assert_eq!((got, error_code(&body)), (status, code), "{method} {params}");
    }
    let (status, body) = raw_post(&server, "/v1/rpc/send", b"{\"channel_id\": ");
    assert_eq!((status, error_code(&body)), (401, "unauthorized"), "auth is checked before the body");
    let oversized = vec![b' '; chatgw_gateway::limits::HTTP_BODY_BYTES_MAX + 10];
    let response = server
        .http
        .post(server.url("/v1/rpc/send"))
        .header("Authorization", format!("Bearer {}", alice.token))
        .send(&oversized[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
}

#[test]
fn discovery_names_this_node_and_its_connections() {
    let server = TestServer::start_with(2, |config| config.public_url = Some("https://chat.example.com".into()));
    let alice = server.signup("alice");
    let (status, body) = call(&server, "GET", "/v1/discovery", None, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recommended"], json!({ "node": "test-node", "ws_url": "wss://chat.example.com/v1/ws" }));
    assert_eq!(body["nodes"][0]["connections"], 0);
    let _first = server.connect(&alice, "a");
    let _second = server.connect(&alice, "b");
    let (_, body) = call(&server, "GET", "/v1/discovery", None, None);
    assert_eq!(body["nodes"][0]["connections"], 2, "{body}");
    let load = body["nodes"][0]["load"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&load), "{load}");
    let (_, login) =
        call(&server, "POST", "/v1/login", None, Some(&json!({ "username": "alice", "password": "correct horse" })));
    assert_eq!(login["gateway"]["ws_url"], "wss://chat.example.com/v1/ws");
}

#[test]
fn metrics_are_prometheus_text_with_every_family() {
    let server = TestServer::start(2);
    let users = crate::common::users(&server, "mem", 3);
    let mut clients: Vec<_> = users.iter().map(|user| server.connect(user, "d")).collect();
    let channel =
        clients[0].result("channel.create", json!({ "name": "g", "members": ["mem1", "mem2"] }))["channel"]["id"]
            .as_str()
            .unwrap()
            .to_string();
    for n in 0..5 {
        clients[0].result("send", json!({ "channel_id": channel, "text": format!("hello {n}") }));
    }
    for client in &mut clients[1..] {
        for _ in 0..5 {
            client.next_event("message");
        }
    }
    assert_eq!(clients[0].error_code("no.such", json!({})), "bad_request");

    let scrape = scrape(&server);
    let shards: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "chatgw_connections")
        .map(|sample| sample.labels.get("shard").unwrap())
        .collect();
    assert_eq!(shards.len(), 2, "one series per shard");
    assert_eq!(sample_sum(&scrape, "chatgw_connections"), 3.0);
    assert_eq!(sample_sum(&scrape, "chatgw_messages_received_total"), 5.0);
    assert!(sample_sum(&scrape, "chatgw_messages_delivered_total") >= 15.0, "3 members × 5 messages");
    assert!(sample_sum(&scrape, "process_resident_memory_bytes") > 1e6);
    assert!(scrape.samples.iter().any(|sample| sample.metric == "chatgw_mesh_timeouts_total"));
    assert_eq!(sample_sum(&scrape, "chatgw_mesh_timeouts_total"), 0.0, "every cross-core ask was answered in time");
    let bad_requests = scrape
        .samples
        .iter()
        .find(|sample| sample.metric == "chatgw_errors_total" && sample.labels.get("code") == Some("bad_request"))
        .expect("errors by code");
    assert!(matches!(bad_requests.value, prometheus_parse::Value::Counter(count) if count >= 1.0));
    for histogram in ["chatgw_fan_out_seconds", "chatgw_group_commit_seconds", "chatgw_storage_write_seconds"] {
        let sample = scrape.samples.iter().find(|sample| sample.metric == histogram).expect(histogram);
        let prometheus_parse::Value::Histogram(buckets) = &sample.value else { panic!("{histogram} is a histogram") };
        let total = buckets.iter().map(|bucket| bucket.count).fold(0.0, f64::max);
        assert!(total >= 1.0, "{histogram} has observations");
        let counts: Vec<f64> = buckets.iter().map(|bucket| bucket.count).collect();
        assert!(counts.windows(2).all(|pair| pair[0] <= pair[1]), "{histogram} buckets are cumulative: {counts:?}");
        let count = scrape
            .samples
            .iter()
            .find(|sample| sample.metric == format!("{histogram}_count"))
            .unwrap_or_else(|| panic!("{histogram}_count is exposed"));
        assert!(
            matches!(count.value, prometheus_parse::Value::Untyped(count) if count == total),
            "{histogram}: the +Inf bucket ({total}) is the count ({:?})",
            count.value
        );
    }
    assert!(scrape.samples.iter().any(|sample| sample.metric == "chatgw_mesh_queue_depth"));
}

#[test]
fn admin_api_needs_the_admin_token() {
    let server = TestServer::start(2);
    let alice = server.signup("alice");
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let (status, body) = call(&server, "GET", "/admin/v1/stats", None, None);
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, body) = call(&server, "GET", "/admin/v1/stats", Some("not-the-token"), None);
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, body) = call(&server, "GET", "/admin/v1/stats", Some(&alice.token), None);
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "a user token is not an admin token");
    let (status, body) = call(&server, "GET", "/admin/v1/stats", Some(&admin), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shards"].as_array().unwrap().len(), 2);
    assert_eq!(body["node"], "test-node");
    let (status, body) = call(&server, "GET", "/admin/v1/nothing", Some(&admin), None);
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = call(&server, "GET", "/admin/v1/outbox", Some(&admin), None);
    assert_eq!((status, body["depth"].as_u64()), (200, Some(0)), "{body}");
}

#[test]
fn admin_pages_connections_kicks_and_disables() {
    let server = TestServer::start(2);
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let alice = server.signup("alice");
    let bob = server.signup("bob");
    let mut alice_phone = server.connect(&alice, "phone");
    let mut alice_laptop = server.connect(&alice, "laptop");
    let mut bob_phone = server.connect(&bob, "phone");

    // Three connections, two a page.
    let (status, first) = call(&server, "GET", "/admin/v1/connections?limit=2", Some(&admin), None);
    assert_eq!(status, 200, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a second page").to_string();
    let (_, second) =
        call(&server, "GET", &format!("/admin/v1/connections?limit=2&cursor={cursor}"), Some(&admin), None);
    let mut listed: Vec<(String, String)> = first["connections"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["connections"].as_array().unwrap())
        .map(|conn| {
            assert!(conn["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
            assert!(conn["connected_at"].as_u64().unwrap() > 0);
            (conn["username"].as_str().unwrap().to_string(), conn["device"].as_str().unwrap().to_string())
        })
        .collect();
    listed.sort();
    let expected = [("alice", "laptop"), ("alice", "phone"), ("bob", "phone")];
    assert_eq!(listed, expected.map(|(user, device)| (user.to_string(), device.to_string())));
    assert!(second["next_cursor"].is_null(), "{second}");
    let (status, body) = call(&server, "GET", "/admin/v1/connections?limit=0", Some(&admin), None);
    assert_eq!((status, error_code(&body)), (400, "bad_request"));
    let (status, _) = call(&server, "GET", "/admin/v1/connections?cursor=zz", Some(&admin), None);
    assert_eq!(status, 400);

    // Kick one device, then the whole user.
    let (status, body) =
        call(&server, "POST", "/admin/v1/kick", Some(&admin), Some(&json!({ "username": "alice", "device": "phone" })));
    assert_eq!((status, body["kicked"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(alice_phone.close_code(), Some(1008));
    assert_eq!(alice_laptop.result("heartbeat", json!({})), json!({}), "the other device stays");
    let (status, body) = call(&server, "POST", "/admin/v1/kick", Some(&admin), Some(&json!({ "username": "nobody" })));
    assert_eq!((status, error_code(&body)), (404, "not_found"));

    // Disabling kicks and locks out; enabling lets back in.
    let (status, body) = call(&server, "POST", "/admin/v1/users/bob/disable", Some(&admin), None);
    assert_eq!((status, body["kicked"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(bob_phone.close_code(), Some(1008));
    let login = json!({ "username": "bob", "password": "correct horse" });
    assert_eq!(call(&server, "POST", "/v1/login", None, Some(&login)).0, 401);
    assert_eq!(server.try_connect(Some(&bob.token), "phone").err(), Some(401));
    assert_eq!(rpc(&server, &bob, "channel.list", json!({})).0, 401);
    let (status, _) = call(&server, "POST", "/admin/v1/users/bob/enable", Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(call(&server, "POST", "/v1/login", None, Some(&login)).0, 200);
    server.connect(&bob, "phone");
}

#[test]
fn banned_words_change_at_run_time() {
    let server = TestServer::start(2);
    let admin = server.handle.as_ref().unwrap().admin_token.clone();
    let alice = server.signup("alice");
    let _bob = server.signup("bob");
    let mut alice_ws = server.connect(&alice, "d");
    let send = |text: &str| rpc(&server, &alice, "send", json!({ "to_user": "bob", "text": text }));
    assert_eq!(send("buy cheap pills now").0, 200);

    let (status, body) =
        call(&server, "PUT", "/admin/v1/banned-words", Some(&admin), Some(&json!({ "words": ["Pills", "buy now"] })));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["words"], json!(["buy now", "pills"]));
    let (status, body) = send("buy cheap PILLS now");
    assert_eq!((status, error_code(&body)), (403, "forbidden_content"));
    assert_eq!(
        alice_ws.error_code("send", json!({ "to_user": "bob", "text": "pills!" })),
        "forbidden_content",
        "every core enforces the list"
    );
    assert_eq!(send("spills are fine").0, 200, "whole words only");

    let (status, body) = call(
        &server,
        "PATCH",
        "/admin/v1/banned-words",
        Some(&admin),
        Some(&json!({ "add": ["spam"], "remove": ["PILLS"] })),
    );
    assert_eq!((status, &body["words"]), (200, &json!(["buy now", "spam"])), "{body}");
    assert_eq!(send("pills").0, 200);
    assert_eq!(send("no spam please").0, 403);
    let (_, listed) = call(&server, "GET", "/admin/v1/banned-words", Some(&admin), None);
    assert_eq!(listed["words"], json!(["buy now", "spam"]));
    assert!(listed["version"].as_u64().unwrap() >= 2);
    for bad in [json!({ "words": "spam" }), json!({ "words": ["   "] }), json!({})] {
        let (status, body) = call(&server, "PUT", "/admin/v1/banned-words", Some(&admin), Some(&bad));
        assert_eq!((status, error_code(&body)), (400, "bad_request"), "{bad}");
    }
}

#[test]
fn a_request_head_trickled_too_slowly_is_cut_off() {
    let server = TestServer::start(1);
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut closed = false;
    let mut buf = [0u8; 256];
    // One header byte a second: never idle for long, never finished.
    while started.elapsed() < chatgw_gateway::limits::HTTP_HEAD_TIMEOUT + Duration::from_secs(5) {
        if stream.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no answer is due to an unfinished head"),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(800)),
        }
    }
    assert!(closed, "the connection was closed");
    assert!(started.elapsed() >= chatgw_gateway::limits::HTTP_HEAD_TIMEOUT - Duration::from_secs(1));
    assert_eq!(server.get("/healthz").0, 200, "the server still serves");
}

#[test]
fn failed_logins_are_throttled_per_account_and_unknown_users_look_the_same() {
    let server = TestServer::start(2);
    server.signup("guarded");
    let login = |username: &str, password: &str| {
        server.post("/v1/login", &json!({ "username": username, "password": password }))
    };
    // An unknown user and a wrong password answer alike.
    let (unknown_status, unknown) = login("nobody_here", "wrong password");
    let (wrong_status, wrong) = login("guarded", "wrong password");
    assert_eq!((unknown_status, wrong_status), (401, 401));
    assert_eq!(unknown["error"], wrong["error"]);
    // Four more failures are free; the next one must wait, and so must a
    // right password meanwhile.
    for _ in 0..4 {
        assert_eq!(login("guarded", "wrong password").0, 401);
    }
    assert_eq!(login("guarded", "wrong password").0, 401, "the sixth failure is counted");
    let (status, body) = login("guarded", "correct horse");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let wait = body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1_000).contains(&wait), "{wait}");
    std::thread::sleep(Duration::from_millis(wait + 50));
    let (status, body) = login("guarded", "correct horse");
    assert_eq!(status, 200, "{body}");
    // A good login cleared the account's count.
    assert_eq!(login("guarded", "wrong password").0, 401);
    assert_eq!(login("guarded", "correct horse").0, 200);
    // The length bound holds at login too.
    let (status, body) = login("guarded", &"x".repeat(1_025));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
}

#[test]
fn logout_revokes_every_token_of_the_user_and_closes_its_connections() {
    let server = TestServer::start(2);
    let alice = server.signup("leaving");
    let (status, login) = server.post("/v1/login", &json!({ "username": "leaving", "password": "correct horse" }));
    assert_eq!(status, 200, "{login}");
    let second = User { token: login["token"].as_str().unwrap().to_string(), ..alice.clone() };
    let mut ws = server.connect(&second, "phone");
    let (status, body) = call(&server, "POST", "/v1/logout", Some(&alice.token), None);
    assert_eq!((status, &body), (200, &json!({})));
    assert_eq!(ws.close_code(), Some(1008), "its connections close");
    for token in [&alice.token, &second.token] {
        assert_eq!(rpc(&server, &User { token: token.clone(), ..alice.clone() }, "channel.list", json!({})).0, 401);
        assert_eq!(server.try_connect(Some(token), "again").err(), Some(401));
    }
    // A new login gets a token that works.
    let (_, login) = server.post("/v1/login", &json!({ "username": "leaving", "password": "correct horse" }));
    let fresh = User { token: login["token"].as_str().unwrap().to_string(), ..alice.clone() };
    assert_eq!(rpc(&server, &fresh, "channel.list", json!({})).0, 200);
}

#[test]
fn a_password_change_needs_the_old_one_and_revokes_old_tokens() {
    let server = TestServer::start(2);
    let alice = server.signup("changer");
    let body = |old: &str, new: &str| json!({ "old_password": old, "new_password": new });
    let (status, refused) =
        call(&server, "POST", "/v1/password", Some(&alice.token), Some(&body("wrong one!", "new password 1")));
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("unauthorized")), "{refused}");
    let (status, refused) =
        call(&server, "POST", "/v1/password", Some(&alice.token), Some(&body("correct horse", "short")));
    assert_eq!(status, 400, "{refused}");
    let (status, changed) =
        call(&server, "POST", "/v1/password", Some(&alice.token), Some(&body("correct horse", "new password 1")));
    assert_eq!(status, 200, "{changed}");
    let fresh = User { token: changed["token"].as_str().unwrap().to_string(), ..alice.clone() };
    assert_eq!(rpc(&server, &alice, "channel.list", json!({})).0, 401, "the old token is revoked");
    assert_eq!(rpc(&server, &fresh, "channel.list", json!({})).0, 200);
    let login = |password: &str| server.post("/v1/login", &json!({ "username": "changer", "password": password })).0;
    assert_eq!(login("correct horse"), 401);
    assert_eq!(login("new password 1"), 200);
}

/// A refused request whose body comes after its head, as clients that
/// write the two apart send it: the answer comes once the body is read, and
/// the connection stays usable. Before every body was read ahead of the
/// route, the 401 went out with the body unread and the connection closed
/// (a reset, when the body came just after: a pooled client's next request
/// failed with "connection reset by peer").
#[test]
fn a_refused_request_reads_its_body_and_keeps_the_connection() {
    let server = TestServer::start(2);
    let alice = server.signup("refused");
    let mut stream = crate::common::connect_from(crate::common::loopback(0, 0, 1), server.addr());
    let body = json!({}).to_string();
    for round in 0..3 {
        let head = format!(
            "POST /v1/rpc/channel.list HTTP/1.1\r\nHost: chatgw\r\nAuthorization: Bearer not-{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            alice.token,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        stream.write_all(body.as_bytes()).unwrap();
        let (status, answer) = crate::common::read_response(&mut stream)
            .unwrap_or_else(|error| panic!("round {round}: no answer on the kept connection: {error}"));
        assert_eq!((status, error_code(&answer)), (401, "unauthorized"), "round {round}");
    }
    // And a good request on the same connection still works.
    let mut head = format!(
        "POST /v1/rpc/channel.list HTTP/1.1\r\nHost: chatgw\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        alice.token,
        body.len()
    );
    head.push_str(&body);
    stream.write_all(head.as_bytes()).unwrap();
    assert_eq!(crate::common::read_response(&mut stream).unwrap().0, 200);
}

#[test]
fn a_connection_closes_when_its_token_expires() {
    let server = TestServer::start_with(1, |config| {
        config.token_ttl_s = 1;
        config.heartbeat_ms = 1_000;
    });
    let alice = server.signup("expiring");
    let mut ws = server.connect(&alice, "phone");
    let started = Instant::now();
    // Heartbeats keep it alive; the token's end closes it with 4001.
    let code = loop {
        assert!(started.elapsed() < Duration::from_secs(8), "still open");
        ws.send_command("heartbeat", json!({}));
        match ws.ws.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|frame| u16::from(frame.code)),
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(code, Some(4001));
}

#[test]
fn signups_from_one_address_are_throttled() {
    let server = TestServer::start_with(1, |config| config.max_signups_per_ip_per_min = 3);
    for n in 0..3 {
        server.signup(&format!("early{n}"));
    }
    let (status, body) = server.post("/v1/signup", &json!({ "username": "one_too_many", "password": "correct horse" }));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let wait = body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=20_000).contains(&wait), "one every 20 s: {wait}");
}
