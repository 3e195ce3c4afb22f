//! What became of each notification delivery took from the stage: the counts of the report,
//! the acknowledgements handed back to the stage, the losses.
//!
//! Sinks settle a [`super::batch::Batch`] (delivered, refused, expired) and the batch reports
//! here; neither the sinks nor the batch know what the stage does with an acknowledgement.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    loss::{Loss, Losses},
    stage::{Acker, Ticket},
};

/// How a sink settled notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The destination has them.
    Delivered,
    /// Refused for good (or not encodable): not retried.
    Rejected,
    /// Older than `--max-age`.
    Expired,
}

/// Notifications waiting in delivery's queue, read for the backlog.
pub(crate) type Queued = Box<dyn Fn() -> u64 + Send + Sync>;

/// Shared by the delivery loop, its batches and the request tasks.
pub(crate) struct Ledger {
    acker: Acker,
    losses: Arc<Losses>,
    queued: Queued,
    delivered: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    /// Taken from the queue and not yet settled.
    outstanding: AtomicU64,
    rejected_metric: metrics::Counter,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("acker", &self.acker)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

/// The ledger's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) delivered: u64,
    pub(crate) rejected: u64,
    pub(crate) expired: u64,
    pub(crate) outstanding: u64,
}

impl Ledger {
    pub(crate) fn new(acker: Acker, losses: Arc<Losses>, queued: Queued) -> Self {
        Self {
            acker,
            losses,
            queued,
            delivered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            rejected_metric: Loss::Rejected.counter(),
        }
    }

    /// `n` notifications were handed to the sinks.
    pub(crate) fn taken(&self, n: u64) {
        self.outstanding.fetch_add(n, Ordering::Relaxed);
    }

    /// Settles the notifications of `tickets` as `how`: counted, acknowledged to the stage.
    pub(crate) fn settle(&self, tickets: impl IntoIterator<Item = Ticket>, how: Settled) {
        let mut n = 0;
        for ticket in tickets {
            self.acker.settle(ticket);
            n += 1;
        }
        if n == 0 {
            return;
        }
        self.outstanding.fetch_sub(n, Ordering::Relaxed);
        match how {
            Settled::Delivered => {
                self.delivered.fetch_add(n, Ordering::Relaxed);
            }
            Settled::Rejected => {
                self.rejected.fetch_add(n, Ordering::Relaxed);
                // Counted, not in the loss lines: the refusal has its own WARN, and the
                // summary its own `rejected=`.
                self.rejected_metric.increment(n);
            }
            Settled::Expired => {
                self.expired.fetch_add(n, Ordering::Relaxed);
                self.losses.record(Loss::MaxAge, n);
            }
        }
    }

    /// Settles, as refused, notifications that were never handed to a sink.
    pub(crate) fn refuse_untaken(&self, tickets: Vec<Ticket>) {
        self.taken(tickets.len() as u64);
        self.settle(tickets, Settled::Rejected);
    }

    /// Notifications waiting for the sinks: queued, in hand or in flight, as the stage counts
    /// them (with the spool, what it holds plus what waits in memory).
    pub(crate) fn backlog(&self) -> u64 {
        self.acker
            .backlog((self.queued)(), self.outstanding.load(Ordering::Relaxed))
    }

    /// Where the backlog is kept, for the log.
    pub(crate) fn keeping(&self) -> &'static str {
        self.acker.keeping()
    }

    /// Whether what is not settled at the end is kept for the next start.
    pub(crate) fn keeps_leftovers(&self) -> bool {
        self.acker.keeps_leftovers()
    }

    pub(crate) fn losses(&self) -> &Losses {
        &self.losses
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            delivered: self.delivered.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            outstanding: self.outstanding.load(Ordering::Relaxed),
        }
    }
}
