//! End to end, wire to bridge: what issue 4 promises, measured on this machine.
//!
//! A sender thread in one network namespace paces unique Genesys NOTIFYs (`sendmmsg` bursts
//! every millisecond) over a veth pair to the real agent (release binary, XDP program
//! included) in the other namespace, which delivers them to the local HTTPS bridge stand-in
//! running there too. Measured:
//!
//! 1. the highest rate at which every NOTIFY of a 10 s stream is acknowledged exactly once
//!    (goal ≥ 100 k/s), in object mode and in array mode, searching a ladder of rates up to
//!    the first loss, with the agent's CPU time and peak RSS for each run (goal ≤ 64 MiB);
//! 2. the latency from `sendmmsg` to the bridge's receipt at 1 k/s (goal p99 ≤ 5 ms);
//! 3. the field report's `tcpdump -A | python3 sip-notify-parser.py` on the same streams
//!    (100/s and 1 k/s), side by side with the agent.
//!
//! 1 and 2 run with the durable spool (the default) and with `--spool off`, so the spool's
//! cost is measured against a baseline of the same run.
//!
//! Everything shares the machine's cores: the sender (whose CPU time includes the kernel's
//! veth, XDP and UDP receive work it triggers), the agent and the bridge stand-in. So each
//! run also shows who used how much CPU, and when a run loses notifications it says where,
//! from the agent's metrics and the veth counters: before XDP, ring buffer full, parse
//! rejects, queue full, or not delivered. Needs root and the release agent:
//!
//! `cargo build --release -p sipnotify-agent --bin sipnotify-agent`, then
//! `cargo bench -p sipnotify-agent --bench end_to_end`.
//! `SIPNOTIFY_BENCH_QUICK=1` runs 2 s streams and the first two rates of each ladder;
//! `SIPNOTIFY_BENCH_CASE=…` only the parts whose name contains it (`search-object`,
//! `search-array`, `latency`, `baseline`); `SIPNOTIFY_BENCH_RATES=150000,200000` replaces
//! the ladders; `SIPNOTIFY_BENCH_AGENT_ARGS="--ring-bytes 67108864"` adds agent flags;
//! `SIPNOTIFY_BENCH_SECONDS=60` sets the length of every stream.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use sipnotify_testkit::{
    Agent, BridgeOptions, NamespacedBridge, NetNs, TestBridge, VethPair,
    bench::{self, PrivateBinary},
    call_id, call_uuid, genesys_notify, metric,
    proc::{self, Memory, machine_ticks, process_usage, thread_cpu, threads_cpu_seconds},
    prometheus::{samples, sum},
};

/// The rates searched for the highest lossless one, per mode, in NOTIFYs per second. Object
/// mode (one HTTPS request per notification) tops out far lower than array mode.
const OBJECT_RATES: &[u32] = &[10_000, 15_000, 20_000, 25_000, 50_000, 100_000];
const ARRAY_RATES: &[u32] = &[25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000];
/// Most messages per `sendmmsg` call.
const BURST: usize = 64;
/// How long a run may go without a new acknowledgement before its losses are counted.
const STALL: Duration = Duration::from_secs(2);
/// A run kept up if its last notification was acknowledged this soon after the last send.
const KEPT_UP: Duration = Duration::from_millis(100);
/// How long the Python baseline may keep posting after its stream ended.
const BASELINE_DRAIN: Duration = Duration::from_secs(10);
/// The name of the bridge stand-in's threads, whose CPU time is counted apart.
const BRIDGE_THREADS: &str = "e2e-bridge";
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    if !bench::root("end_to_end") {
        return;
    }
    let agent = PrivateBinary::release_agent("end_to_end");
    let quick = std::env::var_os("SIPNOTIFY_BENCH_QUICK").is_some();
    let seconds = bench::env_seconds("SIPNOTIFY_BENCH_SECONDS", if quick { 2 } else { 10 });
    let rates_override = bench::env_rates();
    let agent_args = std::env::var("SIPNOTIFY_BENCH_AGENT_ARGS").unwrap_or_default();
    let started = Instant::now();

    let net = VethPair::new("e2e");
    pin_neighbours(&net);
    let bench = Bench {
        net: &net,
        agent: agent.path(),
        duration: Duration::from_secs(seconds),
        notifies: Notifies::new(),
        extra_args: agent_args.split_whitespace().collect(),
    };

    println!(
        "end_to_end: {seconds} s streams of unique {}-byte NOTIFYs, veth0 → veth1 → agent → \
         bridge; {} cores\n",
        bench.notifies.template.len(),
        thread::available_parallelism().map_or(0, usize::from)
    );
    println!("{}", Run::HEADER);
    println!(
        "(CPU s: from the first send until the run settled; the sender's includes the kernel's \
         veth, XDP and UDP work its sends trigger; busy %: the whole machine, other users \
         included; anon and pss: RssAnon and Pss at the end)"
    );
    let mut summary = Summary::default();
    // With the spool (the default) and without it, in the same run: the spool's cost.
    let searches = [
        (Mode::Object, OBJECT_RATES),
        (Mode::ObjectNoSpool, OBJECT_RATES),
        (Mode::Array, ARRAY_RATES),
        (Mode::ArrayNoSpool, ARRAY_RATES),
    ];
    for (mode, rates) in searches {
        if !bench::wants(&format!("search-{}", mode.name())) {
            continue;
        }
        let rates = match &rates_override {
            Some(rates) => rates,
            None if quick => &rates[..2],
            None => rates,
        };
        let mut search = Search {
            mode,
            best: None,
            kept_up: None,
            stop: "the ladder ended".to_owned(),
        };
        for &rate in rates {
            let run = bench.agent_run(mode, rate);
            println!("{run}");
            summary.note_memory(&run);
            if !run.lossless() {
                println!("{}", run.diagnosis());
                search.stop = format!(
                    "loses at {rate}/s target ({:.0}/s sent): {}",
                    run.achieved_rate(),
                    run.cause()
                );
                break;
            }
            let achieved = run.achieved_rate();
            if run.drain <= KEPT_UP {
                search.kept_up = Some((rate, achieved));
            }
            search.best = Some(run);
            if achieved < 0.95 * f64::from(rate) {
                search.stop = format!("the sender reached only {achieved:.0}/s of {rate}/s");
                println!("  {}; the search stops here", search.stop);
                break;
            }
        }
        summary.searches.push(search);
    }
    let paced = [
        (Mode::Object, 1_000),
        (Mode::ObjectNoSpool, 1_000),
        (Mode::Array, 1_000),
        (Mode::ArrayNoSpool, 1_000),
        (Mode::ArrayLinger5ms, 1_000),
        (Mode::Object, 100),
    ];
    for (mode, rate) in paced.into_iter().filter(|_| bench::wants("latency")) {
        let run = bench.agent_run(mode, rate);
        println!("{run}");
        summary.note_memory(&run);
        summary.paced.push(run);
    }

    if bench::wants("baseline") {
        println!("\nthe field report's script (tcpdump -A -l | python3 sip-notify-parser.py):");
    }
    for rate in [100, 1_000]
        .into_iter()
        .filter(|_| bench::wants("baseline"))
    {
        match bench.baseline_run(rate) {
            Ok(run) => {
                println!("{run}");
                summary.baseline.push(run);
            }
            Err(why) => println!("  baseline at {rate}/s not run: {why}"),
        }
    }
    summary.print(&bench);
    println!(
        "\ntotal bench time {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// How the agent shapes requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One object per request (the default, what the existing bridge accepts).
    Object,
    /// A JSON array per request (`--array-mode`), batches lingering the default 1 ms.
    Array,
    /// Array mode with `--batch-linger 5ms` (the default before the latency goal set 1 ms).
    ArrayLinger5ms,
    /// Object mode with `--spool off`: the backlog in memory only.
    ObjectNoSpool,
    /// Array mode with `--spool off`.
    ArrayNoSpool,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Array => "array",
            Self::ArrayLinger5ms => "array/5ms",
            Self::ObjectNoSpool => "object/no-spool",
            Self::ArrayNoSpool => "array/no-spool",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Object => &[],
            Self::Array => &["--array-mode"],
            Self::ArrayLinger5ms => &["--array-mode", "--batch-linger", "5ms"],
            Self::ObjectNoSpool => &["--spool", "off"],
            Self::ArrayNoSpool => &["--array-mode", "--spool", "off"],
        }
    }
}

/// Fixed neighbour entries both ways, so the first burst of a run is not parked in the ARP
/// queue (which holds only about 100 packets) while the address is resolved.
fn pin_neighbours(net: &VethPair) {
    let mac = |ns: &NetNs, dev: &str| {
        let out = ns
            .command("ip")
            .args(["-j", "link", "show", dev])
            .output()
            .expect("ip link show");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        links[0]["address"].as_str().expect("a MAC").to_owned()
    };
    let (mac0, mac1) = (mac(&net.sender, "veth0"), mac(&net.receiver, "veth1"));
    for (ns, peer, mac, dev) in [
        (&net.sender, "10.200.0.2", &mac1, "veth0"),
        (&net.receiver, "10.200.0.1", &mac0, "veth1"),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            peer,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
}

/// The bridge stand-in listening inside the receiver namespace, keeping every object so each
/// run can be checked for exactly-once delivery.
struct Bridge(NamespacedBridge);

impl std::ops::Deref for Bridge {
    type Target = NamespacedBridge;

    fn deref(&self) -> &NamespacedBridge {
        &self.0
    }
}

impl Bridge {
    fn start(ns: &NetNs) -> Self {
        let options = BridgeOptions {
            record_objects: true,
            ..BridgeOptions::default()
        };
        Self(NamespacedBridge::start(ns, options, BRIDGE_THREADS))
    }

    /// Waits until `count` objects are acknowledged, until none arrived for [`STALL`], or
    /// until `limit` is over; returns when the last one arrived (to 20 ms).
    fn settle(&self, count: u64, limit: Duration) -> Instant {
        let mut last = (self.bridge.acknowledged(), Instant::now());
        let deadline = Instant::now() + limit;
        while last.0 < count && Instant::now() < deadline && last.1.elapsed() < STALL {
            thread::sleep(Duration::from_millis(20));
            let acknowledged = self.bridge.acknowledged();
            if acknowledged != last.0 {
                last = (acknowledged, Instant::now());
            }
        }
        last.1
    }
}

/// NOTIFY `i` as every run sends it: `genesys_notify(i, dn, "talk")` with DN `1000 + i % 50`
/// (`talk`, because the Python baseline hard-codes it). Made by patching the four fields
/// that change into a copy of a template, since formatting each message would cost the
/// sender more than a tenth of a core at 100 k/s.
struct Notifies {
    template: Vec<u8>,
    /// Offsets of the Call-ID's 8 hex digits, the branch's 12, the CallUUID's 10 decimal
    /// digits and the DN's 4.
    call_id: usize,
    branch: usize,
    uuid: usize,
    dn: usize,
}

impl Notifies {
    fn new() -> Self {
        let template = genesys_notify(0, &dn(0), "talk");
        let after = |needle: &str| {
            let at = template
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap_or_else(|| panic!("`{needle}` in the NOTIFY"));
            at + needle.len()
        };
        let notifies = Self {
            call_id: after("Call-ID: "),
            branch: after("branch=z9hG4bKD15025DA-835B-4C9E-9D96-"),
            uuid: after("X-Genesys-CallUUID: TTL7J9EM750GP936CFL0EO"),
            dn: after("To: <sip:"),
            template: template.clone(),
        };
        let mut message = Vec::new();
        for i in [0, 1, 49, 50, 0xAB_CDEF, 1_234_567, u32::MAX] {
            notifies.write(i, &mut message);
            assert_eq!(
                message,
                genesys_notify(i, &dn(i), "talk"),
                "the template for {i}"
            );
        }
        notifies
    }

    /// Writes NOTIFY `i` into `message`, reusing its allocation.
    fn write(&self, i: u32, message: &mut Vec<u8>) {
        message.clear();
        message.extend_from_slice(&self.template);
        let i = u64::from(i);
        put_digits(&mut message[self.call_id..][..8], i, 16);
        put_digits(&mut message[self.branch..][..12], i, 16);
        put_digits(&mut message[self.uuid..][..10], i, 10);
        put_digits(&mut message[self.dn..][..4], 1000 + i % 50, 10);
    }
}

/// Writes `value` into `field` in `radix` (upper-case hex), zero-padded to its width.
fn put_digits(field: &mut [u8], mut value: u64, radix: u64) {
    for byte in field.iter_mut().rev() {
        *byte = b"0123456789ABCDEF"[(value % radix) as usize];
        value /= radix;
    }
}

fn dn(i: u32) -> String {
    format!("{}", 1000 + i % 50)
}

/// The index of the NOTIFY whose Call-ID this is.
fn index_of(id: &str) -> Option<u32> {
    let i = u32::from_str_radix(id.get(..8)?, 16).ok()?;
    (call_id(i) == id).then_some(i)
}

/// What the sender did.
struct Sent {
    /// NOTIFYs 0..count were sent.
    count: u32,
    /// From the first to the last send.
    elapsed: Duration,
    /// When NOTIFY `i` was handed to `sendmmsg`.
    at: Vec<SystemTime>,
    /// When the last one was sent.
    ended: Instant,
    /// The sending thread's CPU time, with the kernel work done in its system calls.
    cpu: Duration,
}

/// Sends NOTIFYs `0..rate×duration` from the sender namespace to 10.200.0.2:5061, paced per
/// millisecond: each tick sends, in bursts of up to [`BURST`], whatever the rate says is due.
fn send_paced(ns: &NetNs, notifies: &Notifies, rate: u32, duration: Duration) -> Sent {
    ns.enter(|| {
        // Not connected: an ICMP port unreachable must not turn into a send error.
        let socket = UdpSocket::bind("10.200.0.1:5060").expect("bind the sender");
        let total = u32::try_from(u128::from(rate) * duration.as_millis() / 1000)
            .expect("fewer than 2^32 messages");
        // SAFETY: an all-zero sockaddr_in is valid; the fields are set below.
        let mut dest: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        dest.sin_family = libc::AF_INET as libc::sa_family_t;
        dest.sin_port = 5061u16.to_be();
        dest.sin_addr.s_addr = u32::from_ne_bytes([10, 200, 0, 2]);
        let mut payloads = vec![Vec::new(); BURST];
        let mut at = Vec::with_capacity(total as usize);
        let mut sent = 0u32;
        let cpu_before = thread_cpu();
        let start = Instant::now();
        while sent < total {
            let due = (u128::from(rate) * start.elapsed().as_nanos() / 1_000_000_000)
                .min(u128::from(total)) as u32;
            while sent < due {
                let n = (due - sent).min(BURST as u32);
                for (payload, i) in payloads.iter_mut().zip(sent..sent + n) {
                    notifies.write(i, payload);
                }
                at.extend(std::iter::repeat_n(SystemTime::now(), n as usize));
                sendmmsg_all(&socket, &mut payloads[..n as usize], &mut dest);
                sent += n;
            }
            let next_tick = Duration::from_millis(start.elapsed().as_millis() as u64 + 1);
            if let Some(wait) = (start + next_tick).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        Sent {
            count: sent,
            elapsed: start.elapsed(),
            at,
            ended: Instant::now(),
            cpu: thread_cpu() - cpu_before,
        }
    })
}

/// Sends every payload to `dest` with as few `sendmmsg` calls as the kernel allows.
fn sendmmsg_all(socket: &UdpSocket, payloads: &mut [Vec<u8>], dest: &mut libc::sockaddr_in) {
    let mut iovecs: Vec<libc::iovec> = payloads
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid; the fields that matter are set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = std::ptr::from_mut(dest).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut done = 0;
    while done < headers.len() {
        // SAFETY: the headers point at iovecs, buffers and an address that outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[done..].as_mut_ptr(),
                (headers.len() - done) as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("sendmmsg: {err}");
        }
        done += n as usize;
    }
}

/// CPU seconds used so far by the bridge stand-in's threads.
fn bridge_cpu() -> f64 {
    threads_cpu_seconds(BRIDGE_THREADS)
}

/// The veth drop counters that would hide a loss before XDP: veth0's tx and veth1's rx.
fn wire_drops(net: &VethPair) -> u64 {
    let dropped = |ns: &NetNs, dev: &str, dir: &str| {
        let out = ns
            .command("ip")
            .args(["-j", "-s", "link", "show", dev])
            .output()
            .expect("ip -s link show");
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        links[0]["stats64"][dir]["dropped"].as_u64().unwrap_or(0)
    };
    dropped(&net.sender, "veth0", "tx") + dropped(&net.receiver, "veth1", "rx")
}

/// What the bridge got, checked against what was sent.
#[derive(Default)]
struct Delivery {
    /// Distinct NOTIFYs acknowledged.
    unique: u32,
    /// Extra copies of NOTIFYs already acknowledged.
    duplicates: u32,
    /// Objects whose Call-ID is not one that was sent, or whose other fields do not match.
    wrong: u32,
    /// Send-to-receipt times of first copies, sorted.
    latencies: Vec<Duration>,
    /// From the first receipt to the last.
    span: Duration,
}

impl Delivery {
    fn check(bridge: &TestBridge, sent: &Sent) -> Self {
        let mut seen = vec![false; sent.count as usize];
        let mut delivery = Self::default();
        let mut first_last: Option<(SystemTime, SystemTime)> = None;
        for received in bridge.received() {
            let object = &received.object;
            let index = object["call_id"]
                .as_str()
                .and_then(index_of)
                .filter(|&i| i < sent.count)
                .filter(|&i| {
                    object["call_uuid"].as_str() == Some(call_uuid(i).as_str())
                        && object["dn"].as_str() == Some(dn(i).as_str())
                        && object["event"] == "talk"
                });
            let Some(i) = index else {
                delivery.wrong += 1;
                continue;
            };
            if std::mem::replace(&mut seen[i as usize], true) {
                delivery.duplicates += 1;
                continue;
            }
            delivery.unique += 1;
            let at = received.received_at;
            first_last = Some(first_last.map_or((at, at), |(a, b)| (a.min(at), b.max(at))));
            let latency = at.duration_since(sent.at[i as usize]).unwrap_or_default();
            delivery.latencies.push(latency);
        }
        delivery.latencies.sort_unstable();
        delivery.span = first_last
            .and_then(|(a, b)| b.duration_since(a).ok())
            .unwrap_or_default();
        delivery
    }

    fn percentile(&self, p: usize) -> Option<Duration> {
        let n = self.latencies.len();
        (n > 0).then(|| self.latencies[(n * p / 100).min(n - 1)])
    }

    fn fraction(&self, sent: u32) -> f64 {
        f64::from(self.unique) / f64::from(sent)
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2}", d.as_secs_f64() * 1e3),
    )
}

/// Who used the CPU from the first send until the run settled.
#[derive(Default)]
struct CpuSplit {
    agent: f64,
    bridge: f64,
    sender: f64,
    /// The whole machine's busy share, in percent of all cores.
    machine_busy: f64,
}

/// One agent run.
struct Run {
    mode: Mode,
    rate: u32,
    sent: Sent,
    delivery: Delivery,
    /// From the last send to the last acknowledgement: the backlog the run left.
    drain: Duration,
    cpu: CpuSplit,
    memory: Memory,
    metrics: String,
    wire_drops: u64,
}

impl Run {
    const HEADER: &str = "mode      target/s achieved/s     sent    acked dup  lost   p50 ms   \
         p99 ms drain s | CPU s: agent bridge sender  busy % | MiB: peak RSS  anon   pss";

    fn lost(&self) -> u32 {
        self.sent.count - self.delivery.unique
    }

    fn lossless(&self) -> bool {
        self.lost() == 0 && self.delivery.duplicates == 0 && self.delivery.wrong == 0
    }

    fn achieved_rate(&self) -> f64 {
        f64::from(self.sent.count) / self.sent.elapsed.as_secs_f64()
    }

    fn kernel(&self, outcome: &str) -> f64 {
        metric(
            &self.metrics,
            "sipnotify_kernel_packets_total",
            &[("iface", "veth1"), ("outcome", outcome)],
        )
        .unwrap_or(f64::NAN)
    }

    /// The agent's non-zero counters of this metric, as `name{labels} value` items.
    fn nonzero(&self, name: &str) -> Vec<String> {
        samples(&self.metrics, name)
            .filter(|&(_, v)| v > 0.0)
            .map(|(labels, v)| format!("{name}{labels} {v}"))
            .collect()
    }

    /// Where the losses happened, in a few words.
    fn cause(&self) -> String {
        let mut causes = Vec::new();
        let missed_xdp = f64::from(self.sent.count) - self.kernel("notify_matched");
        if missed_xdp > 0.0 {
            causes.push(format!("{missed_xdp} never reached XDP"));
        }
        if self.kernel("ringbuf_full") > 0.0 {
            causes.push(format!("{} ring buffer full", self.kernel("ringbuf_full")));
        }
        causes.extend(self.nonzero("sipnotify_parse_rejects_total"));
        causes.extend(self.nonzero("sipnotify_dropped_total"));
        if self.delivery.duplicates > 0 {
            causes.push(format!("{} duplicates", self.delivery.duplicates));
        }
        if causes.is_empty() {
            causes.push(format!("{} not delivered", self.lost()));
        }
        causes.join(", ")
    }

    /// Where the lost notifications went, stage by stage, from the agent's own counters.
    fn diagnosis(&self) -> String {
        let m = &self.metrics;
        let mut text = format!(
            "  lost {} of {} (duplicates {}, wrong {}). Stage by stage: veth drops {}; XDP \
             matched {}, copied {}, ring buffer full {}; records read {}, parse rejects {}, \
             notifications {}, dedup hits {}; queue depth at the end {}",
            self.lost(),
            self.sent.count,
            self.delivery.duplicates,
            self.delivery.wrong,
            self.wire_drops,
            self.kernel("notify_matched"),
            self.kernel("copied"),
            self.kernel("ringbuf_full"),
            sum(m, "sipnotify_records_total"),
            sum(m, "sipnotify_parse_rejects_total"),
            sum(m, "sipnotify_notifications_total"),
            sum(m, "sipnotify_dedup_hits_total"),
            sum(m, "sipnotify_queue_depth"),
        );
        for name in [
            "sipnotify_dropped_total",
            "sipnotify_deliveries_total",
            "sipnotify_retries_total",
        ] {
            for item in self.nonzero(name) {
                let _ = write!(text, "; {item}");
            }
        }
        text
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<9} {:>8} {:>10.0} {:>8} {:>8} {:>3} {:>5} {:>8} {:>8} {:>7.2} | {:>12.2} {:>6.2} \
             {:>6.2} {:>7.0} | {:>13.1} {:>5.1} {:>5.1}",
            self.mode.name(),
            self.rate,
            self.achieved_rate(),
            self.sent.count,
            self.delivery.unique,
            self.delivery.duplicates,
            self.lost(),
            ms(self.delivery.percentile(50)),
            ms(self.delivery.percentile(99)),
            self.drain.as_secs_f64(),
            self.cpu.agent,
            self.cpu.bridge,
            self.cpu.sender,
            self.cpu.machine_busy,
            self.memory.peak as f64 / MIB,
            self.memory.anon as f64 / MIB,
            self.memory.pss as f64 / MIB,
        )
    }
}

/// One run of the Python baseline.
struct BaselineRun {
    rate: u32,
    sent: u32,
    delivery: Delivery,
    /// The script's CPU seconds.
    python_cpu: f64,
    /// tcpdump's own count of what it captured and what the kernel dropped for it.
    tcpdump_stats: String,
}

impl std::fmt::Display for BaselineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let posts_per_second =
            f64::from(self.delivery.unique) / self.delivery.span.as_secs_f64().max(1e-3);
        write!(
            f,
            "script  {:>8}/s: sent {}, delivered {} ({:.1} %) at {:.0} posts/s, duplicates \
             {}, p50 {} ms, p99 {} ms, python CPU {:.1} s\n        tcpdump: {}",
            self.rate,
            self.sent,
            self.delivery.unique,
            100.0 * self.delivery.fraction(self.sent),
            posts_per_second,
            self.delivery.duplicates,
            ms(self.delivery.percentile(50)),
            ms(self.delivery.percentile(99)),
            self.python_cpu,
            self.tcpdump_stats,
        )
    }
}

struct Bench<'a> {
    net: &'a VethPair,
    agent: &'a str,
    duration: Duration,
    notifies: Notifies,
    /// Flags added to every agent run.
    extra_args: Vec<&'a str>,
}

impl Bench<'_> {
    /// The agent in the receiver namespace, a fresh bridge, one paced stream.
    fn agent_run(&self, mode: Mode, rate: u32) -> Run {
        let bridge = Bridge::start(&self.net.receiver);
        let mut args = vec![
            "run",
            "--iface",
            "veth1",
            "--bridge-url",
            bridge.bridge.url(),
            "--ca-file",
            &bridge.ca_file,
        ];
        args.extend_from_slice(mode.args());
        args.extend_from_slice(&self.extra_args);
        let agent = Agent::start(self.agent, &self.net.receiver, &args);
        let drops_before = wire_drops(self.net);
        let agent_before = process_usage(agent.pid()).0;
        let bridge_before = bridge_cpu();
        let machine_before = machine_ticks();

        let sent = send_paced(&self.net.sender, &self.notifies, rate, self.duration);
        let last = bridge.settle(u64::from(sent.count), Duration::from_secs(60));

        let (agent_after, memory) = process_usage(agent.pid());
        let machine_after = machine_ticks();
        let cpu = CpuSplit {
            agent: agent_after - agent_before,
            bridge: bridge_cpu() - bridge_before,
            sender: sent.cpu.as_secs_f64(),
            machine_busy: 100.0 * (machine_after.0 - machine_before.0) as f64
                / (machine_after.1 - machine_before.1).max(1) as f64,
        };
        // A little longer, so that late duplicates are seen too.
        thread::sleep(Duration::from_millis(300));
        let (status, metrics) = self.net.receiver.http_get("127.0.0.1:9464", "/metrics");
        assert!(status.contains("200"), "metrics: {status}");
        let wire_drops = wire_drops(self.net) - drops_before;
        agent.stop();
        let delivery = Delivery::check(&bridge.bridge, &sent);
        let drain = last.saturating_duration_since(sent.ended);
        Run {
            mode,
            rate,
            sent,
            delivery,
            drain,
            cpu,
            memory,
            metrics,
            wire_drops,
        }
    }

    /// `tcpdump -A -l -i veth1 udp port 5061 | python3 sip-notify-parser.py URL` in the
    /// receiver namespace, one paced stream, then up to [`BASELINE_DRAIN`] to catch up.
    ///
    /// The script runs unmodified from the seed folder: it already takes the bridge URL as
    /// its first argument and posts with `verify=False`, as in the field.
    fn baseline_run(&self, rate: u32) -> Result<BaselineRun, String> {
        let script = format!(
            "{}/../../shared/seed/sip-notify-parser.py",
            env!("CARGO_MANIFEST_DIR")
        );
        if !std::path::Path::new(&script).is_file() {
            return Err(format!("{script} is missing"));
        }
        let probe = std::process::Command::new("python3")
            .args(["-c", "import requests"])
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if !probe.status.success() {
            return Err("python3 cannot import requests".to_owned());
        }
        let bridge = Bridge::start(&self.net.receiver);
        let mut tcpdump = Reaped(
            self.net
                .receiver
                .command("tcpdump")
                .args(["-A", "-l", "-n", "-i", "veth1", "udp port 5061"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("tcpdump: {e}"))?,
        );
        // tcpdump says `listening on veth1` on stderr once it captures, and its packet
        // statistics when it is interrupted.
        let stderr = tcpdump.0.stderr.take().expect("stderr");
        let (line, lines) = mpsc::channel();
        thread::spawn(move || {
            for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.send(text).is_err() {
                    break;
                }
            }
        });
        while !lines
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "tcpdump did not start listening".to_owned())?
            .contains("listening on")
        {}
        let errors = tempfile::tempfile().map_err(|e| e.to_string())?;
        let mut python = Reaped(
            self.net
                .receiver
                .command("python3")
                .args([&script, bridge.bridge.url()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(errors.try_clone().map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("python3: {e}"))?,
        );
        // The pipe between them goes through this relay, which only adds a small buffer:
        // once the script is stopped, it keeps draining tcpdump, so tcpdump can flush and
        // print its statistics when interrupted instead of blocking on a full pipe.
        let mut from_tcpdump = tcpdump.0.stdout.take().expect("stdout");
        let mut to_python = python.0.stdin.take().expect("stdin");
        thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut buffer = [0; 4096];
            let mut forwarding = true;
            while let Ok(n @ 1..) = from_tcpdump.read(&mut buffer) {
                forwarding = forwarding && to_python.write_all(&buffer[..n]).is_ok();
            }
        });
        let sent = send_paced(&self.net.sender, &self.notifies, rate, self.duration);
        // It posts one message at a time, so it may lag: let it catch up until it has
        // delivered everything, stalls for STALL, or BASELINE_DRAIN is over.
        bridge.settle(u64::from(sent.count), BASELINE_DRAIN);
        if let Ok(Some(status)) = python.0.try_wait() {
            return Err(format!(
                "the script exited with {status}: {}",
                read_tail(errors)
            ));
        }
        let python_cpu = proc::cpu_seconds(python.0.id()).unwrap_or(f64::NAN);
        drop(python);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(tcpdump.0.id() as libc::pid_t, libc::SIGINT) };
        let mut tcpdump_stats = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            if line.contains("packets") {
                tcpdump_stats.push(line);
            }
            if tcpdump_stats.len() == 3 {
                break;
            }
        }
        drop(tcpdump);
        let delivery = Delivery::check(&bridge.bridge, &sent);
        Ok(BaselineRun {
            rate,
            sent: sent.count,
            delivery,
            python_cpu,
            tcpdump_stats: tcpdump_stats.join(", "),
        })
    }
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_tail(mut file: std::fs::File) -> String {
    use std::io::{Read as _, Seek as _};
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// One mode's search for the highest lossless rate.
struct Search {
    mode: Mode,
    /// The last lossless run.
    best: Option<Run>,
    /// The target and sent rates of the last run that was also delivered by [`KEPT_UP`]
    /// after its last send (a higher lossless rate may only have filled the queue).
    kept_up: Option<(u32, f64)>,
    /// Why the search stopped.
    stop: String,
}

/// The figures against the goals.
#[derive(Default)]
struct Summary {
    searches: Vec<Search>,
    /// The runs at fixed low rates (1 k/s in both modes, 100/s).
    paced: Vec<Run>,
    baseline: Vec<BaselineRun>,
    /// The run with the highest peak RSS, and its memory.
    peak: Option<(String, Memory)>,
}

impl Summary {
    fn note_memory(&mut self, run: &Run) {
        if self
            .peak
            .as_ref()
            .is_none_or(|(_, m)| m.peak < run.memory.peak)
        {
            let name = format!("{} {}/s", run.mode.name(), run.rate);
            self.peak = Some((name, run.memory));
        }
    }

    fn print(&self, bench: &Bench<'_>) {
        let secs = bench.duration.as_secs();
        let mut rows: Vec<(String, String, &str)> = Vec::new();
        for search in &self.searches {
            let value = search.best.as_ref().map_or_else(
                || "none".to_owned(),
                |run| {
                    format!(
                        "{:.0}/s sent ({}/s target), drain {:.2} s, agent {:.2} CPU s per {secs} s",
                        run.achieved_rate(),
                        run.rate,
                        run.drain.as_secs_f64(),
                        run.cpu.agent,
                    )
                },
            );
            rows.push((
                format!("highest lossless rate, {} mode", search.mode.name()),
                value,
                "≥ 100000/s",
            ));
            rows.push((
                format!("highest rate kept up, {} mode", search.mode.name()),
                search.kept_up.map_or_else(
                    || "none".to_owned(),
                    |(target, sent)| {
                        format!("{sent:.0}/s sent ({target}/s target), drained within 0.1 s")
                    },
                ),
                "≥ 100000/s",
            ));
            rows.push((
                format!("  {} mode search stopped", search.mode.name()),
                search.stop.clone(),
                "",
            ));
        }
        if let Some((name, m)) = &self.peak {
            rows.push((
                "agent peak RSS (VmHWM), all runs".to_owned(),
                format!(
                    "{:.1} MiB at {name} (at its end: anon {:.1}, file {:.1}, pss {:.1})",
                    m.peak as f64 / MIB,
                    m.anon as f64 / MIB,
                    m.file as f64 / MIB,
                    m.pss as f64 / MIB
                ),
                "≤ 64 MiB",
            ));
        }
        if let Some(run) = self.paced.iter().min_by_key(|r| r.memory.peak) {
            rows.push((
                "agent peak RSS, lightest run".to_owned(),
                format!(
                    "{:.1} MiB at {} {}/s (anon {:.1}, file {:.1}, pss {:.1})",
                    run.memory.peak as f64 / MIB,
                    run.mode.name(),
                    run.rate,
                    run.memory.anon as f64 / MIB,
                    run.memory.file as f64 / MIB,
                    run.memory.pss as f64 / MIB
                ),
                "≤ 64 MiB",
            ));
        }
        for run in &self.paced {
            rows.push((
                format!(
                    "agent {}/s, {} mode: delivered, p50 / p99",
                    run.rate,
                    run.mode.name()
                ),
                format!(
                    "{:.1} % exactly once, {} / {} ms",
                    100.0 * run.delivery.fraction(run.sent.count),
                    ms(run.delivery.percentile(50)),
                    ms(run.delivery.percentile(99)),
                ),
                if run.rate == 1_000 {
                    "p99 ≤ 5 ms"
                } else {
                    "100 %"
                },
            ));
        }
        for run in &self.baseline {
            rows.push((
                format!("script {}/s: delivered, p50 / p99", run.rate),
                format!(
                    "{:.1} %, {} duplicates, {} / {} ms",
                    100.0 * run.delivery.fraction(run.sent),
                    run.delivery.duplicates,
                    ms(run.delivery.percentile(50)),
                    ms(run.delivery.percentile(99)),
                ),
                "(baseline)",
            ));
        }
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let value_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        println!("\nsummary");
        println!("{:<width$}  {:<value_width$}  goal", "figure", "value");
        println!("{}", "-".repeat(width + value_width + 14));
        for (figure, value, goal) in rows {
            println!("{figure:<width$}  {value:<value_width$}  {goal}");
        }
    }
}
