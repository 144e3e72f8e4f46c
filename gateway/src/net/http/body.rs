//! What the HTTP routes share: JSON answers and error answers, bounded
//! request bodies, and the user a bearer token names (the head itself is
//! read by `protocol::upgrade`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::auth::AuthedUser;
use crate::error::{ApiError, ErrorCode};
use crate::limits;
use crate::protocol::upgrade::bearer;
use crate::shard::state::Shard;

/// The body of every answer.
pub type Body = Full<Bytes>;

/// A JSON answer.
pub fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"))));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json_response(error.code.http_status(), &json!({ "error": error.to_json() }));
    if error.code == ErrorCode::Unauthorized {
        response
            .headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    }
    if let Some(retry_after_ms) = error.retry_after_ms {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, retry_after_ms.div_ceil(1000).into());
    }
    response
}

/// A request with its body read whole: at most `HTTP_BODY_BYTES_MAX`
/// bytes, within `--http-body-timeout-ms`. Every request is read this way
/// before it is routed, so an answer given without looking at the body (a
/// 401 for a revoked token, say) never leaves it unread: a connection
/// closed with bytes unread is reset, and the reset can destroy the answer
/// before the client reads it.
pub async fn read_whole(shard: &Shard, request: Request<Incoming>) -> Result<Request<Bytes>, ApiError> {
    let (parts, body) = request.into_parts();
    let timeout_ms = shard.config.http_body_timeout_ms;
    let collect = async {
        Limited::new(body, limits::HTTP_BODY_BYTES_MAX).collect().await.map_err(|_| {
            ApiError::new(ErrorCode::MessageTooLong, format!("body above {} bytes", limits::HTTP_BODY_BYTES_MAX))
        })
    };
    let deadline = async {
        glommio::timer::sleep(Duration::from_millis(timeout_ms)).await;
        Err(ApiError::bad_request(format!("the request body did not arrive within {timeout_ms} ms")))
    };
    let body = futures_lite::future::or(collect, deadline).await?.to_bytes();
    Ok(Request::from_parts(parts, body))
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("body is not JSON: {error}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    Ok(value)
}

/// A request body that must be a JSON object.
pub fn read_json(request: &Request<Bytes>) -> Result<Value, ApiError> {
    parse_object(request.body())
}

/// A request body that must be a JSON object, or empty (read as `{}`).
pub fn read_json_or_empty(request: &Request<Bytes>) -> Result<Value, ApiError> {
    let body = request.body();
    if body.iter().all(u8::is_ascii_whitespace) { Ok(json!({})) } else { parse_object(body) }
}

/// The user a token names: valid signature, not expired, and an account
/// that exists and is not disabled.
pub fn user_of_token(shard: &Shard, token: Option<&str>) -> Result<AuthedUser, ApiError> {
    let unauthorized = || ApiError::new(ErrorCode::Unauthorized, "a valid token is required");
    let user = token.and_then(|token| shard.tokens.verify(token)).ok_or_else(unauthorized)?;
    if shard.may_connect(&user)? { Ok(user) } else { Err(unauthorized()) }
}

/// The user a request's bearer token names (see `user_of_token`).
pub fn authenticate<B>(shard: &Shard, request: &Request<B>) -> Result<AuthedUser, ApiError> {
    user_of_token(shard, bearer(request))
}
