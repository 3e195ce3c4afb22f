//! Delivery throughput: notifications per second acknowledged by the local HTTPS bridge
//! stand-in, in object mode (goal ≥ 20 000/s) and array mode (goal ≥ 500 000/s).
//!
//! Client and bridge share this process and its 2-thread runtime (the machine has 2 cores),
//! so the figures include the bridge's own TLS and JSON work: a real bridge on another host
//! leaves the agent more room. The queue is filled before the clock starts, so the figure is
//! the delivery path alone (encode, POST, TLS, reply), not the capture.
//!
//! `cargo bench -p sipnotify-agent --bench delivery`; `SIPNOTIFY_BENCH_QUICK=1` runs a short
//! smoke version (CI), `SIPNOTIFY_BENCH_CASE=array` only the cases whose name contains it.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use sipnotify_agent::{
    event::{CaptureMeta, Notification},
    queue::NotificationQueue,
    sink::{DeliveryArgs, SinkSettings, deliver},
    testing::{BridgeOptions, TestBridge},
};
use tokio_util::sync::CancellationToken;

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

async fn run(case: &Case, dir: &std::path::Path) -> anyhow::Result<f64> {
    let bridge = TestBridge::start(BridgeOptions {
        http2: case.http2,
        record_objects: false,
        ..BridgeOptions::default()
    })
    .await?;
    let ca_file = dir.join(format!("{}.pem", case.name.replace(['/', ' '], "-")));
    bridge.write_ca_file(&ca_file)?;
    let args = DeliveryArgs {
        bridge_url: bridge.url().to_owned(),
        ca_file: Some(ca_file),
        array_mode: case.array_mode,
        queue_capacity: case.count as usize,
        ..DeliveryArgs::default()
    };
    // `SIPNOTIFY_BENCH_IN_FLIGHT=N` overrides --max-in-flight (to explore the default).
    let args = match std::env::var("SIPNOTIFY_BENCH_IN_FLIGHT").map(|v| v.parse()) {
        Ok(Ok(max_in_flight)) => DeliveryArgs {
            max_in_flight,
            ..args
        },
        _ => args,
    };
    let settings = SinkSettings::from_args_and_token_env(&args, None)?;
    let queue = NotificationQueue::new(settings.queue_capacity);
    for i in 0..case.count {
        queue.push(notification(i));
    }
    queue.close();

    let started = Instant::now();
    let cpu_before = cpu_time();
    let report = deliver(queue, settings, CancellationToken::new())
        .await
        .map_err(|failed| anyhow::anyhow!("{failed}"))?;
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);

    let acknowledged = bridge.acknowledged();
    if report.delivered != u64::from(case.count) || acknowledged != u64::from(case.count) {
        bail!(
            "{}: delivered {} and acknowledged {acknowledged} of {}: {report:?}",
            case.name,
            report.delivered,
            case.count
        );
    }
    let rate = f64::from(case.count) / elapsed.as_secs_f64();
    // CPU per notification (agent and bridge together) does not depend on what else the
    // shared machine is running; 2 cores / this = the rate an idle machine would reach.
    let cpu_per = cpu.as_secs_f64() / f64::from(case.count);
    println!(
        "{:<16} {:>8} in {:>5.2} s = {:>8.0}/s, {:>6} requests, cpu {:>6.2} µs/notification \
         (idle 2-core bound {:>8.0}/s), goal {:>6.0}/s: {}",
        case.name,
        case.count,
        elapsed.as_secs_f64(),
        rate,
        report.requests,
        cpu_per * 1e6,
        2.0 / cpu_per,
        case.goal,
        if rate >= case.goal { "met" } else { "MISSED" },
    );
    Ok(rate)
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given, which points to a
    // properly sized and aligned, writable value that lives across the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage succeeded, so it initialised the value (it was zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs bench targets with `--bench` absent; stay quick then too.
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Warm up (TLS handshakes, allocator) so the first case is not penalised.
        let warm_up = Case {
            name: "warm-up",
            http2: false,
            array_mode: false,
            count: 2_000,
            goal: 0.0,
        };
        run(&warm_up, dir.path()).await?;
        // `SIPNOTIFY_BENCH_CASE=object` runs only the cases whose name contains it.
        let only = std::env::var("SIPNOTIFY_BENCH_CASE").unwrap_or_default();
        for case in cases.iter().filter(|c| c.name.contains(only.as_str())) {
            run(case, dir.path()).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
}
