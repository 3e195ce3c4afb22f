//! What the operator reads: drops summarised at most every 10 s with their reason and what to
//! do about it, and durations written for people (`3.2s`, `4m 10s`).
//!
//! Every drop is also a `sipnotify_dropped_total{reason}` metric; this module only decides
//! when a WARN line is due. The first drop after a quiet spell is logged at once, later ones
//! are folded into the next line, and `flush` (called on a timer and at shutdown) writes what
//! is still pending, so a burst of drops is never left out of the log.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::{sink::DeliveryReport, spool::Leftover};

/// At most one drop line per this long.
pub const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// A duration as people write it: `850ms`, `3.2s`, `4m 10s`, `2h 5m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (d.as_millis() + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    if secs < 3_600 {
        return format!("{}m {}s", secs / 60, secs % 60);
    }
    format!("{}h {}m", secs / 3_600, (secs % 3_600) / 60)
}

/// The shutdown line: every outcome, each drop reason, and what the spool keeps.
pub fn summary(
    report: &DeliveryReport,
    drops: &BTreeMap<&'static str, u64>,
    leftover: Leftover,
    spooled: bool,
) {
    let dropped: u64 = drops.values().sum();
    let mut by_reason = String::new();
    for (reason, count) in drops {
        if !by_reason.is_empty() {
            by_reason.push(' ');
        }
        let _ = write!(by_reason, "{reason}={count}");
    }
    if by_reason.is_empty() {
        by_reason.push_str("none");
    }
    tracing::info!(
        delivered = report.delivered,
        rejected = report.rejected,
        expired = report.expired,
        dropped,
        dropped_by_reason = %by_reason,
        left_in_spool = leftover.in_spool,
        spool_bytes = leftover.spool_bytes,
        spool = if spooled { "on" } else { "off" },
        "delivery finished"
    );
}

/// What an operator can do about drops of this reason.
pub fn remedy(reason: &str) -> &'static str {
    match reason {
        "queue_full" => {
            "the in-memory queue was full: with --spool off, turn the spool on or raise \
             --queue-capacity; with the spool on, the disk under --spool-dir fell behind capture"
        }
        "spool_full" => {
            "the spool reached --spool-max-bytes while the bridge was down or slow: check the \
             bridge, or raise --spool-max-bytes"
        }
        "spool_corrupt" => {
            "spool records failed their checksum (a power cut or disk damage): check the disk \
             under --spool-dir"
        }
        "max_age" => {
            "they waited longer than --max-age for the bridge: check the bridge, or raise \
             --max-age (0 = no limit)"
        }
        "shutdown" => {
            "still queued when the shutdown deadline passed: raise --shutdown-timeout, or turn \
             the spool on to keep them for the next start"
        }
        "spool_write" => "the spool could not be written: check free space under --spool-dir",
        _ => "see the sipnotify_dropped_total metric",
    }
}

#[derive(Debug, Default)]
struct State {
    since_line: BTreeMap<&'static str, u64>,
    totals: BTreeMap<&'static str, u64>,
    last_line: Option<Instant>,
}

/// Rate-limited WARN lines about drops, and the totals for the shutdown summary.
#[derive(Debug, Default)]
pub struct DropLog {
    state: Mutex<State>,
}

impl DropLog {
    /// Counts `n` drops for `reason` in the metric and the log.
    pub fn record(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!("sipnotify_dropped_total", "reason" => reason).increment(n);
        self.note(reason, n);
    }

    /// Like [`DropLog::record`] for drops whose metric was already counted where they happened.
    pub fn note(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let mut state = self.lock();
        *state.since_line.entry(reason).or_default() += n;
        *state.totals.entry(reason).or_default() += n;
        Self::log_if_due(&mut state, Instant::now(), false);
    }

    /// Writes what is pending if the last line is old enough (call on a timer).
    pub fn tick(&self) {
        Self::log_if_due(&mut self.lock(), Instant::now(), false);
    }

    /// Writes what is pending now (at shutdown).
    pub fn flush(&self) {
        Self::log_if_due(&mut self.lock(), Instant::now(), true);
    }

    /// Every drop since the start, by reason.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        self.lock().totals.clone()
    }

    fn log_if_due(state: &mut State, now: Instant, force: bool) -> bool {
        if state.since_line.is_empty() {
            return false;
        }
        let due = force
            || state
                .last_line
                .is_none_or(|last| now.duration_since(last) >= DROP_LOG_EVERY);
        if !due {
            return false;
        }
        let since = std::mem::take(&mut state.since_line);
        let dropped: u64 = since.values().sum();
        let mut reasons = String::new();
        let mut remedies = String::new();
        for (reason, count) in &since {
            if !reasons.is_empty() {
                reasons.push(' ');
                remedies.push_str("; ");
            }
            let _ = write!(reasons, "{reason}={count}");
            let _ = write!(remedies, "{reason}: {}", remedy(reason));
        }
        let window = state
            .last_line
            .map_or_else(|| "0ms".to_owned(), |last| human(now.duration_since(last)));
        state.last_line = Some(now);
        tracing::warn!(
            dropped,
            reasons = %reasons,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        let cases = [
            (Duration::from_micros(850_400), "850ms"),
            (Duration::from_millis(3_249), "3.2s"),
            (Duration::from_millis(3_793), "3.8s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(250), "4m 10s"),
            (Duration::from_secs(7_500), "2h 5m"),
        ];
        for (d, text) in cases {
            assert_eq!(human(d), text, "{d:?}");
        }
    }

    #[test]
    fn the_first_drop_is_logged_at_once_and_later_ones_wait_their_turn() {
        let log = DropLog::default();
        let mut state = State::default();
        let t0 = Instant::now();
        state.since_line.insert("spool_full", 3);
        assert!(DropLog::log_if_due(&mut state, t0, false));
        assert!(state.since_line.is_empty());
        state.since_line.insert("spool_full", 5);
        assert!(!DropLog::log_if_due(
            &mut state,
            t0 + Duration::from_secs(9),
            false
        ));
        assert_eq!(state.since_line.get("spool_full"), Some(&5));
        assert!(DropLog::log_if_due(&mut state, t0 + DROP_LOG_EVERY, false));
        assert!(state.since_line.is_empty());
        log.note("max_age", 2);
        log.note("max_age", 1);
        log.flush();
        assert_eq!(log.totals().get("max_age"), Some(&3));
    }

    #[test]
    fn every_drop_reason_has_a_remedy() {
        for reason in [
            "queue_full",
            "spool_full",
            "spool_corrupt",
            "max_age",
            "shutdown",
            "spool_write",
        ] {
            assert!(!remedy(reason).starts_with("see the"), "{reason}");
        }
    }
}
