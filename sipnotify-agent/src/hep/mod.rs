//! The HEP source: SIP mirrored by the PBX itself (Asterisk `res_hep_pjsip`, Kamailio
//! `siptrace`, OpenSIPS, FreeSWITCH), after decryption, as HEP over UDP. It needs no
//! capability and no eBPF, and reads SIP that travels over TLS.
//!
//! Each `--hep-listen` socket is read in batches (`socket`) when it is readable (tokio
//! `AsyncFd`; no timer), every datagram is forwarded unchanged if `--hep-forward` is set
//! (a non-blocking send: a relay that cannot keep up loses datagrams, never delivery), then
//! decoded (`decode`) and, if it carries SIP, handed to the one pipeline as a record, dated by
//! the HEP timestamp. Every datagram read is counted once by decode outcome in
//! `sipnotify_hep_packets_total{outcome}`; forwarding counts `forwarded`/`forward_failed`
//! beside them, and what the kernel dropped on the socket is a loss
//! (`sipnotify_dropped_total{reason="hep_socket_overflow"}`).

pub mod decode;
pub mod socket;

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
    time::SystemTime,
};

use metrics::Counter;
use sipnotify_common::EventHeader;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use decode::{HepError, HepSip, decode};

use crate::{
    loss::{Loss, Losses},
    pipeline::{Pipeline, Source},
    reassembly::fragment::{self, IpPacket},
    record::Record,
    source_filter::SourceFilter,
};

/// The default receive buffer per HEP socket: 32 MiB, about 2 s of 100 000 NOTIFYs/s.
pub const DEFAULT_RECV_BUFFER: usize = 32 << 20;
/// The `iface` of a notification read from HEP (with `--extras`).
pub const IFACE: &str = "hep";

/// The HEP shared secret (`--hep-auth-key-file`, `SIPNOTIFY_HEP_AUTH_KEY`); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(pub Arc<[u8]>);

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// What `--hep-*` set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HepSettings {
    /// Addresses to receive HEP on (none: no HEP source).
    pub listen: Vec<SocketAddr>,
    /// The key every packet must carry.
    pub auth_key: Option<AuthKey>,
    /// Where every datagram is relayed unchanged.
    pub forward: Option<SocketAddr>,
    /// Receive buffer per socket in bytes.
    pub recv_buffer: usize,
    /// Who may send HEP (`--hep-source`; empty: anyone), whatever the key says.
    pub senders: SourceFilter,
    /// Whose SIP a HEP packet may carry (`--sip-source`, checked on the inner source).
    pub sip_senders: SourceFilter,
}

/// Why the HEP source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HepSourceError {
    /// A listen address cannot be bound.
    #[error("cannot listen for HEP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The forwarding socket cannot be opened.
    #[error("cannot forward HEP to {addr}: {source}")]
    Forward {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// Counts by outcome, resolved once.
struct Counters {
    read: Counter,
    outcomes: Vec<(&'static str, Counter)>,
    forwarded: Counter,
    forward_failed: Counter,
    truncated: Counter,
    source_not_allowed: Counter,
    inner_source_not_allowed: Counter,
}

impl Counters {
    fn new() -> Self {
        let outcome = |label: &'static str| metrics::counter!("sipnotify_hep_packets_total", "outcome" => label);
        Self {
            read: metrics::counter!("sipnotify_hep_datagrams_total"),
            outcomes: HepError::OUTCOMES
                .iter()
                .map(|&o| (o, outcome(o)))
                .collect(),
            forwarded: outcome("forwarded"),
            forward_failed: outcome("forward_failed"),
            truncated: outcome("truncated"),
            source_not_allowed: outcome("source_not_allowed"),
            inner_source_not_allowed: outcome("inner_source_not_allowed"),
        }
    }

    fn outcome(&self, label: &'static str) {
        if let Some((_, counter)) = self.outcomes.iter().find(|(o, _)| *o == label) {
            counter.increment(1);
        }
    }
}

/// What the HEP source saw, for the shutdown log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HepReport {
    /// Datagrams read.
    pub read: u64,
    /// Of them, SIP handed to the pipeline.
    pub sip: u64,
    /// Of them, refused or skipped (every decode outcome but `sip`).
    pub skipped: u64,
    /// Of them, cut short by the receive buffer (counted `truncated`).
    pub truncated: u64,
    /// Forwarded unchanged.
    pub forwarded: u64,
    /// Not forwarded (the relay's socket was full or refused).
    pub forward_failed: u64,
    /// Dropped by the kernel on the receive sockets before they were read.
    pub kernel_drops: u64,
    /// Refused: sent from outside `--hep-source` (counted in `skipped` too, never forwarded).
    pub source_not_allowed: u64,
    /// Refused: SIP whose inner source is outside `--sip-source`, or unknown while it is set
    /// (counted in `skipped` too).
    pub inner_source_not_allowed: u64,
}

impl HepReport {
    fn add(&mut self, other: HepReport) {
        self.read += other.read;
        self.sip += other.sip;
        self.skipped += other.skipped;
        self.truncated += other.truncated;
        self.forwarded += other.forwarded;
        self.forward_failed += other.forward_failed;
        self.kernel_drops += other.kernel_drops;
        self.source_not_allowed += other.source_not_allowed;
        self.inner_source_not_allowed += other.inner_source_not_allowed;
    }

    /// One line for what HEP brought, if it brought anything.
    pub fn log(&self) {
        if self.read > 0 {
            info!(
                read = self.read,
                sip = self.sip,
                skipped = self.skipped,
                forwarded = self.forwarded,
                "hep finished"
            );
        }
        if self.source_not_allowed + self.inner_source_not_allowed > 0 {
            warn!(
                from_outside_hep_source = self.source_not_allowed,
                sip_from_outside_sip_source = self.inner_source_not_allowed,
                check = "a host outside hep_source sending HEP, or a PBX mirroring SIP from \
                         hosts outside sip_source: add the PBX or the SIP Server, or find who \
                         sends it",
                "hep packets were refused"
            );
        }
        if self.kernel_drops + self.forward_failed + self.truncated > 0 {
            warn!(
                kernel_drops = self.kernel_drops,
                forward_failed = self.forward_failed,
                truncated = self.truncated,
                check = "kernel_drops: the agent fell behind the PBX's HEP feed (raise \
                         --hep-recv-buffer, give the agent CPU); forward_failed: the \
                         --hep-forward collector is unreachable or slower than the feed",
                "hep lost datagrams"
            );
        }
    }
}

/// The HEP sockets, bound.
pub struct HepSource {
    sockets: Vec<UdpSocket>,
    forward: Option<Arc<UdpSocket>>,
    auth_key: Option<AuthKey>,
    senders: SourceFilter,
    sip_senders: SourceFilter,
    losses: Option<Arc<Losses>>,
}

impl HepSource {
    /// Binds every listen address, and the relay if one is set. A bind failure is a
    /// configuration error (the address is taken or not local).
    pub fn bind(settings: &HepSettings) -> Result<Self, HepSourceError> {
        let recv_buffer = if settings.recv_buffer == 0 {
            DEFAULT_RECV_BUFFER
        } else {
            settings.recv_buffer
        };
        let sockets = settings
            .listen
            .iter()
            .map(|&addr| {
                socket::bind(addr, recv_buffer)
                    .map_err(|source| HepSourceError::Bind { addr, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let forward = settings
            .forward
            .map(|addr| {
                let local: SocketAddr = if addr.is_ipv6() {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local)
                    .and_then(|s| s.connect(addr).map(|()| s))
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|source| HepSourceError::Forward { addr, source })?;
                Ok(Arc::new(socket))
            })
            .transpose()?;
        Ok(Self {
            sockets,
            forward,
            auth_key: settings.auth_key.clone(),
            senders: settings.senders.clone(),
            sip_senders: settings.sip_senders.clone(),
            losses: None,
        })
    }

    /// Reports the kernel's drops on the sockets to `losses` (the log lines and the shutdown
    /// summary), not only to the metric.
    pub fn with_losses(mut self, losses: Arc<Losses>) -> Self {
        self.losses = Some(losses);
        self
    }

    /// The bound addresses (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

impl Source for HepSource {
    /// What was read, handed on and lost.
    type Report = HepReport;

    async fn feed(self, pipeline: Pipeline, stop: CancellationToken) -> HepReport {
        let counters = Arc::new(Counters::new());
        let iface: Arc<str> = Arc::from(IFACE);
        let mut readers = JoinSet::new();
        for socket in self.sockets {
            let reader = Reader {
                pipeline: pipeline.clone(),
                counters: Arc::clone(&counters),
                forward: self.forward.clone(),
                auth_key: self.auth_key.clone(),
                senders: self.senders.clone(),
                sip_senders: self.sip_senders.clone(),
                iface: Arc::clone(&iface),
                losses: self.losses.clone(),
            };
            readers.spawn(reader.run(socket, stop.clone()));
        }
        let mut report = HepReport::default();
        while let Some(result) = readers.join_next().await {
            match result {
                Ok(Ok(r)) => report.add(r),
                Ok(Err(err)) => warn!(error = %err, "hep socket failed; stopped reading it"),
                Err(join) => warn!(error = %join, "hep reader task failed"),
            }
        }
        report
    }
}

/// One socket's reader.
struct Reader {
    pipeline: Pipeline,
    counters: Arc<Counters>,
    forward: Option<Arc<UdpSocket>>,
    auth_key: Option<AuthKey>,
    senders: SourceFilter,
    sip_senders: SourceFilter,
    iface: Arc<str>,
    losses: Option<Arc<Losses>>,
}

impl Reader {
    async fn run(self, socket: UdpSocket, stop: CancellationToken) -> io::Result<HepReport> {
        // SAFETY: the AsyncFd owns the socket, whose descriptor stays open and unchanged
        // until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let mut batch = socket::Batch::new();
        let mut report = HepReport::default();
        let mut drops_seen = 0u32;
        loop {
            let mut ready = tokio::select! {
                ready = fd.readable() => ready?,
                () = stop.cancelled() => break,
            };
            let n = match ready.try_io(|socket| batch.recv(socket.get_ref())) {
                Ok(Ok(n)) => n,
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            };
            for i in 0..n {
                if let Some((datagram, truncated, from)) = batch.get(i) {
                    self.handle(datagram, truncated, from, &mut report);
                }
            }
            // The counter is the socket's total; only its growth is new.
            let drops = batch.kernel_drops.wrapping_sub(drops_seen);
            if drops > 0 {
                drops_seen = batch.kernel_drops;
                report.kernel_drops += u64::from(drops);
                match &self.losses {
                    Some(losses) => losses.record(Loss::HepSocketOverflow, drops.into()),
                    None => Loss::HepSocketOverflow.counter().increment(drops.into()),
                }
            }
        }
        Ok(report)
    }

    /// One datagram: its sender checked, relayed, decoded, its inner source checked,
    /// counted, and its SIP handed on.
    fn handle(
        &self,
        datagram: &[u8],
        truncated: bool,
        from: Option<SocketAddr>,
        report: &mut HepReport,
    ) {
        report.read += 1;
        self.counters.read.increment(1);
        // Refused before anything else: not relayed, not decoded.
        if !self.senders.allows_everyone() && !from.is_some_and(|f| self.senders.allows(f.ip())) {
            report.source_not_allowed += 1;
            report.skipped += 1;
            self.counters.source_not_allowed.increment(1);
            return;
        }
        if let Some(forward) = &self.forward {
            if forward.send(datagram).is_ok() {
                report.forwarded += 1;
                self.counters.forwarded.increment(1);
            } else {
                report.forward_failed += 1;
                self.counters.forward_failed.increment(1);
            }
        }
        if truncated {
            report.truncated += 1;
            report.skipped += 1;
            self.counters.truncated.increment(1);
            return;
        }
        let key = self.auth_key.as_ref().map(|k| &k.0[..]);
        match decode(datagram, key) {
            Ok(sip) if !inner_source_allowed(&self.sip_senders, &sip) => {
                report.inner_source_not_allowed += 1;
                report.skipped += 1;
                self.counters.inner_source_not_allowed.increment(1);
            }
            Ok(sip) => {
                report.sip += 1;
                self.counters.outcome("sip");
                deliver(&self.pipeline, &sip, &self.iface);
            }
            Err(err) => {
                report.skipped += 1;
                self.counters.outcome(err.outcome());
            }
        }
    }
}

/// Whether `sip`'s inner source (the SIP Server the PBX heard it from) may send NOTIFYs:
/// always without `--sip-source`; with it, only a source inside it (a packet that names none
/// cannot be vouched for).
pub fn inner_source_allowed(senders: &SourceFilter, sip: &HepSip<'_>) -> bool {
    senders.allows_everyone() || sip.src.is_some_and(|src| senders.allows(src.ip()))
}

/// Hands one HEP-carried SIP message to the pipeline as a record, dated by its HEP time
/// (the time now when the packet has none).
pub fn deliver(pipeline: &Pipeline, sip: &HepSip<'_>, iface: &Arc<str>) {
    let record = Record {
        header: header(sip),
        payload: sip.payload,
    };
    let at = sip.time.unwrap_or_else(SystemTime::now);
    pipeline.push(&record, at, Some(iface));
}

/// The UDP payload of the IP packet `l3` if it is an unfragmented datagram to `port`: how
/// `replay` finds the HEP feed in a capture.
pub fn datagram_to(l3: &[u8], port: u16) -> Option<&[u8]> {
    let IpPacket::Whole {
        protocol: 17,
        payload: udp,
        ..
    } = fragment::parse_ip(l3).ok()?
    else {
        return None;
    };
    let [_, _, d0, d1, l0, l1, _, _, ..] = *udp else {
        return None;
    };
    if u16::from_be_bytes([d0, d1]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    udp.get(8..len.clamp(8, udp.len()))
}

/// The capture header a HEP message stands for: its addresses and ports, its length.
pub fn header(sip: &HepSip<'_>) -> EventHeader {
    let unspecified = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    let (src, dst) = (
        sip.src.unwrap_or(unspecified),
        sip.dst.unwrap_or(unspecified),
    );
    let len = u32::try_from(sip.payload.len()).unwrap_or(u32::MAX);
    EventHeader {
        payload_len: len,
        captured_len: len,
        ip_version: if src.is_ipv6() { 6 } else { 4 },
        src_addr: addr_bytes(src.ip()),
        dst_addr: addr_bytes(dst.ip()),
        src_port: src.port(),
        dst_port: dst.port(),
        ..EventHeader::default()
    }
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// Two sources read at once (`run --iface … --hep-listen …`): when either ends (a fatal
/// error), the other is stopped too, as `run` stops when its one source ends.
pub struct Both<A, B>(pub Option<A>, pub Option<B>);

impl<A: Source, B: Source> Source for Both<A, B> {
    /// Each side's report, if it ran.
    type Report = (Option<A::Report>, Option<B::Report>);

    async fn feed(self, pipeline: Pipeline, stop: CancellationToken) -> Self::Report {
        let inner = stop.child_token();
        tokio::join!(
            feed_one(self.0, pipeline.clone(), inner.clone()),
            feed_one(self.1, pipeline, inner)
        )
    }
}

/// Runs `source` if there is one, and stops the other side when it ends.
async fn feed_one<S: Source>(
    source: Option<S>,
    pipeline: Pipeline,
    stop: CancellationToken,
) -> Option<S::Report> {
    let report = source?.feed(pipeline, stop.clone()).await;
    stop.cancel();
    Some(report)
}
