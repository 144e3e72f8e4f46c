//! The `chatgw` binary: filled in by the gateway core issue.
fn main() {}
