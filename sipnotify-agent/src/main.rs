//! The `sipnotify-agent` binary.
fn main() {}
