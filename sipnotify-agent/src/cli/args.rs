//! Every clap type of the command line, with every default and help text: the flag groups
//! of `run`, `replay` and `doctor`, and the value names of the plain enums they use.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::PossibleValue};

use crate::{
    bpf::AttachMode,
    capture::{file::Speed, source::CaptureMode},
    logging::LogFormat,
    source_filter::Network,
};

/// The bridge endpoint of the reference site: the WebRTC bridge runs on the Asterisk host.
pub const DEFAULT_BRIDGE_URL: &str = "https://127.0.0.1:8000/genesys-call-notify";
/// Environment variable that may hold the bridge's bearer token (never a flag: argv is public).
pub const TOKEN_ENV: &str = "SIPNOTIFY_BRIDGE_TOKEN";
/// Environment variable that may hold the request signing key (never a flag: argv is public).
pub const SIGNING_KEY_ENV: &str = "SIPNOTIFY_BRIDGE_SIGNING_KEY";

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

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and deliver every captured NOTIFY.
    Run(RunArgs),
    /// Deliver the NOTIFYs of a pcap/pcapng capture, filtered as the XDP program filters.
    Replay(ReplayArgs),
    /// Check the kernel, permissions, interfaces and bridge, with a fix for each problem.
    Doctor(DoctorArgs),
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to capture on (repeat for several); not needed with --hep-listen.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// UDP destination port to watch (repeat for several, at most 16).
    #[arg(long = "port", value_name = "PORT", default_values_t = [5061])]
    pub ports: Vec<u16>,

    /// Deliver only NOTIFYs whose IP source is in this network (`192.0.2.10`,
    /// `192.0.2.0/28`, `2001:db8::/64`; repeat for several): the Genesys SIP Servers.
    ///
    /// Without it any host that can reach the port can make the bridge act (`run` warns).
    /// Checked in the XDP program (an LPM trie), on AF_PACKET and after reassembly; refused
    /// NOTIFYs are counted as `source_not_allowed`.
    #[arg(long = "sip-source", value_name = "CIDR")]
    pub sip_sources: Vec<Network>,

    /// Which capture path to use.
    ///
    /// `auto` uses XDP where the kernel and the interface allow it, and otherwise falls back
    /// to AF_PACKET, logging why (the kernel lacks a feature, the interface has another XDP
    /// program, or BPF loading is not permitted). `doctor` tells which path `run` would take.
    #[arg(long, value_enum, default_value_t = CaptureMode::Auto)]
    pub capture: CaptureMode,

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

    /// The most latency capture adds while NOTIFYs keep coming: how long a busy XDP reader
    /// waits between passes over its ring, and how long AF_PACKET's kernel holds a partly
    /// filled block. An idle agent sleeps until a NOTIFY arrives, whatever this is.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Parsing and de-duplication.
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Delivery to the bridge and stdout.
    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// The durable spool (on unless `--spool off` where a bridge is delivered to; off for
    /// `--stdout` alone, which posts nothing).
    #[command(flatten)]
    pub spool: SpoolArgs,

    /// SIP mirrored by the PBX as HEP.
    #[command(flatten)]
    pub hep: HepArgs,
}

/// Environment variable that may hold the HEP auth key (never a flag: argv is public).
pub const HEP_KEY_ENV: &str = "SIPNOTIFY_HEP_AUTH_KEY";

/// `run`'s HEP flags: SIP the PBX mirrors, after decryption, as HEP over UDP.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
#[command(next_help_heading = "HEP (SIP mirrored by the PBX, TLS included)")]
pub struct HepArgs {
    /// Receive HEP v1/v2/v3 on this UDP address (repeat for several): Asterisk's
    /// `res_hep_pjsip` `capture_address`, Kamailio's `siptrace` `duplicate_uri`. Without
    /// --iface the agent reads HEP alone and needs no capability.
    #[arg(long = "hep-listen", value_name = "ADDR:PORT")]
    pub hep_listen: Vec<std::net::SocketAddr>,

    /// Accept only HEPv3 packets carrying the key in this file (`capture_password`,
    /// `auth_key`); HEPv1/v2 carry no key and are then refused. The key can also come from
    /// the SIPNOTIFY_HEP_AUTH_KEY environment variable.
    #[arg(long, value_name = "PATH")]
    pub hep_auth_key_file: Option<PathBuf>,

    /// Relay every HEP datagram received, unchanged, to this collector (a HOMER); what
    /// cannot be sent at once is counted, never waited for.
    #[arg(long, value_name = "ADDR:PORT")]
    pub hep_forward: Option<std::net::SocketAddr>,

    /// Receive buffer of each HEP socket in bytes (what absorbs a burst while the agent is
    /// busy).
    #[arg(long, value_name = "BYTES", default_value_t = crate::hep::DEFAULT_RECV_BUFFER)]
    pub hep_recv_buffer: usize,

    /// Accept HEP packets only from this network (repeat for several), whatever the HEP
    /// auth key says; the SIP they carry must still come from --sip-source.
    #[arg(long = "hep-source", value_name = "CIDR")]
    pub hep_sources: Vec<Network>,
}

/// `replay` flags.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture to replay: pcap or pcapng, with Ethernet, Linux cooked (`tcpdump -i any`)
    /// or raw IP frames.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// UDP destination port to watch (repeat for several, at most 16).
    #[arg(long = "port", value_name = "PORT", default_values_t = [5061])]
    pub ports: Vec<u16>,

    /// UDP destination port of HEP in the capture: datagrams to it are decapsulated and
    /// their SIP replayed.
    #[arg(long, value_name = "PORT", default_value_t = 9060)]
    pub hep_port: u16,

    /// Deliver only NOTIFYs whose IP source is in this network (repeat for several), as
    /// `run --sip-source` does.
    #[arg(long = "sip-source", value_name = "CIDR")]
    pub sip_sources: Vec<Network>,

    /// `max` replays as fast as delivery keeps up; `realtime` sleeps to reproduce the
    /// capture's inter-packet gaps.
    #[arg(long, value_enum, default_value_t = Speed::Max)]
    pub speed: Speed,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,

    /// Parsing and de-duplication.
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Delivery to the bridge and stdout.
    #[command(flatten)]
    pub delivery: DeliveryArgs,

    /// The durable spool (off unless `--spool on`: the capture file is its own copy).
    #[command(flatten)]
    pub spool: SpoolArgs,
}

/// The spool's directory under the systemd unit (its `StateDirectory`).
const DEFAULT_SPOOL_DIR: &str = "/var/lib/sipnotify";

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// The durable spool's flags, shared by `run` (on by default with a bridge) and `replay` (off
/// by default).
#[derive(Clone, Debug, PartialEq, Eq, Args)]
#[command(next_help_heading = "Spool")]
pub struct SpoolArgs {
    /// Keep every notification on disk until the bridge accepted or refused it, so a slow or
    /// absent bridge and an agent restart or crash lose nothing [default: on for `run` with a
    /// bridge; off for `run --stdout` alone, which posts nothing, and for `replay`].
    ///
    /// `off` keeps notifications in memory only (a bounded queue that drops its oldest).
    #[arg(long, value_enum, value_name = "on|off")]
    pub spool: Option<Toggle>,

    /// Where the spool lives; it must be writable (the systemd unit's StateDirectory).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SPOOL_DIR)]
    pub spool_dir: PathBuf,

    /// The most disk space the spool uses; beyond it the oldest notifications are dropped,
    /// counted and logged (1 GiB holds hours of a large site's traffic).
    #[arg(long, value_name = "BYTES", default_value_t = crate::spool::DEFAULT_MAX_BYTES)]
    pub spool_max_bytes: u64,
}

/// `doctor` flags.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Interface the agent will capture on (repeat for several).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// The capture path `run` will be asked for: each interface's row says which path `run`
    /// would take with it, and why.
    #[arg(long, value_enum, default_value_t = CaptureMode::Auto)]
    pub capture: CaptureMode,

    /// The bridge endpoint to try (one HEAD request, no notification is sent).
    #[arg(long, value_name = "URL", default_value = DEFAULT_BRIDGE_URL)]
    pub bridge_url: String,

    /// Trust the certificates in this PEM file (the bridge's CA, or its own certificate), as
    /// `run --ca-file` does.
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    pub ca_file: Option<PathBuf>,

    /// Trust the bridge certificate with this SHA-256 fingerprint, as `run --pin-sha256` does.
    #[arg(
        long = "pin-sha256",
        value_name = "FINGERPRINT",
        conflicts_with = "insecure"
    )]
    pub pin_sha256: Vec<String>,

    /// The agent will run with --insecure: an untrusted certificate is then a warning.
    #[arg(long)]
    pub insecure: bool,

    /// The client certificate `run --client-cert` presents; the probe presents it too and
    /// reports whether the bridge asked for one.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// The private key of --client-cert.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// Skip the bridge (for agents that run with --no-bridge --stdout).
    #[arg(long)]
    pub no_bridge: bool,

    /// How long to wait for the bridge's answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The networks `run --sip-source` will allow; none is a warning row.
    #[arg(long = "sip-source", value_name = "CIDR")]
    pub sip_sources: Vec<Network>,

    /// A HEP address `run --hep-listen` will use (repeat for several): checks it can be
    /// bound, or reports what the running agent that holds it has read.
    #[arg(long = "hep-listen", value_name = "ADDR:PORT")]
    pub hep_listen: Vec<std::net::SocketAddr>,

    /// The running agent's metrics endpoint, asked what it read from HEP.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_listen: std::net::SocketAddr,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Parser and de-dup flags shared by `run` and `replay`.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
#[command(next_help_heading = "Parsing and de-duplication")]
pub struct PipelineArgs {
    /// Copy this header into each notification under its name (repeat for several).
    #[arg(long = "extra-header", value_name = "NAME")]
    pub extra_headers: Vec<String>,

    /// Deliver NOTIFYs without X-Genesys-CallUUID, with `call_uuid: null` (by default they
    /// are counted and dropped, since the bridge needs the CallUUID).
    #[arg(long)]
    pub allow_missing_call_uuid: bool,

    /// Copies of one transaction (Call-ID, CSeq, Via branch) within this window are delivered
    /// once; 32 s is 64×T1, the longest a SIP server retransmits.
    #[arg(long, value_name = "DURATION", default_value = "32s", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// The most transactions the de-duplicator remembers; the oldest is evicted beyond it.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub dedup_max_entries: usize,
}

/// Delivery flags shared by `run` and `replay`.
#[derive(Clone, Debug, PartialEq, Eq, Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
    /// The bridge endpoint that receives each notification (HTTP POST of JSON).
    ///
    /// Without --stdout it defaults to https://127.0.0.1:8000/genesys-call-notify. With
    /// --stdout nothing is posted unless a bridge URL is given (as a flag, in
    /// SIPNOTIFY_BRIDGE_URL or in the config file): `--stdout` alone only prints.
    #[arg(long, value_name = "URL")]
    pub bridge_url: Option<String>,

    /// Do not verify the bridge's TLS certificate (a warning is logged at start).
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,

    /// Trust the certificates in this PEM file: the CA that signed the bridge's certificate,
    /// or the bridge's own (self-signed) certificate, which is then trusted as it is whatever
    /// its CA flag says. The host name and dates are checked either way.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Trust the bridge certificate with this SHA-256 fingerprint (as `openssl x509 -noout
    /// -fingerprint -sha256 -in CERT` prints it; repeat for several). The host name and dates
    /// are still checked.
    #[arg(
        long = "pin-sha256",
        value_name = "FINGERPRINT",
        conflicts_with = "insecure"
    )]
    pub pin_sha256: Vec<String>,

    /// Send `Authorization: Bearer <token>` with the token read from this file; the token can
    /// also come from the SIPNOTIFY_BRIDGE_TOKEN environment variable.
    #[arg(long, value_name = "PATH")]
    pub bridge_token_file: Option<PathBuf>,

    /// Sign every request with the key read from this file (or from the
    /// SIPNOTIFY_BRIDGE_SIGNING_KEY environment variable): `X-Sipnotify-Signature:
    /// t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`, Stripe's webhook scheme,
    /// so the bridge can refuse forged and replayed requests (README, "Security").
    #[arg(long, value_name = "PATH")]
    pub bridge_signing_key_file: Option<PathBuf>,

    /// Present this client certificate (PEM, leaf first) to bridges that require mutual TLS;
    /// needs --client-key.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM) of --client-cert.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// Print each notification as one JSON line on stdout (the object the bridge gets). Alone
    /// it posts nothing; with a --bridge-url (flag, environment or config file) it does both.
    #[arg(long)]
    pub stdout: bool,

    /// Do not post to the bridge even if a bridge URL is configured (with --stdout: print
    /// only).
    #[arg(long, requires = "stdout")]
    pub no_bridge: bool,

    /// Post a JSON array of notifications per request (for bridges that accept it); each
    /// object then carries its `id`.
    #[arg(long)]
    pub array_mode: bool,

    /// Array mode: the most notifications in one request.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub batch_max_events: usize,

    /// Array mode: the largest request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub batch_max_bytes: usize,

    /// Array mode: how long a batch waits for more notifications after its first one.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub batch_linger: Duration,

    /// The most requests awaiting the bridge's reply at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Give up on one request (and retry it) after this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Drop (and count) notifications captured longer ago than this instead of delivering
    /// them late; 0 disables the limit.
    ///
    /// An hour outlasts any routine bridge restart or deploy, so an outage does not expire
    /// what the spool kept for it; a CallUUID older than that is no use to an agent's screen.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub max_age: Duration,

    /// First retry delay (exponential backoff with full jitter).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub retry_initial: Duration,

    /// Longest retry delay.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// On shutdown, keep delivering what is queued and in flight for at most this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The most notifications waiting for delivery; when full the oldest is dropped.
    ///
    /// 20 000 is about 18 MiB at most (an owned notification is under 1 KiB): 200 s of a busy
    /// site's 100 NOTIFY/s while the bridge is down.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub queue_capacity: usize,

    /// Add caller, cseq, captured_at, src, dst and iface to each object.
    #[arg(long)]
    pub extras: bool,
}

impl Default for DeliveryArgs {
    /// The flags' defaults, from the flag definitions above (for tests and benches that adjust
    /// a few fields).
    fn default() -> Self {
        defaults()
    }
}

impl Default for PipelineArgs {
    /// The flags' defaults, from the flag definitions above.
    fn default() -> Self {
        defaults()
    }
}

/// A flattened flag group with nothing given: its defaults, written once, in its attributes.
fn defaults<T: Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let parsed = command
        .try_get_matches_from(std::iter::empty::<&str>())
        .and_then(|matches| T::from_arg_matches(&matches));
    match parsed {
        Ok(value) => value,
        // A flag group whose defaults do not parse is a bug in this file; the unit test
        // `every_flag_group_has_parseable_defaults` catches it.
        Err(err) => panic!("the built-in defaults do not parse: {err}"),
    }
}

/// Parses `250ms`, `5s`, `1m` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("invalid duration `{text}`: {err}"))
}

/// `ValueEnum` for the plain enums of the modules below: their names and help live here, so
/// those modules stay free of clap.
macro_rules! value_enum {
    ($ty:ident { $($variant:ident => $name:literal: $help:literal),+ $(,)? }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($ty::$variant => PossibleValue::new($name).help($help)),+
                })
            }
        }
    };
}

value_enum!(AttachMode {
    Auto => "auto": "Native (driver) mode when the driver supports it, generic otherwise",
    Native => "native": "Native (driver) mode only",
    Generic => "generic": "Generic (skb) mode only",
});

value_enum!(CaptureMode {
    Auto => "auto": "XDP where the kernel and interface allow it, AF_PACKET otherwise (logged with the reason)",
    Xdp => "xdp": "XDP only: fail when it cannot run",
    AfPacket => "af-packet": "AF_PACKET with a classic BPF filter (Linux 3.10 and later, needs only CAP_NET_RAW)",
});

value_enum!(Speed {
    Realtime => "realtime": "Reproduce the gaps between packets (de-dup, batching and the bridge see live timing)",
    Max => "max": "As fast as delivery keeps up",
});

value_enum!(LogFormat {
    Auto => "auto": "`journal` under systemd, `text` elsewhere",
    Text => "text": "Human-readable lines with timestamps",
    Journal => "journal": "Lines without timestamps, each prefixed with its syslog priority (`<4>`), which journald stores as the entry's priority",
    Json => "json": "One JSON object per line (for Loki/Elasticsearch pipelines)",
});

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_group_has_parseable_defaults() {
        let delivery = DeliveryArgs::default();
        assert_eq!(delivery.bridge_url, None);
        assert_eq!(delivery.max_in_flight, 64);
        assert_eq!(delivery.queue_capacity, 20_000);
        let pipeline = PipelineArgs::default();
        assert_eq!(pipeline.dedup_window, Duration::from_secs(32));
        assert_eq!(pipeline.dedup_max_entries, 65_536);
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
    fn run_reads_an_interface_or_hep() {
        // Which of them is required is the settings' check (the file or environment may
        // supply either); clap takes both.
        let cli = Cli::try_parse_from(["sipnotify-agent", "run", "--hep-listen", "127.0.0.1:9060"]);
        let Command::Run(run) = cli.unwrap().command else {
            panic!("not a run");
        };
        assert!(run.ifaces.is_empty());
        assert_eq!(run.hep.hep_listen, ["127.0.0.1:9060".parse().unwrap()]);
    }

    #[test]
    fn replay_flags_default_to_port_5061_at_full_speed() {
        let cli = Cli::try_parse_from(["sipnotify-agent", "replay", "x.pcap", "--stdout"]).unwrap();
        let Command::Replay(args) = cli.command else {
            panic!("not a replay");
        };
        assert_eq!(args.file, PathBuf::from("x.pcap"));
        assert_eq!(args.ports, [5061]);
        assert_eq!(args.speed, Speed::Max);
        assert!(args.delivery.stdout);
        let cli = Cli::try_parse_from([
            "sipnotify-agent",
            "replay",
            "x.pcapng",
            "--port",
            "5060",
            "--port",
            "5070",
            "--speed",
            "realtime",
        ])
        .unwrap();
        let Command::Replay(args) = cli.command else {
            panic!("not a replay");
        };
        assert_eq!(args.ports, [5060, 5070]);
        assert_eq!(args.speed, Speed::Realtime);
        assert!(Cli::try_parse_from(["sipnotify-agent", "replay"]).is_err());
    }
}
