//! The conformance echo (`--conformance-echo`): `GET /v1/echo` without a
//! token sends back each message through the real session, with its frame
//! limit and close handling; without the flag the route does not exist.

use std::net::TcpStream;
use std::time::Duration;

use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::common::TestServer;

type Echo = tungstenite::WebSocket<TcpStream>;

fn open(server: &TestServer) -> Result<Echo, u16> {
    let request = format!("ws://{}/v1/echo", server.addr()).into_client_request().unwrap();
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("handshake: {error}"),
    }
}

#[test]
fn the_echo_sends_messages_back_through_the_session_and_its_limits() {
    let server = TestServer::start_with(2, |config| config.conformance_echo = true);
    let mut echo = open(&server).expect("the echo upgrades without a token");
    echo.send(Message::text("hello ✓")).unwrap();
    assert_eq!(echo.read().unwrap(), Message::text("hello ✓"));
    echo.send(Message::binary(vec![0u8, 159, 255])).unwrap();
    assert_eq!(echo.read().unwrap(), Message::binary(vec![0u8, 159, 255]));
    echo.send(Message::Ping(b"p".to_vec().into())).unwrap();
    assert_eq!(echo.read().unwrap(), Message::Pong(b"p".to_vec().into()));
    // A message past the frame limit (2 MiB) closes 1009, as on /v1/ws.
    echo.send(Message::binary(vec![7u8; 3 << 20])).unwrap();
    let close = match echo.read() {
        Ok(Message::Close(frame)) => frame.map(|frame| frame.code),
        other => panic!("{other:?}"),
    };
    assert_eq!(close, Some(CloseCode::Size));

    // It holds room under the connection caps like any other WebSocket,
    // and is no user's: nothing is registered.
    let _second = open(&server).unwrap();
    let scrape = crate::common::scrape(&server);
    assert_eq!(crate::common::sample_sum(&scrape, "chatgw_connections"), 0.0, "no echo is a user's connection");
}

#[test]
fn without_the_flag_there_is_no_echo() {
    let server = TestServer::start(1);
    assert_eq!(open(&server).err(), Some(404));
}
