//! The gateway: filled in by the gateway core issue.
