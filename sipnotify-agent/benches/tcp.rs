//! SIP over TCP against SIP over UDP, in the same run: what issue 13's TCP capture costs.
//!
//! The same signalling, half NOTIFYs and half other requests of the same size, is sent at a
//! ladder of rates over a veth pair to a SIP server socket in the other namespace, once as UDP
//! datagrams and once as one TCP connection (written every millisecond, so messages start
//! mid-segment and span segments). The real agent (release binary, native XDP) captures on
//! the receiving end. Per run:
//! - the NOTIFYs the agent accepted, of those sent (the capture rate is the highest rate
//!   without a loss);
//! - the agent's CPU time, and that time per MB of SIP sent. Over UDP the kernel copies only
//!   the NOTIFYs; over TCP it copies every segment to the port, so the agent reassembles and
//!   frames all of the signalling.
//!
//! Needs root and the release agent: `cargo build --release -p sipnotify-agent --bin
//! sipnotify-agent`, then `cargo bench -p sipnotify-agent --bench tcp`.
//! `SIPNOTIFY_BENCH_RATES=5000,20000` replaces the ladder (messages per second);
//! `SIPNOTIFY_BENCH_SECONDS=10` sets the length of every stream (5 s by default).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sipnotify_testkit::{
    VethPair,
    bench::{self, PrivateBinary, QuietAgent},
    genesys_notify, metric,
    proc::process_usage,
    prometheus::sum,
};

/// Messages per second, NOTIFYs and other requests together.
const RATES: &[u32] = &[10_000, 40_000, 160_000, 320_000, 640_000];
/// How long a run may go without a new NOTIFY accepted before its losses are counted.
const STALL: Duration = Duration::from_secs(2);
const METRICS: &str = "127.0.0.1:9464";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What one run measured.
struct Run {
    transport: Transport,
    rate: u32,
    notifies: u64,
    accepted: u64,
    sip_bytes: usize,
    /// How long sending took: longer than the stream when the sender could not keep pace.
    sending: Duration,
    agent_cpu: f64,
    /// Records the XDP ring had no room for.
    ring_full: u64,
    /// Stream pieces and fragments reassembly gave up.
    given_up: u64,
}

impl Run {
    /// Messages per second actually sent.
    fn achieved(&self) -> f64 {
        (self.notifies * 2) as f64 / self.sending.as_secs_f64()
    }

    fn cpu_ms_per_mb(&self) -> f64 {
        self.agent_cpu * 1000.0 / (self.sip_bytes as f64 / 1e6)
    }
}

/// Message `i` of a stream: even ones are NOTIFYs, odd ones an OPTIONS of the same size.
fn message(i: u32) -> Vec<u8> {
    let event = if i.is_multiple_of(4) { "talk" } else { "hold" };
    let notify = genesys_notify(i, "1002", event);
    if i.is_multiple_of(2) {
        return notify;
    }
    let head =
        format!("OPTIONS sip:1002@10.200.0.2 SIP/2.0\r\nCall-ID: opt-{i}\r\nCSeq: 1 OPTIONS\r\n");
    // A three-digit Content-Length makes the message as long as the NOTIFY.
    let body_len = notify.len() - head.len() - "Content-Length: 000\r\n\r\n".len();
    let mut other = format!("{head}Content-Length: {body_len}\r\n\r\n").into_bytes();
    other.resize(other.len() + body_len, b'v');
    other
}

fn main() {
    if !bench::root("tcp") {
        return;
    }
    let agent = PrivateBinary::release_agent("tcp");
    let seconds = bench::env_seconds("SIPNOTIFY_BENCH_SECONDS", 5);
    let rates = bench::env_rates().unwrap_or_else(|| RATES.to_vec());
    println!(
        "tcp: {seconds} s streams, half {}-byte NOTIFYs, half other requests of that size; \
         native XDP over veth; {} cores\n",
        message(0).len(),
        thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<4} {:>8} {:>9} {:>8} {:>10} {:>10} {:>6} {:>9} {:>10} {:>10}",
        "",
        "msg/s",
        "sent/s",
        "MB/s",
        "NOTIFYs",
        "accepted",
        "lost",
        "SIP MB",
        "agent CPU",
        "ms CPU/MB"
    );
    let mut runs = Vec::new();
    for &rate in &rates {
        for transport in [Transport::Udp, Transport::Tcp] {
            let run = measure(agent.path(), transport, rate, seconds);
            println!(
                "{:<4} {:>8} {:>9.0} {:>8.1} {:>10} {:>10} {:>7} {:>9.1} {:>9.2}s {:>10.1} {:>9} \
                 {:>8}",
                format!("{transport:?}").to_uppercase(),
                rate,
                run.achieved(),
                run.sip_bytes as f64 / 1e6 / run.sending.as_secs_f64(),
                run.notifies,
                run.accepted,
                run.notifies - run.accepted.min(run.notifies),
                run.sip_bytes as f64 / 1e6,
                run.agent_cpu,
                run.cpu_ms_per_mb(),
                run.ring_full,
                run.given_up
            );
            runs.push(run);
        }
    }
    println!();
    for transport in [Transport::Udp, Transport::Tcp] {
        // By the rate achieved: a sender that could not keep pace did not test the agent.
        let best = runs
            .iter()
            .filter(|r| r.transport == transport && r.accepted >= r.notifies)
            .max_by(|a, b| a.achieved().total_cmp(&b.achieved()));
        match best {
            Some(run) => println!(
                "{transport:?}: highest lossless rate sent {:.0} messages/s ({:.1} MB/s)",
                run.achieved(),
                run.sip_bytes as f64 / 1e6 / run.sending.as_secs_f64()
            ),
            None => println!("{transport:?}: no lossless run"),
        }
    }
    for pair in runs.chunks(2) {
        if let [udp, tcp] = pair {
            println!(
                "at {} msg/s: agent CPU over TCP / over UDP = {:.2} ({:.2} s / {:.2} s)",
                udp.rate,
                tcp.agent_cpu / udp.agent_cpu.max(1e-9),
                tcp.agent_cpu,
                udp.agent_cpu
            );
        }
    }
}

/// One run: a fresh veth pair, agent and server; `rate` messages/s for `seconds`.
fn measure(agent: &str, transport: Transport, rate: u32, seconds: u64) -> Run {
    let net = VethPair::new(&format!("tcpb{}", rate / 1000));
    net.receiver.ip(&["link", "set", "lo", "up"]);
    let source = ["--iface", "veth1", "--port", "5060", "--capture", "xdp"];
    let agent = QuietAgent::start(&net.receiver, agent, &source, METRICS, |text| {
        text.contains("sipnotify_kernel_packets_total")
    });
    let pid = agent.pid();
    let done = Arc::new(AtomicBool::new(false));
    let server = serve(&net, transport, done.clone());
    let (cpu_before, _) = process_usage(pid);

    let total = rate as usize * seconds as usize;
    let per_ms = (rate as usize).div_ceil(1000);
    let mut sip_bytes = 0;
    let sending = net.sender.enter(|| {
        let mut tcp = (transport == Transport::Tcp)
            .then(|| TcpStream::connect("10.200.0.2:5060").expect("connect"));
        let udp = UdpSocket::bind("10.200.0.1:0").expect("bind");
        let started = Instant::now();
        let mut sent = 0;
        let mut tick = 0u64;
        let mut chunk = Vec::new();
        while sent < total {
            let due = started + Duration::from_millis(tick);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            tick += 1;
            chunk.clear();
            for _ in 0..per_ms.min(total - sent) {
                let bytes = message(sent as u32);
                sip_bytes += bytes.len();
                match &mut tcp {
                    Some(_) => chunk.extend_from_slice(&bytes),
                    None => {
                        udp.send_to(&bytes, "10.200.0.2:5060").expect("send");
                    }
                }
                sent += 1;
            }
            if let Some(stream) = &mut tcp {
                stream.write_all(&chunk).expect("write");
            }
        }
        started.elapsed()
    });
    let notifies = total.div_ceil(2) as u64;
    let accepted = agent.accepted(notifies, STALL);
    let text = agent.metrics().unwrap_or_default();
    let ring_full = metric(
        &text,
        "sipnotify_kernel_packets_total",
        &[
            ("iface", "veth1"),
            ("capture", "xdp"),
            ("outcome", "ringbuf_full"),
        ],
    )
    .unwrap_or(0.0) as u64;
    let given_up = sum(&text, "sipnotify_reassembly_lost_total") as u64;
    let (cpu_after, _) = process_usage(pid);
    done.store(true, Ordering::Relaxed);
    agent.stop();
    let _ = server.join();
    Run {
        transport,
        rate,
        notifies,
        accepted,
        sip_bytes,
        sending,
        agent_cpu: cpu_after - cpu_before,
        ring_full,
        given_up,
    }
}

/// The SIP server: reads whatever arrives on 10.200.0.2:5060 until `done`.
fn serve(net: &VethPair, transport: Transport, done: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    match transport {
        Transport::Tcp => {
            let listener = net
                .receiver
                .enter(|| TcpListener::bind("10.200.0.2:5060").expect("listen"));
            thread::spawn(move || {
                if let Ok((mut socket, _)) = listener.accept() {
                    let mut buf = vec![0u8; 1 << 16];
                    while socket.read(&mut buf).is_ok_and(|n| n > 0) {}
                }
            })
        }
        Transport::Udp => {
            let socket = net.receiver.udp("10.200.0.2:5060");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("a read timeout");
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !done.load(Ordering::Relaxed) {
                    let _ = socket.recv(&mut buf);
                }
            })
        }
    }
}
