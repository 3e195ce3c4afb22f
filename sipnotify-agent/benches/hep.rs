//! NOTIFYs read from a PBX's HEP feed against the same NOTIFYs read on the wire with XDP, in
//! the same run: the highest lossless HEP rate on one socket, and the agent's CPU per
//! delivered NOTIFY on each path.
//!
//! The same unique NOTIFYs are sent at a ladder of rates over a veth pair: once as UDP
//! datagrams to 10.200.0.2:5060, captured by the real agent (release binary, native XDP on
//! veth1), and once wrapped in HEPv3 (Kamailio's chunk order) to the agent's
//! `--hep-listen 10.200.0.2:9060`, with no interface attached. Per run: the NOTIFYs the agent
//! accepted of those sent, what the HEP socket's kernel buffer dropped, and the agent's CPU
//! time per accepted NOTIFY. The target: HEP lossless at 100 000 NOTIFY/s, its CPU per
//! NOTIFY within 1.3 times the wire's.
//!
//! Needs root and the release agent: `cargo xtask bench hep` (or `cargo build --release -p
//! sipnotify-agent --bin sipnotify-agent`, then `cargo bench -p sipnotify-agent --bench hep`).
//! `SIPNOTIFY_BENCH_RATES=50000,100000` replaces the ladder (NOTIFYs per second);
//! `SIPNOTIFY_BENCH_SECONDS=5` sets the length of every stream (3 s by default).

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use sipnotify_agent::hep::decode::build;
use sipnotify_testkit::{
    VethPair,
    bench::{self, PrivateBinary, QuietAgent},
    genesys_notify, metric,
    proc::process_usage,
};

/// NOTIFYs per second.
const RATES: &[u32] = &[25_000, 50_000, 100_000, 150_000];
/// How long a run may go without a new NOTIFY accepted before its losses are counted.
const STALL: Duration = Duration::from_secs(2);
const METRICS: &str = "127.0.0.1:9464";
const SIP_TO: &str = "10.200.0.2:5060";
const HEP_TO: &str = "10.200.0.2:9060";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Wire,
    Hep,
}

/// What one run measured.
struct Run {
    path: Path,
    rate: u32,
    sent: u64,
    accepted: u64,
    /// How long sending took: longer than the stream when the sender could not keep pace.
    sending: Duration,
    agent_cpu: f64,
    /// Lost before the agent read them: the XDP ring, or the HEP socket's buffer.
    kernel_drops: u64,
}

impl Run {
    fn achieved(&self) -> f64 {
        self.sent as f64 / self.sending.as_secs_f64()
    }

    fn cpu_us_per_notify(&self) -> f64 {
        self.agent_cpu * 1e6 / self.accepted.max(1) as f64
    }

    fn lossless(&self) -> bool {
        self.accepted >= self.sent
    }
}

fn main() {
    if !bench::root("hep") {
        return;
    }
    let agent = PrivateBinary::release_agent("hep");
    let seconds = bench::env_seconds("SIPNOTIFY_BENCH_SECONDS", 3);
    let rates = bench::env_rates().unwrap_or_else(|| RATES.to_vec());
    println!(
        "hep: {seconds} s streams of unique {}-byte NOTIFYs; wire = native XDP on veth, \
         hep = HEPv3 to one --hep-listen socket; {} cores\n",
        genesys_notify(0, "1002", "talk").len(),
        thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<5} {:>8} {:>9} {:>9} {:>9} {:>7} {:>8} {:>10} {:>12}",
        "",
        "NOTIFY/s",
        "sent/s",
        "sent",
        "accepted",
        "lost",
        "dropped",
        "agent CPU",
        "µs CPU/NOTIFY"
    );
    let mut runs = Vec::new();
    for &rate in &rates {
        for path in [Path::Wire, Path::Hep] {
            let run = measure(agent.path(), path, rate, seconds);
            println!(
                "{:<5} {:>8} {:>9.0} {:>9} {:>9} {:>7} {:>8} {:>9.2}s {:>12.2}",
                format!("{path:?}").to_lowercase(),
                rate,
                run.achieved(),
                run.sent,
                run.accepted,
                run.sent - run.accepted.min(run.sent),
                run.kernel_drops,
                run.agent_cpu,
                run.cpu_us_per_notify()
            );
            runs.push(run);
        }
    }
    println!();
    for path in [Path::Wire, Path::Hep] {
        // By the rate achieved: a sender that could not keep pace did not test the agent.
        let best = runs
            .iter()
            .filter(|r| r.path == path && r.lossless())
            .max_by(|a, b| a.achieved().total_cmp(&b.achieved()));
        match best {
            Some(run) => println!(
                "{path:?}: highest lossless rate sent {:.0} NOTIFY/s",
                run.achieved()
            ),
            None => println!("{path:?}: no lossless run"),
        }
    }
    for pair in runs.chunks(2) {
        if let [wire, hep] = pair {
            println!(
                "at {} NOTIFY/s: agent CPU per NOTIFY, hep / wire = {:.2} ({:.2} µs / {:.2} µs)",
                wire.rate,
                hep.cpu_us_per_notify() / wire.cpu_us_per_notify().max(1e-9),
                hep.cpu_us_per_notify(),
                wire.cpu_us_per_notify()
            );
        }
    }
}

/// The datagrams of a stream: NOTIFY `i` as sent on the wire, or wrapped in HEPv3.
fn datagrams(path: Path, count: u32) -> Vec<Vec<u8>> {
    let src: SocketAddr = "10.200.0.1:5090".parse().expect("an address");
    let dst: SocketAddr = SIP_TO.parse().expect("an address");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
    (0..count)
        .map(|i| {
            let notify = genesys_notify(i, "1002", if i % 2 == 0 { "talk" } else { "hold" });
            match path {
                Path::Wire => notify,
                Path::Hep => build::V3 {
                    time: Some((secs, now.subsec_micros())),
                    ..build::V3::sip(src, dst, &notify)
                }
                .encode(),
            }
        })
        .collect()
}

/// One run: a fresh veth pair and agent; `rate` NOTIFYs/s for `seconds`.
fn measure(agent: &str, path: Path, rate: u32, seconds: u64) -> Run {
    let net = VethPair::new(&format!("hepb{}", rate / 1000));
    net.receiver.ip(&["link", "set", "lo", "up"]);
    // Something listens where the NOTIFYs go on the wire, as Asterisk would.
    let _server = net.receiver.udp(SIP_TO);
    let source: &[&str] = match path {
        Path::Wire => &["--iface", "veth1", "--port", "5060", "--capture", "xdp"],
        Path::Hep => &["--hep-listen", HEP_TO],
    };
    let agent = QuietAgent::start(&net.receiver, agent, source, METRICS, |_| true);
    let pid = agent.pid();
    let total = rate * seconds as u32;
    let stream = datagrams(path, total);
    let to = match path {
        Path::Wire => SIP_TO,
        Path::Hep => HEP_TO,
    };
    let (cpu_before, _) = process_usage(pid);
    let per_ms = (rate as usize).div_ceil(1000);
    let sending = net.sender.enter(|| {
        let socket = UdpSocket::bind("10.200.0.1:5090").expect("bind");
        socket.connect(to).expect("connect");
        let started = Instant::now();
        for (tick, chunk) in stream.chunks(per_ms).enumerate() {
            let due = started + Duration::from_millis(tick as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            for datagram in chunk {
                // A full send queue on the sender's side is the sender's limit, not the
                // agent's: retry rather than count it lost.
                while socket.send(datagram).is_err() {
                    thread::yield_now();
                }
            }
        }
        started.elapsed()
    });
    let accepted = agent.accepted(u64::from(total), STALL);
    let text = agent.metrics().unwrap_or_default();
    let kernel_drops = match path {
        Path::Wire => metric(
            &text,
            "sipnotify_kernel_packets_total",
            &[("iface", "veth1"), ("outcome", "ringbuf_full")],
        ),
        Path::Hep => metric(
            &text,
            "sipnotify_dropped_total",
            &[("reason", "hep_socket_overflow")],
        ),
    }
    .unwrap_or(0.0) as u64;
    let (cpu_after, _) = process_usage(pid);
    agent.stop();
    Run {
        path,
        rate,
        sent: u64::from(total),
        accepted,
        sending,
        agent_cpu: cpu_after - cpu_before,
        kernel_drops,
    }
}
