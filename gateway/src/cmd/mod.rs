//! Client commands (WebSocket frames and HTTP `/v1/rpc`): the one dispatch
//! match, and one file per method group. A new method goes into the file
//! of its group, or a new file beside them.

pub mod budget;
pub mod channel;
pub mod dispatch;
pub mod history;
pub mod messages;
pub mod presence;
pub mod reads;
pub mod send;
pub mod typing;
