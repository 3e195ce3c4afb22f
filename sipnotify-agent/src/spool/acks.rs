//! Acknowledgements of handed-out records: a window of ids awaiting their outcome, shared
//! (as [`Acks`]) with whoever settles them, in any order. The spool's watermark is the
//! window's base: every id below it is done.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

/// Handed-out records awaiting their outcome: ids `base..base + len`, contiguous.
#[derive(Debug, Default)]
pub(super) struct Window {
    base: u64,
    /// (acknowledged, captured_ns)
    entries: VecDeque<(bool, u64)>,
    pub(super) unacked: u64,
}

impl Window {
    pub(super) fn hand_out(&mut self, id: u64, captured_ns: u64) {
        if self.entries.is_empty() {
            self.base = id;
        }
        // Ids skipped by a full spool or corruption are done: mark them acked.
        while self.base + (self.entries.len() as u64) < id {
            self.entries.push_back((true, 0));
        }
        self.entries.push_back((false, captured_ns));
        self.unacked += 1;
    }

    pub(super) fn ack(&mut self, id: u64) {
        let Some(index) = id.checked_sub(self.base) else {
            return;
        };
        let Ok(index) = usize::try_from(index) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(index) {
            if !entry.0 {
                entry.0 = true;
                self.unacked -= 1;
            }
        }
        while self.entries.front().is_some_and(|e| e.0) {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    pub(super) fn first_unacked(&self) -> Option<(u64, u64)> {
        self.entries.front().map(|e| (self.base, e.1))
    }
}

/// Acknowledges handed-out records; cheap to clone, shared with the delivery tasks.
#[derive(Clone, Debug, Default)]
pub struct Acks {
    pub(super) window: Arc<Mutex<Window>>,
    /// Records on disk not yet handed out (kept by the spool's owner).
    pub(super) on_disk: Arc<AtomicU64>,
}

impl Acks {
    /// Records not yet settled: handed out and unacknowledged, or still only on disk.
    pub fn backlog(&self) -> u64 {
        self.lock().unacked + self.on_disk.load(Ordering::Relaxed)
    }

    /// Marks `id` as done (delivered, rejected for good, or expired).
    pub fn ack(&self, id: u64) {
        self.lock().ack(id);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Window> {
        // Every update leaves the window consistent, so a poisoned lock is still usable.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
