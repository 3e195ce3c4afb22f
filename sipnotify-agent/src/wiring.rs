//! One wiring for `run` and `replay`: a capture source feeds the pipeline, the pipeline the
//! stage (the durable spool, or with `--spool off` one in-memory queue), delivery drains the
//! stage to the sinks, one shutdown sequence ends them, and [`Finished::log_summary`] writes
//! the one line that counts every outcome.
//!
//! Shutdown, whatever starts it:
//! - the source runs out (the end of a capture file): the queue is closed and delivery drains
//!   it completely; a signal during the drain leaves `--shutdown-timeout` to finish;
//! - SIGINT or SIGTERM: the source stops (a live source detaches first, then drains its rings
//!   once more), the queue is closed, and delivery has `--shutdown-timeout` for what is left;
//! - delivery ends early on a fatal error (an untrusted bridge certificate): the source stops.
//!
//! With the spool, what delivery has not settled when it ends stays on disk for the next start.
//!
//! Signals are watched until delivery ends: once tokio handles SIGINT, its default action
//! (exit) is gone for good, so an unwatched Ctrl-C during the final drain would be lost.

use std::{collections::BTreeMap, io, sync::Arc};

use tokio::{io::AsyncWrite, signal::unix::SignalKind, task::JoinError};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    loss::{self, Loss, Losses},
    pipeline::{Pipeline, Source},
    sink::{Delivery, DeliveryReport},
    spool::{SpoolError, SpoolSettings},
    stage::{Leftover, Output, Stage},
};

/// Opens the stage between the pipeline and `delivery` (the spool in `spool`, or a memory
/// queue of `capacity`) and connects delivery to its acknowledgements and loss log. Called
/// before anything attaches: a spool directory that cannot be used is a configuration error.
pub fn open_stage<W>(
    spool: Option<SpoolSettings>,
    capacity: usize,
    delivery: Delivery<W>,
) -> Result<(Stage, Delivery<W>), SpoolError> {
    let losses = Arc::new(Losses::default());
    let stage = Stage::open(spool, capacity, Arc::clone(&losses))?;
    let delivery = delivery.with_stage(stage.acker(), losses);
    Ok((stage, delivery))
}

/// How a wired run ended.
#[derive(Debug)]
pub struct Finished<R> {
    /// The source's report, or why its task failed.
    pub source: Result<R, JoinError>,
    /// What delivery achieved, or why its task failed.
    pub delivery: Result<DeliveryReport, JoinError>,
    /// Whether a signal ended reading (or cut the final drain short).
    pub interrupted: bool,
    /// What the spool keeps for the next start.
    pub leftover: Leftover,
    /// Losses by reason, from the queues, the spool and delivery.
    pub losses: BTreeMap<Loss, u64>,
    /// Whether notifications went through the spool.
    pub spooled: bool,
}

impl<R> Finished<R> {
    /// Logs the shutdown line counting every outcome; `capture_ring_full` is what the
    /// capture rings lost before any of this saw it (0 for a file).
    pub fn log_summary(&self, capture_ring_full: u64) {
        let report = self.delivery.as_ref().copied().unwrap_or_default();
        let mut losses = self.losses.clone();
        if capture_ring_full > 0 {
            *losses.entry(Loss::CaptureRingFull).or_default() += capture_ring_full;
        }
        let dropped: u64 = losses.values().sum();
        info!(
            delivered = report.delivered,
            rejected = report.rejected,
            expired = report.expired,
            dropped,
            dropped_by_reason = %loss::by_label(&losses),
            left_in_spool = self.leftover.in_spool,
            spool_bytes = self.leftover.spool_bytes,
            spool = if self.spooled { "on" } else { "off" },
            "delivery finished"
        );
    }
}

/// Runs `source → pipeline → stage → delivery` until the source runs out, a signal arrives or
/// delivery ends, then shuts down as the module says. `pipeline` pushes into `stage.input()`
/// and `delivery` comes from [`open_stage`]. Fails only when the signal handlers cannot be installed, before
/// anything starts.
pub async fn wire<S, W>(
    source: S,
    pipeline: Pipeline,
    delivery: Delivery<W>,
    stage: Stage,
) -> io::Result<Finished<S::Report>>
where
    S: Source,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let interrupt = CancellationToken::new();
    let signals = watch_signals(interrupt.clone())?;
    let stop_reading = CancellationToken::new();
    let stop_delivery = CancellationToken::new();
    let mut delivering = match stage.output() {
        Output::Memory(queue) => tokio::spawn(delivery.run(queue, stop_delivery.clone())),
        Output::Spooled(queue) => tokio::spawn(delivery.run(queue, stop_delivery.clone())),
    };
    // The reassembly stage's clock, whatever the source.
    let ticking = tokio::spawn(pipeline.clone().tick(stop_reading.clone()));
    let mut reading = tokio::spawn(source.feed(pipeline, stop_reading.clone()));

    // Reading, until the source runs out, a signal, or the end of delivery.
    let mut source_report = None;
    let mut delivery_result = None;
    tokio::select! {
        report = &mut reading => source_report = Some(report),
        () = interrupt.cancelled() => info!("shutting down: stopping capture"),
        result = &mut delivering => delivery_result = Some(result),
    }
    stop_reading.cancel();
    let source = match source_report {
        Some(report) => report,
        None => reading.await,
    };
    ticking.abort();
    stage.input().close();

    // Draining: everything queued is delivered, unless a signal sets the shutdown deadline.
    let delivery = match delivery_result {
        Some(result) => result,
        None => tokio::select! {
            result = &mut delivering => result,
            () = interrupt.cancelled() => {
                info!("delivering what is queued within the shutdown timeout");
                stop_delivery.cancel();
                delivering.await
            }
        },
    };
    signals.abort();
    let spooled = stage.spooled();
    let losses = stage.losses();
    let leftover = stage.finish().await;
    Ok(Finished {
        source,
        delivery,
        interrupted: interrupt.is_cancelled(),
        leftover,
        losses: losses.totals(),
        spooled,
    })
}

/// Cancels `interrupt` on SIGINT or SIGTERM.
fn watch_signals(interrupt: CancellationToken) -> io::Result<tokio::task::JoinHandle<()>> {
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        interrupt.cancel();
    }))
}
