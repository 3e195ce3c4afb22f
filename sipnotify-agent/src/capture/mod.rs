//! Capture sources, each yielding records into the one pipeline (`crate::pipeline`): the live
//! XDP or AF_PACKET rings of every interface (`live`; the AF_PACKET ring in `af_packet`, its
//! classic BPF pre-filter in `cbpf`, the per-interface choice between the two in `source`) and
//! capture files (`file`, read by `pcap`).
//!
//! The userspace sources (AF_PACKET, capture files) hand whole frames to [`inspect`] (`frame`),
//! which runs the XDP program's own decision (`sipnotify_common::decide`) and counts it the
//! same way. Records, their clock and what happens to them after a source hands them over
//! live in `crate::record` and `crate::pipeline`: nothing here routes or reassembles.

pub mod af_packet;
pub mod cbpf;
pub mod file;
pub mod frame;
pub mod live;
pub mod pcap;
pub mod source;

use std::{sync::Arc, time::Duration};

use sipnotify_common::CounterSet;

pub use frame::{FragmentFollower, SplicedFrame, inspect};

use crate::{
    bpf::{AttachMode, KernelStats},
    source_filter::SourceFilter,
};

/// Where and how `run` captures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Interfaces to capture on.
    pub ifaces: Vec<String>,
    /// Which capture path (`--capture`).
    pub mode: source::CaptureMode,
    /// UDP destination ports to watch (1..=MAX_PORTS of them).
    pub ports: Vec<u16>,
    /// How the XDP program is attached.
    pub xdp_mode: AttachMode,
    /// Ring buffer size per interface in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// While records keep coming, the pause between passes over an XDP ring, and AF_PACKET's
    /// block retire timeout: the most latency capture adds.
    pub poll_interval: Duration,
    /// Who may send NOTIFYs (`--sip-source`; empty: anyone).
    pub senders: SourceFilter,
}

/// Where an interface's capture counters are read: the XDP program's per-CPU map, or the
/// AF_PACKET reader's atomics (the same decision, the same counter names).
pub enum CaptureCounters {
    /// The XDP program's `SIP_STATS`.
    Xdp(KernelStats),
    /// The AF_PACKET reader's counts, ring drops included.
    AfPacket(Arc<af_packet::AfPacketStats>),
}

impl CaptureCounters {
    /// The current totals.
    pub fn read(&self) -> Result<CounterSet, aya::maps::MapError> {
        match self {
            Self::Xdp(stats) => stats.read(),
            Self::AfPacket(stats) => Ok(stats.read()),
        }
    }

    /// `xdp` or `af-packet`, for the metrics label.
    pub fn source(&self) -> &'static str {
        match self {
            Self::Xdp(_) => "xdp",
            Self::AfPacket(_) => "af-packet",
        }
    }
}
