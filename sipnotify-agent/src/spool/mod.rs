//! The durable spool between the pipeline and the sinks (`--spool on`, the default).
//!
//! ```text
//! pipeline ─▶ capture queue ─▶ spooler: append (write-through) ─▶ delivery queue ─▶ driver
//!                                   │   └─ caught up and room: hand the batch over at once
//!                                   └─ backlog: read back from disk as the delivery queue drains
//! driver ── ack(id) when delivered, refused for good, or expired ──▶ watermark, segment deletion
//! ```
//!
//! Write-through, because only that survives a SIGKILL during an outage: every notification
//! reaches the kernel in the batch it was taken in, before the driver can see it. When the
//! bridge keeps up, the batch just written is handed to the driver from memory (no read-back),
//! so the fast path costs one encode and one `write(2)` per batch. The in-memory delivery queue
//! is bounded; while the bridge is slow or down, the backlog stays on disk and is read back in
//! id (= capture) order as the driver takes from the queue. `fdatasync` runs every
//! `fsync_every` off the async threads. Storage details: `log.rs`; encoding: `codec.rs`.

mod codec;
mod log;

use std::{sync::Arc, time::Duration};

pub use log::{
    Acks, DEFAULT_FSYNC_EVERY, DEFAULT_MAX_BYTES, MIN_MAX_BYTES, Recovered, Spool, SpoolCounts,
    SpoolError, SpoolGauges, SpoolSettings, SyncJob,
};
use tokio::task::JoinHandle;

use crate::{event::Notification, oplog::DropLog, queue::NotificationQueue};

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
pub async fn run(
    mut spool: Spool,
    input: NotificationQueue,
    output: NotificationQueue,
    drops: Arc<DropLog>,
) -> Spool {
    // The bound, so an alert can compare `sipnotify_spool_bytes` with it.
    metrics::gauge!("sipnotify_spool_max_bytes").set(spool.settings().max_bytes as f64);
    publish(spool.gauges());
    let mut batch = Vec::with_capacity(BATCH);
    let mut read = Vec::new();
    let mut tick = tokio::time::interval(spool.settings().fsync_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut syncing: Option<JoinHandle<()>> = None;
    let mut seen = SpoolCounts::default();
    let mut seen_queue_drops = 0;
    let mut input_done = false;
    let mut write_errors = 0u64;
    loop {
        let stored = input.try_pop_batch(BATCH, &mut batch) > 0;
        if stored {
            store(&mut spool, &mut batch, &output, &mut write_errors);
        }
        let refilled = refill(&mut spool, &mut read, &output).await;
        if stored || refilled {
            note_counts(&spool, &mut seen, &drops);
            // A flood must not starve the timer, the driver or the capture readers.
            tokio::task::yield_now().await;
            continue;
        }
        if input_done && (spool.caught_up() || output.is_closed()) {
            break;
        }
        tokio::select! {
            biased;
            taken = input.pop_batch(BATCH, &mut batch), if !input_done => {
                if taken == 0 {
                    input_done = true;
                    continue;
                }
                store(&mut spool, &mut batch, &output, &mut write_errors);
                note_counts(&spool, &mut seen, &drops);
            }
            () = output.wait_for_room(), if !spool.caught_up() && !output.is_closed() => {}
            _ = tick.tick() => {
                if syncing.as_ref().is_none_or(JoinHandle::is_finished) {
                    syncing = start_sync(&mut spool);
                }
                publish(spool.gauges());
                let queue_drops = input.dropped() + output.dropped();
                drops.note("queue_full", queue_drops - seen_queue_drops);
                seen_queue_drops = queue_drops;
                drops.tick();
            }
        }
    }
    // Everything read is handed out (or delivery is shutting down): the driver drains what
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
    output: &NotificationQueue,
    write_errors: &mut u64,
) {
    let caught_up = spool.caught_up();
    match spool.append(batch) {
        Ok(first) => {
            let fits = output.room() >= batch.len() && !output.is_closed();
            if caught_up && fits {
                spool.hand_out_appended(first, batch);
                for (i, mut n) in batch.drain(..).enumerate() {
                    n.spool_id = Some(first + i as u64);
                    output.push(n);
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
                    remedy = log_remedy("spool_write"),
                    "cannot write to the spool; delivering from memory only"
                );
            }
            for n in batch.drain(..) {
                output.push(n);
            }
        }
    }
}

/// Hands one batch of the backlog on disk to delivery, oldest first, if it has room; true
/// when something was handed over.
async fn refill(
    spool: &mut Spool,
    read: &mut Vec<(u64, Notification)>,
    output: &NotificationQueue,
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
            for (id, mut n) in read.drain(..) {
                n.spool_id = Some(id);
                output.push(n);
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

fn log_remedy(reason: &str) -> &'static str {
    crate::oplog::remedy(reason)
}

fn note_counts(spool: &Spool, seen: &mut SpoolCounts, drops: &DropLog) {
    let now = spool.counts();
    drops.record("spool_full", now.dropped_full - seen.dropped_full);
    drops.record("spool_corrupt", now.corrupt - seen.corrupt);
    *seen = now;
}

/// Starts an `fdatasync` + watermark save on a blocking thread, if there is anything to do.
fn start_sync(spool: &mut Spool) -> Option<JoinHandle<()>> {
    let job = spool.sync_job();
    if job.is_empty() {
        return None;
    }
    Some(tokio::task::spawn_blocking(move || {
        if let Err(error) = job.run() {
            tracing::warn!(%error, "cannot sync the spool to disk; will retry");
        }
    }))
}

/// Saves the final state after delivery has ended; returns what is left for the next start.
pub fn finish(mut spool: Spool) -> (SpoolGauges, SpoolCounts) {
    if let Err(error) = spool.sync() {
        tracing::warn!(%error, "cannot save the spool's state at shutdown");
    }
    let gauges = spool.gauges();
    publish(gauges);
    (gauges, spool.counts())
}

/// Hands `n`'s spool id to `acks` (no-op for notifications that did not come from a spool).
pub fn ack(acks: Option<&Acks>, n: &Notification) {
    if let (Some(acks), Some(id)) = (acks, n.spool_id) {
        acks.ack(id);
    }
}

/// What is left when delivery has ended.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Leftover {
    /// Notifications kept in the spool for the next start (0 without a spool).
    pub in_spool: u64,
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
}

/// The hop between the pipeline and the driver: a spool (write-through, on disk) or, with
/// `--spool off`, one in-memory queue. Either way it counts and logs the queue's drops.
#[derive(Debug)]
pub struct Stage {
    input: NotificationQueue,
    output: NotificationQueue,
    acks: Option<Acks>,
    task: Option<JoinHandle<Spool>>,
    watcher: Option<JoinHandle<()>>,
    stop_watcher: tokio_util::sync::CancellationToken,
    drops: Arc<DropLog>,
}

impl Stage {
    /// Opens the spool in `settings` (or none), with in-memory queues of `capacity`. Must be
    /// called inside the runtime. The error is a configuration error (exit 2) except for I/O
    /// while reading an existing spool.
    pub fn open(
        settings: Option<SpoolSettings>,
        capacity: usize,
        drops: Arc<DropLog>,
    ) -> Result<Self, SpoolError> {
        let input = NotificationQueue::new(capacity);
        let stop_watcher = tokio_util::sync::CancellationToken::new();
        let Some(settings) = settings else {
            let watcher = tokio::spawn(watch_queue(
                input.clone(),
                Arc::clone(&drops),
                stop_watcher.clone(),
            ));
            return Ok(Self {
                output: input.clone(),
                input,
                acks: None,
                task: None,
                watcher: Some(watcher),
                stop_watcher,
                drops,
            });
        };
        let dir = settings.dir.clone();
        let (spool, recovered) = Spool::open(settings)?;
        if recovered.pending > 0 || recovered.corrupt > 0 {
            tracing::info!(
                dir = %dir.display(),
                pending = recovered.pending,
                bytes = recovered.bytes,
                corrupt = recovered.corrupt,
                "spool: delivering what the previous run left, before anything new"
            );
        }
        drops.record("spool_corrupt", recovered.corrupt);
        let output = NotificationQueue::new(capacity);
        let acks = spool.acks();
        let task = tokio::spawn(run(
            spool,
            input.clone(),
            output.clone(),
            Arc::clone(&drops),
        ));
        Ok(Self {
            input,
            output,
            acks: Some(acks),
            task: Some(task),
            watcher: None,
            stop_watcher,
            drops,
        })
    }

    /// Where the pipeline pushes.
    pub fn input(&self) -> &NotificationQueue {
        &self.input
    }

    /// Where the driver takes from.
    pub fn output(&self) -> &NotificationQueue {
        &self.output
    }

    /// The spool's acknowledgements, for the driver (`None` without a spool).
    pub fn acks(&self) -> Option<Acks> {
        self.acks.clone()
    }

    /// Where drops are counted and logged.
    pub fn drops(&self) -> Arc<DropLog> {
        Arc::clone(&self.drops)
    }

    /// Whether notifications go through a spool.
    pub fn spooled(&self) -> bool {
        self.acks.is_some()
    }

    /// After delivery has ended: saves the spool's state, logs the drops still pending, and
    /// says what is left for the next start.
    pub async fn finish(self) -> Leftover {
        self.input.close();
        self.output.close();
        self.stop_watcher.cancel();
        if let Some(watcher) = self.watcher {
            let _ = watcher.await;
        }
        let mut leftover = Leftover::default();
        if let Some(task) = self.task {
            match task.await {
                Ok(spool) => {
                    let (gauges, _) = tokio::task::spawn_blocking(move || finish(spool))
                        .await
                        .unwrap_or_default();
                    leftover = Leftover {
                        in_spool: gauges.entries,
                        spool_bytes: gauges.bytes,
                    };
                }
                Err(error) => tracing::warn!(%error, "the spool task failed"),
            }
        }
        self.drops.flush();
        leftover
    }
}

/// Without a spool: count and log the queue's drops.
async fn watch_queue(
    queue: NotificationQueue,
    drops: Arc<DropLog>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = queue.dropped();
        drops.note("queue_full", now - seen);
        seen = now;
        drops.tick();
        if stopping {
            return;
        }
    }
}
