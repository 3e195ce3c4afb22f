//! Live capture throughput over a veth pair: frames carrying 600-byte NOTIFYs are sent as
//! fast as AF_PACKET `sendmmsg` threads can (one per core by default, qdisc bypassed),
//! captured by the real XDP program and drained from the ring buffer the way the agent does
//! it (1 ms poll, no per-event wake-up). The frames are addressed to another MAC, so after XDP the receiving
//! stack discards them at once: what is measured is the capture path, not UDP delivery.
//! Reports the sender's own rate without XDP, then for each attach mode the sent and
//! captured rates over 5 s and the ring-buffer losses. Needs root.
//! Run with `cargo xtask bench capture`.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sipnotify_agent::bpf::{self, AttachMode, ProgramSettings};
use sipnotify_agent::testing::netns::{self as support, VethPair};
use sipnotify_common::Counter;

const DURATION: Duration = Duration::from_secs(5);
const BURST: usize = 64;

/// An Ethernet frame with a 600-byte NOTIFY to 10.200.0.2:5061, for a MAC nobody has.
fn frame() -> Vec<u8> {
    let mut payload = support::genesys_notify(0, "1002", "talk");
    payload.resize(600, b' ');
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 0xee])
        .ipv4([10, 200, 0, 1], [10, 200, 0, 2], 64)
        .udp(5060, 5061);
    let mut frame = Vec::new();
    builder.write(&mut frame, &payload).unwrap();
    frame
}

/// Sends the frame from an AF_PACKET socket bound to the sender's veth until `deadline`;
/// returns the number of frames the kernel accepted.
fn blast(socket: &OwnedFd, deadline: Instant) -> u64 {
    let mut payload = frame();
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut messages: Vec<libc::mmsghdr> = (0..BURST)
        .map(|_| {
            // SAFETY: an all-zero mmsghdr is valid; it then points at the one iovec above.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            // SAFETY: `messages` holds BURST valid headers whose buffers outlive the call.
            let n = unsafe {
                libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BURST as u32, 0)
            };
            if n > 0 {
                sent += n as u64;
            }
        }
    }
    sent
}

/// A raw AF_PACKET socket on the sender's veth0 that bypasses the qdisc layer.
fn sender(net: &VethPair) -> OwnedFd {
    net.sender.enter(|| {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = bpf::interface_index("veth0").unwrap();
        // SAFETY: an all-zero sockaddr_ll is valid; we fill in family, protocol and index.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let one: i32 = 1;
        // SAFETY: PACKET_QDISC_BYPASS takes an int.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                4,
            )
        };
        fd
    })
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || bpf::OBJECT.is_empty() {
        eprintln!("skipping the capture bench: it needs root and the eBPF object");
        return;
    }
    let net = VethPair::new("bench");
    // One sender thread per core by default: on veth the XDP program runs in the sender's
    // own softirq, so the senders, not the reader, set the ceiling. SIPNOTIFY_BENCH_SENDERS
    // overrides the count.
    let senders: usize = std::env::var("SIPNOTIFY_BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let sockets: Vec<OwnedFd> = (0..senders).map(|_| sender(&net)).collect();
    let blast_all = |deadline: Instant| -> u64 {
        thread::scope(|scope| {
            let threads: Vec<_> = sockets
                .iter()
                .map(|socket| scope.spawn(move || blast(socket, deadline)))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        })
    };
    println!("{senders} AF_PACKET sender thread(s), 5 s per figure");

    let alone = blast_all(Instant::now() + DURATION);
    println!(
        "sender alone (no XDP):          {:>10.0} frames/s",
        alone as f64 / DURATION.as_secs_f64()
    );

    for mode in [AttachMode::Native, AttachMode::Generic] {
        let settings = ProgramSettings {
            ports: vec![5061],
            ring_bytes: sipnotify_common::DEFAULT_RING_BYTES,
        };
        let program = net
            .receiver
            .enter(|| bpf::attach("veth1", mode, &settings))
            .expect("attach");
        let bpf::AttachedProgram {
            mut events,
            stats,
            guard,
            ..
        } = program;

        let running = Arc::new(AtomicBool::new(true));
        let reader = {
            let running = running.clone();
            thread::spawn(move || {
                let mut captured = 0u64;
                loop {
                    while events.next().is_some() {
                        captured += 1;
                    }
                    if !running.load(Ordering::Relaxed) {
                        return captured;
                    }
                    thread::sleep(sipnotify_agent::capture::live::DEFAULT_POLL);
                }
            })
        };
        let sent = blast_all(Instant::now() + DURATION);
        thread::sleep(Duration::from_millis(50));
        running.store(false, Ordering::Relaxed);
        let captured = reader.join().unwrap();
        let counters = stats.read().unwrap();
        drop(guard);

        let secs = DURATION.as_secs_f64();
        println!(
            "{mode:<8} sent {:>10.0}/s  captured {:>10.0}/s  matched {:>9}  ring-full losses {}",
            sent as f64 / secs,
            captured as f64 / secs,
            counters[Counter::NotifyMatched as usize],
            counters[Counter::RingbufFull as usize],
        );
    }
}
