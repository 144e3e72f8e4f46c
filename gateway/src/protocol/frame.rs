//! WebSocket frames (RFC 6455) read from a per-core scratch buffer.
//!
//! Headers are parsed by tungstenite's `FrameHeader`; this module adds what
//! a server must check on top (masking, RSV bits, control-frame rules, size
//! limits), unmasking, and reassembly of fragmented messages. A connection
//! keeps only the bytes of a frame that has not fully arrived, and drops
//! that allocation as soon as the frame completes: an idle connection holds
//! no read buffer.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::protocol::close::CloseReason;

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text message (checked UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close, with the client's code if it gave one.
    Close(Option<u16>),
}

/// The reading side of one connection's frame stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes of a frame that has not fully arrived (empty when idle).
    pending: Vec<u8>,
    /// A fragmented message so far.
    fragments: Vec<u8>,
    /// The kind of the fragmented message in progress.
    fragment_kind: Option<Data>,
    closed: bool,
    /// The sink asked to stop: complete frames may wait in `pending`.
    paused: bool,
}

enum Step {
    /// A frame was handled; go on after this many bytes.
    Consumed(usize),
    /// The buffer ends inside a frame.
    Incomplete,
}

impl FrameReader {
    /// Whether nothing is buffered (the state of an idle connection).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.fragments.is_empty()
    }

    /// Whether the sink stopped it with complete frames still waiting.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Bytes held for partial frames and messages.
    pub fn buffered_bytes(&self) -> usize {
        self.pending.capacity() + self.fragments.capacity()
    }

    /// Feeds bytes just read (in the scratch buffer, unmasked in place) and
    /// hands each complete message to `sink`. Stops after a close frame, or
    /// when `sink` answers false (the connection has as many commands in
    /// flight as it may): the rest waits, and `feed` with no bytes goes on
    /// from there ([`is_paused`](Self::is_paused) says whether to). An
    /// error is the close the server must send.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_bytes: usize,
        sink: &mut dyn FnMut(Incoming<'_>) -> bool,
    ) -> Result<(), CloseReason> {
        if self.closed {
            return Ok(());
        }
        self.paused = false;
        if self.pending.is_empty() {
            let consumed = self.parse_all(input, max_bytes, sink)?;
            if consumed < input.len() && !self.closed {
                self.pending.extend_from_slice(&input[consumed..]);
            }
        } else {
            self.pending.extend_from_slice(input);
            let mut buffer = std::mem::take(&mut self.pending);
            let consumed = self.parse_all(&mut buffer, max_bytes, sink)?;
            if consumed < buffer.len() && !self.closed {
                buffer.drain(..consumed);
                self.pending = buffer;
            }
        }
        Ok(())
    }

    fn parse_all(
        &mut self,
        buffer: &mut [u8],
        max_bytes: usize,
        sink: &mut dyn FnMut(Incoming<'_>) -> bool,
    ) -> Result<usize, CloseReason> {
        let mut offset = 0;
        while offset < buffer.len() && !self.closed && !self.paused {
            match self.parse_one(&mut buffer[offset..], max_bytes, sink)? {
                Step::Consumed(bytes) => offset += bytes,
                Step::Incomplete => break,
            }
        }
        Ok(offset)
    }

    fn parse_one(
        &mut self,
        buffer: &mut [u8],
        max_bytes: usize,
        sink: &mut dyn FnMut(Incoming<'_>) -> bool,
    ) -> Result<Step, CloseReason> {
        let mut cursor = Cursor::new(&*buffer);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Step::Incomplete),
            Err(_) => return Err(CloseReason::ProtocolError),
        };
        let header_bytes = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(CloseReason::ProtocolError);
        }
        let Some(mask) = header.mask else { return Err(CloseReason::ProtocolError) };
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control && (!header.is_final || length > 125) {
            return Err(CloseReason::ProtocolError);
        }
        if length > max_bytes as u64 || self.fragments.len() as u64 + length > max_bytes as u64 {
            return Err(CloseReason::TooBig);
        }
        let length = length as usize;
        let Some(frame) = buffer.get_mut(header_bytes..header_bytes + length) else { return Ok(Step::Incomplete) };
        apply_mask(frame, mask);
        let frame = &*frame;
        match header.opcode {
            OpCode::Data(Data::Continue) => {
                let Some(kind) = self.fragment_kind else { return Err(CloseReason::ProtocolError) };
                self.fragments.extend_from_slice(frame);
                if header.is_final {
                    let message = std::mem::take(&mut self.fragments);
                    self.fragment_kind = None;
                    self.paused = !deliver(kind, &message, sink)?;
                }
            }
            OpCode::Data(kind @ (Data::Text | Data::Binary)) => {
                if self.fragment_kind.is_some() {
                    return Err(CloseReason::ProtocolError);
                }
                if header.is_final {
                    self.paused = !deliver(kind, frame, sink)?;
                } else {
                    self.fragment_kind = Some(kind);
                    self.fragments.extend_from_slice(frame);
                }
            }
            OpCode::Control(Control::Ping) => self.paused = !sink(Incoming::Ping(frame)),
            OpCode::Control(Control::Pong) => self.paused = !sink(Incoming::Pong),
            OpCode::Control(Control::Close) => {
                let code = match frame.len() {
                    0 => None,
                    1 => return Err(CloseReason::ProtocolError),
                    _ => {
                        let code = u16::from_be_bytes([frame[0], frame[1]]);
                        if !may_be_sent(code) {
                            return Err(CloseReason::ProtocolError);
                        }
                        std::str::from_utf8(&frame[2..]).map_err(|_| CloseReason::InvalidPayload)?;
                        Some(code)
                    }
                };
                self.closed = true;
                sink(Incoming::Close(code));
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(CloseReason::ProtocolError);
            }
        }
        Ok(Step::Consumed(header_bytes + length))
    }
}

/// Whether a peer may send this close code (RFC 6455 §7.4): the defined
/// codes other than those reserved for "no code" (1005), "no close frame"
/// (1006) and TLS failure (1015), IANA's registered 1012 to 1014, and the
/// 3000 to 4999 of libraries and applications.
fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Hands a complete message to `sink`; its answer: whether to go on.
fn deliver(kind: Data, payload: &[u8], sink: &mut dyn FnMut(Incoming<'_>) -> bool) -> Result<bool, CloseReason> {
    Ok(match kind {
        Data::Text => sink(Incoming::Text(std::str::from_utf8(payload).map_err(|_| CloseReason::InvalidPayload)?)),
        _ => sink(Incoming::Binary(payload)),
    })
}

/// XORs a client frame's payload with its mask.
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader { is_final: true, rsv1: false, rsv2: false, rsv3: false, opcode, mask: None };
    let mut frame = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    header.format(payload.len() as u64, &mut frame).expect("writing to a Vec cannot fail");
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The most a server frame's header takes: 2 bytes, and 8 more for a
/// 64-bit length (server frames carry no mask).
const HEADER_BYTES_MAX: usize = 10;

/// A server text frame whose payload `write` puts straight into the
/// frame's buffer, after room kept for the header: the payload is encoded
/// once, where it is sent from, and never copied.
pub fn text_with(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut frame = Vec::with_capacity(256);
    frame.resize(HEADER_BYTES_MAX, 0);
    write(&mut frame);
    let len = (frame.len() - HEADER_BYTES_MAX) as u64;
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(Data::Text),
        mask: None,
    };
    let start = HEADER_BYTES_MAX - header.len(len);
    header.format(len, &mut &mut frame[start..HEADER_BYTES_MAX]).expect("the header fits the room kept for it");
    Bytes::from(frame).slice(start..)
}

/// A server text frame (unmasked), ready to write to any connection.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

/// A server binary frame (unmasked).
pub fn binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), payload)
}

/// A pong answering a ping.
pub fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A close frame with the reason's code and label.
pub fn close(reason: CloseReason) -> Bytes {
    let mut payload = reason.code().to_be_bytes().to_vec();
    payload.extend_from_slice(reason.label().as_bytes());
    encode(OpCode::Control(Control::Close), &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | len as u8),
            len if len < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
        frame
    }

    fn collect(reader: &mut FrameReader, input: &[u8]) -> Result<Vec<String>, CloseReason> {
        let mut seen = Vec::new();
        let mut input = input.to_vec();
        reader.feed(&mut input, 1 << 20, &mut |incoming| {
            seen.push(format!("{incoming:?}"));
            true
        })?;
        Ok(seen)
    }

    #[test]
    fn a_frame_written_in_place_is_the_frame_of_its_payload() {
        // Each header size: 7-bit, 16-bit and 64-bit lengths.
        for len in [0, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|index| b'a' + (index % 26) as u8).collect();
            let in_place = text_with(|buffer| buffer.extend_from_slice(&payload));
            assert_eq!(in_place, text(&payload), "payload of {len} bytes");
        }
    }

    #[test]
    fn a_sink_that_says_stop_leaves_the_rest_for_later() {
        let mut stream = Vec::new();
        for n in 0..5 {
            stream.extend(client_frame(1, true, format!("m{n}").as_bytes()));
        }
        let mut reader = FrameReader::default();
        let mut seen = Vec::new();
        // Room for two at a time.
        let take_two = |reader: &mut FrameReader, input: &mut [u8], seen: &mut Vec<String>| {
            let mut room = 2;
            reader
                .feed(input, 1 << 20, &mut |incoming| {
                    seen.push(format!("{incoming:?}"));
                    room -= 1;
                    room > 0
                })
                .unwrap();
        };
        take_two(&mut reader, &mut stream, &mut seen);
        assert_eq!(seen.len(), 2);
        assert!(reader.is_paused());
        take_two(&mut reader, &mut [], &mut seen);
        take_two(&mut reader, &mut [], &mut seen);
        assert_eq!(seen, ["Text(\"m0\")", "Text(\"m1\")", "Text(\"m2\")", "Text(\"m3\")", "Text(\"m4\")"]);
        assert!(!reader.is_paused());
        assert!(reader.is_idle());
    }

    #[test]
    fn frames_split_at_every_byte_reassemble() {
        let mut stream = client_frame(1, true, "héllo".as_bytes());
        stream.extend(client_frame(9, true, b"p"));
        stream.extend(client_frame(1, false, b"frag"));
        stream.extend(client_frame(0, true, b"ment"));
        stream.extend(client_frame(2, true, &[0, 1, 2]));
        let big = "x".repeat(70_000);
        stream.extend(client_frame(1, true, big.as_bytes()));
        let expected = vec![
            "Text(\"héllo\")".to_string(),
            "Ping([112])".into(),
            "Text(\"fragment\")".into(),
            "Binary([0, 1, 2])".into(),
            format!("Text({big:?})"),
        ];
        for split in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let mut reader = FrameReader::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(split) {
                seen.extend(collect(&mut reader, chunk).unwrap());
            }
            assert_eq!(seen, expected, "split {split}");
            assert!(reader.is_idle());
            assert_eq!(reader.buffered_bytes(), 0, "no buffer kept once idle");
        }
    }

    #[test]
    fn protocol_violations_are_close_reasons() {
        let mut unmasked = client_frame(1, true, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.truncate(2);
        unmasked.extend_from_slice(b"hi");
        assert_eq!(collect(&mut FrameReader::default(), &unmasked), Err(CloseReason::ProtocolError));
        let mut rsv = client_frame(1, true, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(collect(&mut FrameReader::default(), &rsv), Err(CloseReason::ProtocolError));
        assert_eq!(
            collect(&mut FrameReader::default(), &client_frame(9, false, b"p")),
            Err(CloseReason::ProtocolError)
        );
        assert_eq!(collect(&mut FrameReader::default(), &client_frame(0, true, b"c")), Err(CloseReason::ProtocolError));
        assert_eq!(collect(&mut FrameReader::default(), &client_frame(3, true, b"r")), Err(CloseReason::ProtocolError));
        assert_eq!(
            collect(&mut FrameReader::default(), &client_frame(1, true, &[0xff, 0xfe])),
            Err(CloseReason::InvalidPayload)
        );
        let mut two_starts = client_frame(1, false, b"a");
        two_starts.extend(client_frame(1, true, b"b"));
        assert_eq!(collect(&mut FrameReader::default(), &two_starts), Err(CloseReason::ProtocolError));
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        // Only the header of a 3 MiB frame: refused before any payload is buffered.
        let header = &client_frame(1, true, &vec![b'a'; 3 << 20])[..14];
        assert_eq!(collect(&mut FrameReader::default(), header), Err(CloseReason::TooBig));
        let mut fragments = client_frame(1, false, &vec![b'a'; 600_000]);
        fragments.extend(client_frame(0, true, &vec![b'a'; 600_000]));
        assert_eq!(collect(&mut FrameReader::default(), &fragments), Err(CloseReason::TooBig));
    }

    #[test]
    fn close_stops_parsing_and_server_frames_encode() {
        let mut stream = client_frame(8, true, &1000u16.to_be_bytes());
        stream.extend(client_frame(1, true, b"after"));
        assert_eq!(collect(&mut FrameReader::default(), &stream).unwrap(), vec!["Close(Some(1000))"]);
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&close(CloseReason::TooBig)[..4], &[0x88, 2 + 7, 0x03, 0xf1]);
        let long = text(&vec![b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(&binary(&[0, 1])[..], &[0x82, 2, 0, 1]);
    }

    /// Autobahn 7.9.x and 7.5.1 found these answered 1000.
    #[test]
    fn a_close_with_a_code_no_peer_may_send_or_a_reason_not_utf8_is_a_protocol_error() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let frame = client_frame(8, true, &code.to_be_bytes());
            assert_eq!(collect(&mut FrameReader::default(), &frame), Err(CloseReason::ProtocolError), "{code}");
        }
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 3999, 4000, 4999] {
            let frame = client_frame(8, true, &code.to_be_bytes());
            assert_eq!(collect(&mut FrameReader::default(), &frame).unwrap(), vec![format!("Close(Some({code}))")]);
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason
            .extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80]);
        assert_eq!(
            collect(&mut FrameReader::default(), &client_frame(8, true, &bad_reason)),
            Err(CloseReason::InvalidPayload)
        );
        let mut reason = 1000u16.to_be_bytes().to_vec();
        reason.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(
            collect(&mut FrameReader::default(), &client_frame(8, true, &reason)).unwrap(),
            vec!["Close(Some(1000))"]
        );
    }
}
