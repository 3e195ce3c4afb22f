//! The command line (design.md's contract): `run`, `replay`, `doctor`.
//!
//! Flag names are part of the contract; every flag has a one-line help and, where the
//! choice is not obvious, a longer one.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{bpf::AttachMode, pipeline::PipelineArgs, sink::DeliveryArgs};

/// Captures Genesys SIP NOTIFYs with XDP and delivers their CallUUID to the WebRTC bridge.
#[derive(Debug, Parser)]
#[command(name = "sipnotify-agent", version, about)]
pub struct Cli {
    /// Read settings from this TOML file (default: /etc/sipnotify/sipnotify.toml if present).
    ///
    /// Every long flag is a key (`bridge_url = "https://…"`, `iface = ["eth0"]`).
    /// Precedence: flags, then SIPNOTIFY_* environment variables, then the file, then defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags shared by every subcommand.
#[derive(Clone, Debug, Args, PartialEq, Eq)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format on stderr.
    ///
    /// `auto` writes `journal` lines when stderr is the systemd journal and `text` otherwise.
    /// Text is coloured only on a terminal, and never when NO_COLOR is set.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Log each notification's DN, Call-ID and CallUUID at info level (personal data: off by
    /// default, when they appear only at debug level).
    #[arg(long)]
    pub log_sip: bool,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `journal` under systemd, `text` elsewhere.
    #[default]
    Auto,
    /// Human-readable lines with timestamps.
    Text,
    /// Lines without timestamps, each prefixed with its syslog priority (`<4>`), which
    /// journald stores as the entry's priority.
    Journal,
    /// One JSON object per line (for Loki/Elasticsearch pipelines).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and deliver every captured NOTIFY.
    Run(RunArgs),
    /// Deliver the NOTIFYs of a pcap/pcapng capture, filtered as the XDP program filters.
    Replay(crate::replay::ReplayArgs),
    /// Check the kernel, permissions, interfaces and bridge, with a fix for each problem.
    Doctor(crate::doctor::DoctorArgs),
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to capture on (repeat for several).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,

    /// UDP destination port to watch (repeat for several, at most 16).
    #[arg(long = "port", value_name = "PORT", default_values_t = [5061])]
    pub ports: Vec<u16>,

    /// How to attach the XDP program.
    ///
    /// `auto` tries native (driver) mode and falls back to generic (skb) mode; the log says
    /// which one was used.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,

    /// Ring buffer size per interface in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = sipnotify_common::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,

    /// Serve Prometheus metrics (/metrics) and health (/healthz) on this address; `off`
    /// disables the endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,

    /// Validate the configuration, print the effective settings and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,

    /// How often the ring buffer is polled when no wake-up arrives.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Parsing and de-duplication.
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Delivery to the bridge and stdout.
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// Parses `250ms`, `5s`, `1m` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("invalid duration `{text}`: {err}"))
}

/// The reason an option value is bad.
pub fn check_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() || ports.len() > sipnotify_common::MAX_PORTS {
        return Err(format!(
            "between 1 and {} ports may be watched, got {}",
            sipnotify_common::MAX_PORTS,
            ports.len()
        ));
    }
    if let Some(zero) = ports.iter().find(|&&p| p == 0) {
        return Err(format!("port {zero} is not a valid UDP port"));
    }
    Ok(())
}

/// Checks the ring size the kernel will accept: a power-of-two number of pages.
pub fn check_ring_bytes(bytes: u32) -> Result<(), String> {
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!(
            "ring buffer size {bytes} must be a power of two of at least 4096 bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_to_port_5061_and_auto_mode() {
        let cli = Cli::try_parse_from(["sipnotify-agent", "run", "--iface", "eth0"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not a run");
        };
        assert_eq!(run.ifaces, ["eth0"]);
        assert_eq!(run.ports, [5061]);
        assert_eq!(run.xdp_mode, AttachMode::Auto);
        assert_eq!(run.poll_interval, Duration::from_millis(1));
    }

    #[test]
    fn run_takes_repeated_interfaces_and_ports() {
        let cli = Cli::try_parse_from([
            "sipnotify-agent",
            "run",
            "--iface",
            "a",
            "--iface",
            "b",
            "--port",
            "5060",
            "--port",
            "5061",
            "--xdp-mode",
            "generic",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not a run");
        };
        assert_eq!(run.ifaces, ["a", "b"]);
        assert_eq!(run.ports, [5060, 5061]);
        assert_eq!(run.xdp_mode, AttachMode::Generic);
    }

    #[test]
    fn run_requires_an_interface() {
        assert!(Cli::try_parse_from(["sipnotify-agent", "run"]).is_err());
    }

    #[test]
    fn port_and_ring_checks_name_the_bad_value() {
        assert_eq!(check_ports(&[5061]), Ok(()));
        assert_eq!(
            check_ports(&[0]).unwrap_err(),
            "port 0 is not a valid UDP port"
        );
        assert!(check_ports(&[1; 17]).unwrap_err().contains("got 17"));
        assert!(check_ring_bytes(1 << 20).is_ok());
        assert!(check_ring_bytes(5000).unwrap_err().contains("5000"));
    }
}
