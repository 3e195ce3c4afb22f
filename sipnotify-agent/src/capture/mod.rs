//! Capture sources: the live XDP rings (`live`), an AF_PACKET ring (`af_packet`, with its
//! classic BPF pre-filter in `cbpf`, chosen by `source`) and capture files (`pcap`), all
//! producing [`Record`]s (`record`); the clock that dates the kernel's records.
//!
//! The userspace sources (AF_PACKET, pcap) hand whole frames to [`inspect`] (`frame`), which
//! runs the XDP program's own decision (`sipnotify_common::decide`) and counts it the same
//! way. A [`Source`] is what `wiring` runs: sources differ only in how they produce records.

pub mod af_packet;
pub mod cbpf;
pub mod frame;
pub mod live;
pub mod pcap;
pub mod record;
pub mod source;

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

pub use frame::{FragmentFollower, SplicedFrame, inspect};
pub use record::{Record, RecordError};

use crate::{bpf::AttachMode, pipeline::Pipeline};

/// Where records come from: live XDP or AF_PACKET rings ([`live::LiveSource`]) or a capture
/// file (`replay`).
pub trait Source: Send + 'static {
    /// What the source reports when it ends (its counts, the error that ended it).
    type Report: Send + 'static;

    /// Hands every record to `pipeline` until the source runs out or `stop` fires, and
    /// returns its report. Runs on a task of its own.
    fn feed(
        self,
        pipeline: Pipeline,
        stop: CancellationToken,
    ) -> impl Future<Output = Self::Report> + Send + 'static;
}

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
    /// How often the ring is polled when no wake-up arrives.
    pub poll_interval: Duration,
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
///
/// The offset is taken once at start; the daemon's lifetime is far shorter than the drift
/// NTP slewing could introduce between the two clocks in a way that matters for latency.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// Wall-clock time at monotonic zero.
    epoch: SystemTime,
}

impl MonotonicClock {
    /// Samples both clocks now.
    pub fn new() -> Self {
        let mono = monotonic_now();
        let wall = SystemTime::now();
        Self {
            epoch: wall.checked_sub(mono).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// Wall-clock time of a `bpf_ktime_get_ns()` timestamp.
    pub fn wall_time(&self, monotonic_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(monotonic_ns)
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

/// CLOCK_MONOTONIC now: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_timestamps_map_to_now() {
        let clock = MonotonicClock::new();
        let now = clock.wall_time(monotonic_now().as_nanos() as u64);
        let skew = now
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }
}
