//! The sipnotify XDP program: find UDP datagrams to a watched port whose payload starts with
//! `NOTIFY ` (after at most four keep-alive CRLFs), copy them into the `SIP_EVENTS` ring
//! buffer, count every outcome, and pass every packet on untouched. TCP segments to a watched
//! port, and the fragments of a fragmented NOTIFY (followed through `SIP_FRAGMENTS`), are
//! copied whole from their IP header for the agent to reassemble; a TCP flow seen carrying
//! TLS (`SIP_TLS_FLOWS`) is not copied again.
//!
//! ```text
//! frame ─▶ walk (Ethernet, ≤2 VLAN tags, IPv4+options | IPv6+ext headers) ─▶ UDP/TCP header
//!        ─▶ dst port in the SIP_CONFIG bitmap? ─▶ empty? TLS/DTLS record? "NOTIFY "?
//!        ─▶ SIP_SCRATCH ─▶ bpf_ringbuf_output(header + payload, right-sized) ─▶ agent
//! later fragment ─▶ first fragment copied (SIP_FRAGMENTS)? ─▶ SIP_SCRATCH ─▶ …
//! TCP segment ─▶ flow in SIP_TLS_FLOWS? pass : TLS record start? remember the flow, pass : copy
//! ```
//!
//! The object holds the program twice, differing only in how the payload reaches the scratch
//! record ([`PayloadCopy`]); the agent probes the kernel and loads one:
//! - `sipnotify_xdp` (multi-buffer, `xdp.frags`): `bpf_xdp_load_bytes`, Linux 5.18 and later;
//! - `sipnotify_lin` (single-buffer): a copy from the linear area in power-of-two chunks that
//!   the verifiers of 5.10–5.17 accept. Without the frags flag every frame such a program sees
//!   is one linear buffer, so nothing is missed.
//!
//! This program is an observer on an Asterisk host: it returns `XDP_PASS` on every path,
//! including errors, and never writes to the packet. Every SIP decision is left to the agent,
//! where it can be tested; the header walk and the capture decision live in
//! `sipnotify-common` (`decide`), so AF_PACKET and the pcap replay run the very same code,
//! and each packet ends in exactly one outcome counter.
#![no_std]
#![no_main]
// Inline assembly for the linear copy's unaligned 8-byte moves (see `Linear`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

use core::{ffi::c_void, slice};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    macros::{map, xdp},
    maps::{LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use sipnotify_common::{
    Counter, DEFAULT_RING_BYTES, EVENT_HEADER_LEN, EventBuffer, FRAGMENT_FOLLOW_NS,
    FRAGMENT_MAP_ENTRIES, FlowKey, FragmentKey, MAX_SENDER_PREFIXES, SCRATCH_PAYLOAD,
    SENDER_KEY_LEN, SipConfig, TLS_FLOW_MAP_ENTRIES,
    decide::{self, Capture, Decision, Fragments, Ports, Senders, TlsFlows},
    net::{self, Frame},
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

/// The watched-port set as the shared decision asks for it.
struct WatchedPorts;

impl Ports for WatchedPorts {
    #[inline(always)]
    fn is_watched(&self, port: u16) -> bool {
        config_port_watched(port)
    }
}

/// The networks NOTIFYs may come from (`--sip-source`), filled by the agent before attaching.
#[map]
static SIP_SENDERS: LpmTrie<[u8; SENDER_KEY_LEN], u8> =
    LpmTrie::with_max_entries(MAX_SENDER_PREFIXES, 0);

/// The allowed senders as the shared decision asks for them: without `--sip-source` the
/// trie is never looked up; with it, once per NOTIFY (or TCP segment to a watched port).
struct AllowedSenders;

impl Senders for AllowedSenders {
    #[inline(always)]
    fn allowed(&self, ip_version: u8, addr: &[u8; 16]) -> bool {
        // SAFETY: a plain read of a static.
        if unsafe { core::ptr::read_volatile(&raw const SIP_CONFIG.senders_limited) } == 0 {
            return true;
        }
        let key = Key::new(
            (SENDER_KEY_LEN * 8) as u32,
            sipnotify_common::sender_key(ip_version, addr),
        );
        SIP_SENDERS.get(&key).is_some()
    }
}

/// Datagrams whose first fragment was copied, and when: their later fragments carry no port.
#[map]
static SIP_FRAGMENTS: LruHashMap<FragmentKey, u64> =
    LruHashMap::with_max_entries(FRAGMENT_MAP_ENTRIES, 0);

/// The followed datagrams as the shared decision asks for them.
struct FollowedFragments;

impl Fragments for FollowedFragments {
    #[inline(always)]
    fn follow(&mut self, key: &FragmentKey) {
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        // A full map evicts its least recently used entry; an insert cannot fail otherwise
        // in a way that would matter more than this one datagram.
        let _ = SIP_FRAGMENTS.insert(key, now, 0);
    }

    #[inline(always)]
    fn followed(&mut self, key: &FragmentKey) -> bool {
        // SAFETY: the value is a plain u64 read once; a concurrent update only moves it.
        let Some(&since) = (unsafe { SIP_FRAGMENTS.get(key) }) else {
            return false;
        };
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        now.wrapping_sub(since) < FRAGMENT_FOLLOW_NS
    }
}

/// TCP flows to a watched port seen carrying TLS: their later segments are not copied.
#[map]
static SIP_TLS_FLOWS: LruHashMap<FlowKey, u8> =
    LruHashMap::with_max_entries(TLS_FLOW_MAP_ENTRIES, 0);

impl TlsFlows for FollowedFragments {
    #[inline(always)]
    fn mark_tls(&mut self, key: &FlowKey) {
        // A full map evicts its least recently used flow, which is then copied again only
        // until a segment of it starts a record.
        let _ = SIP_TLS_FLOWS.insert(key, 1, 0);
    }

    #[inline(always)]
    fn is_tls(&mut self, key: &FlowKey) -> bool {
        // SAFETY: only the presence of the entry is read.
        unsafe { SIP_TLS_FLOWS.get(key) }.is_some()
    }

    #[inline(always)]
    fn forget_tls(&mut self, key: &FlowKey) {
        let _ = SIP_TLS_FLOWS.remove(key);
    }
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
    inspect::<MultiBuffer>(&ctx);
    xdp_action::XDP_PASS
}

#[xdp]
fn sipnotify_lin(ctx: XdpContext) -> u32 {
    inspect::<Linear>(&ctx);
    xdp_action::XDP_PASS
}

/// Past the last header: a TCP header (at most 60 bytes), then up to four CRLFs and `NOTIFY `.
const MAX_READ_OFFSET: usize = net::MAX_HEADER_OFFSET + 128;

/// The bytes of the frame's linear part, read with the bounds checks the verifier needs.
struct Packet {
    start: usize,
    end: usize,
}

impl Frame for Packet {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Bounding the offset first gives the verifier a finite range for `start + offset`.
        // The bound sits above every offset the walk and the decision can read (headers end
        // below MAX_HEADER_OFFSET; a TCP header and the payload's first bytes follow), so no
        // path fails it with a known offset: Linux 6.12's verifier explores the impossible
        // branch of such a check and rejects the program ("REG INVARIANTS VIOLATION").
        if offset > MAX_READ_OFFSET {
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

/// Every packet gets exactly one outcome counter, and a NOTIFY a few tallies on its way;
/// `packets_seen` is not counted here but summed from the outcomes by the agent, so a packet
/// for an unwatched port costs one increment.
#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = SIP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map and is per-CPU, so nothing else writes it
        // while this program runs on this CPU.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn inspect<P: PayloadCopy>(ctx: &XdpContext) {
    let packet = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    match decide::decide(
        &packet,
        &WatchedPorts,
        &AllowedSenders,
        &mut FollowedFragments,
        &mut count,
    ) {
        Decision::Skip(skip) => count(skip.counter()),
        Decision::Capture(capture) => {
            count(copy::<P>(ctx, &packet, &capture));
        }
    }
}

/// Copies a NOTIFY into the ring buffer; returns the outcome to count.
#[inline(always)]
fn copy<P: PayloadCopy>(ctx: &XdpContext, packet: &Packet, capture: &Capture) -> Counter {
    let Some(buffer) = SIP_SCRATCH.get_ptr_mut(0) else {
        return Counter::ScratchFailed;
    };
    // SAFETY: per-CPU scratch from the map; XDP programs do not nest on one CPU.
    let buffer = unsafe { &mut *buffer };

    let payload_offset = capture.payload_offset();
    let len = capture.captured_len(P::present(ctx, packet, payload_offset));
    // The decision saw `NOTIFY ` inside the frame and the UDP length, so this never triggers;
    // it keeps the copy below from ever being asked for nothing.
    if len == 0 {
        return Counter::EmptyPayload;
    }
    let len = verifier_bounded(len);
    buffer.header = capture.header(
        len,
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() },
        // SAFETY: reads the context the kernel handed us.
        unsafe { (*ctx.ctx).ingress_ifindex },
        &mut count,
    );

    if !P::load(ctx, packet, payload_offset, &mut buffer.payload, len) {
        return Counter::LoadFailed;
    }

    // SAFETY: `buffer` is EVENT_HEADER_LEN + SCRATCH_PAYLOAD bytes and `len` ≤ SCRATCH_PAYLOAD.
    let record = unsafe {
        slice::from_raw_parts(
            (buffer as *const EventBuffer).cast::<u8>(),
            EVENT_HEADER_LEN + len,
        )
    };
    // No flags: the kernel notifies the reader only when it had caught up with the ring (it
    // then waits on readiness); a busy reader polls and is not woken per record.
    match SIP_EVENTS.output::<[u8]>(record, 0) {
        Ok(()) => Counter::Copied,
        Err(_) => {
            log_ring_full(ctx);
            Counter::RingbufFull
        }
    }
}

/// `len` (1..=MAX_PAYLOAD, unchanged) in a form every verifier can bound to
/// 1..=SCRATCH_PAYLOAD. A range check such as `len == 0 || len > MAX` is folded by the compiler
/// into one comparison on `len - 1`, whose bounds the verifiers before 6.11 do not carry over
/// to `len` (6.1: "R3 min value is outside of the allowed memory range" at the helper call).
/// Hiding the value from the optimiser keeps the mask, which every verifier follows.
#[inline(always)]
fn verifier_bounded(len: usize) -> usize {
    ((core::hint::black_box(len) - 1) & (SCRATCH_PAYLOAD - 1)) + 1
}

/// How the payload gets from the frame into the scratch record.
trait PayloadCopy {
    /// Payload bytes the frame holds from `offset` on.
    fn present(ctx: &XdpContext, packet: &Packet, offset: usize) -> usize;
    /// Copies the first `len` payload bytes (1..=MAX_PAYLOAD, ≤ `present`) at `offset` into
    /// `dst`; false when the frame could not supply them.
    fn load(
        ctx: &XdpContext,
        packet: &Packet,
        offset: usize,
        dst: &mut [u8; SCRATCH_PAYLOAD],
        len: usize,
    ) -> bool;
}

/// Multi-buffer frames through `bpf_xdp_load_bytes` (5.18): one helper call, fragments
/// included, the kernel's own memcpy.
struct MultiBuffer;

impl PayloadCopy for MultiBuffer {
    #[inline(always)]
    fn present(ctx: &XdpContext, _packet: &Packet, offset: usize) -> usize {
        // The whole frame, fragments included, not just the linear part.
        // SAFETY: plain helper call on the program's own context.
        let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
        frame_len.saturating_sub(offset)
    }

    #[inline(always)]
    fn load(
        ctx: &XdpContext,
        _packet: &Packet,
        offset: usize,
        dst: &mut [u8; SCRATCH_PAYLOAD],
        len: usize,
    ) -> bool {
        // SAFETY: `dst` is SCRATCH_PAYLOAD bytes long and `len` ≤ SCRATCH_PAYLOAD.
        let loaded = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                offset as u32,
                dst.as_mut_ptr().cast::<c_void>(),
                len as u32,
            )
        };
        loaded >= 0
    }
}

/// For each bit of `len` from the highest: copy a chunk of that size.
macro_rules! linear_chunks {
    ($src:ident, $end:ident, $dst:ident, $len:ident; $($bit:tt),*) => {$(
        if $len & (1 << $bit) != 0 {
            // The chunks of the higher bits come first.
            let at = $len & ((SCRATCH_PAYLOAD - 1) << ($bit + 1)) & (SCRATCH_PAYLOAD - 1);
            let from = $src + at;
            if !fits::<{ 1 << $bit }>(from, $end) {
                return false;
            }
            let to = $dst + at;
            // SAFETY: `from..from + 2^bit` is inside the frame (checked just above) and
            // `to..to + 2^bit` inside the scratch payload (`at + 2^bit` ≤ SCRATCH_PAYLOAD).
            unsafe { moves!(from, to, 0, $bit) };
        }
    )*};
}

/// `2^bit` bytes from `from + offset` to `to + offset`: below 8 bytes one move of that width,
/// above it 8-byte moves with constant offsets (unrolled by halving, so each move is one load
/// and one store).
macro_rules! moves {
    ($from:ident, $to:ident, $offset:expr, 0) => { move_one!(u8, $from, $to, $offset) };
    ($from:ident, $to:ident, $offset:expr, 1) => { move_one!(u16, $from, $to, $offset) };
    ($from:ident, $to:ident, $offset:expr, 2) => { move_one!(u32, $from, $to, $offset) };
    ($from:ident, $to:ident, $offset:expr, 3) => { move_one!(u64, $from, $to, $offset) };
    ($from:ident, $to:ident, $offset:expr, 4) => { moves!(@half $from, $to, $offset, 3, 8) };
    ($from:ident, $to:ident, $offset:expr, 5) => { moves!(@half $from, $to, $offset, 4, 16) };
    ($from:ident, $to:ident, $offset:expr, 6) => { moves!(@half $from, $to, $offset, 5, 32) };
    ($from:ident, $to:ident, $offset:expr, 7) => { moves!(@half $from, $to, $offset, 6, 64) };
    ($from:ident, $to:ident, $offset:expr, 8) => { moves!(@half $from, $to, $offset, 7, 128) };
    ($from:ident, $to:ident, $offset:expr, 9) => { moves!(@half $from, $to, $offset, 8, 256) };
    ($from:ident, $to:ident, $offset:expr, 10) => { moves!(@half $from, $to, $offset, 9, 512) };
    ($from:ident, $to:ident, $offset:expr, 11) => { moves!(@half $from, $to, $offset, 10, 1024) };
    ($from:ident, $to:ident, $offset:expr, 12) => { moves!(@half $from, $to, $offset, 11, 2048) };
    ($from:ident, $to:ident, $offset:expr, 13) => { moves!(@half $from, $to, $offset, 12, 4096) };
    (@half $from:ident, $to:ident, $offset:expr, $bit:tt, $half:literal) => {{
        moves!($from, $to, $offset, $bit);
        moves!($from, $to, $offset + $half, $bit);
    }};
}

/// Whether `from + N` ≤ `end`, checked on a copy of `from`'s own register: the verifier then
/// extends the proven range to `from` itself, which the moves read through. (Compiled from
/// Rust, the comparison may be re-associated onto a register the verifier cannot relate.)
#[inline(always)]
fn fits<const N: usize>(from: usize, end: usize) -> bool {
    let mut fits: u64 = 0;
    // SAFETY: arithmetic and a forward jump on registers; no memory access.
    unsafe {
        core::arch::asm!(
            "{t} = {from}",
            "{t} += {n}",
            "if {t} > {end} goto +1",
            "{fits} = 1",
            from = in(reg) from,
            end = in(reg) end,
            n = const N,
            t = out(reg) _,
            fits = inout(reg) fits,
            options(nostack, nomem),
        );
    }
    fits == 1
}

/// One load and one store of width `$ty` at a constant offset.
macro_rules! move_one {
    ($ty:ident, $from:ident, $to:ident, $offset:expr) => {
        core::arch::asm!(
            concat!("{t} = *(", stringify!($ty), " *)({from} + {offset})"),
            concat!("*(", stringify!($ty), " *)({to} + {offset}) = {t}"),
            from = in(reg) $from,
            to = in(reg) $to,
            offset = const $offset,
            t = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}
/// Single-buffer frames, copied from the linear area without a helper (before 5.18).
///
/// Packet memory can only be read at offsets the verifier has proven inside the frame, so a
/// variable-length copy is split by the bits of `len`: for each set bit, a chunk of that
/// fixed size, bounds-checked once against `data_end`, at the offset the higher bits of `len`
/// add up to. 600 bytes are 512 + 64 + 16 + 8 bytes in four checks and 75 moves; no loop
/// and no worst-case copy. The moves are inline assembly because the payload is unaligned
/// and LLVM would otherwise split every 8-byte load into single bytes; the kernel allows
/// unaligned packet loads on the architectures with efficient unaligned access (x86-64, arm64).
struct Linear;

impl PayloadCopy for Linear {
    #[inline(always)]
    fn present(_ctx: &XdpContext, packet: &Packet, offset: usize) -> usize {
        packet.end.saturating_sub(packet.start + offset)
    }

    #[inline(always)]
    fn load(
        _ctx: &XdpContext,
        packet: &Packet,
        offset: usize,
        dst: &mut [u8; SCRATCH_PAYLOAD],
        len: usize,
    ) -> bool {
        // The payload starts below MAX_READ_OFFSET; saying so bounds the source pointer.
        if offset > MAX_READ_OFFSET {
            return false;
        }
        let src = packet.start + offset;
        let end = packet.end;
        let dst = dst.as_mut_ptr() as usize;
        // Logically `len` unchanged (≤ MAX_PAYLOAD); for the verifier 0..SCRATCH_PAYLOAD, so
        // each chunk offset below is bounded by its mask.
        let len = len & (SCRATCH_PAYLOAD - 1);
        linear_chunks!(src, end, dst, len; 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        true
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
