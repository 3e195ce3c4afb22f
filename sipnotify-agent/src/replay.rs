//! `sipnotify-agent replay FILE`: feeds the NOTIFYs of a pcap/pcapng capture through the same
//! pipeline and delivery as `run`, for testing a bridge, reproducing a field report, or
//! back-filling what the agent missed.
//!
//! The file is read by the capture-file source ([`crate::capture::file`]): the kernel
//! program's own decision on every frame, each record stamped with its capture time, so
//! retransmissions are de-duplicated exactly as they would have been live, and IP fragments
//! and TCP segments put together by the pipeline's reassembly stage, as live. Notifications are
//! never dropped for age here (captures are old by nature), and reading waits while the queue
//! is full instead of letting it drop the oldest: a replay must deliver everything it reads.
//! At the end of the file what still waits for a piece is given up and counted. This module
//! is the command: opening the file, the wiring, and the summary.
//! UDP datagrams to `--hep-port` (9060) are read as a PBX's HEP feed.
//!
//! A capture that breaks part-way still delivers what came before the break, then fails with
//! the file and byte offset (exit 1). With the bridge down, delivery retries until it answers;
//! SIGINT/SIGTERM stop reading and leave `--shutdown-timeout` to deliver what is queued.

use std::{
    fmt,
    fs::File,
    io::IsTerminal as _,
    path::{Path, PathBuf},
};

use sipnotify_common::Counter;
use tokio::io::AsyncWrite;
use tracing::warn;

use crate::{
    capture::{
        file::{FileSource, FileStats, Speed},
        pcap::{CaptureError, CaptureReader, LinkType},
    },
    logging::LogSettings,
    pipeline::{Clock, Pipeline, PipelineSettings},
    sink::{ClientError, Delivery, DeliveryReport, SinkSettings},
    spool::SpoolSettings,
    wiring,
};

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// What `replay` runs with, validated by the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplaySettings {
    /// The pcap or pcapng capture.
    pub file: PathBuf,
    /// UDP destination ports to watch, as the XDP program would.
    pub ports: Vec<u16>,
    /// UDP destination port of HEP datagrams, decapsulated (`--hep-port`).
    pub hep_port: u16,
    /// Pacing.
    pub speed: Speed,
    /// Parsing and de-duplication.
    pub pipeline: PipelineSettings,
    /// Delivery (with no age limit: captures are old by nature).
    pub delivery: SinkSettings,
    /// The durable spool; `None` (the default) keeps the backlog in memory only.
    pub spool: Option<SpoolSettings>,
    /// Logging.
    pub log: LogSettings,
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The bridge client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The check before reading found a configuration error at the bridge.
    #[error(transparent)]
    Bridge(#[from] crate::sink::BridgeConfigError),
    /// The spool (`--spool on`) cannot be used.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// The file cannot be opened or read at all.
    #[error("cannot read capture `{}`: {reason}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not a capture this reader understands.
    #[error("cannot replay `{}`: {source}", path.display())]
    NotCapture {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CaptureError,
    },
    /// The capture breaks part-way; what came before was delivered.
    #[error(
        "capture `{}`: {source}; notifications delivered from before that point: {delivered}",
        path.display()
    )]
    Broken {
        /// The file.
        path: PathBuf,
        /// Where and how it breaks.
        #[source]
        source: CaptureError,
        /// Notifications delivered.
        delivered: u64,
    },
    /// Delivery stopped with an error.
    #[error("{0}")]
    Delivery(String),
}

impl ReplayError {
    /// Process exit code: 2 for bad usage or configuration (a file that is not a readable
    /// capture, a bridge or spool that cannot work), 1 at run time, as for every command.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Open { .. } | Self::NotCapture { .. } | Self::Bridge(_) => 2,
            Self::Spool(err) if err.is_config() => 2,
            Self::Spool(_) => 1,
            Self::Client(_) | Self::Broken { .. } | Self::Delivery(_) => 1,
        }
    }
}

/// The end-of-replay summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplaySummary {
    /// The file.
    pub file: PathBuf,
    /// What was read.
    pub stats: FileStats,
    /// What delivery achieved.
    pub delivery: DeliveryReport,
    /// Whether reading stopped on a signal.
    pub interrupted: bool,
}

impl fmt::Display for ReplaySummary {
    /// One line of totals, then one line per kind of loss, if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "replayed `{}`{}: {} packets, {} NOTIFYs, {} delivered, {} duplicates, {} rejected",
            self.file.display(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            s.packets,
            s.notifies,
            self.delivery.delivered,
            s.duplicates,
            s.rejected(),
        )?;
        if !s.rejects.is_empty() {
            let reasons: Vec<String> = s.rejects.iter().map(|(r, n)| format!("{r} {n}")).collect();
            write!(f, "\n  rejected by reason: {}", reasons.join(", "))?;
        }
        let d = &self.delivery;
        if d.rejected + d.expired + d.undelivered > 0 {
            write!(
                f,
                "\n  not delivered: {} refused by the bridge, {} expired, {} undelivered at the deadline",
                d.rejected, d.expired, d.undelivered
            )?;
        }
        let c = &s.capture;
        if c.get(Counter::Truncated) > 0 {
            write!(
                f,
                "\n  incomplete: {} truncated NOTIFYs",
                c.get(Counter::Truncated)
            )?;
        }
        if !s.hep.is_empty() {
            let outcomes: Vec<String> = s.hep.iter().map(|(o, n)| format!("{o} {n}")).collect();
            write!(f, "\n  hep datagrams: {}", outcomes.join(", "))?;
        }
        let r = &s.reassembly;
        if r.fragmented_notifies + r.tcp.notifies > 0 {
            write!(
                f,
                "\n  reassembled: {} NOTIFYs from IP fragments, {} NOTIFYs over TCP",
                r.fragmented_notifies, r.tcp.notifies
            )?;
        }
        let losses: Vec<String> = r
            .losses()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        if !losses.is_empty() {
            write!(
                f,
                "\n  given up in reassembly: {} ({} bytes of TCP stream skipped)",
                losses.join(", "),
                r.tcp.discarded_bytes
            )?;
        }
        let bad_headers = c.get(Counter::BailShortHeader)
            + c.get(Counter::BailBadIpHeader)
            + c.get(Counter::BailExtHeaderLimit);
        if bad_headers > 0 {
            write!(
                f,
                "\n  {bad_headers} frames with unreadable headers skipped"
            )?;
        }
        let refused = c.get(Counter::SourceNotAllowed) + r.source_not_allowed;
        if refused > 0 {
            write!(
                f,
                "\n  refused: {refused} NOTIFYs, TCP segments and IP fragments from sources outside --sip-source"
            )?;
        }
        let tls = c.get(Counter::TlsRecord) + c.get(Counter::DtlsRecord);
        if tls > 0 {
            write!(
                f,
                "\n  {tls} packets to a watched port start like TLS or DTLS records: sipnotify can only read plaintext SIP"
            )?;
        }
        for (code, n) in &s.unsupported_links {
            write!(
                f,
                "\n  {n} frames of unsupported {} skipped",
                LinkType::from_code(*code)
            )?;
        }
        Ok(())
    }
}

/// Replays `settings.file`, printing JSON lines (with `--stdout`) on stdout and the summary
/// on stderr.
pub async fn replay(settings: ReplaySettings) -> Result<ReplaySummary, ReplayError> {
    let result = replay_to(settings, tokio::io::stdout()).await;
    match &result {
        Ok(summary) => eprintln!("{summary}"),
        Err(ReplayFailure {
            summary: Some(summary),
            ..
        }) => eprintln!("{summary}"),
        Err(_) => {}
    }
    result.map_err(|failure| failure.error)
}

/// A failed replay, with the summary when reading got under way.
#[derive(Debug)]
pub struct ReplayFailure {
    /// Why it failed.
    pub error: ReplayError,
    /// What happened until then.
    pub summary: Option<Box<ReplaySummary>>,
}

impl From<ReplayError> for ReplayFailure {
    fn from(error: ReplayError) -> Self {
        Self {
            error,
            summary: None,
        }
    }
}

/// Replays `settings.file` with the JSON lines going to `out`; prints nothing itself.
pub async fn replay_to<W: AsyncWrite + Unpin + Send + 'static>(
    settings: ReplaySettings,
    out: W,
) -> Result<ReplaySummary, ReplayFailure> {
    let capacity = settings.delivery.queue_capacity;
    let delivery = Delivery::new(settings.delivery)
        .map_err(ReplayError::from)?
        .with_stdout(out);

    let path = settings.file.clone();
    let (reader, size) = open(&path)?;
    delivery
        .check_before_capture()
        .await
        .map_err(ReplayError::from)?;

    let (stage, delivery) =
        wiring::open_stage(settings.spool, capacity, delivery).map_err(ReplayError::from)?;
    let pipeline = Pipeline::new(
        &settings.pipeline,
        &settings.ports,
        Clock::File,
        stage.input().clone(),
    )
    .log_sip(settings.log.log_sip);
    let source = FileSource::new(
        reader,
        &settings.ports,
        settings.pipeline.senders.clone(),
        settings.speed,
        progress_bar(size),
    )
    .with_hep_port(settings.hep_port);
    // Everything read is delivered: with the bridge down, delivery keeps retrying until it
    // answers or a signal arrives, which leaves --shutdown-timeout to finish.
    let finished = wiring::wire(source, pipeline, delivery, stage)
        .await
        .map_err(|err| ReplayError::Delivery(format!("cannot install a signal handler: {err}")))?;
    finished.log_summary(0);
    let (read, delivered, interrupted) = (finished.source, finished.delivery, finished.interrupted);
    let finished_in_spool = finished.leftover.in_spool;

    let (stats, read_error) = match read {
        Ok((stats, error)) => (stats, error),
        Err(join) => {
            let error = ReplayError::Delivery(format!("the capture reader failed: {join}"));
            return Err(error.into());
        }
    };
    let (report, delivery_error) = match delivered {
        Ok(report) => (report, None),
        Err(join) => (
            DeliveryReport::default(),
            Some(format!("the delivery task failed: {join}")),
        ),
    };
    let summary = ReplaySummary {
        file: path.clone(),
        stats,
        delivery: report,
        interrupted,
    };
    let error = match (delivery_error, read_error) {
        (Some(delivery), read) => {
            if let Some(read) = read {
                warn!(file = %path.display(), error = %read, "the capture is broken too");
            }
            Some(ReplayError::Delivery(delivery))
        }
        (None, Some(source)) => Some(ReplayError::Broken {
            path,
            source,
            delivered: report.delivered,
        }),
        // Stopped by a signal (or the deadline) before everything read was delivered, and
        // not kept in a spool for the next start.
        (None, None) if report.undelivered > 0 && finished_in_spool == 0 => {
            Some(ReplayError::Delivery(format!(
                "{} notification(s) were still undelivered at the shutdown deadline",
                report.undelivered
            )))
        }
        (None, None) => None,
    };
    match error {
        None => Ok(summary),
        Some(error) => Err(ReplayFailure {
            error,
            summary: Some(Box::new(summary)),
        }),
    }
}

/// Opens the capture and reads its header; every failure here is a bad argument (exit 2),
/// except a header cut short, which is a broken capture (exit 1) like any later cut.
fn open(path: &Path) -> Result<(CaptureReader<File>, u64), ReplayFailure> {
    let unreadable = |err: std::io::Error| ReplayError::Open {
        path: path.to_owned(),
        reason: err.to_string().to_lowercase(),
    };
    let file = File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if metadata.is_dir() {
        return Err(ReplayError::Open {
            path: path.to_owned(),
            reason: "it is a directory".to_owned(),
        }
        .into());
    }
    match CaptureReader::new(file) {
        Ok(reader) => Ok((reader, metadata.len())),
        Err(CaptureError::Read { source, .. }) => Err(unreadable(source).into()),
        Err(source @ CaptureError::Truncated { .. }) => Err(ReplayError::Broken {
            path: path.to_owned(),
            source,
            delivered: 0,
        }
        .into()),
        Err(source) => Err(ReplayError::NotCapture {
            path: path.to_owned(),
            source,
        }
        .into()),
    }
}

/// A progress bar on stderr for a large file, when stderr is a terminal.
fn progress_bar(size: u64) -> Option<indicatif::ProgressBar> {
    if size < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(size),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{wide_bar} {bytes}/{total_bytes}, {eta} left, {msg}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        let path = PathBuf::from("x.pcap");
        let client = ReplayError::Client(ClientError {
            reason: "no roots".into(),
        });
        assert_eq!(client.exit_code(), 1);
        let open = ReplayError::Open {
            path: path.clone(),
            reason: "no such file or directory (os error 2)".into(),
        };
        assert_eq!(open.exit_code(), 2);
        assert_eq!(
            open.to_string(),
            "cannot read capture `x.pcap`: no such file or directory (os error 2)"
        );
        let broken = ReplayError::Broken {
            path,
            source: CaptureError::Truncated { offset: 1234 },
            delivered: 1,
        };
        assert_eq!(broken.exit_code(), 1);
        let text = broken.to_string();
        assert!(
            text.contains("`x.pcap`") && text.contains("byte 1234"),
            "{text}"
        );
    }

    #[test]
    fn the_summary_names_every_loss() {
        let mut stats = FileStats {
            packets: 17,
            notifies: 9,
            ..FileStats::default()
        };
        for (counter, n) in [
            (Counter::UdpWatched, 10),
            (Counter::NotifyMatched, 9),
            (Counter::Truncated, 1),
            (Counter::LaterFragments, 2),
            (Counter::TlsRecord, 4),
        ] {
            stats.capture.values[counter as usize] = n;
        }
        stats.reassembly.fragments.incomplete = 2;
        stats.reassembly.tcp.notifies = 3;
        stats.count_outcome(crate::pipeline::Outcome::Queued);
        stats.count_outcome(crate::pipeline::Outcome::Duplicate);
        stats.count_outcome(crate::pipeline::Outcome::Rejected(
            crate::sip::ParseError::NotNotify,
        ));
        stats.unsupported_links.insert(0, 3);
        let summary = ReplaySummary {
            file: PathBuf::from("c.pcap"),
            stats,
            delivery: DeliveryReport {
                delivered: 1,
                ..DeliveryReport::default()
            },
            interrupted: false,
        };
        let text = summary.to_string();
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "replayed `c.pcap`: 17 packets, 9 NOTIFYs, 1 delivered, 1 duplicates, 1 rejected"
        );
        assert!(text.contains("rejected by reason: not_notify 1"), "{text}");
        assert!(text.contains("1 truncated NOTIFYs"), "{text}");
        assert!(
            text.contains("4 packets to a watched port start like TLS"),
            "{text}"
        );
        assert!(
            text.contains("0 NOTIFYs from IP fragments, 3 NOTIFYs over TCP"),
            "{text}"
        );
        assert!(
            text.contains("given up in reassembly: fragment_incomplete 2"),
            "{text}"
        );
        assert!(
            text.contains("3 frames of unsupported link type 0 skipped"),
            "{text}"
        );
        assert!(!text.contains("not delivered"), "{text}");
    }
}
