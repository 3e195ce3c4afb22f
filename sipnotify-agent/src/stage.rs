//! The stage between the pipeline and delivery: the durable spool, or one in-memory queue.
//!
//! ```text
//! pipeline ─▶ input ─┬─ Memory:  the same queue ───────────────────────────────▶ delivery
//!                    └─ Spooled: spooler (spool/) ─▶ output (id, notification) ─▶ delivery
//! delivery ── Acker::settle(ticket) when delivered, refused for good or expired ─▶ the stage
//! ```
//!
//! The stage owns acknowledgement: each notification reaches delivery as a [`Staged`] with an
//! opaque [`Ticket`], and delivery hands the ticket back to the [`Acker`] once the notification
//! is settled. Sinks see notifications only; what a ticket means (a spool record id, or
//! nothing in memory) is this module's business. Vector's buffers are the model: the buffer
//! knows acknowledgements, sinks do not.
//!
//! Either way the stage counts the queues' drops and logs them ([`Losses`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    event::Notification,
    loss::{Loss, Losses},
    queue::{NotificationQueue, Queue},
    spool::{self, Acks, Spool, SpoolError, SpoolSettings, Spooled},
};

/// What the stage needs back to acknowledge one notification; opaque to delivery and sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(Option<u64>);

/// A notification on its way to delivery, with the ticket that settles it.
#[derive(Debug)]
pub struct Staged {
    /// The notification.
    pub notification: Notification,
    /// Handed back to [`Acker::settle`] once the notification is settled.
    pub ticket: Ticket,
}

impl From<Notification> for Staged {
    /// From the memory stage (or a test's queue): nothing to acknowledge.
    fn from(notification: Notification) -> Self {
        Self {
            notification,
            ticket: Ticket(None),
        }
    }
}

impl From<Spooled> for Staged {
    fn from(spooled: Spooled) -> Self {
        Self {
            notification: spooled.notification,
            ticket: Ticket(spooled.id),
        }
    }
}

/// Acknowledges settled notifications to the stage they came from. Cheap to clone, shared
/// with the request tasks; the default acknowledges nothing (the memory stage).
#[derive(Clone, Debug, Default)]
pub struct Acker {
    spool: Option<SpoolAcker>,
}

#[derive(Clone, Debug)]
struct SpoolAcker {
    acks: Acks,
    /// The capture queue in front of the spool.
    input: NotificationQueue,
    /// Handed to delivery without a spool record (the spool could not be written) and not
    /// yet settled.
    unspooled: Arc<AtomicU64>,
}

impl Acker {
    /// `ticket`'s notification is settled: delivered, refused for good, or expired.
    pub fn settle(&self, ticket: Ticket) {
        let Some(spool) = &self.spool else {
            return;
        };
        match ticket.0 {
            Some(id) => spool.acks.ack(id),
            None => {
                let _ = spool
                    .unspooled
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
            }
        }
    }

    /// Notifications waiting for a sink: `queued` in delivery's queue and `outstanding` taken
    /// by delivery and not yet settled, as the stage counts them. With the spool: what it
    /// holds unsettled, plus what waits in memory because the spool could not take it.
    pub fn backlog(&self, queued: u64, outstanding: u64) -> u64 {
        match &self.spool {
            None => queued + outstanding,
            Some(spool) => {
                spool.acks.backlog()
                    + spool.input.len() as u64
                    + spool.unspooled.load(Ordering::Relaxed)
            }
        }
    }

    /// Where the backlog is kept, for the log.
    pub fn keeping(&self) -> &'static str {
        if self.spool.is_some() {
            "in the spool"
        } else {
            "in memory"
        }
    }

    /// Whether what is not settled at the end is kept for the next start.
    pub fn keeps_leftovers(&self) -> bool {
        self.spool.is_some()
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

/// The queue delivery takes from.
#[derive(Clone, Debug)]
pub enum Output {
    /// The pipeline's own queue (`--spool off`).
    Memory(NotificationQueue),
    /// What the spooler hands out.
    Spooled(Queue<Spooled>),
}

impl Output {
    /// Notifications queued for delivery now (the queue-depth gauge).
    pub fn len(&self) -> usize {
        match self {
            Self::Memory(queue) => queue.len(),
            Self::Spooled(queue) => queue.len(),
        }
    }

    /// Whether nothing is queued for delivery.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The hop between the pipeline and delivery.
#[derive(Debug)]
pub enum Stage {
    /// `--spool off`: one in-memory queue (drop-oldest when full).
    Memory(MemoryStage),
    /// The durable spool: written through, read back in capture order.
    Spooled(SpooledStage),
}

/// The in-memory stage.
#[derive(Debug)]
pub struct MemoryStage {
    queue: NotificationQueue,
    watcher: JoinHandle<()>,
    stop_watcher: CancellationToken,
    losses: Arc<Losses>,
}

/// The spool stage.
#[derive(Debug)]
pub struct SpooledStage {
    input: NotificationQueue,
    output: Queue<Spooled>,
    acker: Acker,
    task: JoinHandle<Spool>,
    losses: Arc<Losses>,
}

impl Stage {
    /// Opens the spool in `settings` (or none), with in-memory queues of `capacity`. Must be
    /// called inside the runtime. The error is a configuration error (exit 2) except for I/O
    /// while reading an existing spool.
    pub fn open(
        settings: Option<SpoolSettings>,
        capacity: usize,
        losses: Arc<Losses>,
    ) -> Result<Self, SpoolError> {
        let input = NotificationQueue::new(capacity);
        let Some(settings) = settings else {
            let stop_watcher = CancellationToken::new();
            let watcher = tokio::spawn(watch_queue(
                input.clone(),
                Arc::clone(&losses),
                stop_watcher.clone(),
            ));
            return Ok(Self::Memory(MemoryStage {
                queue: input,
                watcher,
                stop_watcher,
                losses,
            }));
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
        losses.record(Loss::SpoolCorrupt, recovered.corrupt);
        let output = Queue::new(capacity);
        let unspooled = Arc::new(AtomicU64::new(0));
        let acker = Acker {
            spool: Some(SpoolAcker {
                acks: spool.acks(),
                input: input.clone(),
                unspooled: Arc::clone(&unspooled),
            }),
        };
        let task = tokio::spawn(spool::run(
            spool,
            spool::Queues {
                input: input.clone(),
                output: output.clone(),
                unspooled,
            },
            Arc::clone(&losses),
        ));
        Ok(Self::Spooled(SpooledStage {
            input,
            output,
            acker,
            task,
            losses,
        }))
    }

    /// Where the pipeline pushes.
    pub fn input(&self) -> &NotificationQueue {
        match self {
            Self::Memory(memory) => &memory.queue,
            Self::Spooled(spooled) => &spooled.input,
        }
    }

    /// Where delivery takes from.
    pub fn output(&self) -> Output {
        match self {
            Self::Memory(memory) => Output::Memory(memory.queue.clone()),
            Self::Spooled(spooled) => Output::Spooled(spooled.output.clone()),
        }
    }

    /// How delivery acknowledges what it settled.
    pub fn acker(&self) -> Acker {
        match self {
            Self::Memory(_) => Acker::default(),
            Self::Spooled(spooled) => spooled.acker.clone(),
        }
    }

    /// Where losses are counted and logged.
    pub fn losses(&self) -> Arc<Losses> {
        match self {
            Self::Memory(memory) => Arc::clone(&memory.losses),
            Self::Spooled(spooled) => Arc::clone(&spooled.losses),
        }
    }

    /// Whether notifications go through a spool.
    pub fn spooled(&self) -> bool {
        matches!(self, Self::Spooled(_))
    }

    /// After delivery has ended: saves the spool's state, logs the losses still pending, and
    /// says what is left for the next start.
    pub async fn finish(self) -> Leftover {
        match self {
            Self::Memory(memory) => {
                memory.queue.close();
                memory.stop_watcher.cancel();
                let _ = memory.watcher.await;
                memory.losses.flush();
                Leftover::default()
            }
            Self::Spooled(spooled) => {
                spooled.input.close();
                spooled.output.close();
                let mut leftover = Leftover::default();
                match spooled.task.await {
                    Ok(spool) => {
                        let gauges = tokio::task::spawn_blocking(move || spool::finish(spool))
                            .await
                            .unwrap_or_default();
                        leftover = Leftover {
                            in_spool: gauges.entries,
                            spool_bytes: gauges.bytes,
                        };
                    }
                    Err(error) => tracing::warn!(%error, "the spool task failed"),
                }
                spooled.losses.flush();
                leftover
            }
        }
    }
}

/// Without a spool: count and log the queue's drops.
async fn watch_queue(queue: NotificationQueue, losses: Arc<Losses>, stop: CancellationToken) {
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = queue.dropped();
        losses.note(Loss::QueueFull, now - seen);
        seen = now;
        losses.tick();
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample;

    /// While the spool cannot be written (its directory is gone, as good as a full disk), what
    /// waits in memory is part of the backlog the bridge lines report.
    #[tokio::test]
    async fn the_backlog_counts_what_waits_in_memory_when_the_spool_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let stage =
            Stage::open(Some(SpoolSettings::new(&spool_dir)), 10_000, Arc::default()).unwrap();
        std::fs::remove_dir_all(&spool_dir).unwrap();
        for cseq in 0..1_000 {
            let mut n = sample();
            n.cseq = cseq;
            stage.input().push(n);
        }
        let Output::Spooled(output) = stage.output() else {
            panic!("a spool stage");
        };
        // The spooler fails to write and hands everything over from memory.
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while output.len() < 1_000 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "handed over: {}", output.len());
        let acker = stage.acker();
        assert_eq!(acker.backlog(output.len() as u64, 0), 1_000);
        // Taken and settled: the backlog shrinks with it.
        let mut taken = Vec::new();
        output.try_pop_batch(400, &mut taken);
        for spooled in taken {
            acker.settle(Staged::from(spooled).ticket);
        }
        assert_eq!(acker.backlog(output.len() as u64, 0), 600);
        stage.finish().await;
    }
}
