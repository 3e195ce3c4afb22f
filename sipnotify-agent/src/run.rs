//! `sipnotify-agent run`: attach to every interface, drain the ring buffers, deliver, and
//! detach cleanly on SIGINT/SIGTERM.

use std::{
    io::{self, Write as _},
    sync::Arc,
};

use tokio::{signal::unix::SignalKind, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    bpf::{self, ProgramSettings},
    capture::{MonotonicClock, Record, live},
    cli::{self, RunArgs},
    error::AgentError,
};

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    cli::check_ports(&args.ports).map_err(AgentError::Config)?;
    cli::check_ring_bytes(args.ring_bytes).map_err(AgentError::Config)?;
    for iface in &args.ifaces {
        bpf::interface_index(iface)?;
    }
    bpf::preflight()?;
    let settings = ProgramSettings {
        ports: args.ports.clone(),
        ring_bytes: args.ring_bytes,
    };

    let cancel = CancellationToken::new();
    let clock = MonotonicClock::new();
    let mut readers = JoinSet::new();
    let mut guards = Vec::new();
    for iface in &args.ifaces {
        let program = bpf::attach(iface, args.xdp_mode, &settings)?;
        let bpf::AttachedProgram {
            iface,
            events,
            logger,
            guard,
            ..
        } = program;
        guards.push(guard);
        if let Some(logger) = logger {
            readers.spawn(live::forward_program_log(logger, cancel.clone()));
        }
        let cancel = cancel.clone();
        let poll = args.poll_interval;
        readers.spawn(async move {
            let mut out = io::stdout();
            let result = live::drain_ring(events, poll, cancel, |bytes| {
                print_raw(&mut out, bytes, &iface, &clock);
            })
            .await;
            let _ = out.flush();
            if let Err(err) = result {
                warn!(%iface, error = %err, "ring buffer reader failed");
            }
        });
    }
    info!(interfaces = args.ifaces.len(), ports = ?args.ports, "capturing");

    wait_for_signal().await?;
    info!("shutting down");
    cancel.cancel();
    while readers.join_next().await.is_some() {}
    drop(guards);
    info!("detached");
    Ok(())
}

/// Until the parser is wired in: the record's raw fields and its request line.
fn print_raw(out: &mut impl io::Write, bytes: &[u8], iface: &Arc<str>, clock: &MonotonicClock) {
    let record = match Record::decode(bytes) {
        Ok(record) => record,
        Err(err) => {
            warn!(error = %err, "skipping a malformed ring-buffer record");
            return;
        }
    };
    let line_end = memchr::memchr(b'\r', record.payload).unwrap_or(record.payload.len());
    let captured_at = clock
        .wall_time(record.header.timestamp_ns)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let line = serde_json::json!({
        "iface": &**iface,
        "captured_at": captured_at,
        "src": record.src().to_string(),
        "dst": record.dst().to_string(),
        "payload_len": record.header.payload_len,
        "captured_len": record.header.captured_len,
        "flags": record.header.flags,
        "request_line": String::from_utf8_lossy(&record.payload[..line_end]),
    });
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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
