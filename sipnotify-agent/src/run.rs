//! `sipnotify-agent run`: attach to every interface, feed each ring buffer through the
//! pipeline into the delivery queue, and on SIGINT/SIGTERM detach, stop reading, and let
//! delivery finish what is queued up to its shutdown deadline.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{signal::unix::SignalKind, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    bpf::{self, ProgramSettings},
    capture::{MonotonicClock, live},
    cli::{self, RunArgs},
    error::AgentError,
    pipeline::Pipeline,
    queue::NotificationQueue,
    sink::{Delivery, SinkSettings},
    telemetry,
};

/// Checks everything that can be checked without attaching.
fn validate(args: &RunArgs) -> Result<(SinkSettings, Option<SocketAddr>), AgentError> {
    cli::check_ports(&args.ports).map_err(AgentError::Config)?;
    cli::check_ring_bytes(args.ring_bytes).map_err(AgentError::Config)?;
    args.pipeline.validate().map_err(AgentError::Config)?;
    let sink =
        SinkSettings::from_args(&args.delivery).map_err(|e| AgentError::Config(e.to_string()))?;
    let metrics = match args.metrics_listen.as_str() {
        "off" => None,
        addr => Some(addr.parse().map_err(|_| {
            AgentError::Config(format!(
                "--metrics-listen `{addr}` is not an address such as 127.0.0.1:9464 (or `off`)"
            ))
        })?),
    };
    for iface in &args.ifaces {
        bpf::interface_index(iface)?;
    }
    Ok((sink, metrics))
}

/// `run --check-config`: validate, print the effective settings and where each came from.
pub fn check_config(
    args: &RunArgs,
    config_file: Option<&Path>,
    sources: &[(String, String, &'static str)],
) -> Result<(), AgentError> {
    validate(args)?;
    let mut out = String::new();
    match config_file {
        Some(path) => out.push_str(&format!("# config file: {}\n", path.display())),
        None => out.push_str("# no config file\n"),
    }
    let width = sources.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    for (key, value, source) in sources {
        out.push_str(&format!("{key:<width$} = {value}  # {source}\n"));
    }
    print!("{out}");
    Ok(())
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let (sink_settings, metrics_addr) = validate(&args)?;
    let recorder = telemetry::install_recorder().map_err(|e| AgentError::Config(e.to_string()))?;
    let metrics_listener = match metrics_addr {
        Some(addr) => Some(
            telemetry::bind(addr)
                .await
                .map_err(|e| AgentError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let delivery = Delivery::new(sink_settings).map_err(|e| AgentError::Config(e.to_string()))?;
    let bridge_health = (!args.delivery.no_bridge).then(|| delivery.health());
    let settings = ProgramSettings {
        ports: args.ports.clone(),
        ring_bytes: args.ring_bytes,
    };

    let queue = NotificationQueue::new(args.delivery.queue_capacity);
    let pipeline = Pipeline::new(&args.pipeline, queue.clone()).log_sip(args.log.log_sip);
    let stop_reading = CancellationToken::new();
    let stop_delivery = CancellationToken::new();
    let mut delivery = tokio::spawn(delivery.run(queue.clone(), stop_delivery.clone()));

    let clock = MonotonicClock::new();
    let mut readers = JoinSet::new();
    let mut guards = Vec::new();
    let mut kernel_stats = Vec::new();
    for iface in &args.ifaces {
        let bpf::AttachedProgram {
            iface,
            events,
            stats,
            logger,
            guard,
            ..
        } = bpf::attach(iface, args.xdp_mode, &settings)?;
        guards.push(guard);
        kernel_stats.push((iface.clone(), telemetry::CaptureCounters::Xdp(stats)));
        if let Some(logger) = logger {
            readers.spawn(live::forward_program_log(logger, stop_reading.clone()));
        }
        let pipeline = pipeline.clone();
        let cancel = stop_reading.clone();
        let poll = args.poll_interval;
        readers.spawn(async move {
            let result = live::drain_ring(events, poll, cancel, |bytes| {
                pipeline.handle_bytes(
                    bytes,
                    |record| clock.wall_time(record.header.timestamp_ns),
                    Some(&iface),
                );
            })
            .await;
            if let Err(err) = result {
                warn!(%iface, error = %err, "ring buffer reader failed");
            }
        });
    }
    tokio::spawn(telemetry::upkeep(recorder.clone(), stop_delivery.clone()));
    let attached = Arc::new(AtomicBool::new(true));
    if let Some(listener) = metrics_listener {
        let sources = Arc::new(telemetry::Sources {
            handle: recorder,
            kernel: kernel_stats,
            queue: queue.clone(),
            attached: attached.clone(),
            bridge: bridge_health,
        });
        tokio::spawn(telemetry::serve(listener, sources, stop_delivery.clone()));
    }
    info!(interfaces = args.ifaces.len(), ports = ?args.ports, "capturing");

    // Delivery only ends early on a fatal error (an untrusted bridge certificate, say).
    let early = tokio::select! {
        signal = wait_for_signal() => { signal?; None }
        result = &mut delivery => Some(result),
    };
    info!("shutting down: detaching and delivering what is queued");
    // Detach first so nothing new arrives, then drain the rings one last time.
    drop(guards);
    attached.store(false, Ordering::Relaxed);
    stop_reading.cancel();
    while readers.join_next().await.is_some() {}
    queue.close();
    stop_delivery.cancel();
    let result = match early {
        Some(result) => result,
        None => delivery.await,
    };
    match result {
        Ok(Ok(report)) => {
            info!(
                delivered = report.delivered,
                rejected = report.rejected,
                expired = report.expired,
                "delivery finished"
            );
            if report.undelivered > 0 {
                warn!(
                    undelivered = report.undelivered,
                    "notifications still undelivered at the shutdown deadline"
                );
            }
            Ok(())
        }
        Ok(Err(failed)) => Err(AgentError::Delivery(failed.to_string())),
        Err(join) => Err(AgentError::Delivery(format!(
            "the delivery task failed: {join}"
        ))),
    }
}

async fn wait_for_signal() -> Result<(), AgentError> {
    let signal = |kind| {
        tokio::signal::unix::signal(kind).map_err(|source| AgentError::Io {
            context: "cannot install a signal handler",
            source,
        })
    };
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
