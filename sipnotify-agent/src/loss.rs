//! Every way a notification can be lost after capture, as one type, and the log lines that
//! tell an operator about them.
//!
//! A [`Loss`] carries its `sipnotify_dropped_total{reason}` label (also its key in the log
//! lines and the shutdown summary) and the remedy an operator can act on. A new reason is one
//! entry in `losses!`; nothing else spells a reason as a string.
//!
//! [`Losses`] decides when a WARN line is due: the first loss after a quiet spell is logged at
//! once, later ones are folded into the next line, at most one per [`LOSS_LOG_EVERY`], and
//! `flush` (on a timer and at shutdown) writes what is still pending, so a burst is never left
//! out of the log. It also keeps the totals for the shutdown summary.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::logging::human;

/// At most one loss line per this long.
pub const LOSS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Declares [`Loss`] with its metric label and remedy and the list of every variant, so the
/// three cannot drift apart. A new reason is one entry here.
macro_rules! losses {
    ($($(#[doc = $doc:literal])* $variant:ident => $label:literal, $remedy:expr;)+) => {
        /// Why notifications were lost. Entries are kept in label order (the order of the
        /// log lines' reasons, checked by a test).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Loss {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Loss {
            /// Every reason, in label order.
            pub const ALL: &'static [Loss] = &[$(Loss::$variant),+];

            /// The `reason` label of `sipnotify_dropped_total`, and the key in the log lines
            /// and the shutdown summary.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Loss::$variant => $label,)+
                }
            }

            /// What an operator can do about it.
            pub const fn remedy(self) -> &'static str {
                match self {
                    $(Loss::$variant => $remedy,)+
                }
            }
        }
    };
}

losses! {
    /// The kernel's capture ring was full: lost before user space saw them.
    CaptureRingFull => "capture_ring_full",
        "the capture ring filled faster than the agent read it: raise --ring-bytes, or check \
         the agent's CPU";
    /// Pushed into a queue that was already closed (shutting down).
    Closed => "closed", "they arrived while the agent was shutting down";
    /// HEP datagrams the kernel dropped on a full `--hep-listen` socket.
    HepSocketOverflow => "hep_socket_overflow",
        "the PBX's HEP feed came faster than the agent read it: raise --hep-recv-buffer, or \
         check the agent's CPU";
    /// Older than `--max-age` before the bridge took them.
    MaxAge => "max_age",
        "they waited longer than --max-age for the bridge: check the bridge, or raise \
         --max-age (0 = no limit)";
    /// An in-memory queue was full: the oldest notification made room.
    QueueFull => "queue_full",
        "the in-memory queue was full: with --spool off, turn the spool on or raise \
         --queue-capacity; with the spool on, the disk under --spool-dir fell behind capture";
    /// The bridge refused them for good (4xx other than 408/429); not retried.
    Rejected => "rejected", "the bridge's log says why it refuses them; they are not retried";
    /// Still queued at the shutdown deadline, with no spool to keep them.
    Shutdown => "shutdown",
        "still queued when the shutdown deadline passed: raise --shutdown-timeout, or turn \
         the spool on to keep them for the next start";
    /// Spool records that failed their checksum.
    SpoolCorrupt => "spool_corrupt",
        "spool records failed their checksum (a power cut or disk damage): check the disk \
         under --spool-dir";
    /// The spool reached `--spool-max-bytes`: its oldest segment made room.
    SpoolFull => "spool_full",
        "the spool reached --spool-max-bytes while the bridge was down or slow: check the \
         bridge, or raise --spool-max-bytes";
}

impl Loss {
    /// Its `sipnotify_dropped_total` counter; register once where losses are frequent.
    pub fn counter(self) -> metrics::Counter {
        metrics::counter!("sipnotify_dropped_total", "reason" => self.label())
    }
}

#[derive(Debug, Default)]
struct State {
    since_line: BTreeMap<Loss, u64>,
    totals: BTreeMap<Loss, u64>,
    last_line: Option<Instant>,
}

/// Rate-limited WARN lines about losses, and the totals for the shutdown summary.
#[derive(Debug, Default)]
pub struct Losses {
    state: Mutex<State>,
}

impl Losses {
    /// Counts `n` losses in the metric and the log.
    pub fn record(&self, loss: Loss, n: u64) {
        if n == 0 {
            return;
        }
        loss.counter().increment(n);
        self.note(loss, n);
    }

    /// Like [`Losses::record`] for losses whose metric was counted where they happened.
    pub fn note(&self, loss: Loss, n: u64) {
        if n == 0 {
            return;
        }
        let mut state = self.lock();
        *state.since_line.entry(loss).or_default() += n;
        *state.totals.entry(loss).or_default() += n;
        Self::log_if_due(&mut state, Instant::now(), false);
    }

    /// Whether losses wait for their line: a timer must call [`Losses::tick`] until not.
    pub fn pending(&self) -> bool {
        !self.lock().since_line.is_empty()
    }

    /// Writes what is pending if the last line is old enough (call on a timer).
    pub fn tick(&self) {
        Self::log_if_due(&mut self.lock(), Instant::now(), false);
    }

    /// Writes what is pending now (at shutdown).
    pub fn flush(&self) {
        Self::log_if_due(&mut self.lock(), Instant::now(), true);
    }

    /// Every loss since the start, by reason.
    pub fn totals(&self) -> BTreeMap<Loss, u64> {
        self.lock().totals.clone()
    }

    fn log_if_due(state: &mut State, now: Instant, force: bool) -> bool {
        if state.since_line.is_empty() {
            return false;
        }
        let due = force
            || state
                .last_line
                .is_none_or(|last| now.duration_since(last) >= LOSS_LOG_EVERY);
        if !due {
            return false;
        }
        let since = std::mem::take(&mut state.since_line);
        let dropped: u64 = since.values().sum();
        let window = state
            .last_line
            .map_or_else(|| "0ms".to_owned(), |last| human(now.duration_since(last)));
        state.last_line = Some(now);
        let mut remedies = String::new();
        for loss in since.keys() {
            if !remedies.is_empty() {
                remedies.push_str("; ");
            }
            let _ = write!(remedies, "{}: {}", loss.label(), loss.remedy());
        }
        tracing::warn!(
            dropped,
            reasons = %by_label(&since),
            since_last_line = %window,
            remedy = %remedies,
            "notifications dropped"
        );
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `label=count` pairs separated by spaces (`none` when empty), as the log lines write them.
pub fn by_label(counts: &BTreeMap<Loss, u64>) -> String {
    let mut out = String::new();
    for (loss, count) in counts {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{}={count}", loss.label());
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_first_loss_is_logged_at_once_and_later_ones_wait_their_turn() {
        let log = Losses::default();
        let mut state = State::default();
        let t0 = Instant::now();
        state.since_line.insert(Loss::SpoolFull, 3);
        assert!(Losses::log_if_due(&mut state, t0, false));
        assert!(state.since_line.is_empty());
        state.since_line.insert(Loss::SpoolFull, 5);
        assert!(!Losses::log_if_due(
            &mut state,
            t0 + Duration::from_secs(9),
            false
        ));
        assert_eq!(state.since_line.get(&Loss::SpoolFull), Some(&5));
        assert!(Losses::log_if_due(&mut state, t0 + LOSS_LOG_EVERY, false));
        assert!(state.since_line.is_empty());
        log.note(Loss::MaxAge, 2);
        log.note(Loss::MaxAge, 1);
        log.flush();
        assert_eq!(log.totals().get(&Loss::MaxAge), Some(&3));
    }

    #[test]
    fn every_loss_has_its_own_label_and_a_remedy_and_all_lists_them_in_label_order() {
        let labels: HashSet<_> = Loss::ALL.iter().map(|loss| loss.label()).collect();
        assert_eq!(labels.len(), Loss::ALL.len());
        for &loss in Loss::ALL {
            assert!(!loss.remedy().is_empty(), "{loss:?}");
            // Prometheus label values of this metric are snake_case.
            assert!(
                loss.label()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{loss:?}"
            );
        }
        let mut sorted = Loss::ALL.to_vec();
        sorted.sort_by_key(|loss| loss.label());
        assert_eq!(sorted, Loss::ALL);
        let mut ordered = Loss::ALL.to_vec();
        ordered.sort();
        assert_eq!(ordered, Loss::ALL);
    }

    #[test]
    fn counts_read_as_label_pairs() {
        let mut counts = BTreeMap::new();
        assert_eq!(by_label(&counts), "none");
        counts.insert(Loss::SpoolFull, 2);
        counts.insert(Loss::MaxAge, 1);
        assert_eq!(by_label(&counts), "max_age=1 spool_full=2");
    }
}
