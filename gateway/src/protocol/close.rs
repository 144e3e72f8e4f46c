//! The WebSocket close codes chatgw sends, and what a client should do.
//!
//! | code | name | when | client should |
//! |---|---|---|---|
//! | 1000 | normal | the client closed, or its session ended cleanly | reconnect only if it wants to |
//! | 1001 | going away | the server is shutting down | reconnect (to another node) with backoff, then `sync` |
//! | 1002 | protocol error | a frame broke RFC 6455 (unmasked, bad opcode, ...) | fix the client |
//! | 1007 | invalid payload | a text frame that is not UTF-8 | fix the client |
//! | 1008 | policy | the client did not read fast enough (outbound queue full), or was kicked | reconnect, then `sync` |
//! | 1009 | too big | a frame or message above the size limit | fix the client; do not resend it |
//! | 1011 | internal | the server failed | reconnect with backoff, then `sync` |
//! | 4000 | heartbeat timeout | nothing received for 2 × `heartbeat_ms` | reconnect, then `sync` |

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000.
    Normal,
    /// 1001: the server shuts down.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a text frame was not UTF-8.
    InvalidPayload,
    /// 1008: the outbound queue overflowed (slow consumer).
    SlowConsumer,
    /// 1008: an operator kicked the user or device (or disabled the user).
    Kicked,
    /// 1009: a frame or message above the size limit.
    TooBig,
    /// 1011: the server failed.
    Internal,
    /// 4000: no frame for 2 × heartbeat.
    HeartbeatTimeout,
    /// 4001: the connection's token expired.
    TokenExpired,
    /// 4002: a newer connection of the same device replaced this one.
    Replaced,
}

impl CloseReason {
    /// The close code on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::SlowConsumer | CloseReason::Kicked => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Internal => 1011,
            CloseReason::HeartbeatTimeout => 4000,
            CloseReason::TokenExpired => 4001,
            CloseReason::Replaced => 4002,
        }
    }

    /// A short reason text, sent in the close frame and used as a metric label.
    pub const fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::GoingAway => "going_away",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Kicked => "kicked",
            CloseReason::TooBig => "too_big",
            CloseReason::Internal => "internal",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Replaced => "replaced",
        }
    }
}
