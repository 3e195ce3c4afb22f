//! Test support shared by the integration tests, `cargo xtask demo` and the benches
//! (feature `test-bridge`; never part of a production build).

pub mod bridge;
pub mod certs;
pub mod netns;

pub use bridge::{BridgeOptions, Received, Reply, RequestRecord, TestBridge, TestBridgeError};
