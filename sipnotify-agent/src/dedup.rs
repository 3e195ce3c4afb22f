//! Retransmission filter: drops the copies of a NOTIFY that SIP Server re-sends over UDP.
//!
//! An unanswered NOTIFY is re-sent with the same Call-ID, CSeq and top-Via branch (timer E,
//! up to 64×T1 = 32 s after the first copy, see RFC 3261 §17.1.2). Asterisk answers them, but
//! the capture sees every copy, and the bridge must get one. A later NOTIFY in the same dialog
//! (the `hold` after the `talk`) has a new CSeq and branch, so it is new.
//!
//! Time is the caller's (the capture timestamp), so a pcap replay de-duplicates exactly as the
//! live capture did. Memory is bounded: at the cap the oldest entry is evicted, which can only
//! let a very late retransmission through (the bridge still has the Idempotency-Key).

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher as _, RandomState},
    time::{Duration, SystemTime},
};

use metrics::Counter;

use crate::event::Notification;

/// How long and how many transactions the filter remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupSettings {
    /// How long after the first copy a copy still counts as a retransmission.
    pub window: Duration,
    /// The most transactions remembered at once.
    pub max_entries: usize,
}

/// What the filter made of one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first copy of its transaction (within the window): deliver it.
    New,
    /// A retransmission of a transaction seen within the window: drop it.
    Duplicate,
}

/// The identity of one SIP transaction as SIP Server re-sends it: a 128-bit digest of
/// (Call-ID, CSeq, top Via branch).
///
/// Storing the digest instead of the strings keeps an entry at a few dozen bytes (the table
/// holds up to 65 536 of them) and costs no allocation per observation. The two halves come
/// from SipHash with keys drawn at random per process, so a sender cannot craft Call-IDs that
/// collide with another transaction's and suppress it; by chance, a collision among 65 536
/// entries has a probability near 2⁻⁹⁶.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TransactionKey(u64, u64);

/// The two randomly keyed hash functions behind [`TransactionKey`].
#[derive(Debug)]
struct KeyHasher(RandomState, RandomState);

impl KeyHasher {
    fn new() -> Self {
        Self(RandomState::new(), RandomState::new())
    }

    fn key(&self, transaction: Transaction<'_>) -> TransactionKey {
        let identity = (
            transaction.call_id,
            transaction.cseq,
            transaction.via_branch,
        );
        TransactionKey(self.0.hash_one(identity), self.1.hash_one(identity))
    }
}

/// What identifies a transaction, borrowed: the pipeline builds it from the parsed bytes, so
/// a retransmission is recognised before anything is copied or allocated for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transaction<'a> {
    /// The Call-ID.
    pub call_id: &'a [u8],
    /// The CSeq number.
    pub cseq: u32,
    /// The top Via's branch parameter.
    pub via_branch: Option<&'a [u8]>,
}

impl<'a> From<&'a Notification> for Transaction<'a> {
    fn from(n: &'a Notification) -> Self {
        Self {
            call_id: n.call_id.as_bytes(),
            cseq: n.cseq,
            via_branch: n.via_branch.as_deref().map(str::as_bytes),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    first_seen: SystemTime,
    /// Matches the `generation` of this entry's record in the time-ordered log; a record whose
    /// generation differs is stale (its key was re-inserted later) and is skipped.
    generation: u64,
}

/// The retransmission filter. Not thread-safe by design: it sits on the single parser path.
#[derive(Debug)]
pub struct Deduplicator {
    settings: DedupSettings,
    hasher: KeyHasher,
    entries: HashMap<TransactionKey, Entry>,
    /// Insertion order, which is time order up to small capture reordering; expiry and
    /// eviction pop from the front, so each observation costs O(1) amortized.
    log: VecDeque<(SystemTime, u64, TransactionKey)>,
    next_generation: u64,
    hits: u64,
    evictions: u64,
    /// The same counts as metrics, registered once rather than looked up per duplicate.
    hits_metric: Counter,
    evictions_metric: Counter,
}

impl Deduplicator {
    /// An empty filter. A `max_entries` of 0 is treated as 1.
    pub fn new(settings: DedupSettings) -> Self {
        let settings = DedupSettings {
            max_entries: settings.max_entries.max(1),
            ..settings
        };
        Self {
            settings,
            hasher: KeyHasher::new(),
            entries: HashMap::new(),
            log: VecDeque::new(),
            next_generation: 0,
            hits: 0,
            evictions: 0,
            hits_metric: metrics::counter!("sipnotify_dedup_hits_total"),
            evictions_metric: metrics::counter!("sipnotify_dedup_evictions_total"),
        }
    }

    /// Classifies `n`, captured at `now`, and remembers it when it is new.
    pub fn observe(&mut self, n: &Notification, now: SystemTime) -> Verdict {
        self.observe_transaction(n.into(), now)
    }

    /// Classifies the transaction `transaction`, captured at `now`, and remembers it when new.
    pub fn observe_transaction(
        &mut self,
        transaction: Transaction<'_>,
        now: SystemTime,
    ) -> Verdict {
        self.expire(now);
        let key = self.hasher.key(transaction);
        if let Some(entry) = self.entries.get(&key) {
            // A copy captured before the first one (reordering between CPUs) is a duplicate too.
            let age = now
                .duration_since(entry.first_seen)
                .unwrap_or(Duration::ZERO);
            if age < self.settings.window {
                self.hits += 1;
                self.hits_metric.increment(1);
                return Verdict::Duplicate;
            }
        }
        while self.entries.len() >= self.settings.max_entries && !self.entries.contains_key(&key) {
            if !self.pop_oldest() {
                break;
            }
            self.evictions += 1;
            self.evictions_metric.increment(1);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.entries.insert(
            key,
            Entry {
                first_seen: now,
                generation,
            },
        );
        self.log.push_back((now, generation, key));
        Verdict::New
    }

    /// Transactions remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Duplicates seen since creation.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Entries evicted early because of the memory cap.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Forgets every transaction whose window has passed at `now`.
    fn expire(&mut self, now: SystemTime) {
        while let Some((first_seen, _, _)) = self.log.front() {
            let expired = now
                .duration_since(*first_seen)
                .is_ok_and(|age| age >= self.settings.window);
            if !expired {
                break;
            }
            // Only this record: the next one may be younger (a stale record can sit before it).
            self.pop_front_record();
        }
    }

    /// Removes the oldest live entry (skipping stale log records). Returns whether one went.
    fn pop_oldest(&mut self) -> bool {
        while !self.log.is_empty() {
            if self.pop_front_record() {
                return true;
            }
        }
        false
    }

    /// Removes the front log record and, unless it is stale, its entry. Returns whether an
    /// entry was removed.
    fn pop_front_record(&mut self) -> bool {
        let Some((_, generation, key)) = self.log.pop_front() else {
            return false;
        };
        let current = self
            .entries
            .get(&key)
            .is_some_and(|entry| entry.generation == generation);
        if current {
            self.entries.remove(&key);
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64×T1 with T1 = 500 ms, the non-INVITE transaction timeout (timer F) after which SIP
    /// Server stops re-sending, as `--dedup-window` has it.
    fn settings() -> DedupSettings {
        DedupSettings {
            window: Duration::from_secs(32),
            max_entries: 65_536,
        }
    }
    use crate::event::tests::sample;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    #[test]
    fn retransmissions_within_the_window_are_duplicates() {
        let mut dedup = Deduplicator::new(settings());
        let n = sample();
        assert_eq!(dedup.observe(&n, at(0)), Verdict::New);
        // Timer E schedule of SIP Server: 0.5, 1.5, 3.5, 7.5, 11.5, … 23.5 s.
        for ms in [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500] {
            assert_eq!(dedup.observe(&n, at(ms)), Verdict::Duplicate, "at {ms} ms");
        }
        assert_eq!(dedup.hits(), 8);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn new_cseq_or_branch_in_the_same_dialog_is_new() {
        let mut dedup = Deduplicator::new(settings());
        let talk = sample();
        let mut hold = sample();
        hold.event = "hold".into();
        hold.cseq += 1;
        hold.via_branch = Some("z9hG4bK-2".into());
        assert_eq!(dedup.observe(&talk, at(0)), Verdict::New);
        assert_eq!(dedup.observe(&hold, at(10)), Verdict::New);
        let mut same_cseq_new_branch = sample();
        same_cseq_new_branch.via_branch = Some("z9hG4bK-3".into());
        assert_eq!(dedup.observe(&same_cseq_new_branch, at(20)), Verdict::New);
        let mut other_call = sample();
        other_call.call_id = "other@host".into();
        assert_eq!(dedup.observe(&other_call, at(30)), Verdict::New);
        assert_eq!(dedup.observe(&hold, at(40)), Verdict::Duplicate);
    }

    #[test]
    fn a_copy_after_the_window_is_new_again() {
        let mut dedup = Deduplicator::new(DedupSettings {
            window: Duration::from_secs(2),
            max_entries: 16,
        });
        let n = sample();
        assert_eq!(dedup.observe(&n, at(0)), Verdict::New);
        assert_eq!(dedup.observe(&n, at(1_999)), Verdict::Duplicate);
        assert_eq!(dedup.observe(&n, at(2_000)), Verdict::New);
        // The window restarts from the new first copy.
        assert_eq!(dedup.observe(&n, at(3_000)), Verdict::Duplicate);
        assert_eq!(dedup.len(), 1);
        // Expired entries are forgotten even without a copy of them.
        let mut other = sample();
        other.cseq = 99;
        assert_eq!(dedup.observe(&other, at(10_000)), Verdict::New);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn a_copy_captured_slightly_earlier_is_still_a_duplicate() {
        let mut dedup = Deduplicator::new(settings());
        let n = sample();
        assert_eq!(dedup.observe(&n, at(1_000)), Verdict::New);
        assert_eq!(dedup.observe(&n, at(999)), Verdict::Duplicate);
    }

    #[test]
    fn memory_is_capped_by_evicting_the_oldest() {
        let mut dedup = Deduplicator::new(DedupSettings {
            window: Duration::from_secs(32),
            max_entries: 4,
        });
        let make = |cseq: u32| {
            let mut n = sample();
            n.cseq = cseq;
            n
        };
        for cseq in 0..10 {
            assert_eq!(
                dedup.observe(&make(cseq), at(u64::from(cseq))),
                Verdict::New
            );
            assert!(dedup.len() <= 4);
        }
        assert_eq!(dedup.evictions(), 6);
        // The newest four are remembered, the evicted ones are new again.
        for cseq in 6..10 {
            assert_eq!(dedup.observe(&make(cseq), at(20)), Verdict::Duplicate);
        }
        assert_eq!(dedup.observe(&make(0), at(21)), Verdict::New);
        assert_eq!(dedup.len(), 4);
    }

    #[test]
    fn stale_log_records_do_not_evict_live_entries() {
        let mut dedup = Deduplicator::new(DedupSettings {
            window: Duration::from_secs(2),
            max_entries: 2,
        });
        let make = |cseq: u32| {
            let mut n = sample();
            n.cseq = cseq;
            n
        };
        let (a, b, c, d) = (make(1), make(2), make(3), make(4));
        // `a` arrives out of order behind `b`, then is re-inserted after its window while its
        // first log record is still queued behind `b`'s: that record is now stale.
        assert_eq!(dedup.observe(&b, at(9_000)), Verdict::New);
        assert_eq!(dedup.observe(&a, at(1_000)), Verdict::New);
        assert_eq!(dedup.observe(&a, at(4_000)), Verdict::New);
        // At the cap, `b` (oldest live) goes; the live `a` stays.
        assert_eq!(dedup.observe(&c, at(4_100)), Verdict::New);
        assert_eq!(dedup.evictions(), 1);
        assert_eq!(dedup.observe(&a, at(4_200)), Verdict::Duplicate);
        // Next eviction skips the stale record and removes the live `a`, not `c`.
        assert_eq!(dedup.observe(&d, at(4_300)), Verdict::New);
        assert_eq!(dedup.evictions(), 2);
        assert_eq!(dedup.observe(&c, at(4_400)), Verdict::Duplicate);
        assert_eq!(dedup.len(), 2);
    }
}
