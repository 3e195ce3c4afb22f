//! Prometheus metrics and the health endpoint, served on `--metrics-listen`.
//!
//! Userspace stages count through the `metrics` facade as they go; what lives elsewhere (the
//! kernel's per-CPU counters, the queue depth) is read at scrape time, so a scrape always
//! shows current values without a polling task. `/healthz` answers 200 once every program is
//! attached and the bridge has answered at least once (or no bridge is configured), and 503
//! with the reason otherwise.
//!
//! Names follow Prometheus's conventions (base units, `_total` on counters), and the endpoint
//! carries what every exporter has: `sipnotify_build_info` and the `process_*` metrics
//! (`metrics-process`, read from `/proc` at scrape). Series that alerts and dashboards use are
//! registered at zero when the recorder is installed ([`seed`]): a counter that first appears
//! at 5 is a jump `increase()` never sees, and a missing series is a panel with "No data".

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sipnotify_common::Counter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{capture::CaptureCounters, loss::Loss, sink::BridgeHealth, stage::Output};

/// Latency buckets (seconds) for capture-to-acknowledgement: the goal is a p99 of 5 ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Another recorder is installed (only one per process).
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The listen address is taken or not ours.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Installs the process-wide Prometheus recorder, with the build information and the series
/// that must exist before their first event.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sipnotify_delivery_latency_seconds".into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    seed();
    Ok(handle)
}

/// The bridge's answers, as `sipnotify_deliveries_total{outcome}` labels them.
const DELIVERY_OUTCOMES: &[&str] = &["delivered", "errored", "rejected"];

/// The `# HELP` line of every `sipnotify_*` metric (the README's metric table in short): one
/// place, so a new metric without one fails `promtool check metrics` in `tests/monitoring.rs`.
const HELP: &[(&str, &str)] = &[
    (
        "sipnotify_build_info",
        "Always 1; the agent's version, and whether the XDP program is embedded.",
    ),
    (
        "sipnotify_kernel_packets_total",
        "Capture decisions per interface and capture path, by outcome (outcomes sum to packets_seen; tallies on the way).",
    ),
    ("sipnotify_records_total", "Capture records read."),
    (
        "sipnotify_parse_rejects_total",
        "Records that are not a usable NOTIFY, by reason.",
    ),
    (
        "sipnotify_notifications_total",
        "NOTIFYs accepted, each once (the copies de-dup drops are in sipnotify_dedup_hits_total).",
    ),
    (
        "sipnotify_dedup_hits_total",
        "Copies of a NOTIFY dropped by de-duplication (retransmissions, the wire and HEP, a proxy's forwarded copy).",
    ),
    (
        "sipnotify_dedup_evictions_total",
        "De-duplication entries evicted at the cap.",
    ),
    (
        "sipnotify_queue_depth",
        "Notifications waiting for delivery in memory.",
    ),
    ("sipnotify_spool_bytes", "Bytes the spool holds on disk."),
    (
        "sipnotify_spool_entries",
        "Notifications the spool holds on disk.",
    ),
    (
        "sipnotify_spool_oldest_age_seconds",
        "How long the oldest spooled notification has waited.",
    ),
    (
        "sipnotify_spool_max_bytes",
        "The spool's bound (--spool-max-bytes).",
    ),
    (
        "sipnotify_bridge_up",
        "1 while the bridge answers, 0 while requests to it fail.",
    ),
    ("sipnotify_deliveries_total", "Bridge requests by outcome."),
    ("sipnotify_retries_total", "Bridge requests retried."),
    ("sipnotify_dropped_total", "Notifications lost, by reason."),
    (
        "sipnotify_delivery_latency_seconds",
        "From capture to the bridge's acknowledgement.",
    ),
    (
        "sipnotify_reassembly_lost_total",
        "IP fragments and TCP stream pieces given up, by reason.",
    ),
    (
        "sipnotify_reassembly_discarded_bytes_total",
        "TCP stream bytes skipped by reassembly.",
    ),
    (
        "sipnotify_reassembled_total",
        "NOTIFYs put together from IP fragments or a TCP stream, by kind.",
    ),
    (
        "sipnotify_reassembly_memory_bytes",
        "Memory held by reassembly.",
    ),
    (
        "sipnotify_hep_packets_total",
        "HEP packets received, by outcome.",
    ),
    (
        "sipnotify_hep_datagrams_total",
        "Datagrams read from the --hep-listen sockets.",
    ),
];

/// Registers `sipnotify_build_info` and, at zero, every series an alert or a dashboard panel
/// reads that would otherwise appear only with its first event.
fn seed() {
    for (name, help) in HELP {
        // The exporter takes the type from the series; a description is only text.
        metrics::describe_counter!(*name, *help);
    }
    metrics::gauge!(
        "sipnotify_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "ebpf" => if crate::bpf::OBJECT.is_empty() { "false" } else { "true" }
    )
    .set(1.0);
    // Every loss but `capture_ring_full`, which is per interface, written at scrape from the
    // capture counters.
    for &loss in Loss::ALL {
        if loss != Loss::CaptureRingFull {
            loss.counter().absolute(0);
        }
    }
    for (reason, _) in crate::reassembly::ReassemblyStats::default().losses() {
        metrics::counter!("sipnotify_reassembly_lost_total", "reason" => reason).absolute(0);
    }
    // The HEP source's refusals for a wrong key, alerted on whether or not HEP is in use.
    metrics::counter!("sipnotify_hep_packets_total", "outcome" => "auth_failed").absolute(0);
    for outcome in DELIVERY_OUTCOMES {
        metrics::counter!("sipnotify_deliveries_total", "outcome" => *outcome).absolute(0);
    }
    // Rendered with empty buckets until the first delivery.
    let _registered = metrics::histogram!("sipnotify_delivery_latency_seconds");
    for name in [
        "sipnotify_records_total",
        "sipnotify_notifications_total",
        "sipnotify_retries_total",
        "sipnotify_reassembly_discarded_bytes_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded samples into the exporter's buckets until `cancel` fires.
///
/// The exporter keeps every histogram sample until a render or an upkeep drains it; one
/// latency sample per delivery would otherwise grow the agent's memory without bound on a host
/// where nothing scrapes `/metrics` (measured: +25 MiB a minute at 20 k/s).
pub async fn upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => handle.run_upkeep(),
        }
    }
}

/// What the endpoint reads at scrape time.
pub struct Sources {
    /// The recorder's renderer.
    pub handle: PrometheusHandle,
    /// Capture counters per interface.
    pub kernel: Arc<[(Arc<str>, CaptureCounters)]>,
    /// The delivery queue.
    pub queue: Output,
    /// Set once every program is attached.
    pub attached: Arc<AtomicBool>,
    /// Whether the bridge has answered; `None` when no bridge is configured.
    pub bridge: Option<BridgeHealth>,
    /// The `process_*` metrics, read from `/proc` at each scrape.
    pub process: metrics_process::Collector,
}

impl Sources {
    fn render(&self) -> String {
        for (iface, stats) in self.kernel.iter() {
            match stats.read() {
                Ok(values) => {
                    for counter in Counter::ALL {
                        metrics::counter!(
                            "sipnotify_kernel_packets_total",
                            "iface" => iface.to_string(),
                            "capture" => stats.source(),
                            "outcome" => counter.name()
                        )
                        .absolute(values.get(counter));
                    }
                    // The capture ring's losses belong with every other drop.
                    metrics::counter!(
                        "sipnotify_dropped_total",
                        "reason" => Loss::CaptureRingFull.label(),
                        "iface" => iface.to_string()
                    )
                    .absolute(values.get(Counter::RingbufFull));
                }
                Err(err) => warn!(%iface, error = %err, "cannot read the kernel counters"),
            }
        }
        metrics::gauge!("sipnotify_queue_depth").set(self.queue.len() as f64);
        self.process.collect();
        self.handle.render()
    }

    /// `None` when healthy, or why not.
    pub fn unhealthy(&self) -> Option<&'static str> {
        if !self.attached.load(Ordering::Relaxed) {
            return Some("the XDP program is not attached yet");
        }
        match &self.bridge {
            Some(bridge) if !bridge.has_answered() => Some("the bridge has not answered yet"),
            _ => None,
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!(error = %err, "metrics accept failed");
                    continue;
                }
            },
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, sources.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the metrics listener, warning when it is reachable beyond this host.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    if !addr.ip().is_loopback() {
        warn!(
            %addr,
            "the metrics endpoint is reachable from other hosts; it has no authentication"
        );
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Listen { addr, source })
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    sources: Arc<Sources>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            sources.render(),
        ),
        (&Method::GET, "/healthz") => match sources.unhealthy() {
            None => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}
