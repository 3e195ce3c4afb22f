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
    oplog::{self, DropLog},
    pipeline::{Pipeline, Source},
    sink::{Delivery, DeliveryFailed, DeliveryReport},
    spool::{Leftover, SpoolError, SpoolSettings, Stage},
};

/// Opens the stage between the pipeline and `delivery` (the spool in `spool`, or a memory
/// queue of `capacity`) and connects delivery to its acknowledgements and drop log. Called
/// before anything attaches: a spool directory that cannot be used is a configuration error.
pub fn open_stage(
    spool: Option<SpoolSettings>,
    capacity: usize,
    delivery: Delivery,
) -> Result<(Stage, Delivery), SpoolError> {
    let drops = Arc::new(DropLog::default());
    let stage = Stage::open(spool, capacity, Arc::clone(&drops))?;
    let mut delivery = delivery.with_drop_log(drops);
    if let Some(acks) = stage.acks() {
        delivery = delivery.with_spool_acks(acks);
    }
    Ok((stage, delivery))
}

/// How a wired run ended.
#[derive(Debug)]
pub struct Finished<R> {
    /// The source's report, or why its task failed.
    pub source: Result<R, JoinError>,
    /// What delivery achieved, or why it stopped or its task failed.
    pub delivery: Result<Result<DeliveryReport, DeliveryFailed>, JoinError>,
    /// Whether a signal ended reading (or cut the final drain short).
    pub interrupted: bool,
    /// What the spool keeps for the next start.
    pub leftover: Leftover,
    /// Drops by reason, from the queue, the spool and delivery.
    pub drops: BTreeMap<&'static str, u64>,
    /// Whether notifications went through the spool.
    pub spooled: bool,
}

impl<R> Finished<R> {
    /// Logs the shutdown line counting every outcome; `capture_ring_full` is what the
    /// capture rings lost before any of this saw it (0 for a file).
    pub fn log_summary(&self, capture_ring_full: u64) {
        let report = match &self.delivery {
            Ok(Ok(report)) => *report,
            Ok(Err(failed)) => failed.report,
            Err(_) => DeliveryReport::default(),
        };
        let mut drops = self.drops.clone();
        if capture_ring_full > 0 {
            *drops.entry("capture_ring_full").or_default() += capture_ring_full;
        }
        oplog::summary(&report, &drops, self.leftover, self.spooled);
    }
}

/// Runs `source → pipeline → stage → delivery` (JSON lines, if enabled, go to `out`) until the
/// source runs out, a signal arrives or delivery fails, then shuts down as the module says. `pipeline` pushes into `stage.input()` and `delivery`
/// comes from [`open_stage`]. Fails only when the signal handlers cannot be installed, before
/// anything starts.
pub async fn wire<S, W>(
    source: S,
    pipeline: Pipeline,
    delivery: Delivery,
    stage: Stage,
    out: W,
) -> io::Result<Finished<S::Report>>
where
    S: Source,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let interrupt = CancellationToken::new();
    let signals = watch_signals(interrupt.clone())?;
    let queue = stage.output().clone();
    let stop_reading = CancellationToken::new();
    let stop_delivery = CancellationToken::new();
    let mut delivering =
        tokio::spawn(delivery.run_with_output(queue.clone(), stop_delivery.clone(), out));
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
    let drops = stage.drops();
    let leftover = stage.finish().await;
    Ok(Finished {
        source,
        delivery,
        interrupted: interrupt.is_cancelled(),
        leftover,
        drops: drops.totals(),
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
