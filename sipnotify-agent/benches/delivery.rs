//! Delivery throughput: notifications per second acknowledged by the local HTTPS bridge
//! stand-in, in object mode (goal ≥ 20 000/s) and array mode (goal ≥ 500 000/s).
//!
//! The agent (2 worker threads, as in production) and the bridge (1 worker thread) run in
//! separate runtimes of this process, sharing the machine's 2 cores: the wall-clock rate
//! includes the bridge's own TLS and JSON work, and it moves with whatever else the shared
//! machine runs. So each line also gives the agent's CPU time per notification (read per
//! thread from /proc), which is what the agent costs regardless of load, and the rate that
//! cost allows on 2 idle cores with the bridge elsewhere. The queue is filled before the
//! clock starts: the figure is the delivery path (encode, POST, TLS, reply), not capture.
//!
//! `cargo bench -p sipnotify-agent --bench delivery`; `SIPNOTIFY_BENCH_QUICK=1` runs a short
//! smoke version (CI), `SIPNOTIFY_BENCH_CASE=array` only the cases whose name contains it,
//! `SIPNOTIFY_BENCH_IN_FLIGHT=N` overrides `--max-in-flight`.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use sipnotify_agent::{
    cli::{DeliveryArgs, sink_settings},
    event::{CaptureMeta, Notification},
    queue::NotificationQueue,
    sink::Delivery,
};
use sipnotify_testkit::{BridgeOptions, TestBridge, proc::threads_cpu_seconds};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const AGENT_THREADS: &str = "bench-agent";
const BRIDGE_THREADS: &str = "bench-bridge";

struct Case {
    name: &'static str,
    http2: bool,
    array_mode: bool,
    count: u32,
    goal: f64,
}

fn notification(i: u32) -> Notification {
    Notification {
        dn: format!("{}", 1000 + i % 500),
        call_id: format!("{:08X}-{:04X}-82@192.0.2.81", i / 2, i % 65_536),
        call_uuid: Some(format!("UIVB8J6JE91C53UIM3VI59VHQ4{i:06}")),
        event: if i.is_multiple_of(2) { "talk" } else { "hold" }.to_owned(),
        caller: Some("5551234".to_owned()),
        cseq: i,
        via_branch: Some(format!("z9hG4bK-{i:08x}")),
        extra_headers: Vec::new(),
        meta: CaptureMeta {
            captured_at: SystemTime::now(),
            src: (Ipv4Addr::new(192, 0, 2, 81), 5060).into(),
            dst: (Ipv4Addr::new(192, 0, 2, 20), 5061).into(),
            iface: None,
        },
    }
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> Duration {
    Duration::from_secs_f64(threads_cpu_seconds(prefix))
}

fn run(
    case: &Case,
    dir: &std::path::Path,
    agent: &Runtime,
    bridge_rt: &Runtime,
) -> anyhow::Result<()> {
    let bridge = bridge_rt.block_on(async {
        // Started from inside the bridge runtime so its tasks run on the bridge's thread.
        bridge_rt
            .spawn(TestBridge::start(BridgeOptions {
                http2: case.http2,
                record_objects: false,
                ..BridgeOptions::default()
            }))
            .await
    })??;
    let ca_file = dir.join(format!("{}.pem", case.name.replace(['/', ' '], "-")));
    bridge.write_ca_file(&ca_file)?;
    let mut args = DeliveryArgs {
        bridge_url: Some(bridge.url().to_owned()),
        ca_file: Some(ca_file),
        array_mode: case.array_mode,
        queue_capacity: case.count as usize,
        ..DeliveryArgs::default()
    };
    if let Ok(Ok(max_in_flight)) = std::env::var("SIPNOTIFY_BENCH_IN_FLIGHT").map(|v| v.parse()) {
        args.max_in_flight = max_in_flight;
    }
    let settings = sink_settings(&args, &Default::default())?;
    let queue = NotificationQueue::new(settings.queue_capacity);
    for i in 0..case.count {
        queue.push(notification(i));
    }
    queue.close();

    let agent_cpu = threads_cpu(AGENT_THREADS);
    let bridge_cpu = threads_cpu(BRIDGE_THREADS);
    let started = Instant::now();
    // Spawned, so the driver runs on the agent's workers rather than this thread.
    let delivery = Delivery::new(settings)?;
    let report = agent.block_on(agent.spawn(delivery.run(queue, CancellationToken::new())))?;
    let elapsed = started.elapsed();
    let agent_cpu = threads_cpu(AGENT_THREADS).saturating_sub(agent_cpu);
    let bridge_cpu = threads_cpu(BRIDGE_THREADS).saturating_sub(bridge_cpu);

    let acknowledged = bridge.acknowledged();
    if report.delivered != u64::from(case.count) || acknowledged != u64::from(case.count) {
        bail!(
            "{}: delivered {} and acknowledged {acknowledged} of {}: {report:?}",
            case.name,
            report.delivered,
            case.count
        );
    }
    let count = f64::from(case.count);
    let rate = count / elapsed.as_secs_f64();
    let agent_per = agent_cpu.as_secs_f64() / count;
    let bridge_per = bridge_cpu.as_secs_f64() / count;
    let bound = if agent_per > 0.0 {
        2.0 / agent_per
    } else {
        f64::INFINITY
    };
    println!(
        "{:<14} {:>8} in {:>5.2} s = {:>7.0}/s ({:>6} requests; goal {:>6.0}/s: {:<6}) \
         cpu/notification: agent {:>5.2} µs, bridge {:>5.2} µs; agent alone on 2 cores: {:>8.0}/s",
        case.name,
        case.count,
        elapsed.as_secs_f64(),
        rate,
        report.requests,
        case.goal,
        if rate >= case.goal { "met" } else { "MISSED" },
        agent_per * 1e6,
        bridge_per * 1e6,
        bound,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs bench targets without `--bench`: stay quick then too.
    let quick = std::env::var("SIPNOTIFY_BENCH_QUICK").is_ok_and(|v| v == "1")
        || !std::env::args().any(|a| a == "--bench");
    let scale = if quick { 20 } else { 1 };
    let cases = [
        Case {
            name: "object/http1.1",
            http2: false,
            array_mode: false,
            count: 100_000 / scale,
            goal: 20_000.0,
        },
        Case {
            name: "object/h2",
            http2: true,
            array_mode: false,
            count: 100_000 / scale,
            goal: 20_000.0,
        },
        Case {
            name: "array/http1.1",
            http2: false,
            array_mode: true,
            count: 2_000_000 / scale,
            goal: 500_000.0,
        },
        Case {
            name: "array/h2",
            http2: true,
            array_mode: true,
            count: 2_000_000 / scale,
            goal: 500_000.0,
        },
    ];
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let agent = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(AGENT_THREADS)
        .enable_all()
        .build()?;
    let bridge = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(BRIDGE_THREADS)
        .enable_all()
        .build()?;
    // Warm up (allocator, first handshakes) so the first case is not penalised.
    let warm_up = Case {
        name: "warm-up",
        http2: false,
        array_mode: false,
        count: 2_000,
        goal: 0.0,
    };
    run(&warm_up, dir.path(), &agent, &bridge)?;
    let only = std::env::var("SIPNOTIFY_BENCH_CASE").unwrap_or_default();
    for case in cases.iter().filter(|c| c.name.contains(only.as_str())) {
        run(case, dir.path(), &agent, &bridge)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
