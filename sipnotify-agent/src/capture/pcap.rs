//! Capture files for the capture-file source (`file`): reads pcap and pcapng files and picks
//! out the NOTIFYs exactly the way the XDP program does.
//!
//! Reading streams the file through a bounded buffer (captures can be gigabytes) with the
//! `pcap-file` parsers, tracking the byte offset of every record so a broken or cut-short file
//! is reported with the place it breaks. Two of that crate's shortcuts are avoided on purpose:
//! pcap records are read raw (it refuses `orig_len > snaplen`, which every capture taken with
//! `-s` has), and pcapng timestamps are scaled by the interface's `if_tsresol` here (it reads
//! every timestamp as nanoseconds, while the default unit is the microsecond).
//!
//! Filtering ([`Filter`]) runs `sipnotify_common::decide`, the decision the kernel program
//! runs, with the same port bitmap ([`SipConfig`]), and counts it the same way. For link types without an Ethernet
//! header (Linux cooked capture, raw IP) a 14-byte Ethernet header carrying the protocol is
//! put in front of the layer-3 bytes, so the walk sees what it would see on the wire.

use std::{fmt, io, time::Duration};

use pcap_file::{
    PcapError,
    pcap::{PcapHeader, PcapParser},
    pcapng::{
        Block, PcapNgParser,
        blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
    },
};
use sipnotify_common::{
    Counter, CounterSet, SipConfig,
    decide::Skip,
    net::{self, Bail, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, Walk},
};

use super::frame::{FragmentFollower, SplicedFrame, inspect};
use crate::{record::Record, source_filter::SourceFilter};

/// The longest record (pcap packet or pcapng block) accepted; a longer one means a corrupt
/// length field. libpcap caps packets at 256 KiB and Wireshark pcapng blocks at 16 MiB.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// How much is read from the file at a time.
const READ_CHUNK: usize = 256 << 10;

/// Linux cooked capture v1: packet type, ARPHRD type, address length, 8 address bytes, protocol.
const SLL_HLEN: usize = 16;
/// Linux cooked capture v2: protocol, reserved, ifindex, ARPHRD type, packet type, address
/// length, 8 address bytes.
const SLL2_HLEN: usize = 20;

const PCAPNG_MAGIC: u32 = 0x0a0d_0d0a;
const PCAP_MAGICS: [u32; 4] = [0xa1b2_c3d4, 0xa1b2_3c4d, 0xd4c3_b2a1, 0x4d3c_b2a1];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The link-layer header type of a capture (<https://www.tcpdump.org/linktypes.html>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet (1).
    Ethernet,
    /// Linux cooked capture v1 (113), what older `tcpdump -i any` writes.
    LinuxSll,
    /// Linux cooked capture v2 (276), what `tcpdump -i any` writes since libpcap 1.10.
    LinuxSll2,
    /// Raw IP, version from the first nibble (101, and the DLT values 12 and 14 some systems
    /// write instead).
    RawIp,
    /// Raw IPv4 (228).
    Ipv4,
    /// Raw IPv6 (229).
    Ipv6,
    /// Anything else: its packets are counted and skipped.
    Other(u32),
}

impl LinkType {
    /// The type for a LINKTYPE_ (or leaked DLT_) number.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::Ethernet,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            101 | 12 | 14 => Self::RawIp,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ethernet => f.write_str("ethernet"),
            Self::LinuxSll => f.write_str("linux cooked v1"),
            Self::LinuxSll2 => f.write_str("linux cooked v2"),
            Self::RawIp => f.write_str("raw ip"),
            Self::Ipv4 => f.write_str("raw ipv4"),
            Self::Ipv6 => f.write_str("raw ipv6"),
            Self::Other(code) => write!(f, "link type {code}"),
        }
    }
}

/// The container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap.
    Pcap,
    /// pcapng.
    PcapNg,
}

/// Why a capture cannot be read (further).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng file (it starts with {magic})")]
    NotCapture {
        /// The first bytes, in hex.
        magic: String,
    },
    /// A gzip file, as `tcpdump -w - | gzip` writes.
    #[error("the file is gzip-compressed; decompress it first (gunzip)")]
    Compressed,
    /// The file header is invalid.
    #[error("invalid {format} file header: {reason}")]
    BadHeader {
        /// `pcap` or `pcapng`.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file ends inside a record.
    #[error("the file ends in the middle of the record at byte {offset} (it was cut short)")]
    Truncated {
        /// Where the incomplete record starts.
        offset: u64,
    },
    /// A record cannot be parsed.
    #[error("broken record at byte {offset}: {reason}")]
    Corrupt {
        /// Where the record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading the file failed.
    #[error("read error at byte {offset}: {source}")]
    Read {
        /// How far reading got.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl CaptureError {
    /// The byte offset the error is about, when it is about one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Truncated { offset }
            | Self::Corrupt { offset, .. }
            | Self::Read { offset, .. } => Some(*offset),
            Self::NotCapture { .. } | Self::Compressed | Self::BadHeader { .. } => None,
        }
    }
}

/// One captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Capture time since the Unix epoch.
    pub timestamp: Duration,
    /// How to read `data`.
    pub link: LinkType,
    /// Length of the frame on the wire (at least `data.len()`).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
    /// Byte offset of the record in the file.
    pub offset: u64,
}

/// What a pcapng interface description says about its packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interface {
    link: LinkType,
    snaplen: u32,
    /// `if_tsresol`: 10^-n seconds, or 2^-n with the high bit set; 6 when absent.
    tsresol: u8,
    /// `if_tsoffset`, seconds added to every timestamp.
    tsoffset: u64,
}

impl Interface {
    fn from_block(block: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut interface = Self {
            link: LinkType::from_code(u32::from(block.linktype)),
            snaplen: block.snaplen,
            tsresol: 6,
            tsoffset: 0,
        };
        for option in &block.options {
            match option {
                InterfaceDescriptionOption::IfTsResol(r) => interface.tsresol = *r,
                InterfaceDescriptionOption::IfTsOffset(s) => interface.tsoffset = *s,
                _ => {}
            }
        }
        interface
    }

    /// Converts a raw pcapng timestamp (in this interface's units) to time since the epoch.
    fn timestamp(&self, units: u64) -> Option<Duration> {
        let per_second: u128 = if self.tsresol & 0x80 == 0 {
            10u128.checked_pow(u32::from(self.tsresol))?
        } else {
            1u128.checked_shl(u32::from(self.tsresol & 0x7f))?
        };
        let units = u128::from(units);
        let secs = u64::try_from(units / per_second).ok()?;
        let nanos = u32::try_from((units % per_second) * 1_000_000_000 / per_second).ok()?;
        Duration::new(secs, nanos).checked_add(Duration::from_secs(self.tsoffset))
    }
}

enum State {
    Pcap {
        parser: PcapParser,
        header: PcapHeader,
        link: LinkType,
    },
    PcapNg {
        parser: PcapNgParser,
        interfaces: Vec<Interface>,
    },
}

/// What parsing the buffered bytes gave.
enum Step {
    /// A packet whose bytes were copied into `frame`.
    Packet {
        used: usize,
        timestamp: Duration,
        link: LinkType,
        orig_len: u32,
    },
    /// A block that carries no packet.
    Skip { used: usize },
}

/// The file, read in chunks, with the unparsed bytes and their offset.
struct Input<R> {
    input: R,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
}

impl<R: io::Read> Input<R> {
    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn advance(&mut self, used: usize) {
        self.start += used;
        self.offset += used as u64;
    }

    /// Reads more of the file, first moving the unparsed bytes to the front and growing the
    /// buffer when a single record fills it.
    fn fill(&mut self) -> Result<(), CaptureError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_RECORD_BYTES + READ_CHUNK);
            self.buf.resize(grown.max(self.end + READ_CHUNK), 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Read {
                        offset: self.offset + (self.end - self.start) as u64,
                        source,
                    });
                }
            }
        }
    }
}

/// Streams the packets of a pcap or pcapng file.
pub struct CaptureReader<R> {
    input: Input<R>,
    state: State,
    /// The current packet's bytes (a copy, so the buffer can be refilled freely).
    frame: Vec<u8>,
    /// pcapng simple packet blocks carry no time: they get the previous packet's.
    last_timestamp: Duration,
}

impl<R: io::Read> CaptureReader<R> {
    /// Reads the file header.
    pub fn new(input: R) -> Result<Self, CaptureError> {
        let mut input = Input {
            input,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
        };
        while input.end < 4 && !input.eof {
            input.fill()?;
        }
        let head = input.available();
        if head.starts_with(&GZIP_MAGIC) {
            return Err(CaptureError::Compressed);
        }
        let magic = head
            .get(..4)
            .map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]]));
        let format = match magic {
            Some(PCAPNG_MAGIC) => Format::PcapNg,
            Some(m) if PCAP_MAGICS.contains(&m) => Format::Pcap,
            _ => {
                let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
                return Err(CaptureError::NotCapture {
                    magic: if shown.is_empty() {
                        "nothing: it is empty".to_owned()
                    } else {
                        format!("0x{}", shown.concat())
                    },
                });
            }
        };
        loop {
            let available = input.available();
            let parsed = match format {
                Format::Pcap => PcapParser::new(available).map(|(rest, parser)| {
                    let header = parser.header();
                    let link = LinkType::from_code(u32::from(header.datalink));
                    (
                        available.len() - rest.len(),
                        State::Pcap {
                            parser,
                            header,
                            link,
                        },
                    )
                }),
                Format::PcapNg => PcapNgParser::new(available).map(|(rest, parser)| {
                    let interfaces = Vec::new();
                    (
                        available.len() - rest.len(),
                        State::PcapNg { parser, interfaces },
                    )
                }),
            };
            match parsed {
                Ok((used, state)) => {
                    input.advance(used);
                    return Ok(Self {
                        input,
                        state,
                        frame: Vec::new(),
                        last_timestamp: Duration::ZERO,
                    });
                }
                Err(PcapError::IncompleteBuffer) if !input.eof => input.fill()?,
                Err(PcapError::IncompleteBuffer) => {
                    return Err(CaptureError::Truncated { offset: 0 });
                }
                Err(err) => {
                    return Err(CaptureError::BadHeader {
                        format: match format {
                            Format::Pcap => "pcap",
                            Format::PcapNg => "pcapng",
                        },
                        reason: describe(&err),
                    });
                }
            }
        }
    }

    /// The container format.
    pub fn format(&self) -> Format {
        match self.state {
            State::Pcap { .. } => Format::Pcap,
            State::PcapNg { .. } => Format::PcapNg,
        }
    }

    /// Bytes of the file consumed so far.
    pub fn position(&self) -> u64 {
        self.input.offset
    }

    /// The next packet, or `None` at a clean end of file.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, CaptureError> {
        loop {
            let record_offset = self.input.offset;
            let available = self.input.available();
            if available.is_empty() && self.input.eof {
                return Ok(None);
            }
            let buffered = available.len();
            let step = parse_step(
                &mut self.state,
                available,
                &mut self.frame,
                self.last_timestamp,
            );
            match step {
                Ok(Step::Packet {
                    used,
                    timestamp,
                    link,
                    orig_len,
                }) => {
                    self.input.advance(used);
                    self.last_timestamp = timestamp;
                    let captured = u32::try_from(self.frame.len()).unwrap_or(u32::MAX);
                    return Ok(Some(Packet {
                        timestamp,
                        link,
                        orig_len: orig_len.max(captured),
                        data: &self.frame,
                        offset: record_offset,
                    }));
                }
                Ok(Step::Skip { used }) => self.input.advance(used),
                Err(StepError::Incomplete) => {
                    if self.input.eof {
                        return Err(CaptureError::Truncated {
                            offset: record_offset,
                        });
                    }
                    if buffered > MAX_RECORD_BYTES {
                        return Err(CaptureError::Corrupt {
                            offset: record_offset,
                            reason: format!(
                                "the record is longer than {} MiB",
                                MAX_RECORD_BYTES >> 20
                            ),
                        });
                    }
                    self.input.fill()?;
                }
                Err(StepError::Corrupt(reason)) => {
                    return Err(CaptureError::Corrupt {
                        offset: record_offset,
                        reason,
                    });
                }
            }
        }
    }
}

enum StepError {
    /// More bytes are needed.
    Incomplete,
    Corrupt(String),
}

impl From<PcapError> for StepError {
    fn from(err: PcapError) -> Self {
        match err {
            PcapError::IncompleteBuffer => Self::Incomplete,
            other => Self::Corrupt(describe(&other)),
        }
    }
}

/// Parses one record from `available`, copying a packet's bytes into `frame`.
fn parse_step(
    state: &mut State,
    available: &[u8],
    frame: &mut Vec<u8>,
    last_timestamp: Duration,
) -> Result<Step, StepError> {
    match state {
        State::Pcap {
            parser,
            header,
            link,
        } => {
            // Check the length before the parser waits for that many bytes: a corrupt
            // length would otherwise read the rest of the file as one record.
            if let Some(incl) = available.get(8..12) {
                let incl = [incl[0], incl[1], incl[2], incl[3]];
                let incl = match header.endianness {
                    pcap_file::Endianness::Big => u32::from_be_bytes(incl),
                    pcap_file::Endianness::Little => u32::from_le_bytes(incl),
                };
                if usize::try_from(incl).map_or(true, |n| n > MAX_RECORD_BYTES) {
                    return Err(StepError::Corrupt(format!(
                        "the packet claims {incl} captured bytes"
                    )));
                }
            }
            let (rest, raw) = parser.next_raw_packet(available)?;
            let nanos = match header.ts_resolution {
                pcap_file::TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1_000,
                pcap_file::TsResolution::NanoSecond => u64::from(raw.ts_frac),
            };
            // Duration::new carries excess nanoseconds into seconds, as libpcap readers do
            // with an out-of-range fraction.
            let timestamp =
                Duration::from_secs(u64::from(raw.ts_sec)) + Duration::from_nanos(nanos);
            frame.clear();
            frame.extend_from_slice(&raw.data);
            Ok(Step::Packet {
                used: available.len() - rest.len(),
                timestamp,
                link: *link,
                orig_len: raw.orig_len,
            })
        }
        State::PcapNg { parser, interfaces } => {
            let (rest, block) = parser.next_block(available)?;
            let used = available.len() - rest.len();
            let interface = |id: u32| {
                usize::try_from(id)
                    .ok()
                    .and_then(|i| interfaces.get(i))
                    .copied()
                    .ok_or_else(|| {
                        StepError::Corrupt(format!(
                            "the packet refers to interface {id}, which no interface description block defines"
                        ))
                    })
            };
            match block {
                Block::SectionHeader(_) => {
                    // A new section starts its own interface numbering.
                    interfaces.clear();
                    Ok(Step::Skip { used })
                }
                Block::InterfaceDescription(idb) => {
                    interfaces.push(Interface::from_block(&idb));
                    Ok(Step::Skip { used })
                }
                Block::EnhancedPacket(epb) => {
                    let interface = interface(epb.interface_id)?;
                    let timestamp = pcapng_timestamp(&interface, epb.timestamp)?;
                    frame.clear();
                    frame.extend_from_slice(&epb.data);
                    Ok(Step::Packet {
                        used,
                        timestamp,
                        link: interface.link,
                        orig_len: epb.original_len,
                    })
                }
                Block::Packet(pb) => {
                    let interface = interface(u32::from(pb.interface_id))?;
                    let timestamp = interface.timestamp(pb.timestamp).ok_or_else(|| {
                        StepError::Corrupt("the packet timestamp is out of range".to_owned())
                    })?;
                    frame.clear();
                    frame.extend_from_slice(&pb.data);
                    Ok(Step::Packet {
                        used,
                        timestamp,
                        link: interface.link,
                        orig_len: pb.original_len,
                    })
                }
                Block::SimplePacket(spb) => {
                    let interface = interface(0)?;
                    // The block's data is padded to 4 bytes; the packet is original_len long,
                    // cut at the interface's snaplen.
                    let mut len = usize::try_from(spb.original_len).unwrap_or(usize::MAX);
                    if interface.snaplen != 0 {
                        len = len.min(usize::try_from(interface.snaplen).unwrap_or(usize::MAX));
                    }
                    let data = spb.data.get(..len).unwrap_or(&spb.data);
                    frame.clear();
                    frame.extend_from_slice(data);
                    Ok(Step::Packet {
                        used,
                        timestamp: last_timestamp,
                        link: interface.link,
                        orig_len: spb.original_len,
                    })
                }
                _ => Ok(Step::Skip { used }),
            }
        }
    }
}

/// Rescales an enhanced packet block's timestamp: pcap-file 2 returns the raw 64-bit count as
/// nanoseconds, whatever the interface's resolution.
fn pcapng_timestamp(interface: &Interface, parsed: Duration) -> Result<Duration, StepError> {
    u64::try_from(parsed.as_nanos())
        .ok()
        .and_then(|units| interface.timestamp(units))
        .ok_or_else(|| StepError::Corrupt("the packet timestamp is out of range".to_owned()))
}

/// pcap-file's messages, lowercased and without its "Invalid field value:" prefix.
fn describe(err: &PcapError) -> String {
    let text = match err {
        PcapError::InvalidField(what) => (*what).to_owned(),
        PcapError::InvalidInterfaceId(id) => format!("no interface description for interface {id}"),
        other => other.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if chars.clone().next().is_some_and(char::is_lowercase) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text,
    }
}

/// What inspecting one packet found, in the XDP program's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspection<'a> {
    /// A NOTIFY to a watched port: what the program would put in the ring buffer.
    Notify(Record<'a>),
    /// Passed without a record, for the reason the program would count.
    Skip(Skip),
    /// A link type this reader does not decode (not shown to the decision, not counted).
    UnsupportedLink(u32),
}

/// The kernel program's decision, for frames read from a file.
pub struct Filter {
    /// The very bitmap the program is loaded with.
    config: Box<SipConfig>,
    /// What the program's counters would say after these frames.
    counts: CounterSet,
    /// The program's map of fragmented NOTIFYs.
    fragments: FragmentFollower,
    /// The program's `SIP_SENDERS`.
    senders: SourceFilter,
}

impl Filter {
    /// Watches `ports` for NOTIFYs from every source.
    pub fn new(ports: &[u16]) -> Self {
        Self::from_senders(ports, SourceFilter::default())
    }

    /// Watches `ports` for NOTIFYs from `senders` (`--sip-source`).
    pub fn from_senders(ports: &[u16], senders: SourceFilter) -> Self {
        let mut config = Box::new(SipConfig::empty());
        for &port in ports {
            config.watch(port);
        }
        Self {
            config,
            counts: CounterSet::default(),
            fragments: FragmentFollower::default(),
            senders,
        }
    }

    /// The program's counters for the frames inspected so far.
    pub fn counts(&self) -> &CounterSet {
        &self.counts
    }

    /// Runs the program's decision on one captured frame and counts it; `timestamp` goes
    /// into the record header (nanoseconds since the epoch, where the program writes
    /// monotonic time).
    pub fn inspect<'a>(
        &mut self,
        link: LinkType,
        data: &'a [u8],
        timestamp: Duration,
    ) -> Inspection<'a> {
        let frame = match link_frame(link, data) {
            Ok(frame) => frame,
            Err(LinkError::Unsupported(code)) => return Inspection::UnsupportedLink(code),
            Err(LinkError::Skip(skip)) => {
                // The program would have seen this frame too: count it like one.
                self.counts.add(Counter::PacketsSeen);
                self.counts.add(skip.counter());
                return Inspection::Skip(skip);
            }
        };
        let timestamp_ns = u64::try_from(timestamp.as_nanos()).unwrap_or(u64::MAX);
        let inspected = inspect(
            &frame,
            &self.config,
            &self.senders,
            &mut self.fragments,
            &mut self.counts,
            timestamp_ns,
            0,
        );
        match inspected {
            Ok(record) => Inspection::Notify(record),
            Err(skip) => Inspection::Skip(skip),
        }
    }
}

/// The layer-3 bytes of a captured frame (from its IPv4 or IPv6 header) that carries UDP or
/// TCP, found by the program's walk (`net::walk`); `None` for anything else. The capture-file
/// source hands these to reassembly.
pub fn layer3(link: LinkType, data: &[u8]) -> Option<&[u8]> {
    let frame = link_frame(link, data).ok()?;
    match net::walk(&frame) {
        Walk::Found(location) | Walk::LaterFragment(location) => {
            Some(frame.tail(location.l3_offset))
        }
        Walk::NotUdpOrTcp | Walk::Bail(_) => None,
    }
}

/// Why a link-layer header could not be turned into a frame for the walk.
enum LinkError {
    /// A link type this reader does not decode.
    Unsupported(u32),
    /// The frame is too short, or not IP: the decision's own verdict.
    Skip(Skip),
}

/// A frame as the header walk expects it: an Ethernet frame as captured, or the layer-3
/// bytes of another link type behind a synthesised Ethernet header carrying its protocol.
fn link_frame(link: LinkType, data: &[u8]) -> Result<SplicedFrame<'_>, LinkError> {
    let behind = |ethertype: u16, body| {
        let mut head = [0u8; ETH_HLEN];
        head[12..].copy_from_slice(&ethertype.to_be_bytes());
        SplicedFrame::spliced(&head, body)
    };
    let short = LinkError::Skip(Skip::Bail(Bail::ShortHeader));
    match link {
        LinkType::Ethernet => Ok(SplicedFrame::whole(data)),
        LinkType::LinuxSll => {
            let (sll, body) = data.split_at_checked(SLL_HLEN).ok_or(short)?;
            Ok(behind(u16::from_be_bytes([sll[14], sll[15]]), body))
        }
        LinkType::LinuxSll2 => {
            let (sll2, body) = data.split_at_checked(SLL2_HLEN).ok_or(short)?;
            Ok(behind(u16::from_be_bytes([sll2[0], sll2[1]]), body))
        }
        LinkType::RawIp => match data.first().map(|b| b >> 4) {
            Some(4) => Ok(behind(ETH_P_IPV4, data)),
            Some(6) => Ok(behind(ETH_P_IPV6, data)),
            Some(_) => Err(LinkError::Skip(Skip::NotUdpOrTcp)),
            None => Err(short),
        },
        LinkType::Ipv4 => Ok(behind(ETH_P_IPV4, data)),
        LinkType::Ipv6 => Ok(behind(ETH_P_IPV6, data)),
        LinkType::Other(code) => Err(LinkError::Unsupported(code)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use etherparse::PacketBuilder;
    use pcap_file::{
        DataLink, TsResolution,
        pcap::{PcapPacket, PcapWriter},
        pcapng::{
            PcapNgWriter,
            blocks::{enhanced_packet::EnhancedPacketBlock, simple_packet::SimplePacketBlock},
        },
    };
    use sipnotify_common::{
        FLAG_FIRST_FRAGMENT, FLAG_IP_PACKET, FLAG_TRUNCATED, FLAG_VLAN, net::Frame as _,
    };

    use sipnotify_testkit::frames::{ethernet_typed as ethernet, sll, sll2};

    use super::*;

    const NOTIFY: &[u8] = b"NOTIFY sip:a@b SIP/2.0\r\n\r\n";

    /// IPv4/UDP from 10.0.0.1:5060 to 10.0.0.2:`port`, without a link header.
    fn ipv4_udp(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5060, port)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn ipv6_udp(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .udp(5060, port)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn notify(inspection: Inspection<'_>) -> Record<'_> {
        match inspection {
            Inspection::Notify(record) => record,
            other => panic!("expected a NOTIFY, got {other:?}"),
        }
    }

    #[test]
    fn link_type_codes_map_to_decoders() {
        assert_eq!(LinkType::from_code(1), LinkType::Ethernet);
        assert_eq!(LinkType::from_code(113), LinkType::LinuxSll);
        assert_eq!(LinkType::from_code(276), LinkType::LinuxSll2);
        for raw in [101, 12, 14] {
            assert_eq!(LinkType::from_code(raw), LinkType::RawIp);
        }
        assert_eq!(LinkType::from_code(228), LinkType::Ipv4);
        assert_eq!(LinkType::from_code(229), LinkType::Ipv6);
        assert_eq!(LinkType::from_code(0), LinkType::Other(0));
        assert_eq!(LinkType::Other(127).to_string(), "link type 127");
    }

    #[test]
    fn every_link_type_yields_the_same_record() {
        let mut filter = Filter::new(&[5061]);
        let v4 = ipv4_udp(5061, NOTIFY);
        let frames = [
            (LinkType::Ethernet, ethernet(&v4, ETH_P_IPV4)),
            (LinkType::LinuxSll, sll(&v4, ETH_P_IPV4)),
            (LinkType::LinuxSll2, sll2(&v4, ETH_P_IPV4)),
            (LinkType::RawIp, v4.clone()),
            (LinkType::Ipv4, v4.clone()),
        ];
        let ts = Duration::new(1_700_000_000, 5);
        let records: Vec<Record<'_>> = frames
            .iter()
            .map(|(link, data)| notify(filter.inspect(*link, data, ts)))
            .collect();
        for record in &records {
            assert_eq!(record, &records[0]);
        }
        let record = records[0];
        assert_eq!(record.payload, NOTIFY);
        assert_eq!(record.src().to_string(), "10.0.0.1:5060");
        assert_eq!(record.dst().to_string(), "10.0.0.2:5061");
        assert_eq!(record.header.timestamp_ns, 1_700_000_000_000_000_005);
        assert_eq!(record.header.flags, 0);
    }

    #[test]
    fn ipv6_behind_every_header() {
        let mut filter = Filter::new(&[5061]);
        let v6 = ipv6_udp(5061, NOTIFY);
        for (link, data) in [
            (LinkType::Ethernet, ethernet(&v6, ETH_P_IPV6)),
            (LinkType::LinuxSll, sll(&v6, ETH_P_IPV6)),
            (LinkType::LinuxSll2, sll2(&v6, ETH_P_IPV6)),
            (LinkType::RawIp, v6.clone()),
            (LinkType::Ipv6, v6.clone()),
        ] {
            let record = notify(filter.inspect(link, &data, Duration::ZERO));
            assert_eq!(record.header.ip_version, 6, "{link}");
            assert_eq!(record.header.src_addr, [1; 16], "{link}");
            assert_eq!(record.payload, NOTIFY, "{link}");
        }
    }

    #[test]
    fn a_vlan_tag_inside_a_cooked_capture_is_walked() {
        // An untagged-by-the-NIC frame seen through `-i any`: protocol 802.1Q, then the tag.
        let mut tagged = vec![0x00, 0x07, 0x08, 0x00];
        tagged.extend_from_slice(&ipv4_udp(5061, NOTIFY));
        let frame = sll2(&tagged, 0x8100);
        let mut filter = Filter::new(&[5061]);
        let record = notify(filter.inspect(LinkType::LinuxSll2, &frame, Duration::ZERO));
        assert_eq!(record.header.flags, FLAG_VLAN);
        assert_eq!(record.header.vlan_tci, 7);
    }

    #[test]
    fn the_kernel_filter_is_applied() {
        let mut filter = Filter::new(&[5061, 5070]);
        let frame = |port, payload: &[u8]| ethernet(&ipv4_udp(port, payload), ETH_P_IPV4);
        let at = Duration::ZERO;
        assert!(matches!(
            filter.inspect(LinkType::Ethernet, &frame(5070, NOTIFY), at),
            Inspection::Notify(_)
        ));
        assert_eq!(
            filter.inspect(LinkType::Ethernet, &frame(5060, NOTIFY), at),
            Inspection::Skip(Skip::PortNotWatched)
        );
        assert_eq!(
            filter.inspect(
                LinkType::Ethernet,
                &frame(5061, b"INVITE sip:a@b SIP/2.0"),
                at
            ),
            Inspection::Skip(Skip::NotNotify)
        );
        // Method names are case-sensitive, as in the program.
        assert_eq!(
            filter.inspect(
                LinkType::Ethernet,
                &frame(5061, b"notify sip:a@b SIP/2.0"),
                at
            ),
            Inspection::Skip(Skip::NotNotify)
        );
        let arp = ethernet(&[0; 28], 0x0806);
        assert_eq!(
            filter.inspect(LinkType::Ethernet, &arp, at),
            Inspection::Skip(Skip::NotUdpOrTcp)
        );
        assert_eq!(
            filter.inspect(LinkType::RawIp, &[0x50; 20], at),
            Inspection::Skip(Skip::NotUdpOrTcp)
        );
        assert_eq!(
            filter.inspect(LinkType::LinuxSll, &[0; 10], at),
            Inspection::Skip(Skip::Bail(Bail::ShortHeader))
        );
        assert_eq!(
            filter.inspect(LinkType::LinuxSll2, &[0; 19], at),
            Inspection::Skip(Skip::Bail(Bail::ShortHeader))
        );
        assert_eq!(
            filter.inspect(LinkType::RawIp, &[], at),
            Inspection::Skip(Skip::Bail(Bail::ShortHeader))
        );
        assert_eq!(
            filter.inspect(LinkType::Other(0), &frame(5061, NOTIFY), at),
            Inspection::UnsupportedLink(0)
        );
    }

    #[test]
    fn short_captures_are_flagged_truncated_and_fragments_sorted() {
        let mut filter = Filter::new(&[5061]);
        let full = ethernet(&ipv4_udp(5061, NOTIFY), ETH_P_IPV4);
        // A snaplen cut 5 bytes into the payload's tail.
        let cut = &full[..full.len() - 5];
        let record = notify(filter.inspect(LinkType::Ethernet, cut, Duration::ZERO));
        assert_eq!(record.header.flags & FLAG_TRUNCATED, FLAG_TRUNCATED);
        assert_eq!(record.header.payload_len as usize, NOTIFY.len());
        assert_eq!(record.payload, &NOTIFY[..NOTIFY.len() - 5]);

        // Ethernet padding past the UDP length is not payload.
        let mut padded = full.clone();
        padded.extend_from_slice(&[0; 20]);
        assert_eq!(
            notify(filter.inspect(LinkType::Ethernet, &padded, Duration::ZERO)).payload,
            NOTIFY
        );

        let mut first = full.clone();
        first[14 + 6] |= 0x20; // MF
        let record = notify(filter.inspect(LinkType::Ethernet, &first, Duration::ZERO));
        assert_eq!(record.header.flags, FLAG_FIRST_FRAGMENT | FLAG_IP_PACKET);
        assert_eq!(
            record.payload,
            &first[14..],
            "the IP packet, for reassembly"
        );
        let mut later = full.clone();
        later[14 + 7] = 1; // offset 8
        // The rest of the datagram follows its first fragment, as in the program's map.
        let record = notify(filter.inspect(LinkType::Ethernet, &later, Duration::ZERO));
        assert_eq!(record.header.flags, FLAG_IP_PACKET);
        // Another datagram's later fragment is nobody's.
        later[14 + 5] = 9; // IP ID
        assert_eq!(
            filter.inspect(LinkType::Ethernet, &later, Duration::ZERO),
            Inspection::Skip(Skip::LaterFragment)
        );
    }

    #[test]
    fn straddling_loads_read_both_parts() {
        let Ok(frame) = link_frame(LinkType::Ipv4, &[0x45, 1, 2, 3]) else {
            panic!("raw ipv4 is a supported link type");
        };
        assert_eq!(frame.load::<4>(12), Some([0x08, 0x00, 0x45, 1]));
        assert_eq!(frame.load::<4>(14), Some([0x45, 1, 2, 3]));
        assert_eq!(frame.load::<4>(15), None);
        assert_eq!(frame.tail(16), &[2, 3]);
        assert_eq!(frame.tail(40), &[] as &[u8]);
    }

    fn pcap_file(datalink: DataLink, frames: &[&[u8]]) -> Vec<u8> {
        let header = PcapHeader {
            datalink,
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
        for (i, frame) in frames.iter().enumerate() {
            let ts = Duration::new(1_700_000_000 + i as u64, 250);
            writer
                .write_packet(&PcapPacket::new(ts, frame.len() as u32, frame))
                .unwrap();
        }
        writer.into_writer()
    }

    /// An owned copy of a [`Packet`].
    #[derive(Debug)]
    struct Read {
        timestamp: Duration,
        link: LinkType,
        data: Vec<u8>,
        offset: u64,
    }

    fn all_packets(bytes: &[u8]) -> Result<Vec<Read>, CaptureError> {
        let mut reader = CaptureReader::new(Cursor::new(bytes))?;
        let mut out = Vec::new();
        while let Some(p) = reader.next_packet()? {
            out.push(Read {
                timestamp: p.timestamp,
                link: p.link,
                data: p.data.to_vec(),
                offset: p.offset,
            });
        }
        Ok(out)
    }

    #[test]
    fn reads_pcap_records_with_offsets_and_timestamps() {
        let a = ethernet(&ipv4_udp(5061, NOTIFY), ETH_P_IPV4);
        let b = vec![0xaa; 61];
        let bytes = pcap_file(DataLink::ETHERNET, &[&a, &b]);
        let packets = all_packets(&bytes).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].timestamp, Duration::new(1_700_000_000, 250));
        assert_eq!(packets[0].link, LinkType::Ethernet);
        assert_eq!(packets[0].data, a);
        assert_eq!(packets[0].offset, 24);
        assert_eq!(packets[1].offset, 24 + 16 + a.len() as u64);
        assert_eq!(packets[1].data, b);
    }

    #[test]
    fn a_cut_file_reports_the_record_it_breaks_in() {
        let a = vec![1u8; 100];
        let bytes = pcap_file(DataLink::ETHERNET, &[&a, &a]);
        let cut = &bytes[..bytes.len() - 10];
        let mut reader = CaptureReader::new(Cursor::new(cut)).unwrap();
        assert!(reader.next_packet().unwrap().is_some());
        match reader.next_packet() {
            Err(CaptureError::Truncated { offset }) => assert_eq!(offset, 24 + 116),
            other => panic!("expected a truncation, got {other:?}"),
        }
        // A header cut short.
        assert!(matches!(
            CaptureReader::new(Cursor::new(&bytes[..10])).err(),
            Some(CaptureError::Truncated { offset: 0 })
        ));
    }

    #[test]
    fn a_corrupt_length_is_reported_not_waited_for() {
        let a = vec![1u8; 100];
        let mut bytes = pcap_file(DataLink::ETHERNET, &[&a, &a]);
        let second = 24 + 116;
        bytes[second + 8..second + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = all_packets(&bytes).unwrap_err();
        assert_eq!(err.offset(), Some(second as u64));
        assert!(
            err.to_string().contains("claims 4294967295 captured bytes"),
            "{err}"
        );
    }

    #[test]
    fn snaplen_limited_captures_are_read() {
        // orig_len beyond snaplen is what `tcpdump -s 200` writes; pcap-file's checked
        // reader refuses it.
        let header = PcapHeader {
            snaplen: 64,
            endianness: pcap_file::Endianness::Little,
            ..PcapHeader::default()
        };
        let mut bytes = Vec::new();
        {
            let mut writer = PcapWriter::with_header(&mut bytes, header).unwrap();
            writer
                .write_packet(&PcapPacket::new(Duration::from_secs(1), 64, &[0u8; 64]))
                .unwrap();
        }
        // Patch orig_len to 1500 as the capture would have it.
        bytes[24 + 12..24 + 16].copy_from_slice(&1500u32.to_le_bytes());
        let mut reader = CaptureReader::new(Cursor::new(&bytes)).unwrap();
        let packet = reader.next_packet().unwrap().unwrap();
        assert_eq!((packet.orig_len, packet.data.len()), (1500, 64));
    }

    #[test]
    fn not_a_capture_is_named() {
        let err = CaptureReader::new(Cursor::new(b"hello world"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng file (it starts with 0x68656c6c)"
        );
        let err = CaptureReader::new(Cursor::new(b"")).err().unwrap();
        assert!(err.to_string().contains("it is empty"), "{err}");
        let err = CaptureReader::new(Cursor::new([0x1f, 0x8b, 8, 0]))
            .err()
            .unwrap();
        assert!(matches!(err, CaptureError::Compressed));
    }

    fn pcapng_with(tsresol: Option<u8>, link: DataLink) -> Vec<u8> {
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        let mut idb = InterfaceDescriptionBlock::new(link, 0);
        if let Some(r) = tsresol {
            idb.options.push(InterfaceDescriptionOption::IfTsResol(r));
        }
        writer.write_pcapng_block(idb).unwrap();
        let frame = ethernet(&ipv4_udp(5061, NOTIFY), ETH_P_IPV4);
        // Raw units: 1_700_000_000.5 s in microseconds, or in nanoseconds with tsresol 9.
        let units: u64 = match tsresol {
            Some(9) => 1_700_000_000_500_000_000,
            _ => 1_700_000_000_500_000,
        };
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(units),
                original_len: frame.len() as u32,
                data: frame.clone().into(),
                options: vec![],
            })
            .unwrap();
        writer
            .write_pcapng_block(SimplePacketBlock {
                original_len: frame.len() as u32,
                data: frame.into(),
            })
            .unwrap();
        writer.into_inner()
    }

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        let expected = Duration::new(1_700_000_000, 500_000_000);
        for tsresol in [None, Some(6), Some(9)] {
            let bytes = pcapng_with(tsresol, DataLink::ETHERNET);
            let mut reader = CaptureReader::new(Cursor::new(&bytes)).unwrap();
            assert_eq!(reader.format(), Format::PcapNg);
            let packet = reader.next_packet().unwrap().unwrap();
            assert_eq!(packet.timestamp, expected, "tsresol {tsresol:?}");
            // The simple packet block takes the previous time and drops the padding.
            let simple = reader.next_packet().unwrap().unwrap();
            assert_eq!(simple.timestamp, expected);
            assert_eq!(simple.data.len(), simple.orig_len as usize);
            assert!(reader.next_packet().unwrap().is_none());
        }
        let binary = Interface {
            link: LinkType::Ethernet,
            snaplen: 0,
            tsresol: 0x80 | 10,
            tsoffset: 2,
        };
        assert_eq!(
            binary.timestamp(1024 + 512),
            Some(Duration::from_millis(3500))
        );
    }

    #[test]
    fn a_pcapng_packet_without_its_interface_is_corrupt() {
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        let epb_at = writer.get_ref().len();
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::ZERO,
                original_len: 4,
                data: vec![0u8; 4].into(),
                options: vec![],
            })
            .unwrap();
        let mut bytes = writer.into_inner();
        // The writer refuses an undefined interface, so point the packet elsewhere by hand.
        bytes[epb_at + 8..epb_at + 12].copy_from_slice(&3u32.to_le_bytes());
        let err = all_packets(&bytes).unwrap_err();
        assert!(err.to_string().contains("interface 3"), "{err}");
        assert_eq!(err.offset(), Some(epb_at as u64));
    }
}
