//! The reassemblers' memory bound, measured on the real heap: 10 000 concurrent TCP flows
//! (each holding half a NOTIFY) and 10 000 incomplete fragmented datagrams, counted by a
//! global allocator that tracks live and peak bytes. A bound that only held in the
//! reassemblers' own accounting would not be a bound.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sipnotify_agent::reassembly::{
    fragment::{self, FragmentReassembler, FragmentSettings, IpPacket},
    tcp::{FlowKey, Segment, TcpReassembler, TcpSettings},
};
use sipnotify_testkit::frames;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests share the counters, so they take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const FLOWS: u16 = 10_000;
const NOW: Duration = Duration::from_secs(1);

fn notify() -> Vec<u8> {
    let body = "x".repeat(200);
    format!(
        "NOTIFY sip:asterisk@192.0.2.2 SIP/2.0\r\nCall-ID: c\r\nCSeq: 1 NOTIFY\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Peak heap bytes above the level at the start, while 10 000 flows each get a SYN and
/// half a message, then the other half; returns (peak, notifies delivered, flows evicted).
fn tcp_run(bound: usize) -> (usize, u64, u64) {
    let stream = notify();
    let half = stream.len() / 2;
    let key = |port: u16| FlowKey {
        src: SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), port),
        dst: SocketAddr::new(Ipv4Addr::new(192, 0, 2, 2).into(), 5061),
    };
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let mut r = TcpReassembler::new(TcpSettings {
        max_total_bytes: bound,
        max_flows: usize::from(FLOWS),
        ..TcpSettings::default()
    });
    let mut delivered = 0;
    let mut deliver = |_: &FlowKey, _: &[u8]| delivered += 1;
    for port in 0..FLOWS {
        let seq = u32::from(port) * 7919;
        let syn = Segment {
            key: key(port),
            seq,
            syn: true,
            fin: false,
            rst: false,
            payload: &[],
        };
        r.push(NOW, syn, &mut deliver);
        let first = Segment {
            seq: seq + 1,
            syn: false,
            payload: &stream[..half],
            ..syn
        };
        r.push(NOW, first, &mut deliver);
        assert!(r.memory() <= bound);
    }
    for port in 0..FLOWS {
        let rest = Segment {
            key: key(port),
            seq: u32::from(port) * 7919 + 1 + half as u32,
            syn: false,
            fin: false,
            rst: false,
            payload: &stream[half..],
        };
        r.push(NOW, rest, &mut deliver);
    }
    let evicted = r.stats().evicted;
    eprintln!(
        "DEBUG live {} accounted {} flows {}",
        LIVE.load(Ordering::Relaxed) - start,
        r.memory(),
        r.flows()
    );
    drop(r);
    let peak = PEAK.load(Ordering::Relaxed) - start;
    (peak, delivered, evicted)
}

#[test]
fn ten_thousand_tcp_flows_stay_within_the_bound_on_the_heap() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Room for every flow: all are delivered, and the heap holds what was accounted.
    let (peak, delivered, evicted) = tcp_run(64 << 20);
    assert_eq!((delivered, evicted), (u64::from(FLOWS), 0));
    assert!(peak < 16 << 20, "10 000 half messages took {peak} bytes");
    // A bound of 1 MiB: flows are evicted, and the heap never goes beyond the bound.
    let bound = 1 << 20;
    let (peak, _, evicted) = tcp_run(bound);
    assert!(evicted > 5_000, "{evicted} evicted");
    assert!(peak <= bound, "peak {peak} over the {bound}-byte bound");
}

#[test]
fn ten_thousand_incomplete_datagrams_stay_within_the_bound_on_the_heap() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let datagram = frames::udp(5060, 5061, &vec![b'N'; 2000]);
    let packets: Vec<Vec<u8>> = (0..FLOWS)
        .map(|id| frames::ipv4_fragments(id, 17, &datagram, &[1480]).remove(0))
        .collect();
    let bound = 1 << 20;
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let mut r = FragmentReassembler::new(FragmentSettings {
        max_total_bytes: bound,
        ..FragmentSettings::default()
    });
    for packet in &packets {
        let Ok(IpPacket::Fragment(piece)) = fragment::parse_ip(packet) else {
            panic!("not a fragment");
        };
        assert!(r.push(NOW, piece).is_none());
    }
    let peak = PEAK.load(Ordering::Relaxed) - start;
    eprintln!(
        "DEBUG live {} accounted {} pending {}",
        LIVE.load(Ordering::Relaxed) - start,
        r.memory(),
        r.pending()
    );
    assert!(r.stats().evicted > 9_000, "{:?}", r.stats());
    assert!(peak <= bound, "peak {peak} over the {bound}-byte bound");
}
