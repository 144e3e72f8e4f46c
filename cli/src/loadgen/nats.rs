//! Just enough of the NATS client protocol (over its WebSocket listener) to
//! run the load generator's fan-out plan against `nats-server` for
//! comparison: `CONNECT`, `SUB`, `PUB`, `PING`/`PONG`, and `MSG` parsing.

use anyhow::bail;

/// Longest control line accepted before the parser gives up.
const LINE_BYTES_MAX: usize = 64 << 10;

/// One operation from the server.
#[derive(Debug, PartialEq)]
pub enum Op<'a> {
    /// `INFO {...}`.
    Info,
    /// `PING`: the client must answer `PONG`.
    Ping,
    /// `PONG`: everything sent before our `PING` was processed.
    Pong,
    /// `+OK` (verbose mode only).
    Ok,
    /// `-ERR '...'`.
    Err(String),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg(&'a [u8]),
}

/// A streaming parser: bytes in (any split across frames), operations out.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
}

impl Parser {
    /// Parses `bytes`, calling `on_op` for each complete operation; keeps
    /// an incomplete tail for the next call.
    pub fn feed(&mut self, bytes: &[u8], on_op: &mut dyn FnMut(Op<'_>)) -> anyhow::Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            let Some(eol) = rest.windows(2).position(|pair| pair == b"\r\n") else {
                if rest.len() > LINE_BYTES_MAX {
                    bail!("a NATS control line longer than {LINE_BYTES_MAX} bytes");
                }
                break;
            };
            let line = &rest[..eol];
            let verb_end = line.iter().position(|byte| *byte == b' ' || *byte == b'\t').unwrap_or(line.len());
            let verb = line[..verb_end].to_ascii_uppercase();
            match verb.as_slice() {
                b"MSG" => {
                    let text = std::str::from_utf8(line)?;
                    let Some(size) = text.split_whitespace().last().and_then(|size| size.parse::<usize>().ok()) else {
                        bail!("a MSG line without a size: {text}");
                    };
                    let payload_start = eol + 2;
                    if rest.len() < payload_start + size + 2 {
                        break; // the payload is still on its way
                    }
                    on_op(Op::Msg(&rest[payload_start..payload_start + size]));
                    at += payload_start + size + 2;
                    continue;
                }
                b"PING" => on_op(Op::Ping),
                b"PONG" => on_op(Op::Pong),
                b"+OK" => on_op(Op::Ok),
                b"INFO" => on_op(Op::Info),
                b"-ERR" => on_op(Op::Err(String::from_utf8_lossy(line).into_owned())),
                _ => bail!("unknown NATS operation {:?}", String::from_utf8_lossy(line)),
            }
            at += eol + 2;
        }
        self.pending.drain(..at);
        Ok(())
    }
}

/// Feeds a subscriber's first bytes from the server (after
/// [`connect_and_subscribe`]): whether its `PONG` came, so the subscription
/// is in place; an error for a `-ERR`.
pub fn subscribed(parser: &mut Parser, bytes: &[u8]) -> anyhow::Result<bool> {
    let mut subscribed = false;
    let mut refused = None;
    parser.feed(bytes, &mut |op| match op {
        Op::Pong => subscribed = true,
        Op::Err(error) => refused = Some(error),
        _ => {}
    })?;
    if let Some(error) = refused {
        bail!("NATS refused the subscription: {error}");
    }
    Ok(subscribed)
}

/// The `CONNECT` line (and a `SUB`) a subscriber sends, then a `PING`
/// whose `PONG` says the subscription is in place.
pub fn connect_and_subscribe(subject: &str) -> String {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":true,\"protocol\":1,\"lang\":\"chatgw-loadgen\",\"version\":\"1\"}}\r\nSUB {subject} 1\r\nPING\r\n"
    )
}

/// A publish followed by a `PING`: its `PONG` acknowledges the publish.
pub fn publish(subject: &str, payload: &str) -> String {
    format!("PUB {subject} {}\r\n{payload}\r\nPING\r\n", payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(parser: &mut Parser, bytes: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        parser
            .feed(bytes, &mut |op| {
                seen.push(match op {
                    Op::Msg(payload) => format!("MSG {}", String::from_utf8_lossy(payload)),
                    other => format!("{other:?}"),
                })
            })
            .unwrap();
        seen
    }

    #[test]
    fn parses_operations_split_anywhere() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG g.1 1 5\r\nhello\r\nPING\r\nMSG g.1 1 _INBOX.x 3\r\na\r\n\r\n+OK\r\n";
        let whole = ops(&mut Parser::default(), stream);
        assert_eq!(whole, ["Info", "Pong", "MSG hello", "Ping", "MSG a\r\n", "Ok"]);
        for split in 0..stream.len() {
            let mut parser = Parser::default();
            let mut seen = ops(&mut parser, &stream[..split]);
            seen.extend(ops(&mut parser, &stream[split..]));
            assert_eq!(seen, whole, "split at {split}");
        }
    }

    #[test]
    fn refuses_garbage_and_endless_lines() {
        assert!(Parser::default().feed(b"WHAT\r\n", &mut |_| {}).is_err());
        assert!(Parser::default().feed(b"MSG a 1\r\n", &mut |_| {}).is_ok());
        assert!(Parser::default().feed(&vec![b'x'; LINE_BYTES_MAX + 1], &mut |_| {}).is_err());
    }

    #[test]
    fn a_subscription_is_in_place_at_its_pong_and_refused_at_an_error() {
        let mut parser = Parser::default();
        assert!(!subscribed(&mut parser, b"INFO {}\r\nPO").unwrap());
        assert!(subscribed(&mut parser, b"NG\r\n").unwrap());
        let refused = subscribed(&mut Parser::default(), b"-ERR 'Authorization Violation'\r\n").unwrap_err();
        assert!(refused.to_string().contains("refused"), "{refused}");
    }

    #[test]
    fn publish_carries_its_length_and_a_ping() {
        assert_eq!(publish("g.1", "fo 1 2"), "PUB g.1 6\r\nfo 1 2\r\nPING\r\n");
    }
}
