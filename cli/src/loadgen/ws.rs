//! A WebSocket client on glommio (async-tungstenite over glommio's
//! `TcpStream`), as the load generator's connections use it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::StreamExt;
use glommio::net::TcpStream;

use super::runtime::within;

/// A connected WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Where a connection's frames are queued for sending.
pub type Outbox = std::rc::Rc<glommio::channels::local_channel::LocalSender<Message>>;

/// The command id of the load generator's heartbeats (its sends use other
/// ids: due or send times in nanoseconds, far above it).
pub const HEARTBEAT_ID: u64 = 2;

/// Sends a chatgw `heartbeat` on each connection every `every`, so a run
/// longer than the server's silence limit (2 × `heartbeat_ms`) keeps
/// connections whose users only receive. The beats are spread over the
/// period, a slice of the connections every few milliseconds, as clients
/// that connected at different times would send them: all at once, they
/// would be a burst the real traffic never makes, and the run would measure
/// it. Stops once the outboxes are gone.
pub fn spawn_heartbeats(outboxes: &[Outbox], every: Duration) {
    const TICK: Duration = Duration::from_millis(10);
    let outboxes: Vec<_> = outboxes.iter().map(std::rc::Rc::downgrade).collect();
    if outboxes.is_empty() {
        return;
    }
    let beat = format!(r#"{{"id":{HEARTBEAT_ID},"method":"heartbeat","params":{{}}}}"#);
    let ticks = (every.as_millis() / TICK.as_millis()).clamp(1, u128::from(u32::MAX)) as usize;
    let per_tick = outboxes.len().div_ceil(ticks);
    let slices = outboxes.len().div_ceil(per_tick);
    let tick = every / slices as u32;
    glommio::spawn_local(async move {
        let mut alive = false;
        for (n, slice) in outboxes.chunks(per_tick).enumerate().cycle() {
            glommio::timer::sleep(tick).await;
            for outbox in slice.iter().filter_map(std::rc::Weak::upgrade) {
                alive = true;
                // A full outbox is traffic enough.
                let _ = outbox.try_send(Message::text(beat.clone()));
            }
            if n + 1 == slices {
                if !alive {
                    return;
                }
                alive = false;
            }
        }
    })
    .detach();
}

/// The heartbeat period a hello asks for, with room to spare.
pub fn heartbeat_every(hello: &serde_json::Value) -> Duration {
    Duration::from_millis(hello["heartbeat_ms"].as_u64().unwrap_or(15_000).max(100) / 2)
}

/// Splits a socket: a task of its own writes what is queued in the
/// returned outbox (at most `capacity` frames waiting), the receiver is
/// the caller's.
pub fn with_outbox(ws: Ws, capacity: usize) -> (Outbox, async_tungstenite::WebSocketReceiver<TcpStream>) {
    let (mut sink, stream) = ws.split();
    let (outbox, queued) = glommio::channels::local_channel::new_bounded::<Message>(capacity);
    glommio::spawn_local(async move {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close(None).await;
    })
    .detach();
    (std::rc::Rc::new(outbox), stream)
}

/// How long a connection may take, handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the load generator's sockets are configured: a small read buffer,
/// and each frame written as it is sent.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 << 10).write_buffer_size(0)
}

/// Opens a WebSocket to `addr` at `path` (with its query), with a bearer
/// token if given.
pub async fn connect(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<Ws> {
    connect_with(addr, source, path, token, config()).await
}

/// [`connect`] with a socket configuration of the caller's.
pub async fn connect_with(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    path: &str,
    token: Option<&str>,
    config: WebSocketConfig,
) -> anyhow::Result<Ws> {
    let stream = match source {
        Some(source) => super::source::glommio_stream(source, addr)?,
        None => TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|error| anyhow::anyhow!("connecting to {addr}: {error}"))?,
    };
    stream.set_nodelay(true).map_err(|error| anyhow::anyhow!("TCP_NODELAY: {error}"))?;
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    }
    let handshake = async_tungstenite::client_async_with_config(request, stream, Some(config));
    match within(CONNECT_TIMEOUT, handshake).await {
        Some(Ok((ws, _))) => Ok(ws),
        Some(Err(error)) => Err(error).with_context(|| format!("WebSocket handshake with {addr}")),
        None => bail!("WebSocket handshake with {addr}: timed out"),
    }
}

/// Opens a chatgw session as `token`'s user and waits for its `hello`;
/// returns the socket and the hello's `data`.
pub async fn chatgw_session(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    token: &str,
    device: &str,
) -> anyhow::Result<(Ws, serde_json::Value)> {
    chatgw_session_with(addr, source, token, device, config()).await
}

/// [`chatgw_session`] with a socket configuration of the caller's.
pub async fn chatgw_session_with(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    token: &str,
    device: &str,
    config: WebSocketConfig,
) -> anyhow::Result<(Ws, serde_json::Value)> {
    let mut ws = connect_with(addr, source, &format!("/v1/ws?device={device}"), Some(token), config).await?;
    let Some(first) = within(CONNECT_TIMEOUT, ws.next()).await else {
        bail!("no hello within {CONNECT_TIMEOUT:?}");
    };
    let text = match first {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(other)) => bail!("expected hello, got {other:?}"),
        Some(Err(error)) => return Err(error).context("reading hello"),
        None => bail!("closed before hello"),
    };
    let mut hello: serde_json::Value = serde_json::from_str(&text).context("hello is not JSON")?;
    if hello["event"] != "hello" {
        bail!("expected hello, got {text}");
    }
    Ok((ws, hello["data"].take()))
}

/// What a chatgw frame is, as far as the load generator cares.
#[derive(Debug, PartialEq)]
pub enum Inbound<'a> {
    /// A `message` event with its text.
    Message(std::borrow::Cow<'a, str>),
    /// A successful reply to command `id`.
    Reply(u64),
    /// An error reply to command `id` (0 where the server read none).
    Error(u64, String),
    /// Any other event (`hello`, `channel`, `presence`).
    Event(&'a str),
}

#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Option<&'a str>,
    id: Option<u64>,
    #[serde(borrow)]
    data: Option<Data<'a>>,
    error: Option<ErrorBody>,
}

#[derive(serde::Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    code: String,
}

/// Reads a chatgw frame the load generator sent commands with integer ids on.
pub fn classify(text: &str) -> anyhow::Result<Inbound<'_>> {
    // Fast path for the bulk of a run, message events: their text is found
    // without parsing the whole frame (the load generator shares the cores
    // with the server it measures, so its own cost matters). Unescaped
    // quotes only occur outside strings, so these keys cannot be faked by
    // a message's text.
    if text.contains(r#""event":"message""#)
        && let Some(start) = text.find(r#""text":""#)
    {
        let body = &text[start + 8..];
        if let Some(end) = body.find('"')
            && !body[..end].contains('\\')
        {
            return Ok(Inbound::Message(std::borrow::Cow::Borrowed(&body[..end])));
        }
    }
    let frame: Frame<'_> = serde_json::from_str(text).with_context(|| format!("unreadable frame {text:.200}"))?;
    Ok(match (frame.event, frame.id, frame.error) {
        (Some("message"), _, _) => Inbound::Message(frame.data.and_then(|data| data.text).unwrap_or_default()),
        (Some(event), _, _) => Inbound::Event(event),
        (None, id, Some(error)) => Inbound::Error(id.unwrap_or(0), error.code),
        (None, Some(id), None) => Inbound::Reply(id),
        (None, None, None) => bail!("a frame that is neither event nor reply: {text:.200}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_frames_a_load_generator_meets() {
        let message = r#"{"event":"message","data":{"id":"1","channel_id":"2","sender_id":"3","sender":"a","text":"lg 5 7","created_at":1}}"#;
        assert_eq!(classify(message).unwrap(), Inbound::Message("lg 5 7".into()));
        let sorted =
            r#"{"data":{"id":"1","sender":"a","text":"say \"event\":\"message\"","created_at":1},"event":"message"}"#;
        assert_eq!(classify(sorted).unwrap(), Inbound::Message(r#"say "event":"message""#.into()));
        let not_message = r#"{"event":"channel","data":{"text":"\"event\":\"message\""}}"#;
        assert_eq!(classify(not_message).unwrap(), Inbound::Event("channel"));
        assert_eq!(classify(r#"{"id":42,"result":{"message_id":"1"}}"#).unwrap(), Inbound::Reply(42));
        assert_eq!(
            classify(r#"{"id":null,"error":{"code":"bad_request","message":"no"}}"#).unwrap(),
            Inbound::Error(0, "bad_request".into())
        );
        assert_eq!(classify(r#"{"event":"channel","data":{"kind":"added"}}"#).unwrap(), Inbound::Event("channel"));
        assert!(classify("not json").is_err());
        assert!(classify("{}").is_err());
    }
}
