//! Copy filter: delivers each NOTIFY once however many copies of it the agent sees.
//!
//! Copies come from three places: SIP Server re-sends an unanswered NOTIFY over UDP (timer E,
//! up to 64×T1 = 32 s after the first copy, RFC 3261 §17.1.2); a NOTIFY on the wire and in a
//! HEP feed at once; and a proxy (Kamailio) that forwards NOTIFYs and mirrors each one twice
//! over HEP, as received and as sent on. The bridge must get one.
//!
//! **The key: (Call-ID, CSeq, From tag)**, the identity of one request end to end. A
//! retransmission keeps all three; a proxy that forwards the request puts its own Via (with
//! its own branch) on top but leaves Call-ID, CSeq and From alone, so the copy it sends on is
//! the same request; a later NOTIFY in the dialog (the `hold` after the `talk`) has a new CSeq,
//! so it is new. The CSeq's method is part of the identity too, and is always NOTIFY here (the
//! parser refuses any other), so the number stands for the whole CSeq. The top Via branch used
//! to be the last part of the key, which made a forwarded copy look like a new transaction.
//!
//! What this changes, case by case:
//! - **No From tag** (RFC 2543 senders; RFC 3261 requires one): the key falls back to the top
//!   Via branch, as before, so such a NOTIFY's forwarded copy is still delivered twice; with
//!   neither, (Call-ID, CSeq) alone. A tag and a branch never stand for each other: the key
//!   says which one it holds.
//! - **A forking proxy** sends one NOTIFY on to several contacts, each fork with its own
//!   branch: one delivery, which is right for the bridge (the forks carry the same To user and
//!   event). The branch kept them apart before.
//! - **A B2BUA** (Asterisk relaying, Kamailio with topology hiding) makes a new request with
//!   its own Call-ID and From tag: two deliveries, under the old key and the new.
//! - **A sender that reuses a CSeq** for a different NOTIFY in the same dialog within the
//!   window (RFC 3261 §12.2.1.1 forbids it) would now lose the second one; the branch told
//!   them apart before. SIP Server increments it.
//!
//! The `Idempotency-Key` the bridge sees still includes the branch (it is computed from the
//! stored notification, whose spool record has no From tag), so a forwarded copy that gets
//! past this filter (outside the window, or after its entry was evicted at the cap) reaches
//! the bridge with a key of its own.
//!
//! Time is the caller's (the capture timestamp), so a pcap replay de-duplicates exactly as the
//! live capture did. Memory is bounded: at the cap the oldest entry is evicted, which can only
//! let a very late copy through.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher as _, RandomState},
    time::{Duration, SystemTime},
};

use metrics::Counter;

/// How long and how many transactions the filter remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupSettings {
    /// How long after the first copy a copy still counts as one.
    pub window: Duration,
    /// The most transactions remembered at once.
    pub max_entries: usize,
}

/// What the filter made of one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first copy of its NOTIFY (within the window): deliver it.
    New,
    /// A copy of a NOTIFY seen within the window: drop it.
    Duplicate,
}

/// The identity of one NOTIFY, however many copies of it there are: a 128-bit digest of
/// (Call-ID, CSeq, From tag), or of the top Via branch in the tag's place when there is none.
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
        let sender = match (transaction.from_tag, transaction.via_branch) {
            (Some(tag), _) => Sender::Tag(tag),
            (None, Some(branch)) => Sender::Branch(branch),
            (None, None) => Sender::Unknown,
        };
        let identity = (transaction.call_id, transaction.cseq, sender);
        TransactionKey(self.0.hash_one(identity), self.1.hash_one(identity))
    }
}

/// What tells one request from another beside its Call-ID and CSeq; hashed with its variant,
/// so a tag and a branch of the same bytes are different keys.
#[derive(Clone, Copy, Hash)]
enum Sender<'a> {
    /// The From tag.
    Tag(&'a [u8]),
    /// No From tag: the top Via branch.
    Branch(&'a [u8]),
    /// Neither.
    Unknown,
}

/// What identifies a NOTIFY, borrowed: the pipeline builds it from the parsed bytes, so a
/// copy is recognised before anything is copied or allocated for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transaction<'a> {
    /// The Call-ID.
    pub call_id: &'a [u8],
    /// The CSeq number (the method is NOTIFY).
    pub cseq: u32,
    /// The From tag.
    pub from_tag: Option<&'a [u8]>,
    /// The top Via's branch parameter: the key only without a From tag.
    pub via_branch: Option<&'a [u8]>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    first_seen: SystemTime,
    /// Matches the `generation` of this entry's record in the time-ordered log; a record whose
    /// generation differs is stale (its key was re-inserted later) and is skipped.
    generation: u64,
}

/// The copy filter. Not thread-safe by design: it sits on the single parser path.
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

    /// Classifies the NOTIFY `transaction`, captured at `now`, and remembers it when new.
    pub fn observe(&mut self, transaction: Transaction<'_>, now: SystemTime) -> Verdict {
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

    /// A NOTIFY as SIP Server sends it.
    fn notify() -> Transaction<'static> {
        Transaction {
            call_id: b"D6F9-82@192.168.210.81",
            cseq: 3,
            from_tag: Some(b"A2BB77D7-24"),
            via_branch: Some(b"z9hG4bK-1"),
        }
    }

    fn with_cseq(cseq: u32) -> Transaction<'static> {
        Transaction { cseq, ..notify() }
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    #[test]
    fn retransmissions_within_the_window_are_duplicates() {
        let mut dedup = Deduplicator::new(settings());
        assert_eq!(dedup.observe(notify(), at(0)), Verdict::New);
        // Timer E schedule of SIP Server: 0.5, 1.5, 3.5, 7.5, 11.5, … 23.5 s.
        for ms in [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500] {
            assert_eq!(
                dedup.observe(notify(), at(ms)),
                Verdict::Duplicate,
                "at {ms} ms"
            );
        }
        assert_eq!(dedup.hits(), 8);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn a_forwarded_copy_with_a_new_branch_is_a_duplicate() {
        let mut dedup = Deduplicator::new(settings());
        // Kamailio mirrors the NOTIFY as received, then as sent on under its own Via.
        assert_eq!(dedup.observe(notify(), at(0)), Verdict::New);
        let forwarded = Transaction {
            via_branch: Some(b"z9hG4bK-kamailio-1"),
            ..notify()
        };
        assert_eq!(dedup.observe(forwarded, at(1)), Verdict::Duplicate);
        // A fork to another contact, with yet another branch, is the same NOTIFY too.
        let fork = Transaction {
            via_branch: Some(b"z9hG4bK-kamailio-2"),
            ..notify()
        };
        assert_eq!(dedup.observe(fork, at(2)), Verdict::Duplicate);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn a_new_cseq_another_call_or_another_sender_is_new() {
        let mut dedup = Deduplicator::new(settings());
        assert_eq!(dedup.observe(notify(), at(0)), Verdict::New);
        // The `hold` after the `talk`: the next CSeq (and a new branch) in the same dialog.
        let hold = Transaction {
            cseq: 4,
            via_branch: Some(b"z9hG4bK-2"),
            ..notify()
        };
        assert_eq!(dedup.observe(hold, at(10)), Verdict::New);
        // The next CSeq alone makes it new, whatever the branch says.
        assert_eq!(dedup.observe(with_cseq(5), at(15)), Verdict::New);
        let other_call = Transaction {
            call_id: b"other@host",
            ..notify()
        };
        assert_eq!(dedup.observe(other_call, at(20)), Verdict::New);
        // A B2BUA's leg keeps the Call-ID at most; its own From tag makes it another request.
        let other_sender = Transaction {
            from_tag: Some(b"b2bua-leg"),
            ..notify()
        };
        assert_eq!(dedup.observe(other_sender, at(30)), Verdict::New);
        assert_eq!(dedup.observe(hold, at(40)), Verdict::Duplicate);
    }

    #[test]
    fn without_a_from_tag_the_branch_keys_it() {
        let mut dedup = Deduplicator::new(settings());
        let untagged = Transaction {
            from_tag: None,
            ..notify()
        };
        assert_eq!(dedup.observe(untagged, at(0)), Verdict::New);
        assert_eq!(dedup.observe(untagged, at(500)), Verdict::Duplicate);
        // With no tag to go by, another branch is another request.
        let other_branch = Transaction {
            via_branch: Some(b"z9hG4bK-kamailio-1"),
            ..untagged
        };
        assert_eq!(dedup.observe(other_branch, at(600)), Verdict::New);
        // A tag equal to a branch is not that branch.
        let tag_like_the_branch = Transaction {
            from_tag: Some(b"z9hG4bK-1"),
            ..notify()
        };
        assert_eq!(dedup.observe(tag_like_the_branch, at(700)), Verdict::New);
        // Neither tag nor branch: Call-ID and CSeq alone.
        let bare = Transaction {
            from_tag: None,
            via_branch: None,
            ..notify()
        };
        assert_eq!(dedup.observe(bare, at(800)), Verdict::New);
        assert_eq!(dedup.observe(bare, at(900)), Verdict::Duplicate);
    }

    #[test]
    fn a_copy_after_the_window_is_new_again() {
        let mut dedup = Deduplicator::new(DedupSettings {
            window: Duration::from_secs(2),
            max_entries: 16,
        });
        assert_eq!(dedup.observe(notify(), at(0)), Verdict::New);
        assert_eq!(dedup.observe(notify(), at(1_999)), Verdict::Duplicate);
        assert_eq!(dedup.observe(notify(), at(2_000)), Verdict::New);
        // The window restarts from the new first copy.
        assert_eq!(dedup.observe(notify(), at(3_000)), Verdict::Duplicate);
        assert_eq!(dedup.len(), 1);
        // Expired entries are forgotten even without a copy of them.
        assert_eq!(dedup.observe(with_cseq(99), at(10_000)), Verdict::New);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn a_copy_captured_slightly_earlier_is_still_a_duplicate() {
        let mut dedup = Deduplicator::new(settings());
        assert_eq!(dedup.observe(notify(), at(1_000)), Verdict::New);
        assert_eq!(dedup.observe(notify(), at(999)), Verdict::Duplicate);
    }

    #[test]
    fn memory_is_capped_by_evicting_the_oldest() {
        let mut dedup = Deduplicator::new(DedupSettings {
            window: Duration::from_secs(32),
            max_entries: 4,
        });
        for cseq in 0..10 {
            assert_eq!(
                dedup.observe(with_cseq(cseq), at(u64::from(cseq))),
                Verdict::New
            );
            assert!(dedup.len() <= 4);
        }
        assert_eq!(dedup.evictions(), 6);
        // The newest four are remembered, the evicted ones are new again.
        for cseq in 6..10 {
            assert_eq!(dedup.observe(with_cseq(cseq), at(20)), Verdict::Duplicate);
        }
        assert_eq!(dedup.observe(with_cseq(0), at(21)), Verdict::New);
        assert_eq!(dedup.len(), 4);
    }

    #[test]
    fn stale_log_records_do_not_evict_live_entries() {
        let mut dedup = Deduplicator::new(DedupSettings {
            window: Duration::from_secs(2),
            max_entries: 2,
        });
        let (a, b, c, d) = (with_cseq(1), with_cseq(2), with_cseq(3), with_cseq(4));
        // `a` arrives out of order behind `b`, then is re-inserted after its window while its
        // first log record is still queued behind `b`'s: that record is now stale.
        assert_eq!(dedup.observe(b, at(9_000)), Verdict::New);
        assert_eq!(dedup.observe(a, at(1_000)), Verdict::New);
        assert_eq!(dedup.observe(a, at(4_000)), Verdict::New);
        // At the cap, `b` (oldest live) goes; the live `a` stays.
        assert_eq!(dedup.observe(c, at(4_100)), Verdict::New);
        assert_eq!(dedup.evictions(), 1);
        assert_eq!(dedup.observe(a, at(4_200)), Verdict::Duplicate);
        // Next eviction skips the stale record and removes the live `a`, not `c`.
        assert_eq!(dedup.observe(d, at(4_300)), Verdict::New);
        assert_eq!(dedup.evictions(), 2);
        assert_eq!(dedup.observe(c, at(4_400)), Verdict::Duplicate);
        assert_eq!(dedup.len(), 2);
    }
}
