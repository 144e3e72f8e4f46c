//! The JSON command parser, on arbitrary text: an envelope always comes
//! back (a command or the error to answer), never a panic.
#![no_main]

use chatgw_gateway::protocol::command::parse_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let envelope = parse_frame(text);
        let _ = format!("{:?}", envelope.command.as_ref().map(|command| command.is_read()));
    }
});
