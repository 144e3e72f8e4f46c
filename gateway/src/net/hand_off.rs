//! A WebSocket connection moves to the core that owns its user.
//!
//! The kernel picks the accepting core by the connection's 4-tuple
//! (SO_REUSEPORT), which knows nothing of users. Once the upgrade has
//! passed, the accepting core hands the socket to `owner(user)`, which runs
//! the session: every device of a user then sits on its owner, where the
//! user's rate check, presence and device table live, so those need no
//! cross-core message.
//!
//! The socket moves as a duplicate descriptor in a control message (the
//! accepting core closes its own once the message is queued; glommio's
//! reads are readiness polls and non-blocking `recv`s, so no byte is
//! consumed by the closed side), with the bytes hyper read past the
//! request. The control mesh is bounded: when the owner's queue is full, or
//! the core is stopping, the session runs where it was accepted, as every
//! session did before (it works the same, with the hops this saves).
//! A hand-off is counted in [`crate::node::Shared::hand_offs_in_flight`]
//! until its session has started, so a stopping core waits for it and
//! closes it with 1001 rather than dropping the socket.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::Rc;

use glommio::net::TcpStream;

use crate::net::session::{self, Upgraded};
use crate::route::{Control, HandOff};
use crate::shard::state::Shard;

/// Runs the session of a connection that passed its upgrade here: on its
/// user's owner if that is another core and the owner's queue has room,
/// else here.
pub fn run_where_owned(shard: &Rc<Shard>, stream: TcpStream, early: Vec<u8>, upgraded: Upgraded, remote: SocketAddr) {
    let (stream, early, upgraded) = match to_owner(shard, stream, early, upgraded, remote) {
        Ok(()) => return,
        Err(back) => *back,
    };
    crate::tasks::spawn(session::run(shard.clone(), stream, early, upgraded, remote, None)).detach();
}

type Back = (TcpStream, Vec<u8>, Upgraded);

fn to_owner(
    shard: &Rc<Shard>,
    stream: TcpStream,
    early: Vec<u8>,
    upgraded: Upgraded,
    remote: SocketAddr,
) -> Result<(), Box<Back>> {
    let Upgraded::Chat { user, device, admitted } = upgraded else {
        return Err(Box::new((stream, early, upgraded)));
    };
    let owner = shard.owner(user.user_id.0);
    if owner == shard.id || shard.stopping.get() || !shard.config.hand_off {
        return Err(Box::new((stream, early, Upgraded::Chat { user, device, admitted })));
    }
    // SAFETY: the descriptor is `stream`'s, open for as long as this borrow
    // (`stream` is dropped only below, after the duplicate is made).
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let fd = match borrowed.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(error) => {
            tracing::warn!(%error, "no descriptor to hand a connection off: it stays here");
            shard.counters.hand_off_kept();
            return Err(Box::new((stream, early, Upgraded::Chat { user, device, admitted })));
        }
    };
    let in_flight = shard.shared.hand_off_started();
    let hand_off = Box::new(HandOff { fd, early, remote, user, device, admitted, in_flight });
    let sent = if shard.config.fault_hand_off_queue_full {
        Err(Control::HandOff(hand_off))
    } else {
        shard.router.try_send_control(owner, 0, Control::HandOff(hand_off))
    };
    match sent {
        Ok(()) => {
            // The owner has the duplicate: this core's descriptor closes.
            drop(stream);
            Ok(())
        }
        Err(Control::HandOff(hand_off)) => {
            // The owner's queue is full: the session runs here, on the
            // socket it was accepted on (the duplicate closes).
            shard.counters.hand_off_kept();
            let HandOff { early, user, device, admitted, .. } = *hand_off;
            Err(Box::new((stream, early, Upgraded::Chat { user, device, admitted })))
        }
        Err(other) => unreachable!("a refused control message comes back as it went: {other:?}"),
    }
}

/// Starts the session of a connection another core handed here (the
/// control reader calls it; it never waits).
pub fn start(shard: &Rc<Shard>, hand_off: HandOff) {
    let HandOff { fd, early, remote, user, device, admitted, in_flight } = hand_off;
    // SAFETY: `fd` is an owned, open TCP socket (a duplicate made for this
    // hand-off), and ownership passes to the stream.
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    let upgraded = Upgraded::Chat { user, device, admitted };
    let delay = shard.config.fault_hand_off_delay_ms;
    let shard = shard.clone();
    crate::tasks::spawn(async move {
        if delay > 0 {
            glommio::timer::sleep(std::time::Duration::from_millis(delay)).await;
        }
        session::run(shard, stream, early, upgraded, remote, Some(in_flight)).await;
    })
    .detach();
}
