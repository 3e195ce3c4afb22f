//! sipnotify-agent: captures Genesys SIP NOTIFYs with an XDP program and delivers their
//! `X-Genesys-CallUUID` to the WebRTC bridge.
//!
//! A NOTIFY's way: `capture` (a source yields `record::Record`s) → `pipeline` (`reassembly`
//! of IP packets → `sip` parse → `dedup`) → `stage` (the `spool` on disk, or the memory `queue`)
//! → `sink` (delivery to the bridge, stdout), wired by `wiring`; see `docs/ARCHITECTURE.md`.
//! The binary (`src/main.rs`) is a thin shell over this library so every stage can be tested
//! without root.

pub mod bpf;
pub mod caps;
pub mod capture;
pub mod cli;
pub mod dedup;
pub mod doctor;
pub mod error;
pub mod event;
pub mod hep;
pub mod logging;
pub mod loss;
pub mod pipeline;
pub mod queue;
pub mod reassembly;
pub mod record;
pub mod replay;
pub mod run;
pub mod sink;
pub mod sip;
pub mod source_filter;
pub mod spool;
pub mod stage;
pub mod telemetry;
pub mod tls_alarm;
pub mod wiring;
