//! The sipnotify XDP program: find UDP datagrams to a watched port whose payload starts with
//! `NOTIFY `, copy them into the `SIP_EVENTS` ring buffer, count every outcome, and pass every
//! packet on untouched.
//!
//! ```text
//! frame ─▶ walk (Ethernet, ≤2 VLAN tags, IPv4+options | IPv6+ext headers) ─▶ UDP header
//!        ─▶ dst port in the SIP_CONFIG bitmap? ─▶ payload starts "NOTIFY "? ─▶ SIP_SCRATCH
//!        ─▶ bpf_ringbuf_output(header + payload, right-sized) ─▶ agent
//! ```
//!
//! This program is an observer on an Asterisk host: it returns `XDP_PASS` on every path,
//! including errors, and never writes to the packet. Every SIP decision is left to the agent,
//! where it can be tested; the header walk itself lives in `sipnotify-common` so the pcap
//! replay runs the very same code.
#![no_std]
#![no_main]

use core::{ffi::c_void, slice};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    macros::{map, xdp},
    maps::{PerCpuArray, RingBuf},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use sipnotify_common::{
    Counter, DEFAULT_RING_BYTES, EVENT_HEADER_LEN, EventBuffer, EventHeader, FLAG_TRUNCATED,
    MAX_PAYLOAD, NOTIFY_PREFIX, SipConfig,
    net::{self, Bail, Frame, Transport, Walk},
};

#[map]
static SIP_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Written by the agent at load time (a frozen `.rodata` global): reading it is a plain
/// memory load, where even an inlined array-map lookup costs a few nanoseconds per packet.
#[unsafe(no_mangle)]
static SIP_CONFIG: SipConfig = SipConfig::empty();

/// Reads the config through a volatile load, so the compiler cannot fold the all-zero
/// initial value into the program.
#[inline(always)]
fn config_port_watched(port: u16) -> bool {
    let word = usize::from(port >> 6);
    // SAFETY: `word` < 1024 (a u16 shifted right by 6), inside the static array.
    let bits = unsafe { core::ptr::read_volatile(&raw const SIP_CONFIG.port_bitmap[word]) };
    bits & (1 << (port & 63)) != 0
}

#[inline(always)]
fn config_wakeup_bytes() -> u64 {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(&raw const SIP_CONFIG.wakeup_bytes) }
}

#[map]
static SIP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// A record is assembled here so `bpf_ringbuf_output` can copy exactly its length: reserving
/// a worst-case 9 KiB slot per NOTIFY would cost twice as much and waste ring space.
#[map]
static SIP_SCRATCH: PerCpuArray<EventBuffer> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU time of the last "ring buffer full" log line, so overload logs once a second
/// instead of once per lost record.
#[map]
static SIP_LOG_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const NSEC_PER_SEC: u64 = 1_000_000_000;

#[xdp(frags)]
fn sipnotify_xdp(ctx: XdpContext) -> u32 {
    inspect(&ctx);
    xdp_action::XDP_PASS
}

/// The bytes of the frame's linear part, read with the bounds checks the verifier needs.
struct Packet {
    start: usize,
    end: usize,
}

impl Frame for Packet {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Bounding the offset first gives the verifier a finite range for `start + offset`.
        if offset > net::MAX_HEADER_OFFSET {
            return None;
        }
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: `at..at + N` lies inside the packet's linear data, checked just above.
        Some(unsafe { (at as *const [u8; N]).read_unaligned() })
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = SIP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map and is per-CPU, so nothing else writes it
        // while this program runs on this CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn inspect(ctx: &XdpContext) {
    count(Counter::PacketsSeen);
    let packet = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let location = match net::walk(&packet) {
        Walk::Found(location) if location.transport == Transport::Udp => location,
        Walk::Found(_) | Walk::NotUdpOrTcp => return,
        Walk::LaterFragment => return count(Counter::LaterFragments),
        Walk::Bail(Bail::ShortHeader) => return count(Counter::BailShortHeader),
        Walk::Bail(Bail::BadIpHeader) => return count(Counter::BailBadIpHeader),
        Walk::Bail(Bail::ExtHeaderLimit) => return count(Counter::BailExtHeaderLimit),
    };
    let Some(dst_port) = net::dst_port(&packet, &location) else {
        return count(Counter::BailShortHeader);
    };
    if !config_port_watched(dst_port) {
        return;
    }
    let Some(udp) = net::udp_header(&packet, &location) else {
        return count(Counter::BailShortHeader);
    };
    count(Counter::UdpWatched);
    if location.flags & sipnotify_common::FLAG_FIRST_FRAGMENT != 0 {
        count(Counter::FirstFragments);
    }
    let payload_offset = location.payload_offset();
    if packet.load::<7>(payload_offset) != Some(*NOTIFY_PREFIX) {
        return;
    }
    count(Counter::NotifyMatched);
    copy(ctx, &packet, &location, &udp, config_wakeup_bytes());
}

#[inline(always)]
fn copy(
    ctx: &XdpContext,
    packet: &Packet,
    location: &net::Location,
    udp: &net::UdpHeader,
    wakeup_bytes: u64,
) {
    let Some(buffer) = SIP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch from the map; XDP programs do not nest on one CPU.
    let buffer = unsafe { &mut *buffer };

    let payload_offset = location.payload_offset();
    // The whole frame, fragments included (multi-buffer XDP), not just the linear part.
    // SAFETY: plain helper call on the program's own context.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let present = frame_len.saturating_sub(payload_offset);
    let claimed = usize::from(udp.payload_len);
    let mut len = if present < claimed { present } else { claimed };
    if len > MAX_PAYLOAD {
        len = MAX_PAYLOAD;
    }
    // The verifier needs `len` provably within 1..=MAX_PAYLOAD for the helper calls below.
    if len == 0 || len > MAX_PAYLOAD {
        return;
    }

    let Some((src_addr, dst_addr)) = net::addresses(packet, location) else {
        return count(Counter::BailShortHeader);
    };
    let mut flags = location.flags;
    if len < claimed {
        flags |= FLAG_TRUNCATED;
        count(Counter::Truncated);
    }
    buffer.header = EventHeader {
        // SAFETY: plain helper call.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: reads the context the kernel handed us.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        payload_len: claimed as u32,
        captured_len: len as u32,
        flags,
        ip_version: location.ip_version,
        _pad0: 0,
        src_addr,
        dst_addr,
        src_port: udp.src_port,
        dst_port: udp.dst_port,
        vlan_tci: location.vlan_tci,
        _pad1: [0; 2],
    };

    // SAFETY: the destination is the scratch payload array, `len` ≤ MAX_PAYLOAD bytes long.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            payload_offset as u32,
            buffer.payload.as_mut_ptr().cast::<c_void>(),
            len as u32,
        )
    };
    if loaded < 0 {
        return count(Counter::LoadFailed);
    }

    // Waking the reader per record caps capture near 0.4 M/s; the agent polls every
    // millisecond instead. Only the record that takes the backlog across `wakeup_bytes`
    // forces a wake-up: forcing one per record past it would cost microseconds each while
    // the reader is already behind.
    let pending = SIP_EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let size = (EVENT_HEADER_LEN + len) as u64;
    let wakeup = if pending < wakeup_bytes && pending + size >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `buffer` is EVENT_HEADER_LEN + MAX_PAYLOAD bytes and `len` ≤ MAX_PAYLOAD.
    let record = unsafe {
        slice::from_raw_parts(
            (buffer as *const EventBuffer).cast::<u8>(),
            EVENT_HEADER_LEN + len,
        )
    };
    match SIP_EVENTS.output::<[u8]>(record, wakeup.into()) {
        Ok(()) => count(Counter::Copied),
        Err(_) => {
            count(Counter::RingbufFull);
            log_ring_full(ctx);
        }
    }
}

/// Logs a lost record at most once a second per CPU.
#[inline(always)]
fn log_ring_full(ctx: &XdpContext) {
    let Some(last) = SIP_LOG_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU value from the map.
    unsafe {
        if now.wrapping_sub(*last) >= NSEC_PER_SEC {
            *last = now;
            warn!(ctx, "ring buffer full: NOTIFY records are being lost");
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects a program with a reachable infinite loop, so any panic path that
    // survives optimisation fails the load instead of hanging in the kernel.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
