//! The HTTP head and upgrade path, on arbitrary bytes cut into arbitrary
//! chunks: hyper's HTTP/1 server (the one chatgw runs, with its buffer
//! limit) reads requests from them, and each request goes through what the
//! routes read from a head (`protocol::upgrade`): the token, the device and
//! the WebSocket upgrade. Nothing panics or hangs; an upgrade's answer is a
//! 101 with an accept key, and a device handed over is a valid one.
#![no_main]

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chatgw_gateway::protocol::upgrade::{upgrade_response, websocket_device, websocket_token};
use chatgw_gateway::protocol::validate::valid_device;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use libfuzzer_sys::fuzz_target;

/// A connection whose bytes are the fuzzer's, read in chunks; what the
/// server writes is dropped.
struct Wire {
    bytes: Vec<u8>,
    at: usize,
    pattern: usize,
    reads: usize,
}

impl hyper::rt::Read for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.reads += 1;
        let size = (1 + (this.pattern * (this.reads + 3)) % 211).min(this.bytes.len() - this.at).min(buf.remaining());
        buf.put_slice(&this.bytes[this.at..this.at + size]);
        this.at += size;
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Wire {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn serve(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let token = websocket_token(&request);
    let device = websocket_device(&request);
    if let Ok(Some(device)) = &device {
        assert!(valid_device(device), "{device:?}");
    }
    let response = match upgrade_response(&request) {
        Ok(response) => {
            assert_eq!(response.status(), 101);
            let accept = response.headers().get("Sec-WebSocket-Accept").expect("an accept key");
            assert_eq!(accept.len(), 28);
            response
        }
        Err(error) => {
            assert!(error.message.starts_with("not a WebSocket upgrade"), "{error:?}");
            Response::new(Full::new(Bytes::from(format!("{token:?} {:?}", device.is_ok()))))
        }
    };
    // The body, bounded as the routes bound theirs.
    let _ = Limited::new(request.into_body(), 64 << 10).collect().await;
    Ok(response)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pattern, stream)) = data.split_first() else { return };
    let wire = Wire { bytes: stream.to_vec(), at: 0, pattern: usize::from(pattern), reads: 0 };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 << 10)
        .serve_connection(wire, hyper::service::service_fn(serve));
    // Every read is ready, so the connection ends at the bytes' end: a
    // pending poll here would be a hang, which libFuzzer's timeout reports.
    let _ = futures_lite::future::block_on(connection.without_shutdown());
});
