//! Entry points for chatgw-bench's criterion benches, not an API: the hot
//! paths that are private to the gateway, run through the very code the
//! server runs (the router and its meshes, a core's registry and its
//! connections' queues), without sockets or storage around them.

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatgw_idgen::{ChannelId, ShardId, UserId};
use chatgw_storage::Message;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::limits;
use crate::protocol::shapes;
use crate::route::{Answer, ChannelMsg, Control, Router};
use crate::services::typing::{Started, TypingTable};
use crate::shard::registry::{Conn, Registry};

/// A message event's frame as an owner encodes it, once per message.
pub fn message_frame(message: &Message, sender: &str) -> Bytes {
    shapes::message_event_frame(message, sender)
}

/// One core's registry with `members` connections in one channel: a
/// message's fan-out to the members connected to that core.
pub struct LocalFanout {
    registry: Registry,
    conns: Vec<Rc<Conn>>,
    channel: ChannelId,
    /// The session's write buffer, which a connection's frames are
    /// gathered into (64 KiB, as the session's).
    buf: Vec<u8>,
}

impl LocalFanout {
    /// A registry with `members` connections of distinct users, all in
    /// one channel.
    pub fn new(members: usize) -> Self {
        let mut registry = Registry::default();
        let channel = ChannelId(7);
        let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000));
        let conns = (0..members)
            .map(|member| {
                let name: Rc<str> = Rc::from(format!("member_{member}"));
                let conn = registry.add(UserId(member as u64 + 1), name, "phone".into(), remote, 0);
                registry.join_channel(&conn, channel);
                conn
            })
            .collect();
        LocalFanout { registry, conns, channel, buf: vec![0; 64 << 10] }
    }

    /// Encodes `message` once, queues the shared frame to every member's
    /// connection, then has each connection's writer gather its queue into
    /// the write buffer (the copy into the socket) and mark it written.
    /// Returns the deliveries.
    pub fn deliver(&mut self, message: &Message, sender: &str) -> usize {
        let event = message_frame(message, sender);
        let queued = self.registry.deliver(self.channel, &event);
        self.write_all();
        queued
    }

    /// Writes every connection's queue into the write buffer, as their
    /// sessions would.
    fn write_all(&mut self) {
        for conn in &self.conns {
            loop {
                let gathered = conn.gather(&mut self.buf);
                if gathered == 0 {
                    break;
                }
                conn.advance(gathered);
            }
        }
    }

    /// A `typing` start of `typist` (one of the members) as its channel's
    /// owner handles it: the table's entry, and, when the user was not
    /// typing already, the event encoded once and queued to every other
    /// member, then written. Returns the deliveries (0 for a renewal).
    pub fn typing(&mut self, table: &mut TypingTable, typist: UserId, now: Instant) -> usize {
        let started = table.start(self.channel, typist, "member_0", now).expect("room in the table");
        if started != Started::New {
            return 0;
        }
        let frame = shapes::typing_event_frame(self.channel, typist, "member_0", true);
        let queued = self.registry.deliver_to(self.channel, &frame, |conn| conn.user_id != typist);
        self.write_all();
        queued
    }

    /// A `receipt` of `reader` to every member's connection but its own,
    /// encoded once, queued and written. Returns the deliveries.
    pub fn receipt(&mut self, reader: UserId, message: chatgw_idgen::MessageId) -> usize {
        let frame = shapes::receipt_event_frame(self.channel, reader, "member_0", message);
        let queued = self.registry.deliver_to(self.channel, &frame, |conn| conn.user_id != reader);
        self.write_all();
        queued
    }
}

/// `trips` round trips between two cores through the router: shard 0 asks
/// shard 1 with a channel delivery (a `Control` on the mesh), and shard 1
/// answers `Done` on the mesh back, as an owner's core and a connection's
/// core talk. Returns the time the trips took on shard 0, from the first
/// ask to the last answer (the executors' start is not in it).
pub fn route_round_trips(trips: u64) -> Duration {
    route_round_trips_spinning(trips, None)
}

/// [`route_round_trips`] with both executors spinning for `spin` before
/// they park (glommio's `spin_before_park`; the server does not spin): how
/// much of a trip is an executor's park and wake-up.
pub fn route_round_trips_spinning(trips: u64, spin: Option<Duration>) -> Duration {
    let calls = MeshBuilder::full(2, limits::MESH_CALL_CAPACITY);
    let controls = MeshBuilder::full(2, limits::MESH_CONTROL_CAPACITY);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let executors: Vec<_> = (0..2u16)
        .map(|shard| {
            let (calls, controls) = (calls.clone(), controls.clone());
            // Each shard on a core of its own where there are two.
            let placement = if cpus >= 2 { Placement::Fixed(usize::from(shard)) } else { Placement::Unbound };
            let mut builder =
                LocalExecutorBuilder::new(placement).name(&format!("bench-shard-{shard}")).io_memory(64 << 10);
            if let Some(spin) = spin {
                builder = builder.spin_before_park(spin);
            }
            builder
                .spawn(move || async move {
                    let (call_senders, _call_receivers) = calls.join().await.expect("the call mesh joins");
                    let (control_senders, mut control_receivers) =
                        controls.join().await.expect("the control mesh joins");
                    let router = Rc::new(Router::new(ShardId(shard), call_senders, control_senders));
                    let peer = ShardId(1 - shard);
                    let stream = control_receivers.streams().into_iter().next().expect("one peer").1;
                    if shard == 1 {
                        // The answering core: until shard 0 is done and gone.
                        while let Some(routed) = stream.recv().await {
                            router.note_received(routed.from);
                            let answer = match routed.body {
                                Control::Channel(ChannelMsg::Deliver { .. }) => Ok(Answer::Done),
                                other => panic!("the bench sends deliveries only, got {other:?}"),
                            };
                            router.send_control(routed.from, routed.request_id, Control::Reply(answer)).await;
                        }
                        return Duration::ZERO;
                    }
                    let replies = {
                        let router = router.clone();
                        crate::tasks::spawn(async move {
                            while let Some(routed) = stream.recv().await {
                                router.note_received(routed.from);
                                if let Control::Reply(result) = routed.body {
                                    router.complete(routed.request_id, result);
                                }
                            }
                        })
                    };
                    let frame = Bytes::from_static(br#"{"event":"message","data":{}}"#);
                    let started = Instant::now();
                    for _ in 0..trips {
                        let deliver = ChannelMsg::Deliver {
                            channel_id: ChannelId(7),
                            frame: frame.clone(),
                            taken_at: started,
                            with: None,
                        };
                        router.ask(peer, Control::Channel(deliver)).await.expect("shard 1 answers");
                    }
                    let elapsed = started.elapsed();
                    drop(replies);
                    elapsed
                })
                .expect("a bench executor starts")
        })
        .collect();
    let mut elapsed = Duration::ZERO;
    for executor in executors {
        elapsed = elapsed.max(executor.join().expect("a bench executor ends"));
    }
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_fanout_reaches_every_member_and_drains() {
        let mut fanout = LocalFanout::new(100);
        let message = Message {
            id: chatgw_idgen::MessageId(1),
            channel_id: ChannelId(7),
            sender_id: UserId(1),
            created_at_ms: 1,
            client_msg_id: None,
            text: "hello".into(),
            edited_at_ms: None,
            deleted_at_ms: None,
        };
        for _ in 0..3 {
            assert_eq!(fanout.deliver(&message, "member_0"), 100);
        }
        assert!(fanout.conns.iter().all(|conn| conn.queued_frames() == 0), "every queue written out");
    }

    #[test]
    fn round_trips_between_two_cores_complete() {
        assert!(route_round_trips(100) > Duration::ZERO);
    }
}
