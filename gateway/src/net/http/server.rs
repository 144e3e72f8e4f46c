//! The HTTP side of the one port, served by hyper over glommio streams:
//! the routes of protocol §1 (health, readiness, metrics, accounts, user
//! lookup, RPC, discovery, the admin API), and the upgrade of `GET /v1/ws`
//! into a WebSocket session (401 before the upgrade for a bad or missing
//! token). Every error a route answers is counted by code.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::auth::generate_secret;
use crate::clock::now_ms;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::net::http::body::{Body, authenticate, error_response, json_response, read_json, read_whole, user_of_token};
use crate::net::http::{accounts, admin, api, metrics};
use crate::net::{hand_off, session};
use crate::node::HttpSlot;
use crate::protocol::upgrade::{upgrade_response, websocket_device, websocket_token};
use crate::shard::state::Shard;

/// Where a connection is in its request cycle (for the head timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte.
    Idle,
    /// A request head has begun and is not yet complete.
    Head,
    /// A request is being served (its body read, its answer made).
    Serving,
}

/// A glommio stream as hyper's I/O, with two read timeouts: an idle one,
/// and one for completing a request head.
///
/// The timeouts are glommio timers owned here rather than the stream's own
/// read timeout: that one leaves a timer (holding this task's waker) in the
/// reactor after the stream moves on to a WebSocket session, which would
/// later fail the session's reads with `TimedOut`.
struct HyperIo {
    stream: TcpStream,
    /// How long a read may wait for bytes (`--http-idle-timeout-ms`).
    idle_after: Duration,
    /// Running while a read waits for bytes; dropped when bytes come.
    idle: Option<glommio::timer::Timer>,
    /// Running from a request's first byte until the service takes it.
    head: Option<glommio::timer::Timer>,
    phase: Rc<Cell<Phase>>,
}

fn timed_out(timer: &mut Option<glommio::timer::Timer>, cx: &mut Context<'_>) -> bool {
    timer.as_mut().is_some_and(|timer| Pin::new(timer).poll(cx).is_ready())
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase.get() != Phase::Head {
            this.head = None;
        }
        // Read through a stack buffer: safe, and this side is not the hot path.
        let mut chunk = [0u8; 4096];
        let want = buf.remaining().min(chunk.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut chunk[..want]) {
            Poll::Ready(Ok(count)) => {
                this.idle = None;
                if count > 0 && this.phase.get() == Phase::Idle {
                    this.phase.set(Phase::Head);
                    this.head = Some(glommio::timer::Timer::new(limits::HTTP_HEAD_TIMEOUT));
                }
                buf.put_slice(&chunk[..count]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                // Slowloris: a connection that sends nothing for this long
                // goes, and so does one that trickles a head too slowly.
                let idle_after = this.idle_after;
                this.idle.get_or_insert_with(|| glommio::timer::Timer::new(idle_after));
                if timed_out(&mut this.idle, cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP read timed out")));
                }
                if timed_out(&mut this.head, cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP request head too slow")));
                }
                Poll::Pending
            }
        }
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// The upgrade a request asked for and passed, set by its handler and
/// taken once hyper lets the connection go.
type Upgrade = Rc<RefCell<Option<session::Upgraded>>>;

/// Serves one accepted connection from `remote`: HTTP until it closes, or
/// a WebSocket session once upgraded. `slot` is its room under the HTTP
/// connection caps, held until it closes or upgrades (the WebSocket caps
/// count it from then on).
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, remote: SocketAddr, slot: HttpSlot) {
    let _ = stream.set_nodelay(true);
    let upgrade: Upgrade = Rc::new(RefCell::new(None));
    let phase = Rc::new(Cell::new(Phase::Idle));
    let service = {
        let (shard, upgrade, phase) = (shard.clone(), upgrade.clone(), phase.clone());
        hyper::service::service_fn(move |request| {
            let (shard, upgrade, phase) = (shard.clone(), upgrade.clone(), phase.clone());
            phase.set(Phase::Serving);
            async move {
                let response = route(&shard, request, &upgrade, remote).await;
                phase.set(Phase::Idle);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let idle_after = Duration::from_millis(shard.config.http_idle_timeout_ms);
    let io = HyperIo { stream, idle_after, idle: None, head: None, phase };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 << 10)
        .serve_connection(io, service);
    match connection.without_shutdown().await {
        Ok(parts) => {
            let taken = upgrade.borrow_mut().take();
            if let Some(upgraded) = taken {
                // Bytes the client sent after its request head (usually
                // none): copied out, so hyper's read buffer is freed here
                // rather than kept for the connection's life.
                let early = parts.read_buf.to_vec();
                // The timers go with `io`: the session watches liveness
                // itself (heartbeats).
                let stream = parts.io.stream;
                drop(parts.read_buf);
                // A WebSocket from here on: out of the HTTP caps.
                drop(slot);
                // On its user's owner, or here: a task of its own, sized for
                // the session alone (this task's future is sized for hyper's
                // connection state, and ends here).
                hand_off::run_where_owned(&shard, stream, early, upgraded, remote);
            }
        }
        Err(error) => tracing::debug!(%error, "http connection ended"),
    }
}

async fn route(shard: &Rc<Shard>, request: Request<Incoming>, upgrade: &Upgrade, remote: SocketAddr) -> Response<Body> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let answer = match read_whole(shard, request).await {
        Ok(request) => handle(shard, request, &method, &path, upgrade, remote).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(response) => response,
        Err(error) => {
            shard.counters.error(error.code);
            error_response(&error)
        }
    }
}

async fn handle(
    shard: &Rc<Shard>,
    request: Request<Bytes>,
    method: &Method,
    path: &str,
    upgrade: &Upgrade,
    remote: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    match (method, path) {
        (&Method::GET, "/healthz") => Ok(json_response(200, &json!({ "status": "ok" }))),
        (&Method::GET, "/readyz") => {
            let all_ready = shard.shared.ready_shards.load(Ordering::Acquire) == usize::from(shard.shard_count);
            if !all_ready || shard.stopping.get() {
                Err(ApiError::new(ErrorCode::Overloaded, "not ready"))
            } else if let Some(failure) = shard.shared.storage_failure() {
                Err(ApiError::new(ErrorCode::Overloaded, format!("not ready: storage writes fail ({failure})")))
            } else {
                Ok(json_response(200, &json!({ "status": "ready" })))
            }
        }
        (&Method::GET, "/metrics") => metrics::scrape(shard).await,
        (&Method::GET, "/v1/ws") => websocket_upgrade(shard, request, upgrade, remote),
        (&Method::GET, "/v1/echo") if shard.config.conformance_echo => echo_upgrade(shard, request, upgrade, remote),
        (&Method::GET, "/v1/discovery") => Ok(json_response(200, &api::discovery(shard))),
        (&Method::POST, "/v1/signup") => {
            let body = read_json(&request)?;
            Ok(json_response(201, &accounts::signup(shard, &body, remote.ip()).await?))
        }
        (&Method::POST, "/v1/login") => {
            let body = read_json(&request)?;
            Ok(json_response(200, &accounts::login(shard, &body, remote.ip()).await?))
        }
        (&Method::POST, "/v1/logout") => {
            let user = authenticate(shard, &request)?;
            Ok(json_response(200, &accounts::logout(shard, &user).await?))
        }
        (&Method::POST, "/v1/password") => {
            let user = authenticate(shard, &request)?;
            let body = read_json(&request)?;
            Ok(json_response(200, &accounts::change_password(shard, &user, &body, remote.ip()).await?))
        }
        (&Method::GET, _) if path.starts_with("/v1/users/") => {
            Ok(json_response(200, &api::user(shard, &request, &path["/v1/users/".len()..])?))
        }
        (&Method::POST, _) if path.starts_with("/v1/rpc/") => {
            Ok(json_response(200, &api::rpc(shard, request, &path["/v1/rpc/".len()..]).await?))
        }
        _ if path.starts_with("/admin/v1/") => Ok(json_response(200, &admin::route(shard, request, path).await?)),
        _ => Err(ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}"))),
    }
}

fn websocket_upgrade(
    shard: &Rc<Shard>,
    request: Request<Bytes>,
    upgrade: &Upgrade,
    remote: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let user = user_of_token(shard, websocket_token(&request).as_deref())?;
    let device = websocket_device(&request)?.unwrap_or_else(|| format!("dev-{}", &generate_secret()[..12]));
    let response = upgrade_response(&request)?;
    // The caps last: a request that is not an upgrade takes no room.
    let admitted = shard.shared.admit(remote.ip(), Some((user.user_id, &device)), now_ms())?;
    *upgrade.borrow_mut() = Some(session::Upgraded::Chat { user, device: device.into_boxed_str(), admitted });
    Ok(response)
}

/// `GET /v1/echo` (only under `--conformance-echo`, a test aid): a
/// WebSocket with no token whose text and binary messages come back as
/// they came, through the same session, frame reader, limits and close
/// handling as `/v1/ws`. It takes room under the connection caps like any
/// other WebSocket.
fn echo_upgrade(
    shard: &Rc<Shard>,
    request: Request<Bytes>,
    upgrade: &Upgrade,
    remote: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let response = upgrade_response(&request)?;
    let admitted = shard.shared.admit(remote.ip(), None, now_ms())?;
    *upgrade.borrow_mut() = Some(session::Upgraded::Echo { admitted });
    Ok(response)
}
