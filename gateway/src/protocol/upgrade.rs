//! What an HTTP request head says, read from the head alone: query
//! parameters, the bearer token, and the WebSocket upgrade (RFC 6455 §4.2:
//! the 101 answer, or why the request is not an upgrade). The routes check
//! the token's user and take room under the caps; everything they read
//! from the head comes through here, so it can be fuzzed without a server.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

use crate::error::ApiError;
use crate::protocol::validate::valid_device;

/// A query parameter, percent-decoded (the first one of that name).
pub fn query_param<B>(request: &Request<B>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The token of a WebSocket upgrade: the bearer header, or `?token=`
/// (browsers cannot set headers on a WebSocket).
pub fn websocket_token<B>(request: &Request<B>) -> Option<String> {
    bearer(request).map(str::to_string).or_else(|| query_param(request, "token"))
}

/// The `?device=` of a WebSocket upgrade, checked (`valid_device`); `None`
/// when the request names none.
pub fn websocket_device<B>(request: &Request<B>) -> Result<Option<String>, ApiError> {
    match query_param(request, "device") {
        Some(device) if valid_device(&device) => Ok(Some(device)),
        Some(_) => Err(ApiError::bad_request("device must be 1 to 64 of A-Z a-z 0-9 _ -")),
        None => Ok(None),
    }
}

/// The 101 answer to a WebSocket upgrade request, or why it is not one.
pub fn upgrade_response<B>(request: &Request<B>) -> Result<Response<Full<Bytes>>, ApiError> {
    tungstenite::handshake::server::create_response_with_body(request, || Full::new(Bytes::new()))
        .map_err(|error| ApiError::bad_request(format!("not a WebSocket upgrade: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("a valid request")
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_token_comes_from_the_header_first_then_the_query() {
        let both = request("/v1/ws?token=q%2Bq", &[("Authorization", "Bearer  h.h ")]);
        assert_eq!(websocket_token(&both).as_deref(), Some("h.h"));
        let query = request("/v1/ws?a=1&token=q%2Bq", &[("Authorization", "Basic x")]);
        assert_eq!(websocket_token(&query).as_deref(), Some("q+q"));
        assert_eq!(websocket_token(&request("/v1/ws", &[])), None);
    }

    #[test]
    fn a_device_is_checked_and_may_be_absent() {
        assert_eq!(websocket_device(&request("/v1/ws?device=phone-1", &[])).unwrap().as_deref(), Some("phone-1"));
        assert_eq!(websocket_device(&request("/v1/ws", &[])).unwrap(), None);
        let bad = websocket_device(&request("/v1/ws?device=a%2Fb", &[])).unwrap_err();
        assert!(bad.message.contains("device must be"), "{bad:?}");
    }

    #[test]
    fn an_upgrade_gets_its_accept_key_and_anything_else_a_reason() {
        let response = upgrade_response(&request("/v1/ws", &UPGRADE)).unwrap();
        assert_eq!(response.status(), 101);
        // RFC 6455 §1.3's worked example.
        assert_eq!(response.headers()["Sec-WebSocket-Accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let missing = upgrade_response(&request("/v1/ws", &UPGRADE[..3])).unwrap_err();
        assert!(missing.message.starts_with("not a WebSocket upgrade"), "{missing:?}");
    }
}
