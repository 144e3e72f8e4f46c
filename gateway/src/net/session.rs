//! One WebSocket connection's life on its core: hello, then a loop that
//! writes what is queued and reads through the core's scratch buffer.
//!
//! The session holds no read buffer while idle: bytes are read into a
//! per-core scratch buffer inside `poll` (never across `Pending`), complete
//! frames are handled in place, and only an incomplete frame's bytes are
//! kept. Commands run as tasks of their own, so a client can pipeline.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::auth::AuthedUser;
use crate::clock::now_ms;
use crate::cmd::dispatch::dispatch;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::node::{Admitted, HandOffInFlight};
use crate::protocol::close::CloseReason;
use crate::protocol::command::parse_frame;
use crate::protocol::frame::{self, FrameReader, Incoming};
use crate::protocol::shapes::{self, Hello};
use crate::route::ConnKey;
use crate::shard::connections::{attach, detach};
use crate::shard::registry::Conn;
use crate::shard::state::Shard;
use crate::turnstile::Turnstile;

thread_local! {
    /// The core's read buffer, borrowed only inside one `poll`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; limits::READ_SCRATCH_BYTES].into_boxed_slice());
}

enum End {
    /// The peer went away or the socket failed.
    Gone,
    /// A close frame was written.
    Closed,
}

/// What one poll of a session comes to, when it is not pending.
enum Step {
    /// The connection used its fair share of the core: it goes on after
    /// `limits::SESSION_PAUSE`, on a timer rather than by waking itself, so
    /// that the core polls its sockets first (glommio polls them only when
    /// no task is ready, or at its 100 ms preemption timer: sessions that
    /// woke themselves kept a heartbeat on another connection waiting that
    /// long).
    Pause,
    /// The connection ended.
    End(End),
}

/// What an upgrade passed, for its session.
pub enum Upgraded {
    /// `GET /v1/ws`: a user's device.
    Chat {
        /// The token's user.
        user: AuthedUser,
        /// The device id.
        device: Box<str>,
        /// Its room under the connection caps.
        admitted: Admitted,
    },
    /// `GET /v1/echo` (`--conformance-echo`): no user; each text or binary
    /// message comes back as it came.
    Echo {
        /// Its room under the connection caps.
        admitted: Admitted,
    },
}

/// What a session's text and binary messages go to.
enum Mode {
    /// The JSON commands, run for this user.
    Chat(Rc<AuthedUser>),
    /// Back to the client, as they came (the conformance echo).
    Echo,
}

/// Runs a connection that passed the upgrade, until it ends: the start
/// (attach, `hello`, the bytes sent with the upgrade) here, then the loop
/// and the end as a task of its own. `in_flight` (a connection handed here
/// from another core) is let go once the connection is registered here.
///
/// The loop's task lives as long as the connection, so its future holds
/// only what the loop needs (an async fn keeps its arguments for its whole
/// life): the start is this task's, which ends once the loop is spawned,
/// and the end (close handshake, detach) is a boxed future of its own.
pub async fn run(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    early: Vec<u8>,
    upgraded: Upgraded,
    remote: SocketAddr,
    in_flight: Option<HandOffInFlight>,
) {
    let (mode, conn, admitted) = match upgraded {
        Upgraded::Chat { user, device, admitted } => {
            let user = Rc::new(user);
            let started = start(&shard, &mut stream, &user, device, remote).await;
            // Registered (and closed with 1001 if the core is stopping), or
            // refused: a stopping core no longer waits for it.
            drop(in_flight);
            let Some(conn) = started else { return };
            (Mode::Chat(user), conn, admitted)
        }
        Upgraded::Echo { admitted } => (Mode::Echo, Conn::unregistered(remote, now_ms()), admitted),
    };
    let mut reader = FrameReader::default();
    // Bytes the client sent along with its upgrade request.
    let mut early = early;
    if !early.is_empty()
        && let Err(reason) =
            reader.feed(&mut early, limits::FRAME_BYTES_MAX, &mut |incoming| on_frame(&shard, &conn, &mode, incoming))
    {
        conn.close(reason);
    }
    crate::tasks::spawn(drive(shard, stream, mode, conn, reader, admitted)).detach();
}

/// The session's loop, then its end. `_admitted` is held for the
/// connection's life: its room under the caps.
async fn drive(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    mode: Mode,
    conn: Rc<Conn>,
    mut reader: FrameReader,
    _admitted: Admitted,
) {
    let end = loop {
        match std::future::poll_fn(|cx| poll_session(&shard, &conn, &mode, &mut stream, &mut reader, cx)).await {
            Step::Pause => Box::pin(glommio::timer::sleep(limits::SESSION_PAUSE)).await,
            Step::End(end) => break end,
        }
    };
    drop(reader);
    Box::pin(finish(&shard, &conn, matches!(mode, Mode::Chat(_)), stream, end)).await;
}

/// Registers the connection with its `hello` queued first.
async fn start(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    user: &Rc<AuthedUser>,
    device: Box<str>,
    remote: SocketAddr,
) -> Option<Rc<Conn>> {
    let hello = |conn: &Conn| {
        let hello = shapes::hello_json(&Hello {
            user_id: user.user_id,
            username: &user.username,
            device: &conn.device,
            node: &shard.node,
            heartbeat_ms: shard.config.heartbeat_ms,
            max_message_chars: shard.config.max_message_chars,
        });
        shapes::event_frame("hello", &hello)
    };
    if shard.config.fault_attach_delay_ms > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(shard.config.fault_attach_delay_ms)).await;
    }
    let conn = match attach(shard, user, device, remote, hello).await {
        Ok(conn) => conn,
        Err(error) => {
            // A token revoked (or a user disabled) since the upgrade closes
            // as a kick would have.
            let reason =
                if error.code == ErrorCode::Unauthorized { CloseReason::Kicked } else { CloseReason::Internal };
            tracing::warn!(%error, "connection refused after upgrade");
            let _ = futures_lite::AsyncWriteExt::write_all(stream, &frame::close(reason)).await;
            return None;
        }
    };
    if shard.stopping.get() {
        conn.close(CloseReason::GoingAway);
    }
    Some(conn)
}

/// Ends the connection: the close handshake if a close frame went out,
/// then its removal from the shard.
async fn finish(shard: &Rc<Shard>, conn: &Rc<Conn>, registered: bool, mut stream: TcpStream, end: End) {
    if matches!(end, End::Closed) {
        // The close handshake: no more writes, then read (and drop) what
        // the client still sends until it closes, for a short while. This
        // keeps unread input from turning our FIN into a reset, which could
        // destroy the close frame before the client reads it.
        let _ = stream.shutdown(std::net::Shutdown::Write).await;
        let linger = glommio::timer::sleep(limits::CLOSE_LINGER);
        let drain = async {
            loop {
                let read = std::future::poll_fn(|cx| {
                    SCRATCH.with(|scratch| Pin::new(&mut stream).poll_read(cx, &mut scratch.borrow_mut()[..]))
                })
                .await;
                if !matches!(read, Ok(count) if count > 0) {
                    break;
                }
            }
        };
        futures_lite::future::or(drain, linger).await;
    }
    drop(stream);
    if conn.closing() == Some(CloseReason::SlowConsumer) {
        shard.counters.slow_consumers.set(shard.counters.slow_consumers.get() + 1);
    }
    if registered {
        detach(shard, conn).await;
    }
}

fn poll_session(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    mode: &Mode,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    cx: &mut Context<'_>,
) -> Poll<Step> {
    for _ in 0..limits::READS_PER_POLL_MAX {
        // Write everything queued, as far as the socket takes it: one frame
        // as it is, several gathered into the scratch buffer for one write
        // (fan-out queues many small frames at once; a write each would
        // cost a system call and a packet each). Once the socket took less
        // than it was offered, only the front frame is offered, as it is,
        // until the socket takes a whole offer again: a peer that reads
        // slowly or never opens its window a little at a time, and
        // gathering 64 KiB to send a few hundred bytes made such clients
        // cost more than all the others.
        loop {
            let (offered, written) = if conn.queued_frames() > 1 && !conn.write_blocked() {
                SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let gathered = conn.gather(&mut scratch[..]);
                    (gathered, Pin::new(&mut *stream).poll_write(cx, &scratch[..gathered]))
                })
            } else if let Some(front) = conn.front() {
                (front.len(), Pin::new(&mut *stream).poll_write(cx, &front))
            } else {
                break;
            };
            match written {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Step::End(End::Gone)),
                Poll::Ready(Ok(written)) => {
                    shard.counters.socket_writes.set(shard.counters.socket_writes.get() + 1);
                    conn.advance(written);
                    conn.note_write(true, written < offered, now_ms());
                }
                Poll::Pending => {
                    conn.note_write(false, true, now_ms());
                    break;
                }
            }
        }
        if conn.closing().is_some() {
            if conn.drained() {
                return Poll::Ready(Step::End(End::Closed));
            }
            if conn.abandoned() {
                // The peer took nothing for too long: drop the socket.
                return Poll::Ready(Step::End(End::Gone));
            }
            conn.set_waker(cx.waker());
            return Poll::Pending;
        }
        if conn.in_flight.get() >= limits::COMMANDS_IN_FLIGHT_PER_CONNECTION_MAX {
            // Stop reading until a command finishes (it wakes us).
            conn.set_waker(cx.waker());
            return Poll::Pending;
        }
        if reader.is_paused() {
            // Frames read earlier wait their turn before any more are read.
            let outcome =
                reader.feed(&mut [], limits::FRAME_BYTES_MAX, &mut |incoming| on_frame(shard, conn, mode, incoming));
            if let Err(reason) = outcome {
                conn.close(reason);
            }
            continue;
        }
        let read = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(None),
                Poll::Ready(Ok(count)) => {
                    conn.last_active_ms.set(now_ms());
                    let outcome = reader.feed(&mut scratch[..count], limits::FRAME_BYTES_MAX, &mut |incoming| {
                        on_frame(shard, conn, mode, incoming)
                    });
                    if let Err(reason) = outcome {
                        conn.close(reason);
                    }
                    Poll::Ready(Some(()))
                }
                Poll::Pending => Poll::Pending,
            }
        });
        match read {
            Poll::Ready(None) => return Poll::Ready(Step::End(End::Gone)),
            Poll::Ready(Some(())) => continue,
            Poll::Pending => {
                if conn.front().is_some() {
                    // Frames queued while reading: go round once more.
                    continue;
                }
                conn.set_waker(cx.waker());
                return Poll::Pending;
            }
        }
    }
    // Fair share used: let other connections run.
    Poll::Ready(Step::Pause)
}

/// Handles one complete frame; answers whether the connection may start
/// another command now (the cap on commands in flight holds per frame,
/// whatever one read brought).
fn on_frame(shard: &Rc<Shard>, conn: &Rc<Conn>, mode: &Mode, incoming: Incoming<'_>) -> bool {
    match (incoming, mode) {
        (Incoming::Text(text), Mode::Echo) => {
            conn.push(frame::text(text.as_bytes()));
        }
        (Incoming::Binary(bytes), Mode::Echo) => {
            conn.push(frame::binary(bytes));
        }
        (Incoming::Text(text), Mode::Chat(user)) => on_command(shard, conn, user, text),
        (Incoming::Binary(bytes), Mode::Chat(user)) => match std::str::from_utf8(bytes) {
            Ok(text) => on_command(shard, conn, user, text),
            Err(_) => {
                let error = ApiError::bad_request("binary frames must hold UTF-8 JSON");
                shard.counters.error(error.code);
                conn.push(shapes::reply_frame(&serde_json::Value::Null, &Err(error)));
            }
        },
        (Incoming::Ping(payload), _) => {
            conn.push(frame::pong(payload));
        }
        (Incoming::Pong, _) => {}
        (Incoming::Close(_), _) => conn.close(CloseReason::Normal),
    }
    conn.in_flight.get() < limits::COMMANDS_IN_FLIGHT_PER_CONNECTION_MAX
}

fn on_command(shard: &Rc<Shard>, conn: &Rc<Conn>, user: &Rc<AuthedUser>, text: &str) {
    let envelope = parse_frame(text);
    let command = match envelope.command {
        Ok(command) => command,
        Err(error) => {
            shard.counters.error(error.code);
            conn.push(shapes::reply_frame(&envelope.id, &Err(error)));
            return;
        }
    };
    conn.in_flight.set(conn.in_flight.get() + 1);
    let (shard, conn, user, id) = (shard.clone(), conn.clone(), user.clone(), envelope.id);
    // A read takes its place in the connection's line now, in the order
    // the commands came.
    let read_ticket = command.is_read().then(|| read_line(&shard, conn.key).ticket());
    crate::tasks::spawn(async move {
        let mut answer = true;
        if let Some(ticket) = &read_ticket {
            // One read of the connection at a time, started once its
            // reply fits the queue: a client that pipelines reads and is
            // slow to take their replies is held back, not closed.
            ticket.turn().await;
            answer = conn.room_for(limits::FRAME_BYTES_MAX).await;
        }
        if answer {
            let result = dispatch(&shard, &user, Some(&conn), command).await;
            if let Err(error) = &result {
                shard.counters.error(error.code);
            }
            conn.push(shapes::reply_frame(&id, &result));
        }
        if read_ticket.is_some() {
            drop(read_ticket);
            release_read_line(&shard, conn.key);
        }
        conn.in_flight.set(conn.in_flight.get() - 1);
        conn.wake();
    })
    .detach();
}

/// The line of a connection's reads (made when it has none in flight).
fn read_line(shard: &Shard, key: ConnKey) -> Rc<Turnstile> {
    shard.read_lines.borrow_mut().entry(key).or_default().clone()
}

/// Forgets a connection's read line once no read is in it.
fn release_read_line(shard: &Shard, key: ConnKey) {
    let mut lines = shard.read_lines.borrow_mut();
    if lines.get(&key).is_some_and(|line| line.is_idle()) {
        lines.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn of six arguments returns.
    fn future_size<A, B, C, D, E, G, F: std::future::Future>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's memory is mostly its loop's task, its `Conn`
    /// and its socket's waiting read (glommio's source, bounded in
    /// `third_party/glommio`): a change that makes one bigger shows here
    /// before it shows in `loadgen idle`'s KiB per connection.
    #[test]
    fn an_idle_connections_loop_and_conn_stay_within_their_bytes() {
        let (drive, conn) = (future_size(drive), std::mem::size_of::<Conn>());
        assert!(drive <= 544, "the session loop's future is {drive} bytes");
        assert!(conn <= 304, "a Conn is {conn} bytes");
    }
}
