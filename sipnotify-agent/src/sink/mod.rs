//! Delivery of notifications to their destinations: the WebRTC bridge (HTTPS POST) and
//! stdout (JSON lines), each a [`Sink`].
//!
//! It takes [`SinkSettings`], which the command line validated (a bad value is a
//! configuration error, exit 2, before anything is captured). [`Delivery::run`] drains the
//! stage's queue into batches, hands each batch to every sink, and on shutdown reports what it
//! could not deliver.
//!
//! Layout, one file per job: `delivery` is the loop (batches, requests in flight, shutdown,
//! the report), `ledger` what became of each notification (counts, acknowledgements to the
//! stage), `batch` builds batches and their bodies; one file per sink: `bridge` (encode, POST,
//! retry, the bridge's state in the log) over `http` (the client and reply classification),
//! `retry` (the backoff), `tls` (the rustls set-up, certificate verification), `identity`
//! (the client certificate) and `sign` (request signatures), and `stdout`. `settings` holds what it
//! runs with. A new transport is one file implementing [`Sink`] and one line in
//! `Delivery::sinks`.

mod batch;
mod bridge;
mod delivery;
pub(crate) mod http;
pub(crate) mod identity;
mod ledger;
mod retry;
mod settings;
pub mod sign;
mod stdout;
pub(crate) mod tls;

use std::{future::Future, pin::Pin, sync::Arc};

use rustls::crypto::CryptoProvider;

pub use bridge::BridgeHealth;
pub use delivery::{Delivery, DeliveryReport};
pub use http::{BatchOutcome, BridgeCheck, BridgeConfigError, SendError};
pub use identity::ClientIdentity;
pub use settings::{
    BatchSettings, BearerToken, BodyMode, BridgeSettings, ClientError, Fingerprint, RetrySettings,
    SinkSettings, TlsSettings,
};
pub use sign::SigningKey;
pub use stdout::JsonLines;
pub use tls::{TrustedBy, Verdict};

use self::batch::Batch;

/// The crypto provider of every TLS connection here (ring: pure Rust plus a little assembly,
/// no cmake or Go toolchain needed).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Work a sink does on a batch after taking it: a request and its retries.
pub(crate) type Sending = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Writing out what a sink buffered.
pub(crate) type Flushing<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A destination for notifications, in the shape of Vector's sinks: batches in, every
/// notification settled (delivered, refused for good, expired) through its [`Batch`], which
/// reports to the stage. A sink knows nothing of the spool or the queue.
///
/// Every sink sees each batch in queue order; the last one listed settles it (the bridge when
/// there is one), the others get a copy (stdout beside the bridge).
pub(crate) trait Sink: Send {
    /// How batches for this sink are formed (array bodies or one object per request).
    fn mode(&self) -> BodyMode {
        BodyMode::Object
    }

    /// Whether a batch waits for one of `--max-in-flight` slots before it leaves the queue,
    /// so that while this sink is slow the backlog stays in the queue (and the stage).
    fn limits_in_flight(&self) -> bool {
        false
    }

    /// Takes the next batch, in queue order. Either settles it at once and returns `None`, or
    /// returns the work that settles it, which the delivery loop runs beside the other
    /// requests in flight. A batch dropped unsettled stays undelivered.
    fn take(&mut self, batch: Batch) -> Option<Sending>;

    /// Whether it buffers output, to be written out by [`Sink::flush`].
    fn buffers(&self) -> bool {
        false
    }

    /// Writes out what is buffered when due, or now if `idle` (the queue ran empty, or
    /// delivery ends). Called only for a sink that [`Sink::buffers`].
    fn flush(&mut self, idle: bool) -> Flushing<'_> {
        let _ = idle;
        Box::pin(std::future::ready(()))
    }

    /// Adds this sink's own figures (requests, retries) to the report.
    fn report(&self, report: &mut DeliveryReport) {
        let _ = report;
    }
}
