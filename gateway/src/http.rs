//! The HTTP side of the one port, served by hyper over glommio streams:
//! health, readiness, signup, login, and the upgrade of `GET /v1/ws` into a
//! WebSocket session (401 before the upgrade for a bad or missing token).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::accounts;
use crate::auth::AuthedUser;
use crate::core::Core;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::session;

/// A glommio stream as hyper's I/O, with an idle timeout on reads.
///
/// The timeout is a glommio timer owned here rather than the stream's own
/// read timeout: that one leaves a timer (holding this task's waker) in the
/// reactor after the stream moves on to a WebSocket session, which would
/// later fail the session's reads with `TimedOut`.
struct HyperIo {
    stream: TcpStream,
    /// Running while a read waits for bytes; dropped when bytes come.
    idle: Option<glommio::timer::Timer>,
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Read through a stack buffer: safe, and this side is not the hot path.
        let mut chunk = [0u8; 4096];
        let want = buf.remaining().min(chunk.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut chunk[..want]) {
            Poll::Ready(Ok(count)) => {
                this.idle = None;
                buf.put_slice(&chunk[..count]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                // Slowloris: a connection that sends nothing for this long goes.
                let idle = this.idle.get_or_insert_with(|| glommio::timer::Timer::new(limits::HTTP_READ_TIMEOUT));
                match Pin::new(idle).poll(cx) {
                    Poll::Ready(_) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP read timed out"))),
                    Poll::Pending => Poll::Pending,
                }
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

type Body = Full<Bytes>;
type Upgrade = Rc<RefCell<Option<(AuthedUser, Box<str>)>>>;

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"))));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code.http_status(), &json!({ "error": error.to_json() }))
}

/// Serves one accepted connection: HTTP until it closes, or a WebSocket
/// session once upgraded.
pub async fn serve(core: Rc<Core>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let upgrade: Upgrade = Rc::new(RefCell::new(None));
    let service = {
        let (core, upgrade) = (core.clone(), upgrade.clone());
        hyper::service::service_fn(move |request| {
            let (core, upgrade) = (core.clone(), upgrade.clone());
            async move { Ok::<_, Infallible>(route(&core, request, &upgrade).await) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 << 10)
        .serve_connection(HyperIo { stream, idle: None }, service);
    match connection.without_shutdown().await {
        Ok(parts) => {
            let taken = upgrade.borrow_mut().take();
            if let Some((user, device)) = taken {
                // Bytes the client sent after its request head (usually
                // none): copied out, so hyper's read buffer is freed here
                // rather than kept for the connection's life.
                let early = parts.read_buf.to_vec();
                // The idle timer goes with `io`: the session watches
                // liveness itself (heartbeats).
                let stream = parts.io.stream;
                drop(parts.read_buf);
                // A task of its own, sized for the session alone: this task's
                // future is sized for hyper's connection state, and ends here.
                glommio::spawn_local(session::run(core, stream, early, user, device)).detach();
            }
        }
        Err(error) => tracing::debug!(%error, "http connection ended"),
    }
}

async fn route(core: &Rc<Core>, request: Request<Incoming>, upgrade: &Upgrade) -> Response<Body> {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => json_response(200, &json!({ "status": "ok" })),
        (Method::GET, "/readyz") => {
            if core.shared.ready_shards.load(Ordering::Acquire) == usize::from(core.shards) && !core.stopping.get() {
                json_response(200, &json!({ "status": "ready" }))
            } else {
                json_response(503, &json!({ "error": { "code": "overloaded", "message": "not ready" } }))
            }
        }
        (Method::GET, "/v1/ws") => websocket_upgrade(core, request, upgrade),
        (Method::POST, "/v1/signup") => match read_json(request).await {
            Ok(body) => match accounts::signup(core, &body).await {
                Ok(result) => json_response(201, &result),
                Err(error) => error_response(&error),
            },
            Err(error) => error_response(&error),
        },
        (Method::POST, "/v1/login") => match read_json(request).await {
            Ok(body) => match accounts::login(core, &body).await {
                Ok(result) => json_response(200, &result),
                Err(error) => error_response(&error),
            },
            Err(error) => error_response(&error),
        },
        _ => error_response(&ApiError::new(ErrorCode::NotFound, format!("no route for {path}"))),
    }
}

async fn read_json(request: Request<Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(request.into_body(), limits::HTTP_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(ErrorCode::MessageTooLong, format!("body above {} bytes", limits::HTTP_BODY_BYTES_MAX))
        })?
        .to_bytes();
    let value: Value =
        serde_json::from_slice(&body).map_err(|error| ApiError::bad_request(format!("body is not JSON: {error}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    Ok(value)
}

fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn websocket_upgrade(core: &Rc<Core>, request: Request<Incoming>, upgrade: &Upgrade) -> Response<Body> {
    let bearer = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string);
    let token = bearer.or_else(|| query_param(&request, "token"));
    let unauthorized = || error_response(&ApiError::new(ErrorCode::Unauthorized, "a valid token is required"));
    let Some(user) = token.as_deref().and_then(|token| core.tokens.verify(token)) else { return unauthorized() };
    match accounts::may_connect(core, user.user_id) {
        Ok(true) => {}
        Ok(false) => return unauthorized(),
        Err(error) => return error_response(&error),
    }
    let device = match query_param(&request, "device") {
        Some(device) if accounts::valid_device(&device) => device,
        Some(_) => return error_response(&ApiError::bad_request("device must be 1 to 64 of A-Z a-z 0-9 _ -")),
        None => format!("dev-{}", &crate::auth::generate_secret()[..12]),
    };
    match tungstenite::handshake::server::create_response_with_body(&request, || Full::new(Bytes::new())) {
        Ok(response) => {
            *upgrade.borrow_mut() = Some((user, device.into_boxed_str()));
            response
        }
        Err(error) => error_response(&ApiError::bad_request(format!("not a WebSocket upgrade: {error}"))),
    }
}
