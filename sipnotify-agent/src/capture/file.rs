//! The capture-file source (`replay`): reads a pcap/pcapng file ([`super::pcap`]), runs the
//! kernel program's decision on every frame ([`Filter`]) and hands the records to the pipeline,
//! stamped with their capture time, so retransmissions are de-duplicated exactly as they would
//! have been live. Reading runs on a blocking thread (file I/O and real-time sleeps) and waits
//! while the pipeline's stage is full: a replay loses nothing.
//!
//! A file holds every packet, not only what a kernel chose to copy, so besides the records the
//! decision makes, the packets it skipped for any reason but an unreadable header go to the
//! pipeline as IP packets ([`Record::ip_packet`]) for reassembly to judge: a capture may hold
//! the later fragments of a NOTIFY before its first, which no live source can follow (the
//! program counts them as `later_fragments`). Reassembly ignores whatever else it is given
//! (whole UDP datagrams, segments to unwatched ports) and drops the datagrams it completes for
//! other ports. Live sources hand over only what the decision copies: the XDP program copies
//! nothing else, and AF_PACKET's filter passes later fragments but not the first fragments of
//! other ports' datagrams, so holding them would count every such datagram as incomplete.
//!
//! UDP datagrams to the HEP port (`replay --hep-port`) are a PBX's HEP feed: decapsulated
//! ([`crate::hep`]) and their SIP handed on like a captured NOTIFY, dated by the HEP time.

use std::{
    collections::BTreeMap,
    fs::File,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sipnotify_common::{CounterSet, decide::Skip};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::pcap::{self, CaptureError, CaptureReader, Filter, Inspection, LinkType};
use crate::{
    hep,
    pipeline::{Outcome, Pipeline, Source},
    reassembly::ReassemblyStats,
    record::Record,
    source_filter::SourceFilter,
};

/// The longest single sleep in real-time mode, so a stop request is seen promptly.
const MAX_PACING_SLEEP: Duration = Duration::from_millis(100);

/// How fast to replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Speed {
    /// Reproduce the gaps between packets (de-dup, batching and the bridge see live timing).
    Realtime,
    /// As fast as delivery keeps up.
    #[default]
    Max,
}

/// What the reader saw, packet by packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Frames read from the file.
    pub packets: u64,
    /// NOTIFY records handed to the parser: whole datagrams, and reassembled ones.
    pub notifies: u64,
    /// What the XDP program's counters would say about these frames (the same decision,
    /// counted the same way): NOTIFYs matched, truncated, fragments, TLS records, …
    pub capture: CounterSet,
    /// Frames of a link type that is not decoded, by link type number.
    pub unsupported_links: BTreeMap<u32, u64>,
    /// Queued for delivery.
    pub queued: u64,
    /// Copies of a NOTIFY already queued (see `dedup`).
    pub duplicates: u64,
    /// Records the parser refused, by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// IP fragment and TCP reassembly.
    pub reassembly: ReassemblyStats,
    /// UDP datagrams to the HEP port, by decode outcome (`sip` went on as NOTIFY records).
    pub hep: BTreeMap<&'static str, u64>,
}

impl FileStats {
    /// Counts what became of one NOTIFY record.
    pub fn count_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Queued | Outcome::QueuedDroppingOldest => self.queued += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Rejected(err) => *self.rejects.entry(err.reason()).or_default() += 1,
            Outcome::Closed => *self.rejects.entry("queue_closed").or_default() += 1,
        }
    }

    /// Counts one NOTIFY record handed to the parser, and what became of it.
    fn count_parsed(&mut self, outcome: Outcome) {
        self.notifies += 1;
        self.count_outcome(outcome);
    }

    /// The rejected records, all reasons together.
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }
}

/// A capture file as a source.
pub struct FileSource {
    reader: CaptureReader<File>,
    filter: Filter,
    speed: Speed,
    progress: Option<indicatif::ProgressBar>,
    hep_port: Option<u16>,
    /// Whose SIP a HEP datagram may carry (its inner source, `--sip-source`).
    sip_senders: SourceFilter,
}

impl FileSource {
    /// Reads `reader`, watching `ports` for NOTIFYs from `senders` as the XDP program would,
    /// at `speed`; `progress` follows the file position.
    pub fn new(
        reader: CaptureReader<File>,
        ports: &[u16],
        senders: SourceFilter,
        speed: Speed,
        progress: Option<indicatif::ProgressBar>,
    ) -> Self {
        Self {
            reader,
            filter: Filter::from_senders(ports, senders.clone()),
            speed,
            progress,
            hep_port: None,
            sip_senders: senders,
        }
    }

    /// Reads the UDP datagrams to `port` as HEP.
    pub fn with_hep_port(mut self, port: u16) -> Self {
        self.hep_port = Some(port);
        self
    }
}

impl Source for FileSource {
    /// The counts, and the error that ended reading early, if any.
    type Report = (FileStats, Option<CaptureError>);

    fn feed(
        self,
        pipeline: Pipeline,
        stop: CancellationToken,
    ) -> impl Future<Output = Self::Report> + Send + 'static {
        let job = ReadJob {
            filter: self.filter,
            pipeline: pipeline.wait_for_room(stop.clone()),
            speed: self.speed,
            stop,
            progress: self.progress,
            hep_port: self.hep_port,
            sip_senders: self.sip_senders,
        };
        let reader = self.reader;
        async move {
            match tokio::task::spawn_blocking(move || job.run(reader)).await {
                Ok(report) => report,
                // The blocking task panicked: resume the panic on this task, where the
                // wiring's join reports it.
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        }
    }
}

/// The reading side, run on a blocking thread.
struct ReadJob {
    filter: Filter,
    /// Waits for room in the stage (this is a blocking thread).
    pipeline: Pipeline,
    speed: Speed,
    stop: CancellationToken,
    progress: Option<indicatif::ProgressBar>,
    hep_port: Option<u16>,
    sip_senders: SourceFilter,
}

impl ReadJob {
    /// Reads to the end, a stop request, or a broken record; returns the counts and the
    /// error that ended reading early, if any.
    fn run(mut self, mut reader: CaptureReader<File>) -> (FileStats, Option<CaptureError>) {
        let mut stats = FileStats::default();
        let mut unsupported_warned = false;
        // Real-time pacing: the first packet's capture time against the wall clock.
        let mut origin: Option<(Duration, Instant)> = None;
        let clock = self.pipeline.clock();
        let error = loop {
            if self.stop.is_cancelled() {
                break None;
            }
            let packet = match reader.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break None,
                Err(err) => break Some(err),
            };
            stats.packets += 1;
            if self.speed == Speed::Realtime {
                let (first, started) = *origin.get_or_insert((packet.timestamp, Instant::now()));
                let due = started + packet.timestamp.saturating_sub(first);
                self.sleep_until(due);
            }
            let timestamp_ns = u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX);
            let at = clock.wall_time(timestamp_ns);
            let hep = self
                .hep_port
                .and_then(|port| hep::datagram_to(pcap::layer3(packet.link, packet.data)?, port));
            if let Some(datagram) = hep {
                self.replay_hep(&mut stats, datagram, at);
                continue;
            }
            // Counted by the filter, as the program counts them.
            let record = match self
                .filter
                .inspect(packet.link, packet.data, packet.timestamp)
            {
                Inspection::Notify(record) => Some(record),
                // Refused by the decision: counted there, nothing to put together.
                Inspection::Skip(Skip::Bail(_) | Skip::SourceNotAllowed) => None,
                // See the module header: a file holds what no live source could follow.
                Inspection::Skip(_) => pcap::layer3(packet.link, packet.data)
                    .map(|l3| Record::ip_packet(l3, timestamp_ns)),
                Inspection::UnsupportedLink(code) => {
                    if !unsupported_warned {
                        unsupported_warned = true;
                        warn!(
                            link = %LinkType::from_code(code),
                            "frames of this link type are skipped: replay reads ethernet, linux cooked and raw ip"
                        );
                    }
                    *stats.unsupported_links.entry(code).or_default() += 1;
                    None
                }
            };
            if let Some(record) = record {
                self.pipeline
                    .push_counted(&record, at, None, &mut |o| stats.count_parsed(o));
            }
            if let Some(bar) = &self.progress {
                if stats.packets % 1024 == 0 {
                    bar.set_position(reader.position());
                    bar.set_message(format!("{} NOTIFYs", stats.notifies));
                }
            }
        };
        if error.is_none() {
            // The capture is over: what is still waiting for a missing piece never comes.
            stats.reassembly = self.pipeline.finish(&mut |o| stats.count_parsed(o));
        } else {
            stats.reassembly = self.pipeline.reassembly_stats();
        }
        stats.capture = *self.filter.counts();
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        (stats, error)
    }

    /// Decapsulates one HEP datagram and hands its SIP to the pipeline, dated by the HEP time
    /// (the frame's when it has none); every datagram is counted by outcome.
    fn replay_hep(&self, stats: &mut FileStats, datagram: &[u8], frame_time: SystemTime) {
        match hep::decode(datagram, None) {
            Ok(sip) if !hep::inner_source_allowed(&self.sip_senders, &sip) => {
                *stats.hep.entry("inner_source_not_allowed").or_default() += 1;
            }
            Ok(sip) => {
                *stats.hep.entry("sip").or_default() += 1;
                let iface: Arc<str> = Arc::from(hep::IFACE);
                let record = Record {
                    header: hep::header(&sip),
                    payload: sip.payload,
                };
                let at = sip.time.unwrap_or(frame_time);
                self.pipeline
                    .push_counted(&record, at, Some(&iface), &mut |o| stats.count_parsed(o));
            }
            Err(err) => *stats.hep.entry(err.outcome()).or_default() += 1,
        }
    }

    /// Sleeps until `due`, in slices so a stop request is seen.
    fn sleep_until(&self, due: Instant) {
        loop {
            let now = Instant::now();
            if now >= due || self.stop.is_cancelled() {
                return;
            }
            std::thread::sleep((due - now).min(MAX_PACING_SLEEP));
        }
    }
}
