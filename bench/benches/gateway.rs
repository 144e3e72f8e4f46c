//! The gateway's hot paths, each without sockets or storage around it:
//! - a WebSocket frame: a server text frame encoded, and a client's masked
//!   frame read back (unmasked, checked UTF-8) by the session's reader;
//! - a command parsed from its JSON frame (`send`, 100-byte text);
//! - one message routed across cores: a round trip between two shards
//!   through the router's meshes (the ask, and the answer back), as the
//!   server runs it (executors park when idle) and with both spinning
//!   50 us before they park;
//! - fan-out of one message to 100 members on one core: the event encoded
//!   once, queued to each connection, and gathered into its write buffer;
//! - a `typing` start and a `receipt` to the same members (the typing
//!   table's entry, the event to all but the typist), and a typing start
//!   that only renews its entry;
//! - a stored message read: rkyv's validated in-place access against
//!   serde_json decoding the same record written as JSON.
//!
//! `cargo bench -p chatgw-bench --bench gateway`

use std::hint::black_box;

use chatgw_bench::Rng;
use chatgw_gateway::bench::{LocalFanout, route_round_trips, route_round_trips_spinning};
use chatgw_gateway::protocol::command::parse_frame;
use chatgw_gateway::protocol::frame::{self, FrameReader, Incoming};
use chatgw_gateway::services::typing::TypingTable;
use chatgw_idgen::{ChannelId, MessageId, UserId};
use chatgw_storage::Message;
use chatgw_storage::record_bench::{message_value, read_message_value};
use criterion::{Criterion, Throughput};
use serde::{Deserialize, Serialize};

/// A client frame as a browser sends it: masked, FIN, one text frame.
fn client_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81];
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len if len <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(at, byte)| byte ^ mask[at % 4]));
    frame
}

fn send_command(text: &str) -> String {
    format!(r#"{{"id":17,"method":"send","params":{{"channel_id":"7265991023114240001","text":"{text}"}}}}"#)
}

fn frames(c: &mut Criterion) {
    let mut rng = Rng::new(7);
    let text = rng.text(100).replace(['"', '\\'], "x");
    let event = format!(
        r#"{{"event":"message","data":{{"id":"7265991023114240123","channel_id":"7265991023114240001","sender_id":"42","sender":"alice","text":"{text}","created_at":1764633600000}}}}"#
    );
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_text_event", |b| b.iter(|| frame::text(black_box(event.as_bytes()))));
    let command = send_command(&text);
    let wire = client_text_frame(command.as_bytes());
    let mut reader = FrameReader::default();
    let mut scratch = wire.clone();
    group.bench_function("decode_client_text", |b| {
        b.iter(|| {
            // The reader unmasks in place: each read starts from the wire bytes.
            scratch.copy_from_slice(&wire);
            let mut seen = 0;
            reader
                .feed(&mut scratch, 2 << 20, &mut |incoming| {
                    if let Incoming::Text(text) = incoming {
                        seen += text.len();
                    }
                    true
                })
                .expect("a valid frame");
            black_box(seen)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("command");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_send", |b| b.iter(|| black_box(parse_frame(black_box(&command)))));
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    // Each sample starts two executors and joins their meshes, then times
    // only the trips.
    group.bench_function("round_trip_across_cores", |b| b.iter_custom(route_round_trips));
    // The same with both executors spinning 50 us before they park: the
    // difference is what parking and waking costs a trip.
    group.bench_function("round_trip_across_cores_spin_50us", |b| {
        b.iter_custom(|trips| route_round_trips_spinning(trips, Some(std::time::Duration::from_micros(50))))
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let message = Message {
        id: MessageId(7_265_991_023_114_240_123),
        channel_id: ChannelId(7),
        sender_id: UserId(1),
        created_at_ms: 1_764_633_600_000,
        client_msg_id: None,
        text: Rng::new(9).text(100),
        edited_at_ms: None,
        deleted_at_ms: None,
    };
    let mut local = LocalFanout::new(100);
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(100));
    group.bench_function("one_message_to_100_local_members", |b| {
        b.iter(|| black_box(local.deliver(black_box(&message), "member_0")))
    });
    group.finish();
}

/// What typing and receipts cost a channel's owner against a message's
/// fan-out (`fanout` above): the same 100 local members, no storage (a
/// typing event writes nothing; a receipt's one small write rides the next
/// group commit, in the storage bench's batches).
fn conversation(c: &mut Criterion) {
    let mut local = LocalFanout::new(100);
    let mut group = c.benchmark_group("conversation");
    group.throughput(Throughput::Elements(99));
    let ttl = std::time::Duration::from_secs(6);
    group.bench_function("typing_start_to_99_local_members", |b| {
        b.iter_batched(
            || TypingTable::new(ttl, 1_000),
            |mut table| black_box(local.typing(&mut table, UserId(1), std::time::Instant::now())),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut table = TypingTable::new(ttl, 1_000);
    local.typing(&mut table, UserId(1), std::time::Instant::now());
    group.throughput(Throughput::Elements(1));
    group.bench_function("typing_start_renewed", |b| {
        b.iter(|| black_box(local.typing(&mut table, UserId(1), std::time::Instant::now())))
    });
    group.throughput(Throughput::Elements(99));
    group.bench_function("receipt_to_99_local_members", |b| {
        b.iter(|| black_box(local.receipt(UserId(1), MessageId(7_265_991_023_114_240_123))))
    });
    group.finish();
}

/// The same record as JSON would store it.
#[derive(Serialize, Deserialize)]
struct JsonMessage<'a> {
    sender_id: u64,
    created_at_ms: u64,
    client_msg_id: Option<&'a str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct OwnedJsonMessage {
    sender_id: u64,
    created_at_ms: u64,
    #[allow(dead_code)]
    client_msg_id: Option<String>,
    text: String,
}

fn records(c: &mut Criterion) {
    let text = Rng::new(11).text(200);
    let rkyv_bytes = message_value(42, 1_764_633_600_000, Some("client-1"), &text).expect("a record encodes");
    let json_bytes = serde_json::to_vec(&JsonMessage {
        sender_id: 42,
        created_at_ms: 1_764_633_600_000,
        client_msg_id: Some("client-1"),
        text: std::borrow::Cow::Borrowed(&text),
    })
    .expect("JSON encodes");
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rkyv_validated_access", |b| {
        b.iter(|| {
            let (sender, created, text) = read_message_value(black_box(&rkyv_bytes)).expect("a valid record");
            black_box((sender, created, text.len()))
        })
    });
    group.bench_function("serde_json_decode_borrowed", |b| {
        b.iter(|| {
            let record: JsonMessage<'_> = serde_json::from_slice(black_box(&json_bytes)).expect("valid JSON");
            black_box((record.sender_id, record.created_at_ms, record.text.len()))
        })
    });
    group.bench_function("serde_json_decode_owned", |b| {
        b.iter(|| {
            let record: OwnedJsonMessage = serde_json::from_slice(black_box(&json_bytes)).expect("valid JSON");
            black_box((record.sender_id, record.created_at_ms, record.text.len()))
        })
    });
    group.finish();
}

criterion::criterion_group!(benches, frames, routing, fanout, conversation, records);
criterion::criterion_main!(benches);
