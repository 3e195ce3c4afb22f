//! What the agent costs while nothing (or nearly nothing) happens: the release agent attached
//! to a quiet veth in a test namespace, its CPU time (utime + stime from `/proc/PID/stat`, in
//! clock ticks) and its wake-ups (context switches of all its threads) over a window.
//!
//! Cases, each a fresh agent:
//! - `xdp`: XDP capture, `--stdout` only (no bridge, no spool), no traffic;
//! - `af-packet`: the same with `--capture af-packet`;
//! - `xdp-spool`: XDP with an HTTPS bridge (the testkit's stand-in, in the namespace) and the
//!   durable spool, no traffic;
//! - `xdp-100`, `af-packet-100`: a bridge and the spool, 100 unique NOTIFYs/s sent over the
//!   veth for the whole window (all must be acknowledged).
//!
//! Targets (issue 22): ≤ 0.1 % of a core idle (6 ticks in 60 s), ≤ 0.5 % at 100 NOTIFY/s.
//!
//! `SIPNOTIFY_IDLE_SECONDS` sets the window (default 60; 10 is enough to iterate).
//! `SIPNOTIFY_IDLE_BEFORE=/path/to/sipnotify-agent` runs every case with that binary too,
//! right before the tree's own, so a before/after pair shares the machine's conditions.
//! `SIPNOTIFY_BENCH_CASE=…` runs only the cases whose name contains it. Needs root and the
//! release agent (`cargo build --release -p sipnotify-agent --bin sipnotify-agent`); run with
//! `cargo xtask bench idle`.

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use sipnotify_testkit::{
    Agent, BridgeOptions, NamespacedBridge, VethPair,
    bench::{self, PrivateBinary},
    genesys_notify, proc,
};

/// How long an agent runs before the window opens (attach, first metrics, TLS warm-up).
const SETTLE: Duration = Duration::from_secs(2);
/// The NOTIFY rate of the busy cases.
const RATE: u32 = 100;

/// One case: a name, the capture path, and whether a bridge, a spool and traffic are there.
struct Case {
    name: &'static str,
    capture: &'static str,
    bridge: bool,
    rate: u32,
}

const CASES: &[Case] = &[
    Case {
        name: "xdp",
        capture: "xdp",
        bridge: false,
        rate: 0,
    },
    Case {
        name: "af-packet",
        capture: "af-packet",
        bridge: false,
        rate: 0,
    },
    Case {
        name: "xdp-spool",
        capture: "xdp",
        bridge: true,
        rate: 0,
    },
    Case {
        name: "xdp-100",
        capture: "xdp",
        bridge: true,
        rate: RATE,
    },
    Case {
        name: "af-packet-100",
        capture: "af-packet",
        bridge: true,
        rate: RATE,
    },
];

/// What one agent cost over the window.
struct Cost {
    /// utime + stime, clock ticks.
    ticks: u64,
    /// Context switches of all threads, voluntary and not: about one per wake-up.
    switches: u64,
    /// NOTIFYs sent and acknowledged by the bridge (busy cases).
    sent: u32,
    acknowledged: u64,
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let seconds = proc::cpu_seconds(pid).expect("the agent's stat");
    (seconds * proc::clock_ticks_per_second()).round() as u64
}

/// Context switches so far of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Sends unique NOTIFYs from the sender namespace at `rate`/s until `deadline`.
fn send_paced(socket: &UdpSocket, first: u32, rate: u32, deadline: Instant) -> u32 {
    let start = Instant::now();
    let mut sent = 0u32;
    while Instant::now() < deadline {
        let due = start + Duration::from_secs_f64(f64::from(sent) / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let message = genesys_notify(first + sent, "1002", "talk");
        if socket.send_to(&message, "10.200.0.2:5061").is_ok() {
            sent += 1;
        }
    }
    sent
}

fn measure(binary: &str, net: &VethPair, case: &Case, window: Duration, first: u32) -> Cost {
    let bridge = case
        .bridge
        .then(|| NamespacedBridge::start(&net.receiver, BridgeOptions::default(), "idle-bridge"));
    let mut args = vec!["run", "--iface", "veth1", "--capture", case.capture];
    match &bridge {
        Some(bridge) => args.extend_from_slice(&bridge.agent_args()),
        None => args.extend_from_slice(&["--stdout", "--no-bridge"]),
    }
    let agent = Agent::start(binary, &net.receiver, &args);
    let pid = agent.pid();
    thread::sleep(SETTLE);
    let socket = net.sender.udp("10.200.0.1:0");
    let (ticks, switched) = (cpu_ticks(pid), switches(pid));
    let deadline = Instant::now() + window;
    let sent = if case.rate > 0 {
        send_paced(&socket, first, case.rate, deadline)
    } else {
        0
    };
    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
        thread::sleep(left);
    }
    let cost = Cost {
        ticks: cpu_ticks(pid) - ticks,
        switches: switches(pid) - switched,
        sent,
        acknowledged: 0,
    };
    let acknowledged = bridge.as_ref().map_or(0, |bridge| {
        bridge.wait_for(u64::from(sent), Duration::from_secs(10));
        bridge.bridge.acknowledged()
    });
    agent.stop();
    Cost {
        acknowledged,
        ..cost
    }
}

fn main() {
    if !bench::root("idle") {
        return;
    }
    let mut binaries = Vec::new();
    if let Ok(before) = std::env::var("SIPNOTIFY_IDLE_BEFORE") {
        binaries.push(("before", PrivateBinary::of(&before)));
    }
    binaries.push(("this tree", PrivateBinary::release_agent("idle")));
    let seconds = bench::env_seconds("SIPNOTIFY_IDLE_SECONDS", 60);
    let window = Duration::from_secs(seconds);
    let hz = proc::clock_ticks_per_second() as u64;
    println!(
        "agent CPU over {seconds} s on a quiet veth (utime+stime, {hz} ticks/s); target ≤ 0.1 % idle, ≤ 0.5 % at {RATE} NOTIFY/s"
    );
    println!(
        "{:<14} {:<10} {:>6} {:>9} {:>11} {:>10}",
        "case", "agent", "ticks", "% core", "wakeups/s", "delivered"
    );
    let net = VethPair::new("idle");
    let mut first = 0;
    for case in CASES.iter().filter(|c| bench::wants(c.name)) {
        for (label, binary) in &binaries {
            let cost = measure(binary.path(), &net, case, window, first);
            first += cost.sent;
            let delivered = if case.rate > 0 {
                format!("{}/{}", cost.acknowledged, cost.sent)
            } else {
                "-".to_owned()
            };
            println!(
                "{:<14} {:<10} {:>6} {:>8.2}% {:>11.0} {:>10}",
                case.name,
                label,
                cost.ticks,
                100.0 * cost.ticks as f64 / (hz * seconds) as f64,
                cost.switches as f64 / seconds as f64,
                delivered,
            );
        }
    }
}
