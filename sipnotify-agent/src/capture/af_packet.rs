//! The AF_PACKET capture source, for hosts where XDP cannot run: a TPACKET_V3 memory-mapped
//! ring on a packet socket, with the classic BPF pre-filter of [`super::cbpf`] attached.
//!
//! Needs only CAP_NET_RAW and works on Linux 3.10 and later (TPACKET_V3 is from 3.2, and the
//! filter is classic BPF). A packet socket receives copies: the host's own packets are never
//! delayed, changed or dropped. Whatever passes the filter goes through the same capture
//! decision as the XDP program's ([`super::frame::inspect`]), and is counted the same way; drops
//! because the ring was full come from the socket's own `PACKET_STATISTICS` and are counted
//! as `ringbuf_full`, as they are for XDP.
//!
//! The ring is written here on `libc` rather than with a crate: `af_packet` is GPL-3.0 and
//! unmaintained, `pnet` has no TPACKET_V3 ring, and `libc` already defines every structure, so
//! the unsafe part is one mmap and reading block headers the kernel hands over.

use std::{
    ffi::c_void,
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use sipnotify_common::{Counter, CounterSet, SipConfig};
use tokio::io::{Interest, unix::AsyncFd};
use tokio_util::sync::CancellationToken;

use super::{
    cbpf,
    frame::{FragmentFollower, SplicedFrame, inspect},
};
use crate::{record::Record, source_filter::SourceFilter};

/// Size of one ring block: it holds a 9 KiB jumbo NOTIFY and keeps the number of blocks (the
/// slack a sparse, timer-retired block costs) high in a ring of a few MiB.
const BLOCK_BYTES: u32 = 128 << 10;
/// Fewest blocks in a ring: the kernel fills one while the agent reads another.
const MIN_BLOCKS: u32 = 2;
/// `tpacket_req3.tp_frame_size`: only used by the kernel's sanity checks under TPACKET_V3.
const FRAME_BYTES: u32 = 2048;
/// `PACKET_OUTGOING` in `sockaddr_ll.sll_pkttype`.
const PACKET_OUTGOING: u8 = 4;

/// Why the AF_PACKET source could not start.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    /// The process lacks CAP_NET_RAW.
    #[error(
        "permission denied opening a packet socket on `{iface}`: run as root or grant CAP_NET_RAW"
    )]
    PermissionDenied {
        /// Interface name.
        iface: String,
    },
    /// The filter could not be generated.
    #[error(transparent)]
    Filter(#[from] cbpf::FilterError),
    /// A socket call failed.
    #[error("af-packet capture on `{iface}`: {step} failed: {source}")]
    Socket {
        /// Interface name.
        iface: String,
        /// Which call.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the AF_PACKET source is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfPacketSettings {
    /// UDP destination ports to watch.
    pub ports: Vec<u16>,
    /// Ring size in bytes (rounded down to whole blocks, at least two).
    pub ring_bytes: u32,
    /// How long the kernel may hold a partly filled block: the latency floor at low rates.
    pub block_timeout: Duration,
}

/// Counters shared between the reader and the metrics endpoint: the decision's counters in
/// [`Counter`] order, kept as atomics so a scrape never waits for the reader.
#[derive(Debug)]
pub struct AfPacketStats {
    values: [AtomicU64; Counter::COUNT as usize],
}

impl Default for AfPacketStats {
    fn default() -> Self {
        Self {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl AfPacketStats {
    /// Adds a batch of counts.
    pub fn add(&self, counts: &CounterSet) {
        for (value, &n) in self.values.iter().zip(&counts.values) {
            if n != 0 {
                value.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The totals so far.
    pub fn read(&self) -> CounterSet {
        let mut counts = CounterSet::default();
        for (slot, value) in counts.values.iter_mut().zip(&self.values) {
            *slot = value.load(Ordering::Relaxed);
        }
        counts
    }
}

/// The memory-mapped ring, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access to it is
// synchronised with the kernel through each block's status word, and within the process only
// the one `PacketSocket` that owns it reads it.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned, unmapped once, here.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// An open packet socket with its ring, bound to one interface.
pub struct PacketSocket {
    /// Declared before `fd`: the ring is unmapped before the socket closes.
    map: Mapping,
    fd: OwnedFd,
    block_bytes: usize,
    blocks: usize,
    next: usize,
    ifindex: u32,
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One frame as the ring holds it.
#[derive(Clone, Copy, Debug)]
pub struct RingFrame<'a> {
    /// The captured bytes, from the Ethernet header on (without a tag the NIC stripped).
    pub data: &'a [u8],
    /// A stripped VLAN tag: TPID and TCI.
    pub vlan: Option<(u16, u16)>,
    /// Capture time (CLOCK_REALTIME, as the kernel stamps packet sockets).
    pub timestamp: Duration,
}

impl<'a> RingFrame<'a> {
    /// The frame as the header walk expects it: a stripped tag is put back after the MACs.
    pub fn spliced(&self) -> SplicedFrame<'a> {
        match self.vlan {
            Some((tpid, tci)) if self.data.len() >= 12 => {
                let mut head = [0u8; 16];
                head[..12].copy_from_slice(&self.data[..12]);
                head[12..14].copy_from_slice(&tpid.to_be_bytes());
                head[14..].copy_from_slice(&tci.to_be_bytes());
                SplicedFrame::spliced(&head, &self.data[12..])
            }
            _ => SplicedFrame::whole(self.data),
        }
    }
}

fn os_error(iface: &str, step: &'static str) -> AfPacketError {
    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => AfPacketError::PermissionDenied {
            iface: iface.to_owned(),
        },
        _ => AfPacketError::Socket {
            iface: iface.to_owned(),
            step,
            source,
        },
    }
}

/// `setsockopt(fd, SOL_PACKET or SOL_SOCKET, name, value)`.
fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PacketSocket {
    /// Opens the socket on `iface` (index `ifindex`), attaches the filter, maps the ring and
    /// binds. Nothing is received before the filter is in place: the socket is created with
    /// protocol 0, which receives nothing until `bind` names one.
    pub fn open(
        iface: &str,
        ifindex: u32,
        settings: &AfPacketSettings,
    ) -> Result<Self, AfPacketError> {
        let program = cbpf::notify_filter(&settings.ports)?;
        let step = |step| {
            move |source| AfPacketError::Socket {
                iface: iface.to_owned(),
                step,
                source,
            }
        };
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os_error(iface, "socket"));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).map_err(|_| cbpf::FilterError::TooLong {
                ports: settings.ports.len(),
            })?,
            filter: program.as_ptr().cast_mut(),
        };
        // The kernel copies the program during the call; `program` outlives it.
        set_option(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
            .map_err(step("attaching the socket filter"))?;
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)
            .map_err(step("selecting TPACKET_V3"))?;
        // Linux 4.20+: do not even copy what this host sends; the filter refuses it anyway.
        let _ = set_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32);

        let block_bytes = if settings.ring_bytes >= BLOCK_BYTES * MIN_BLOCKS {
            BLOCK_BYTES
        } else {
            // Small rings: two blocks of a power-of-two number of pages, at least 16 KiB.
            (settings.ring_bytes / MIN_BLOCKS)
                .max(16 << 10)
                .next_power_of_two()
        };
        let blocks = (settings.ring_bytes / block_bytes).max(MIN_BLOCKS);
        let timeout_ms = u32::try_from(settings.block_timeout.as_millis()).unwrap_or(u32::MAX);
        let request = libc::tpacket_req3 {
            tp_block_size: block_bytes,
            tp_block_nr: blocks,
            tp_frame_size: FRAME_BYTES,
            tp_frame_nr: block_bytes / FRAME_BYTES * blocks,
            tp_retire_blk_tov: timeout_ms.max(1),
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &request)
            .map_err(step("creating the TPACKET_V3 ring"))?;
        let len = block_bytes as usize * blocks as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error(iface, "mapping the ring"));
        }
        let map = Mapping {
            base: NonNull::new(base.cast()).ok_or_else(|| AfPacketError::Socket {
                iface: iface.to_owned(),
                step: "mapping the ring",
                source: io::Error::other("mmap returned null"),
            })?,
            len,
        };

        // SAFETY: an all-zero sockaddr_ll is valid; family, protocol and index are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_error(iface, "binding to the interface"));
        }
        Ok(Self {
            map,
            fd,
            block_bytes: block_bytes as usize,
            blocks: blocks as usize,
            next: 0,
            ifindex,
        })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The status word of block `index`, shared with the kernel.
    fn block_status(&self, index: usize) -> &AtomicU32 {
        // SAFETY: block `index` < `blocks` starts inside the mapping, 8-byte aligned (blocks
        // are page multiples), with `tpacket_block_desc` at its start; `block_status` is its
        // first u32 of `hdr`, which the kernel and this process both access atomically.
        unsafe {
            let desc = self
                .map
                .base
                .as_ptr()
                .add(index * self.block_bytes)
                .cast::<libc::tpacket_block_desc>();
            AtomicU32::from_ptr((&raw mut (*desc).hdr.bh1.block_status).cast())
        }
    }

    /// Calls `on_frame` for every frame of every block the kernel has handed over, returning
    /// each block to the kernel after it; returns the number of frames.
    pub fn drain(&mut self, mut on_frame: impl FnMut(RingFrame<'_>)) -> u64 {
        let mut frames = 0u64;
        // At most one pass over the ring, so a fast sender cannot keep the reader here.
        for _ in 0..self.blocks {
            let index = self.next;
            let status = self.block_status(index);
            if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            frames += self.read_block(index, &mut on_frame);
            self.block_status(index)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next = (index + 1) % self.blocks;
        }
        frames
    }

    /// Reads the frames of a block the kernel handed over.
    fn read_block(&self, index: usize, on_frame: &mut impl FnMut(RingFrame<'_>)) -> u64 {
        // SAFETY: the block is inside the mapping and owned by user space until its status
        // is set back to TP_STATUS_KERNEL (after this returns), so its bytes are stable.
        let block = unsafe {
            std::slice::from_raw_parts(
                self.map.base.as_ptr().add(index * self.block_bytes),
                self.block_bytes,
            )
        };
        // SAFETY: `tpacket_block_desc` is at the start of the 8-aligned block.
        let desc = unsafe { &*block.as_ptr().cast::<libc::tpacket_block_desc>() };
        // SAFETY: under TPACKET_V3 the header union holds `bh1`.
        let (count, first) = unsafe { (desc.hdr.bh1.num_pkts, desc.hdr.bh1.offset_to_first_pkt) };
        let hdr_len = std::mem::size_of::<libc::tpacket3_hdr>();
        let mut offset = first as usize;
        let mut frames = 0;
        for _ in 0..count {
            // Every offset comes from the kernel; check each against the block all the same.
            let Some(head) = block.get(offset..offset + hdr_len) else {
                break;
            };
            // SAFETY: `head` holds a whole tpacket3_hdr; read_unaligned copes with any place.
            let hdr = unsafe { head.as_ptr().cast::<libc::tpacket3_hdr>().read_unaligned() };
            let mac = offset + usize::from(hdr.tp_mac);
            let outgoing = block
                .get(offset + sll_offset() + std::mem::offset_of!(libc::sockaddr_ll, sll_pkttype))
                .is_some_and(|&t| t == PACKET_OUTGOING);
            let data = block
                .get(mac..mac + hdr.tp_snaplen as usize)
                .filter(|_| !outgoing);
            if let Some(data) = data {
                let vlan = (hdr.tp_status & libc::TP_STATUS_VLAN_VALID != 0).then(|| {
                    let tpid = if hdr.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                        hdr.hv1.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    (tpid, hdr.hv1.tp_vlan_tci as u16)
                });
                on_frame(RingFrame {
                    data,
                    vlan,
                    timestamp: Duration::new(u64::from(hdr.tp_sec), hdr.tp_nsec),
                });
                frames += 1;
            }
            if hdr.tp_next_offset == 0 {
                break;
            }
            offset += hdr.tp_next_offset as usize;
        }
        frames
    }

    /// `PACKET_STATISTICS` since the last call (the kernel resets them on read): frames that
    /// passed the filter, and those of them dropped because the ring was full.
    pub fn statistics(&self) -> io::Result<(u64, u64)> {
        // SAFETY: all-zero is a valid tpacket_stats_v3.
        let mut stats: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `stats`/`len` describe a writable buffer of the right size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((u64::from(stats.tp_packets), u64::from(stats.tp_drops)))
    }
}

/// Offset of the `sockaddr_ll` the kernel writes after each frame header.
const fn sll_offset() -> usize {
    let hdr = std::mem::size_of::<libc::tpacket3_hdr>();
    (hdr + libc::TPACKET_ALIGNMENT - 1) & !(libc::TPACKET_ALIGNMENT - 1)
}

/// Reads `socket` until `cancel` fires, running the shared decision on every frame and
/// calling `on_record` for each NOTIFY with its capture time; counts go to `stats`.
///
/// The reader wakes only when the socket is readable, which under TPACKET_V3 means a block
/// was retired: full, or holding frames when `tp_retire_blk_tov` (`--poll-interval`) ran
/// out. An empty block is never retired, so a quiet interface never wakes the reader.
pub async fn read_ring(
    socket: PacketSocket,
    ports: &[u16],
    senders: &SourceFilter,
    stats: Arc<AfPacketStats>,
    cancel: CancellationToken,
    mut on_record: impl FnMut(&Record<'_>, SystemTime),
) -> io::Result<()> {
    let mut config = Box::new(SipConfig::empty());
    for &port in ports {
        config.watch(port);
    }
    // SAFETY: the PacketSocket owns its descriptor, which stays open and unchanged until it
    // is dropped, and the AsyncFd owns the PacketSocket.
    let mut socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let mut fragments = FragmentFollower::default();
    let mut pass = |socket: &mut PacketSocket| {
        let mut counts = CounterSet::default();
        let ifindex = socket.ifindex();
        socket.drain(|frame| {
            let spliced = frame.spliced();
            let timestamp_ns = u64::try_from(frame.timestamp.as_nanos()).unwrap_or(u64::MAX);
            let inspected = inspect(
                &spliced,
                &config,
                senders,
                &mut fragments,
                &mut counts,
                timestamp_ns,
                ifindex,
            );
            if let Ok(record) = inspected {
                on_record(&record, SystemTime::UNIX_EPOCH + frame.timestamp);
            }
        });
        // Ring-full drops never reached the decision: count them where XDP counts its own.
        if let Ok((_, drops)) = socket.statistics() {
            counts.values[Counter::PacketsSeen as usize] += drops;
            counts.values[Counter::RingbufFull as usize] += drops;
        }
        stats.add(&counts);
    };
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            guard = socket.readable_mut() => {
                let mut guard = guard?;
                // Cleared first, so a block retired during the pass re-arms it.
                guard.clear_ready();
                pass(guard.get_inner_mut());
            }
        }
        // Let the tasks this pass woke (the spool, delivery) run before the next block: on
        // the runtime's one thread they wait until the reader gives way.
        tokio::task::yield_now().await;
    }
    pass(socket.get_mut());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripped_tag_is_put_back_for_the_walk() {
        use sipnotify_common::net::Frame as _;
        let mut data = vec![0u8; 12];
        data.extend_from_slice(&[0x08, 0x00, 0x45]);
        let frame = RingFrame {
            data: &data,
            vlan: Some((0x8100, 210)),
            timestamp: Duration::ZERO,
        };
        let spliced = frame.spliced();
        assert_eq!(spliced.load::<4>(12), Some([0x81, 0x00, 0, 210]));
        assert_eq!(spliced.load::<3>(16), Some([0x08, 0x00, 0x45]));
        assert_eq!(spliced.tail(18), &[0x45]);
    }

    #[test]
    fn stats_add_up() {
        let stats = AfPacketStats::default();
        let mut counts = CounterSet::default();
        counts.add(Counter::PacketsSeen);
        counts.add(Counter::Copied);
        stats.add(&counts);
        stats.add(&counts);
        let read = stats.read();
        assert_eq!(read.get(Counter::PacketsSeen), 2);
        assert_eq!(read.outcomes(), 2);
    }
}
