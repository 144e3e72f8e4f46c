//! The errors clients see (protocol §1), and the gateway's own failures.

use std::fmt;

/// An error code of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 409.
    UsernameTaken,
    /// 413.
    MessageTooLong,
    /// 429.
    RateLimited,
    /// 409: a channel at `max_channel_members`.
    ChannelFull,
    /// 403: a message with a banned word.
    ForbiddenContent,
    /// 503.
    Overloaded,
    /// 500.
    Internal,
}

impl ErrorCode {
    /// The snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ChannelFull => "channel_full",
            ErrorCode::ForbiddenContent => "forbidden_content",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with it.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::ForbiddenContent => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::UsernameTaken | ErrorCode::ChannelFull => 409,
            ErrorCode::MessageTooLong => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// An error answered to a client: a code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// For `rate_limited`: when to try again, ms from now.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after_ms: None }
    }

    /// 429 with when to try again.
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: u64) -> Self {
        ApiError { retry_after_ms: Some(retry_after_ms.max(1)), ..Self::new(ErrorCode::RateLimited, message) }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 500, logging the cause (never shown to the client).
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// The `{"code","message"}` object.
    pub fn to_json(&self) -> serde_json::Value {
        match self.retry_after_ms {
            Some(retry_after_ms) => serde_json::json!({
                "code": self.code.as_str(),
                "message": self.message,
                "retry_after_ms": retry_after_ms,
            }),
            None => serde_json::json!({ "code": self.code.as_str(), "message": self.message }),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<chatgw_storage::StorageError> for ApiError {
    fn from(error: chatgw_storage::StorageError) -> Self {
        ApiError::internal(error)
    }
}

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage would not open.
    #[error("storage: {0}")]
    Storage(#[from] chatgw_storage::StorageError),
    /// The configuration makes no sense.
    #[error("configuration: {0}")]
    Config(String),
    /// An executor could not start or failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// I/O (binding the listener, the data directory).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
