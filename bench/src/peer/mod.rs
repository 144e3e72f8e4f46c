//! `chatgw-peer`: the comparison's mainstream server. The same protocol
//! subset as chatgw's contract needs for the benchmarks (signup and login,
//! `/v1/ws` with a bearer token, `hello`, `send` with its reply and its
//! `message` events, `channel.create`, `history`, `heartbeat`), written
//! straightforwardly on tokio (a work-stealing, epoll-based runtime),
//! hyper and tokio-tungstenite, with everything in memory.
//!
//! What it leaves out, so that every figure beside chatgw's says so: no
//! durability (history lives in memory for the process's life), no
//! presence, no sync, no push, no limits beyond a bounded queue per
//! connection. Tokens are HS256 JWTs naming the user, so accounts made
//! against one process stay usable against the next one started with the
//! same `--jwt-secret` (the benchmarks sign up once, then measure a fresh
//! process).

pub mod http;
pub mod session;
pub mod state;

/// The longest text accepted, in chars (chatgw's default).
pub const MAX_MESSAGE_CHARS: usize = 100_000;

/// The most members a channel may have.
pub const MAX_CHANNEL_MEMBERS: usize = 100_000;

/// Why a command or request failed, with the contract's error code.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// 400 `bad_request`.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`.
    #[error("bad or missing token or password")]
    Unauthorized,
    /// 403 `forbidden`.
    #[error("not a member of that channel")]
    Forbidden,
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(&'static str),
    /// 409 `username_taken`.
    #[error("that username is taken")]
    UsernameTaken,
    /// 413 `message_too_long`.
    #[error("a text is 1 to {MAX_MESSAGE_CHARS} chars")]
    MessageTooLong,
    /// 500 `internal`.
    #[error("{0}")]
    Internal(String),
}

impl PeerError {
    /// The contract's code.
    pub fn code(&self) -> &'static str {
        match self {
            PeerError::BadRequest(_) => "bad_request",
            PeerError::Unauthorized => "unauthorized",
            PeerError::Forbidden => "forbidden",
            PeerError::NotFound(_) => "not_found",
            PeerError::UsernameTaken => "username_taken",
            PeerError::MessageTooLong => "message_too_long",
            PeerError::Internal(_) => "internal",
        }
    }

    /// The HTTP status that goes with it.
    pub fn status(&self) -> u16 {
        match self {
            PeerError::BadRequest(_) => 400,
            PeerError::Unauthorized => 401,
            PeerError::Forbidden => 403,
            PeerError::NotFound(_) => 404,
            PeerError::UsernameTaken => 409,
            PeerError::MessageTooLong => 413,
            PeerError::Internal(_) => 500,
        }
    }

    /// The contract's error body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code(), "message": self.to_string() })
    }
}

/// The peer's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The token signing secret.
    pub jwt_secret: String,
    /// Announced in `hello`; a connection silent for twice this is closed.
    pub heartbeat_ms: u64,
    /// Frames queued per connection before it is closed as a slow reader.
    pub outbox_frames: usize,
    /// Each connection's read buffer (tungstenite's default without it).
    pub read_buffer_bytes: Option<usize>,
}
