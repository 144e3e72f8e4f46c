//! A shard's accept loop on its SO_REUSEPORT listener (with the caps every
//! accepted connection meets), and the sweeper that closes connections
//! gone silent.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;

use crate::clock::now_ms;
use crate::net::http::server::serve;
use crate::protocol::close::CloseReason;
use crate::shard::state::Shard;

/// Accepts connections until dropped (the server's stop drops it), each
/// served as HTTP by a task of its own. A connection whose descriptor is
/// within the reserve below the open-file limit, or past the HTTP
/// connection caps (per process, per IP), is closed at once, before any of
/// its bytes is read, and counted by reason.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let remote = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let fd = u64::try_from(stream.as_raw_fd()).unwrap_or(u64::MAX);
                match shard.shared.open_http(remote.ip(), fd) {
                    Ok(slot) => {
                        crate::tasks::spawn(serve(shard.clone(), stream, remote, slot)).detach();
                    }
                    Err(reason) => {
                        shard.counters.accept_refused(reason);
                        tracing::debug!(%remote, reason = reason.as_str(), "accepted connection refused");
                        drop(stream);
                    }
                }
            }
            Err(error) => {
                // Out of file descriptors, say: back off, do not spin.
                tracing::warn!(%error, shard = shard.id.0, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes connections that sent nothing for 2 × `heartbeat_ms` with 4000
/// (protocol §3), and those whose peer took nothing for `write_stall_ms`
/// with 1008, checking every half heartbeat (at most every half stall
/// time), until the server stops.
pub async fn close_silent_connections(shard: Rc<Shard>) {
    let heartbeat = shard.config.heartbeat_ms.max(1);
    let every = Duration::from_millis((heartbeat / 2).min(shard.config.write_stall_ms.max(20) / 2).max(10));
    while !shard.stopping.get() {
        glommio::timer::sleep(every).await;
        let cutoff = now_ms().saturating_sub(2 * heartbeat);
        let silent = shard.registry.borrow().silent_since(cutoff);
        for conn in silent {
            conn.close(CloseReason::HeartbeatTimeout);
        }
        let expired = shard.registry.borrow().tokens_expired(now_ms());
        for conn in expired {
            conn.close(CloseReason::TokenExpired);
        }
        // A peer whose socket took nothing for `write_stall_ms` while
        // frames waited stopped reading: a slow consumer (1008), whatever
        // its queue holds (the kernel's buffers for it are memory too).
        let stall_cutoff = now_ms().saturating_sub(shard.config.write_stall_ms);
        let stalled = shard.registry.borrow().stalled_before(stall_cutoff);
        for conn in stalled {
            conn.close(CloseReason::SlowConsumer);
        }
        // And a closing connection whose close frame could not go out in
        // as long is dropped.
        let abandoned = shard.registry.borrow().closing_before(stall_cutoff);
        for conn in abandoned {
            conn.abandon();
        }
    }
}
