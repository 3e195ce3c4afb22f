//! Live capture over a veth pair, XDP (native and generic) beside AF_PACKET, in the same run.
//!
//! Two figures per path:
//! - **Lossless rate for 600-byte NOTIFYs.** Frames are sent from AF_PACKET `sendmmsg`
//!   threads (one per core by default, qdisc bypassed) and drained the way the agent drains
//!   (1 ms poll, no per-event wake-up). First at full speed; when records are lost, paced at
//!   lower rates until a 2 s run loses none.
//! - **CPU per non-matching packet.** One thread sends 200-byte RTP-like datagrams (UDP to an
//!   unwatched port) at a fixed rate; on veth the receive path (XDP, or the packet socket's
//!   filter) runs in the sender's own softirq, so the sender thread's CPU time
//!   (CLOCK_THREAD_CPUTIME_ID, which includes that softirq on kernels without
//!   IRQ_TIME_ACCOUNTING) above the same run without any capture is the cost per packet an
//!   Asterisk host pays for its RTP.
//!
//! The frames are addressed to a MAC nobody has, so after capture the receiving stack
//! discards them at once: what is measured is the capture path, not UDP delivery.
//! Needs root. Run with `cargo xtask bench capture`.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sipnotify_agent::{
    bpf::{self, AttachMode, ProgramSettings},
    capture::af_packet::{AfPacketSettings, PacketSocket},
    source_filter::SourceFilter,
};
use sipnotify_common::Counter;
use sipnotify_testkit::{self as support, VethPair, proc::thread_cpu};

const DURATION: Duration = Duration::from_secs(5);
const PACED: Duration = Duration::from_secs(2);
const BURST: usize = 64;
/// RTP-like load for the per-packet cost: 50 k/s is a few hundred concurrent calls.
const RTP_RATE: f64 = 50_000.0;
const RTP_DURATION: Duration = Duration::from_secs(3);
/// The reader's poll period, as the agent's `--poll-interval` has it by default.
const POLL: Duration = Duration::from_millis(1);

/// An Ethernet frame with a 600-byte NOTIFY to 10.200.0.2:5061, for a MAC nobody has.
fn notify_frame() -> Vec<u8> {
    let mut payload = support::genesys_notify(0, "1002", "talk");
    payload.resize(600, b' ');
    udp_frame(5061, &payload)
}

/// A 200-byte RTP-like datagram (12-byte RTP header, 160 bytes of G.711) to an unwatched port.
fn rtp_frame() -> Vec<u8> {
    let mut payload = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
    payload.resize(172, 0xd5);
    udp_frame(16_384, &payload)
}

fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 0xee])
        .ipv4([10, 200, 0, 1], [10, 200, 0, 2], 64)
        .udp(5060, port);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

/// Sends `frame` from `socket` until `deadline`, at most `rate` frames/s when given (in
/// bursts); returns the number of frames the kernel accepted.
fn blast(socket: &OwnedFd, frame: &[u8], deadline: Instant, rate: Option<f64>) -> u64 {
    let mut payload = frame.to_vec();
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let burst = if rate.is_some_and(|r| r < 20_000.0) {
        1
    } else {
        BURST
    };
    let mut messages: Vec<libc::mmsghdr> = (0..burst)
        .map(|_| {
            // SAFETY: an all-zero mmsghdr is valid; it then points at the one iovec above.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        // SAFETY: `messages` holds `burst` valid headers whose buffers outlive the call.
        let n =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), burst as u32, 0) };
        if n > 0 {
            sent += n as u64;
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

/// A capture path under test, attached to the receiver's veth1.
enum Path {
    None,
    Xdp(AttachMode),
    AfPacket,
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Path::None => "no capture",
            Path::Xdp(AttachMode::Native) => "XDP native",
            Path::Xdp(_) => "XDP generic",
            Path::AfPacket => "AF_PACKET",
        }
    }
}

/// A running capture: a reader thread counting records, and the counters of losses.
struct Running {
    stop: Arc<AtomicBool>,
    captured: Arc<AtomicU64>,
    reader: Option<thread::JoinHandle<()>>,
    /// Records lost so far (ring full / socket drops).
    lost: Box<dyn Fn() -> u64>,
    _guard: Box<dyn std::any::Any>,
}

impl Running {
    fn start(net: &VethPair, path: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let captured = Arc::new(AtomicU64::new(0));
        let ring_bytes = sipnotify_common::DEFAULT_RING_BYTES;
        let (reader, lost, guard): (_, Box<dyn Fn() -> u64>, Box<dyn std::any::Any>) = match path {
            Path::None => (None, Box::new(|| 0), Box::new(())),
            Path::Xdp(mode) => {
                let settings = ProgramSettings {
                    ports: vec![5061],
                    ring_bytes,
                    senders: SourceFilter::default(),
                };
                let program = net
                    .receiver
                    .enter(|| bpf::attach("veth1", *mode, &settings))
                    .expect("attach");
                let bpf::AttachedProgram {
                    mut events,
                    stats,
                    guard,
                    ..
                } = program;
                let (stop, captured) = (stop.clone(), captured.clone());
                let reader = thread::spawn(move || {
                    loop {
                        while events.next().is_some() {
                            captured.fetch_add(1, Ordering::Relaxed);
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        thread::sleep(POLL);
                    }
                });
                let lost = move || stats.read().map_or(0, |c| c.get(Counter::RingbufFull));
                (Some(reader), Box::new(lost), Box::new(guard))
            }
            Path::AfPacket => {
                let settings = AfPacketSettings {
                    ports: vec![5061],
                    ring_bytes,
                    block_timeout: POLL,
                };
                let mut socket = net
                    .receiver
                    .enter(|| {
                        let ifindex = bpf::interface_index("veth1").unwrap();
                        PacketSocket::open("veth1", ifindex, &settings)
                    })
                    .expect("open the packet socket");
                let drops = Arc::new(AtomicU64::new(0));
                let (stop, captured, drops_in) = (stop.clone(), captured.clone(), drops.clone());
                let reader = thread::spawn(move || {
                    loop {
                        let n = socket.drain(|_| {});
                        captured.fetch_add(n, Ordering::Relaxed);
                        if let Ok((_, d)) = socket.statistics() {
                            drops_in.fetch_add(d, Ordering::Relaxed);
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        thread::sleep(POLL);
                    }
                });
                (
                    Some(reader),
                    Box::new(move || drops.load(Ordering::Relaxed)),
                    Box::new(()),
                )
            }
        };
        Self {
            stop,
            captured,
            reader,
            lost,
            _guard: guard,
        }
    }

    /// Captured and lost so far, after letting the reader catch up.
    fn counts(&self) -> (u64, u64) {
        thread::sleep(Duration::from_millis(50));
        (self.captured.load(Ordering::Relaxed), (self.lost)())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || bpf::OBJECT.is_empty() {
        eprintln!("skipping the capture bench: it needs root and the eBPF object");
        return;
    }
    let net = VethPair::new("bench");
    // One sender thread per core by default: on veth the capture runs in the sender's own
    // softirq, so the senders, not the reader, set the ceiling. SIPNOTIFY_BENCH_SENDERS
    // overrides the count.
    let senders: usize = std::env::var("SIPNOTIFY_BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let sockets: Vec<OwnedFd> = (0..senders).map(|_| sender(&net)).collect();
    let notify = notify_frame();
    let send_all = |deadline: Instant, rate: Option<f64>| -> u64 {
        thread::scope(|scope| {
            let threads: Vec<_> = sockets
                .iter()
                .map(|socket| {
                    let each = rate.map(|r| r / sockets.len() as f64);
                    let frame = &notify;
                    scope.spawn(move || blast(socket, frame, deadline, each))
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        })
    };
    println!(
        "{senders} AF_PACKET sender thread(s); 600-byte NOTIFYs, {} s at full speed, {} s per paced try",
        DURATION.as_secs(),
        PACED.as_secs()
    );

    let alone = send_all(Instant::now() + DURATION, None);
    println!(
        "sender alone (no capture):   {:>10.0} frames/s",
        alone as f64 / DURATION.as_secs_f64()
    );
    let paths = [
        Path::Xdp(AttachMode::Native),
        Path::Xdp(AttachMode::Generic),
        Path::AfPacket,
    ];
    for path in &paths {
        let running = Running::start(&net, path);
        let sent = send_all(Instant::now() + DURATION, None);
        let (captured, lost) = running.counts();
        drop(running);
        let secs = DURATION.as_secs_f64();
        let full_rate = sent as f64 / secs;
        // The lossless rate: full speed when nothing was lost, else the fastest paced run
        // that lost nothing.
        let mut lossless = (lost == 0 && captured == sent).then_some(full_rate);
        let mut rate = captured as f64 / secs * 0.9;
        for _ in 0..6 {
            if lossless.is_some() || rate < 1_000.0 {
                break;
            }
            let running = Running::start(&net, path);
            let sent = send_all(Instant::now() + PACED, Some(rate));
            let (captured, lost) = running.counts();
            drop(running);
            if lost == 0 && captured == sent {
                lossless = Some(sent as f64 / PACED.as_secs_f64());
            }
            rate *= 0.7;
        }
        println!(
            "{:<12} full speed: sent {:>10.0}/s captured {:>10.0}/s lost {:>9} | lossless {}",
            path.name(),
            full_rate,
            captured as f64 / secs,
            lost,
            lossless.map_or_else(|| "not found".to_owned(), |r| format!("{r:>10.0}/s")),
        );
    }

    // CPU per non-matching packet: one paced sender of RTP-like datagrams.
    let rtp = rtp_frame();
    let cpu_per_packet = |path: &Path| -> f64 {
        let running = Running::start(&net, path);
        let socket = &sockets[0];
        let (sent, cpu) = thread::scope(|scope| {
            scope
                .spawn(|| {
                    let before = thread_cpu();
                    let sent = blast(socket, &rtp, Instant::now() + RTP_DURATION, Some(RTP_RATE));
                    (sent, thread_cpu() - before)
                })
                .join()
                .unwrap()
        });
        drop(running);
        cpu.as_nanos() as f64 / sent as f64
    };
    println!(
        "RTP-like load: 200-byte UDP to an unwatched port at {RTP_RATE:.0}/s for {} s, sender CPU ns per packet (median of 3)",
        RTP_DURATION.as_secs()
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut baseline = Vec::new();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..3 {
        // Interleaved, so drift on the shared machine hits every path alike.
        baseline.push(cpu_per_packet(&Path::None));
        for (path, result) in paths.iter().zip(&mut results) {
            result.push(cpu_per_packet(path));
        }
    }
    let base = median(baseline);
    println!("{:<12} {base:>8.0} ns", Path::None.name());
    for (path, result) in paths.iter().zip(results) {
        let cost = median(result);
        println!(
            "{:<12} {cost:>8.0} ns  ({:+.0} ns per packet over no capture)",
            path.name(),
            cost - base
        );
    }
}
