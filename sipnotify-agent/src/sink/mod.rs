//! Delivery of notifications to the WebRTC bridge (HTTPS POST) and to stdout (JSON lines).
//!
//! It takes [`SinkSettings`], which the command line validated (a bad value is a
//! configuration error, exit 2, before anything is captured). The driver (`deliver`,
//! `Delivery::run`) drains the queue with a bounded number of requests in flight, retries what
//! can succeed later, and on shutdown reports what it could not deliver.
//!
//! Layout: `settings` holds what it runs with, `batch` builds request bodies, `http` sends
//! them and classifies replies, `retry` holds the backoff, `tls` the rustls set-up, `stdout`
//! the JSON-lines writer, `driver` the loop.

mod batch;
mod driver;
pub(crate) mod http;
mod retry;
mod settings;
mod stdout;
pub(crate) mod tls;

pub use driver::{BridgeHealth, Delivery, DeliveryError, DeliveryFailed, DeliveryReport, deliver};
pub use http::{BatchOutcome, BridgeCheck, BridgeConfigError, SendError};
pub use settings::{
    BatchSettings, BearerToken, BodyMode, BridgeSettings, ClientError, Fingerprint, RetrySettings,
    SinkSettings, TlsSettings,
};
pub use stdout::JsonLines;
pub use tls::{TrustedBy, Verdict};
