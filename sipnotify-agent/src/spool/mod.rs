//! The durable spool between the pipeline and delivery (`--spool on`, the default where a
//! bridge is delivered to); `crate::stage` opens it and hands its acknowledgements back.
//!
//! ```text
//! pipeline ─▶ capture queue ─▶ spooler: append (write-through) ─▶ delivery queue ─▶ delivery
//!                                   │   └─ caught up and room: hand the batch over at once
//!                                   └─ backlog: read back from disk as the delivery queue drains
//! delivery ── settled (stage::Acker) ──▶ ack(id) ──▶ watermark, segment deletion
//! ```
//!
//! Write-through, because only that survives a SIGKILL during an outage: every notification
//! reaches the kernel in the batch it was taken in, before delivery can see it. When the
//! bridge keeps up, the batch just written is handed to delivery from memory (no read-back),
//! so the fast path costs one encode and one `write(2)` per batch. The in-memory delivery queue
//! is bounded; while the bridge is slow or down, the backlog stays on disk and is read back in
//! id (= capture) order as delivery takes from the queue. `fdatasync` runs every
//! `fsync_every` off the async threads, and only while something is unsynced, unsettled or
//! unreported: a settled spool runs no timer. When the spool cannot be written (a full disk), the
//! batch goes to delivery from memory, unspooled, and counted as such for the backlog.
//! Storage: `log.rs` (segments), `record.rs` (one record's framing), `acks.rs` (the
//! acknowledgement window), `codec.rs` (a notification's encoding), `settings.rs`.

mod acks;
mod codec;
mod log;
mod record;
mod settings;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use acks::Acks;
pub use log::{Spool, SyncJob};
pub use settings::{
    DEFAULT_FSYNC_EVERY, DEFAULT_MAX_BYTES, MIN_MAX_BYTES, Recovered, SpoolCounts, SpoolError,
    SpoolGauges, SpoolSettings,
};
use tokio::task::JoinHandle;

use crate::{
    event::Notification,
    loss::{Loss, Losses},
    queue::{NotificationQueue, Queue},
};

/// What to check when the spool cannot be written.
const WRITE_REMEDY: &str = "the spool could not be written: check free space under --spool-dir";

/// A notification the spooler hands to delivery, with its record id (`None` when the spool
/// could not be written and it goes from memory).
#[derive(Debug)]
pub struct Spooled {
    /// Its record id, acknowledged once it is settled.
    pub id: Option<u64>,
    /// The notification.
    pub notification: Notification,
}

/// The spooler's queues.
#[derive(Debug)]
pub struct Queues {
    /// The capture queue the pipeline pushes into.
    pub input: NotificationQueue,
    /// The delivery queue.
    pub output: Queue<Spooled>,
    /// Handed out without a record id and not yet settled (raised here, lowered by the
    /// stage's acknowledgements).
    pub unspooled: Arc<AtomicU64>,
}

/// The most notifications taken from the capture queue (and written) in one go.
const BATCH: usize = 256;

/// Publishes the spool's gauges.
fn publish(gauges: SpoolGauges) {
    metrics::gauge!("sipnotify_spool_bytes").set(gauges.bytes as f64);
    metrics::gauge!("sipnotify_spool_entries").set(gauges.entries as f64);
    metrics::gauge!("sipnotify_spool_oldest_age_seconds")
        .set(gauges.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
}

/// Moves notifications from `input` through `spool` into `output` until `input` is closed
/// and drained and everything on disk has been handed out, or `output` is closed (shutdown:
/// what is left stays on disk for the next start). Returns the spool for [`finish`].
///
/// Each turn stores one batch from `input` and hands one batch back from disk, so neither
/// waits on the other: `input` is a small memory queue that drops when full (capture must
/// never wait), and the backlog on disk must still reach delivery during a flood.
pub async fn run(mut spool: Spool, queues: Queues, losses: Arc<Losses>) -> Spool {
    let Queues {
        input,
        output,
        unspooled,
    } = queues;
    // The bound, so an alert can compare `sipnotify_spool_bytes` with it.
    metrics::gauge!("sipnotify_spool_max_bytes").set(spool.settings().max_bytes as f64);
    publish(spool.gauges());
    let mut batch = Vec::with_capacity(BATCH);
    let mut read = Vec::new();
    let mut tick = tokio::time::interval(spool.settings().fsync_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticking = true;
    let mut syncing: Option<JoinHandle<()>> = None;
    let mut seen = SpoolCounts::default();
    let mut seen_queue_drops = 0;
    let mut input_done = false;
    let mut write_errors = 0u64;
    loop {
        let stored = input.try_pop_batch(BATCH, &mut batch) > 0;
        if stored {
            store(
                &mut spool,
                &mut batch,
                &output,
                &unspooled,
                &mut write_errors,
            );
        }
        let refilled = refill(&mut spool, &mut read, &output).await;
        if stored || refilled {
            note_counts(&spool, &mut seen, &losses);
            // A flood must not starve the timer, the driver or the capture readers.
            tokio::task::yield_now().await;
            continue;
        }
        if input_done && (spool.caught_up() || output.is_closed()) {
            break;
        }
        // The timer runs only while there is something to sync, save or report; started
        // again, its first tick is a whole period after the write that woke the spooler.
        if spool.settled() && !losses.pending() {
            ticking = false;
        } else if !ticking {
            ticking = true;
            tick.reset();
        }
        tokio::select! {
            biased;
            taken = input.pop_batch(BATCH, &mut batch), if !input_done => {
                if taken == 0 {
                    input_done = true;
                    continue;
                }
                store(&mut spool, &mut batch, &output, &unspooled, &mut write_errors);
                note_counts(&spool, &mut seen, &losses);
            }
            () = output.wait_for_room(), if !spool.caught_up() && !output.is_closed() => {}
            _ = tick.tick(), if ticking => {
                if syncing.as_ref().is_none_or(JoinHandle::is_finished) {
                    syncing = start_sync(&mut spool);
                }
                publish(spool.gauges());
                let queue_drops = input.dropped() + output.dropped();
                losses.note(Loss::QueueFull, queue_drops - seen_queue_drops);
                seen_queue_drops = queue_drops;
                losses.tick();
            }
        }
    }
    // Everything read is handed out (or delivery is shutting down): delivery drains what
    // it has and ends.
    output.close();
    if let Some(syncing) = syncing {
        let _ = syncing.await;
    }
    spool
}

/// Appends `batch` to the spool (write-through) and, when nothing older waits on disk and the
/// delivery queue has room, hands it straight to delivery from memory.
fn store(
    spool: &mut Spool,
    batch: &mut Vec<Notification>,
    output: &Queue<Spooled>,
    unspooled: &AtomicU64,
    write_errors: &mut u64,
) {
    let caught_up = spool.caught_up();
    match spool.append(batch) {
        Ok(first) => {
            let fits = output.room() >= batch.len() && !output.is_closed();
            if caught_up && fits {
                spool.hand_out_appended(first, batch);
                for (id, notification) in (first..).zip(batch.drain(..)) {
                    output.push(Spooled {
                        id: Some(id),
                        notification,
                    });
                }
            }
            batch.clear();
        }
        Err(error) => {
            // Not durable, but not lost: deliver from memory.
            *write_errors += 1;
            if *write_errors == 1 || write_errors.is_power_of_two() {
                tracing::warn!(
                    %error,
                    failures = *write_errors,
                    remedy = WRITE_REMEDY,
                    "cannot write to the spool; delivering from memory only"
                );
            }
            // A notification the full output queue drops to make room is never settled; the
            // backlog may then overstate what waits in memory, never understate it.
            unspooled.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for notification in batch.drain(..) {
                output.push(Spooled {
                    id: None,
                    notification,
                });
            }
        }
    }
}

/// Hands one batch of the backlog on disk to delivery, oldest first, if it has room; true
/// when something was handed over.
async fn refill(
    spool: &mut Spool,
    read: &mut Vec<(u64, Notification)>,
    output: &Queue<Spooled>,
) -> bool {
    if spool.caught_up() || output.is_closed() || output.room() == 0 {
        return false;
    }
    read.clear();
    match spool.read_pending(output.room().min(BATCH), read) {
        Ok(0) => {
            // Nothing readable although records are pending: never spin the runtime.
            tracing::debug!(next = spool.next_id(), "spool read-back found nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
            false
        }
        Ok(_) => {
            for (id, notification) in read.drain(..) {
                output.push(Spooled {
                    id: Some(id),
                    notification,
                });
            }
            true
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the spool back; will retry");
            tokio::time::sleep(Duration::from_millis(100)).await;
            false
        }
    }
}

fn note_counts(spool: &Spool, seen: &mut SpoolCounts, losses: &Losses) {
    let now = spool.counts();
    losses.record(Loss::SpoolFull, now.dropped_full - seen.dropped_full);
    losses.record(Loss::SpoolCorrupt, now.corrupt - seen.corrupt);
    *seen = now;
}

/// Saves the watermark and starts an `fdatasync` on a blocking thread, if there is one to do.
fn start_sync(spool: &mut Spool) -> Option<JoinHandle<()>> {
    let job = match spool.sync_job() {
        Ok(job) if !job.is_empty() => job,
        Ok(_) => return None,
        Err(error) => {
            tracing::warn!(%error, "cannot save the spool's watermark; will retry");
            return None;
        }
    };
    Some(tokio::task::spawn_blocking(move || {
        if let Err(error) = job.run() {
            tracing::warn!(%error, "cannot sync the spool to disk; will retry");
        }
    }))
}

/// Saves the final state after delivery has ended; returns what is left for the next start.
pub fn finish(mut spool: Spool) -> SpoolGauges {
    if let Err(error) = spool.sync() {
        tracing::warn!(%error, "cannot save the spool's state at shutdown");
    }
    let gauges = spool.gauges();
    publish(gauges);
    gauges
}
