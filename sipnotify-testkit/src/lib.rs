//! Test support for sipnotify, kept out of the product crate: the local HTTPS bridge
//! stand-in and the certificates it serves, private network namespaces, the agent binary as
//! a child process, Genesys-like NOTIFYs, IP fragments and TCP segments, readers for `/proc`
//! accounting and the agent's Prometheus text, and what the live benches share (`bench`).
//! Used by the agent's tests, its benches and `cargo xtask demo` (`examples/demo.rs`).

pub mod agent;
pub mod bench;
pub mod bridge;
pub mod certs;
pub mod frames;
pub mod kamailio;
pub mod netns;
pub mod proc;
pub mod prometheus;
pub mod sip;

pub use agent::Agent;
pub use bridge::{BridgeOptions, Received, Reply, RequestRecord, TestBridge, TestBridgeError};
pub use kamailio::{AnsweringUa, Kamailio, KamailioOptions};
pub use netns::{NamespacedBridge, NetNs, VethPair, ip};
pub use prometheus::metric;
pub use sip::{call_id, call_uuid, genesys_notify};
