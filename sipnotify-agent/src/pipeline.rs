//! The one per-record path every source feeds: sources only yield [`Record`]s
//! ([`Pipeline::push`]); everything after that is here, each stage passed once:
//! `Record → reassembly → parse → de-dup → stage`.
//!
//! - **Reassembly** takes the records flagged [`FLAG_IP_PACKET`] (TCP segments, IP fragments)
//!   and hands on the NOTIFYs they complete; this is the only place records are routed by that
//!   flag. Whole NOTIFYs, nearly every record, go on without taking its lock.
//! - **Parse** is linear and allocation-free until a NOTIFY is accepted.
//! - **De-dup** is a short uncontended lock, on capture time.
//! - **Stage**: the notification goes into the stage's input queue; for `run` that never waits
//!   (the queue drops its oldest entry when the bridge falls behind), a replay waits for room
//!   ([`Pipeline::wait_for_room`]) because it must deliver everything it reads.
//!
//! It runs on the source's own task (a ring reader, a file reader), so live it never waits.
//! Every record that does not become a queued notification is counted with its reason.
//!
//! Record timestamps (`header.timestamp_ns`) are on the pipeline's [`Clock`], the clock
//! reassembly runs on: CLOCK_MONOTONIC live, the capture time in a file. Live, time passes on
//! its own, and [`Pipeline::tick`] (spawned once by the wiring) closes what timed out; it runs
//! only while reassembly holds something, so an idle agent has no timer here.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use metrics::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    dedup::{DedupSettings, Deduplicator, Transaction, Verdict},
    event::Notification,
    queue::NotificationQueue,
    reassembly::{LOSS_CHECK, LossReport, Reassembly, ReassemblySettings, ReassemblyStats},
    record::{MonotonicClock, Record, RecordError, monotonic_now},
    sip::{self, ParseError, ParseOptions},
    source_filter::SourceFilter,
};

#[cfg(doc)]
use sipnotify_common::FLAG_IP_PACKET;

/// How often the live reassembly stage closes what timed out while it holds something: well
/// under the TCP gap timeout.
const REASSEMBLY_TICK: Duration = Duration::from_millis(100);
/// At most one warning this often about what reassembly gave up, as for other drops.
const LOSS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where records come from: the live XDP or AF_PACKET rings (`capture::live`), a capture
/// file (`capture::file`). A source only yields records; the pipeline does the rest.
pub trait Source: Send + 'static {
    /// What the source reports when it ends (its counts, the error that ended it).
    type Report: Send + 'static;

    /// Hands every record to `pipeline` ([`Pipeline::push`]) until the source runs out or
    /// `stop` fires, then tells the pipeline it has ended ([`Pipeline::finish`]) and returns
    /// its report. Runs on a task of its own.
    fn feed(
        self,
        pipeline: Pipeline,
        stop: CancellationToken,
    ) -> impl Future<Output = Self::Report> + Send + 'static;
}

/// What record timestamps (`header.timestamp_ns`) count, and so the clock reassembly runs on.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Live capture: CLOCK_MONOTONIC nanoseconds, what the XDP program's `bpf_ktime_get_ns`
    /// writes (the other live sources stamp records with [`monotonic_now`] on arrival, so a
    /// wall-clock step cannot expire or keep what reassembly holds). Time passes on its own.
    Live(MonotonicClock),
    /// A capture file: nanoseconds since the Unix epoch, the capture time. Time passes only
    /// with the records.
    File,
}

impl Clock {
    /// The live clock, sampled now.
    pub fn live() -> Self {
        Self::Live(MonotonicClock::new())
    }

    /// The wall-clock time of a record timestamp.
    pub fn wall_time(self, timestamp_ns: u64) -> SystemTime {
        match self {
            Self::Live(clock) => clock.wall_time(timestamp_ns),
            Self::File => SystemTime::UNIX_EPOCH + Duration::from_nanos(timestamp_ns),
        }
    }

    /// Now, for a clock that passes on its own.
    fn now(self) -> Option<Duration> {
        match self {
            Self::Live(_) => Some(monotonic_now()),
            Self::File => None,
        }
    }
}

/// Reassembly, parsing and de-duplication, as `run` and `replay` share them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineSettings {
    /// Headers copied into each notification under their names.
    pub extra_headers: Vec<String>,
    /// Deliver NOTIFYs without X-Genesys-CallUUID (with `call_uuid: null`).
    pub allow_missing_call_uuid: bool,
    /// The copy filter (`dedup`).
    pub dedup: DedupSettings,
    /// Bounds and timeouts of IP fragment and TCP reassembly.
    pub reassembly: ReassemblySettings,
    /// Who may send what reassembly puts together (`--sip-source`; empty: anyone).
    pub senders: SourceFilter,
}

/// What happened to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Queued for delivery.
    Queued,
    /// Queued; the oldest queued notification was dropped to make room.
    QueuedDroppingOldest,
    /// A copy of a NOTIFY already queued (a retransmission, the wire and HEP, a forwarded copy).
    Duplicate,
    /// Not a usable NOTIFY.
    Rejected(ParseError),
    /// The queue is closed (shutting down).
    Closed,
}

/// The shared per-record path. Cheap to clone: one per reader task.
#[derive(Clone)]
pub struct Pipeline {
    options: Arc<ParseOptions>,
    reassembly: Arc<Mutex<Held>>,
    /// Starts the reassembly clock when a packet leaves something held.
    wake_clock: Arc<Notify>,
    clock: Clock,
    dedup: Arc<Mutex<Deduplicator>>,
    queue: NotificationQueue,
    when_full: WhenFull,
    metrics: Arc<Metrics>,
    log_sip: bool,
}

/// The reassembly stage's state, shared by every reader.
struct Held {
    stage: Reassembly,
    /// The latest IP packet's timestamp: when a capture file's time ends.
    latest: Duration,
    /// Set once the source has ended and what was held was given up.
    finished: bool,
    /// Whether the clock ([`Pipeline::tick`]) is running; it stops while nothing is held.
    ticking: bool,
}

/// What pushing into a full stage input does.
#[derive(Clone)]
enum WhenFull {
    /// The queue drops its oldest notification (counted): live capture never waits.
    DropOldest,
    /// The reader waits for room, unless `stop` fires: a replay loses nothing.
    Wait {
        runtime: tokio::runtime::Handle,
        stop: CancellationToken,
    },
}

/// Metric handles resolved once, off the per-record path.
struct Metrics {
    records: Counter,
    accepted: Counter,
    rejects: Vec<(ParseError, Counter)>,
    bad_records: Counter,
}

impl Pipeline {
    /// A pipeline feeding `queue`, reassembling what is sent to `ports`, with record
    /// timestamps on `clock`.
    pub fn new(
        settings: &PipelineSettings,
        ports: &[u16],
        clock: Clock,
        queue: NotificationQueue,
    ) -> Self {
        let metrics = Metrics {
            records: metrics::counter!("sipnotify_records_total"),
            accepted: metrics::counter!("sipnotify_notifications_total"),
            rejects: ParseError::ALL
                .iter()
                .map(|&e| {
                    (
                        e,
                        metrics::counter!("sipnotify_parse_rejects_total", "reason" => e.reason()),
                    )
                })
                .collect(),
            bad_records: metrics::counter!("sipnotify_parse_rejects_total", "reason" => "bad_record"),
        };
        Self {
            options: Arc::new(ParseOptions::new(
                settings.extra_headers.iter().cloned(),
                settings.allow_missing_call_uuid,
            )),
            reassembly: Arc::new(Mutex::new(Held {
                stage: Reassembly::new(settings.reassembly, ports, settings.senders.clone()),
                latest: Duration::ZERO,
                finished: false,
                ticking: false,
            })),
            wake_clock: Arc::new(Notify::new()),
            clock,
            dedup: Arc::new(Mutex::new(Deduplicator::new(settings.dedup))),
            queue,
            when_full: WhenFull::DropOldest,
            metrics: Arc::new(metrics),
            log_sip: false,
        }
    }

    /// Log each accepted notification's identifiers at info level (`--log-sip`); otherwise
    /// they appear only at debug level, since DNs and call ids are personal data.
    pub fn log_sip(mut self, enabled: bool) -> Self {
        self.log_sip = enabled;
        self
    }

    /// Makes a reader wait while the stage input is full instead of dropping the oldest, until
    /// `stop` fires: a replay must deliver everything it reads. Call it on the runtime; the
    /// pipeline then blocks its caller, which must be a blocking thread.
    pub fn wait_for_room(mut self, stop: CancellationToken) -> Self {
        self.when_full = WhenFull::Wait {
            runtime: tokio::runtime::Handle::current(),
            stop,
        };
        self
    }

    /// The clock record timestamps are on, for sources to date what they read.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Decodes one raw ring-buffer record, counting it (and, if malformed, why).
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Record<'a>, RecordError> {
        self.metrics.records.increment(1);
        Record::decode(bytes).inspect_err(|_| self.metrics.bad_records.increment(1))
    }

    /// Takes one record from a source: `at` is its capture time (wall clock, also the de-dup
    /// clock), `iface` the interface it came from, if any. An IP packet goes through reassembly
    /// first; whole NOTIFYs go straight on.
    pub fn push(&self, record: &Record<'_>, at: SystemTime, iface: Option<&Arc<str>>) {
        self.push_counted(record, at, iface, &mut |_| {});
    }

    /// [`Pipeline::push`], telling `on_outcome` what became of every NOTIFY the record gave
    /// (one for a whole NOTIFY; none or more for an IP packet).
    pub fn push_counted(
        &self,
        record: &Record<'_>,
        at: SystemTime,
        iface: Option<&Arc<str>>,
        on_outcome: &mut impl FnMut(Outcome),
    ) {
        if !record.is_ip_packet() {
            on_outcome(self.handle(record, at, iface));
            return;
        }
        let now = Duration::from_nanos(record.header.timestamp_ns);
        let mut held = self.lock_reassembly();
        held.latest = held.latest.max(now);
        // What a packet completes is dated by the reassembly clock, on its interface.
        held.stage.push_packet(now, record, &mut |whole| {
            let at = self.clock.wall_time(whole.header.timestamp_ns);
            on_outcome(self.handle(whole, at, iface));
        });
        if !held.ticking && !held.stage.is_empty() {
            held.ticking = true;
            self.wake_clock.notify_one();
        }
    }

    /// Live, the reassembly stage's clock: every [`REASSEMBLY_TICK`] while it holds flows or
    /// fragments (or losses not yet logged) it closes what timed out (the NOTIFYs that
    /// completes go on), publishes its counters and, at most every 10 s, logs what it gave up,
    /// until `stop` fires; while nothing is held it sleeps until a packet leaves something.
    /// Returns at once for a capture file, whose time passes only with its records. The wiring
    /// spawns it once, whatever the source.
    pub async fn tick(self, stop: CancellationToken) {
        if self.clock.now().is_none() {
            return;
        }
        let mut ticker = tokio::time::interval(REASSEMBLY_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut losses = LossReport::default();
        let mut reported = Instant::now();
        loop {
            if !self.lock_reassembly().ticking {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake_clock.notified() => ticker.reset(),
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {
                    let mut held = self.lock_reassembly();
                    if held.finished {
                        return;
                    }
                    if let Some(now) = self.clock.now() {
                        held.stage.expire(now, &mut |whole| {
                            self.handle(whole, self.clock.wall_time(whole.header.timestamp_ns), None);
                        });
                    }
                    held.stage.export_metrics();
                    if reported.elapsed() >= LOSS_LOG_EVERY {
                        reported = Instant::now();
                        if let Some(since) = losses.since_last(&held.stage.stats()) {
                            warn!(since_last_line = %since, check = LOSS_CHECK, "reassembly gave up on some messages");
                        }
                    }
                    // Nothing left to time out or to log: sleep until a packet is held.
                    if held.stage.is_empty() && !losses.pending(&held.stage.stats()) {
                        held.ticking = false;
                    }
                }
            }
        }
    }

    /// The source has ended: gives up what reassembly still holds (the NOTIFYs that completes
    /// go on, reported to `on_outcome`), publishes its counters and returns its outcomes.
    pub fn finish(&self, on_outcome: &mut impl FnMut(Outcome)) -> ReassemblyStats {
        let mut held = self.lock_reassembly();
        let now = self.clock.now().unwrap_or(held.latest);
        held.finished = true;
        held.stage.finish(now, &mut |whole| {
            let at = self.clock.wall_time(whole.header.timestamp_ns);
            on_outcome(self.handle(whole, at, None));
        });
        held.stage.export_metrics();
        held.stage.stats()
    }

    /// What reassembly did so far, its counters published, without giving anything up.
    pub fn reassembly_stats(&self) -> ReassemblyStats {
        let held = self.lock_reassembly();
        held.stage.export_metrics();
        held.stage.stats()
    }

    fn lock_reassembly(&self) -> MutexGuard<'_, Held> {
        // The state stays consistent between calls; a panic elsewhere must not stop capture.
        self.reassembly
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Parses, de-duplicates and stages one whole NOTIFY captured at `captured_at`.
    fn handle(
        &self,
        record: &Record<'_>,
        captured_at: SystemTime,
        iface: Option<&Arc<str>>,
    ) -> Outcome {
        let notify = match sip::parse(record.payload, &self.options) {
            Ok(notify) => notify,
            Err(err) => {
                if let Some((_, counter)) = self.metrics.rejects.iter().find(|(e, _)| *e == err) {
                    counter.increment(1);
                }
                return Outcome::Rejected(err);
            }
        };
        // De-duplicate on the parsed bytes first: a copy costs no allocation at all.
        let transaction = Transaction {
            call_id: notify.call_id,
            cseq: notify.cseq,
            from_tag: notify.from_tag(),
            via_branch: notify.via_branch,
        };
        let verdict = match self.dedup.lock() {
            Ok(mut dedup) => dedup.observe(transaction, captured_at),
            // A panic elsewhere while holding the lock cannot leave the table inconsistent
            // in a way that matters more than losing de-dup; keep delivering.
            Err(poisoned) => poisoned.into_inner().observe(transaction, captured_at),
        };
        if verdict == Verdict::Duplicate {
            return Outcome::Duplicate;
        }
        let notification: Notification =
            notify.to_notification(&self.options, record.meta(captured_at, iface.cloned()));
        self.metrics.accepted.increment(1);
        if self.log_sip {
            tracing::info!(
                dn = %notification.dn,
                call_id = %notification.call_id,
                call_uuid = notification.call_uuid.as_deref().unwrap_or("-"),
                event = %notification.event,
                "notification"
            );
        } else {
            tracing::debug!(
                dn = %notification.dn,
                call_id = %notification.call_id,
                event = %notification.event,
                "notification"
            );
        }
        if let WhenFull::Wait { runtime, stop } = &self.when_full {
            runtime.block_on(async {
                tokio::select! {
                    () = self.queue.wait_for_room() => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        match self.queue.push(notification) {
            crate::queue::Pushed::Queued => Outcome::Queued,
            crate::queue::Pushed::DroppedOldest => Outcome::QueuedDroppingOldest,
            crate::queue::Pushed::Closed => Outcome::Closed,
        }
    }

    /// The queue this pipeline feeds.
    pub fn queue(&self) -> &NotificationQueue {
        &self.queue
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::collections::BTreeMap;

    use sipnotify_common::{EventHeader, FLAG_IP_PACKET, FLAG_TRUNCATED};
    use sipnotify_testkit::frames::{ipv4_fragments, udp};

    use super::*;

    const TALK: &[u8] = b"NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.210.81:5090;branch=z9hG4bK-1\r\n\
From: <sip:5551234@192.168.210.81>;tag=1\r\n\
To: <sip:1002@192.168.210.54>;tag=2\r\n\
Call-ID: abc@192.168.210.81\r\n\
CSeq: 3 NOTIFY\r\n\
Event: talk\r\n\
X-Genesys-CallUUID: UIVB8J6JE91C53UIM3VI59VHQ400001R\r\n\
Content-Length: 0\r\n\r\n";

    /// The flags' defaults (`--dedup-window 32s`, `--dedup-max-entries 65536`).
    fn settings() -> PipelineSettings {
        PipelineSettings {
            extra_headers: Vec::new(),
            allow_missing_call_uuid: false,
            dedup: DedupSettings {
                window: Duration::from_secs(32),
                max_entries: 65_536,
            },
            reassembly: ReassemblySettings::default(),
            senders: SourceFilter::default(),
        }
    }

    fn record(payload: &[u8]) -> Record<'_> {
        Record {
            header: EventHeader {
                ip_version: 4,
                dst_port: 5061,
                captured_len: payload.len() as u32,
                payload_len: payload.len() as u32,
                ..EventHeader::default()
            },
            payload,
        }
    }

    #[test]
    fn a_notify_is_queued_once_and_its_retransmission_is_dropped() {
        let queue = NotificationQueue::new(16);
        let pipeline = Pipeline::new(&settings(), &[5061], Clock::File, queue.clone());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(pipeline.handle(&record(TALK), t0, None), Outcome::Queued);
        assert_eq!(
            pipeline.handle(&record(TALK), t0 + Duration::from_millis(500), None),
            Outcome::Duplicate
        );
        assert_eq!(queue.len(), 1);
        let mut out = Vec::new();
        queue.try_pop_batch(16, &mut out);
        assert_eq!(out[0].dn, "1002");
        assert_eq!(out[0].call_id, "abc@192.168.210.81");
        assert_eq!(out[0].event, "talk");
        assert_eq!(out[0].meta.captured_at, t0);
    }

    #[test]
    fn rejects_carry_their_reason() {
        let queue = NotificationQueue::new(16);
        let pipeline = Pipeline::new(&settings(), &[5061], Clock::File, queue.clone());
        let invite = b"INVITE sip:a@b SIP/2.0\r\n\r\n";
        assert_eq!(
            pipeline.handle(&record(invite), SystemTime::now(), None),
            Outcome::Rejected(ParseError::NotNotify)
        );
        assert!(matches!(
            pipeline.decode(&[1, 2, 3]),
            Err(RecordError::TooShort(3))
        ));
        assert!(queue.is_empty());
    }

    fn ip_record(packet: &[u8], flags: u16) -> Record<'_> {
        Record {
            header: EventHeader {
                flags,
                timestamp_ns: 1_000_000_000,
                captured_len: packet.len() as u32,
                payload_len: packet.len() as u32,
                ..EventHeader::default()
            },
            payload: packet,
        }
    }

    /// TALK in another transaction, grown past any MTU so it travels in fragments.
    fn big_talk() -> Vec<u8> {
        let text = String::from_utf8(TALK.to_vec()).unwrap();
        let pad = format!("X-Pad: {}\r\nContent-Length: 0", "p".repeat(3000));
        text.replace("Content-Length: 0", &pad)
            .replace("CSeq: 3", "CSeq: 4")
            .into_bytes()
    }

    #[test]
    fn records_go_on_whole_or_through_reassembly_by_their_flag() {
        let queue = NotificationQueue::new(16);
        let pipeline = Pipeline::new(&settings(), &[5061], Clock::File, queue.clone());
        let mut outcomes = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        // A whole NOTIFY goes on as it is.
        pipeline.push_counted(&record(TALK), at, None, &mut |o| outcomes.push(o));
        assert_eq!(outcomes, [Outcome::Queued]);
        // IP packets are put together first: two fragments give one NOTIFY.
        let notify = big_talk();
        let pieces = ipv4_fragments(7, 17, &udp(5060, 5061, &notify), &[1480]);
        for piece in &pieces {
            let record = ip_record(piece, FLAG_IP_PACKET);
            pipeline.push_counted(&record, at, None, &mut |o| outcomes.push(o));
        }
        assert_eq!(outcomes, [Outcome::Queued, Outcome::Queued]);
        let mut out = Vec::new();
        queue.try_pop_batch(16, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].meta.captured_at, at, "dated by the reassembly clock");
        // A packet the capture cut short cannot be put back: counted, not parsed.
        let cut = ip_record(&pieces[0][..100], FLAG_IP_PACKET | FLAG_TRUNCATED);
        pipeline.push_counted(&cut, at, None, &mut |o| outcomes.push(o));
        assert_eq!(outcomes.len(), 2);
        let stats = pipeline.finish(&mut |o| outcomes.push(o));
        let lost: BTreeMap<&str, u64> = stats.losses().collect();
        assert_eq!(lost.get("ip_packet_truncated"), Some(&1));
    }
}
