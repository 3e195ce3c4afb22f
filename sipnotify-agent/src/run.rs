//! `sipnotify-agent run`: attach to every interface, serve the metrics, and wire the live
//! source through the pipeline and queue to delivery (`wiring`), which on SIGINT/SIGTERM
//! detaches, stops reading, and lets delivery finish what is queued up to its deadline.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use sipnotify_common::Counter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    bpf, caps,
    capture::{CaptureCounters, CaptureSettings, live::LiveSource},
    error::AgentError,
    hep::{Both, HepSettings, HepSource},
    logging::LogSettings,
    pipeline::{Clock, Pipeline, PipelineSettings},
    sink::{Delivery, SinkSettings},
    spool::SpoolSettings,
    telemetry, tls_alarm, wiring,
};

/// What `run` runs with, validated by the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Where and how to capture.
    pub capture: CaptureSettings,
    /// Parsing and de-duplication.
    pub pipeline: PipelineSettings,
    /// Delivery to the bridge and stdout.
    pub delivery: SinkSettings,
    /// Where to serve `/metrics` and `/healthz`; `None` for no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The durable spool; `None` keeps the backlog in memory only.
    pub spool: Option<SpoolSettings>,
    /// Logging.
    pub log: LogSettings,
    /// The HEP source (`--hep-listen`, none by default).
    pub hep: HepSettings,
}

/// Checks that every interface exists (exit 2 otherwise), without attaching; also what
/// `run --check-config` checks beyond the settings themselves.
pub fn check_interfaces(capture: &CaptureSettings) -> Result<(), AgentError> {
    for iface in &capture.ifaces {
        bpf::interface_index(iface)?;
    }
    Ok(())
}

/// Every interface is attached and every socket open: nothing later needs a capability, so
/// all are dropped, except `CAP_BPF` (or `CAP_SYS_ADMIN` where the kernel has no `CAP_BPF`)
/// on kernels that refuse reading the program's counters without it. A failure is logged:
/// capture works the same, with the capabilities still held.
fn drop_capabilities(
    kernel: &Arc<[(Arc<str>, CaptureCounters)]>,
    held: Option<caps::Capabilities>,
) {
    let Some(held) = held else { return };
    if held.effective == 0 {
        return;
    }
    let counters = kernel.clone();
    let readable =
        caps::survives_drop(move || counters.iter().all(|(_, stats)| stats.read().is_ok()));
    let keep = match (readable, held.kernel_has_cap_bpf) {
        (true, _) => 0,
        (false, true) => 1u64 << caps::CAP_BPF,
        (false, false) => 1u64 << caps::CAP_SYS_ADMIN,
    };
    match caps::drop_all(keep) {
        Ok(dropped) if dropped.kept == 0 => info!(
            before = format_args!("{:016x}", dropped.before),
            bounding_set_emptied = dropped.bounding,
            "every interface is attached: all capabilities dropped (CapEff 0)"
        ),
        Ok(dropped) => warn!(
            before = format_args!("{:016x}", dropped.before),
            kept = format_args!("{:016x}", dropped.kept),
            "every interface is attached: capabilities dropped but one, which this kernel needs to read the XDP program's counters (kernel.unprivileged_bpf_disabled is set and the kernel predates unprivileged map reads)"
        ),
        Err(err) => warn!(error = %err, "capture runs with the capabilities it started with"),
    }
}

/// Runs until SIGINT or SIGTERM (or a fatal delivery error).
pub async fn run(settings: RunSettings) -> Result<(), AgentError> {
    let RunSettings {
        capture,
        pipeline,
        delivery,
        metrics_listen,
        spool,
        log,
        hep,
    } = settings;
    if capture.senders.allows_everyone() {
        warn!(
            "no sip_source is set: any host that can reach the watched ports can make the bridge act; set sip_source to the SIP Server addresses"
        );
    } else {
        info!(sip_source = %capture.senders, "NOTIFYs are accepted only from these networks");
    }
    check_interfaces(&capture)?;
    let held = caps::Capabilities::current();
    match &held {
        Some(held) => info!(capabilities = %held.summary(), "capabilities at start"),
        None => warn!("cannot read the capabilities from /proc/self/status"),
    }
    // Before the queue and the pipeline, which register their counters with it.
    let recorder = telemetry::install_recorder()?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(telemetry::bind(addr).await?),
        None => None,
    };
    let has_bridge = delivery.bridge.is_some();
    let capacity = delivery.queue_capacity;
    let delivery = Delivery::new(delivery)?;
    // Before attaching: a certificate or URL that cannot work, or a spool directory that
    // cannot be written, is a configuration error now, not a loss of notifications later.
    delivery.check_before_capture().await?;
    let (stage, delivery) = wiring::open_stage(spool, capacity, delivery)?;
    let bridge_health = has_bridge.then(|| delivery.health());
    let pipeline = Pipeline::new(
        &pipeline,
        &capture.ports,
        Clock::live(),
        stage.input().clone(),
    )
    .log_sip(log.log_sip);
    // HEP alone (no --iface) needs no capability and loads nothing into the kernel.
    let hep_source = if hep.listen.is_empty() {
        None
    } else {
        Some(HepSource::bind(&hep)?.with_losses(stage.losses()))
    };
    let mut live = if capture.ifaces.is_empty() {
        None
    } else {
        Some(LiveSource::attach(&capture)?)
    };

    let stop_telemetry = CancellationToken::new();
    tokio::spawn(telemetry::upkeep(recorder.clone(), stop_telemetry.clone()));
    let kernel: Arc<[_]> = live
        .as_mut()
        .map(LiveSource::take_kernel_stats)
        .unwrap_or_default()
        .into();
    drop_capabilities(&kernel, held);
    tokio::spawn(tls_alarm::watch(
        kernel.clone(),
        capture.ports.clone(),
        stop_telemetry.clone(),
    ));
    if let Some(listener) = metrics_listener {
        let sources = Arc::new(telemetry::Sources {
            handle: recorder,
            kernel: kernel.clone(),
            queue: stage.output(),
            attached: live
                .as_ref()
                .map_or_else(|| Arc::new(AtomicBool::new(true)), LiveSource::attached),
            bridge: bridge_health,
            process: metrics_process::Collector::default(),
        });
        tokio::spawn(telemetry::serve(listener, sources, stop_telemetry.clone()));
    }
    if live.is_some() {
        info!(interfaces = capture.ifaces.len(), ports = ?capture.ports, capture = %capture.mode, "capturing");
    }
    if let Some(hep) = &hep_source {
        info!(listen = ?hep.local_addrs(), "capturing hep");
    }
    let source = Both(live, hep_source);

    let finished = wiring::wire(source, pipeline, delivery, stage)
        .await
        .map_err(|source| AgentError::Io {
            context: "cannot install a signal handler",
            source,
        })?;
    stop_telemetry.cancel();
    if let Ok((reassembly, hep)) = &finished.source {
        reassembly.iter().for_each(|r| r.log());
        hep.iter().for_each(|h| h.log());
    }
    let ring_full = kernel
        .iter()
        .filter_map(|(_, stats)| stats.read().ok())
        .map(|counters| counters.get(Counter::RingbufFull))
        .sum();
    let refused: u64 = kernel
        .iter()
        .filter_map(|(_, stats)| stats.read().ok())
        .map(|counters| counters.get(Counter::SourceNotAllowed))
        .sum();
    if refused > 0 {
        warn!(
            refused,
            check = "a host outside sip_source sending NOTIFYs to the watched ports: a SIP Server missing from sip_source, or someone trying to make the bridge act",
            "NOTIFYs and TCP segments from sources outside sip_source were refused"
        );
    }
    finished.log_summary(ring_full);
    match finished.delivery {
        Ok(_) => Ok(()),
        Err(join) => Err(AgentError::Delivery(format!(
            "the delivery task failed: {join}"
        ))),
    }
}
