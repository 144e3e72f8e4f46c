//! The WebSocket frame reader with reassembly, on arbitrary bytes cut into
//! arbitrary chunks (as socket reads would): it never panics, never holds
//! more than the limit, and what it hands over is a text (valid UTF-8 by
//! type), binary, ping (at most 125 bytes), pong or close.
#![no_main]

use chatgw_gateway::protocol::frame::{FrameReader, Incoming};
use libfuzzer_sys::fuzz_target;

/// A small limit, so that the fuzzer reaches it.
const MAX_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk sizes' pattern; the rest is the stream.
    let Some((&pattern, stream)) = data.split_first() else { return };
    let mut reader = FrameReader::default();
    let mut rest = stream.to_vec();
    let mut step = 0usize;
    while !rest.is_empty() {
        let size = (1 + (usize::from(pattern) * (step + 7)) % 97).min(rest.len());
        step += 1;
        let mut chunk: Vec<u8> = rest.drain(..size).collect();
        let mut stop_every = usize::from(pattern % 5);
        let result = reader.feed(&mut chunk, MAX_BYTES, &mut |incoming| {
            match incoming {
                Incoming::Text(text) => assert!(text.len() <= MAX_BYTES),
                Incoming::Binary(bytes) => assert!(bytes.len() <= MAX_BYTES),
                Incoming::Ping(payload) => assert!(payload.len() <= 125),
                Incoming::Pong | Incoming::Close(_) => {}
            }
            // Sometimes say "stop", as a connection at its cap does.
            stop_every = stop_every.wrapping_sub(1);
            stop_every != 0
        });
        if result.is_err() {
            return;
        }
        // A paused reader goes on from what it kept.
        while reader.is_paused() {
            if reader.feed(&mut [], MAX_BYTES, &mut |_| true).is_err() {
                return;
            }
        }
        assert!(reader.buffered_bytes() <= 2 * (MAX_BYTES + 14) + 97, "{}", reader.buffered_bytes());
    }
});
