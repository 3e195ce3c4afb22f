//! `sipnotify-agent doctor`: checks, before a first `run` or when one fails, everything the
//! agent depends on, and says how to fix what is missing.
//!
//! Kernel features are proven rather than inferred from the version where possible: aya's
//! probes load tiny programs and maps, and the embedded program itself is loaded (not
//! attached) so the verifier's verdict on this kernel is part of the report. Interfaces are
//! looked up and asked (through `ip -j link`) whether an XDP program already holds them. The
//! bridge gets one HEAD request (never a POST: a probe must not reach the call logic); its
//! certificate is verified and the verdict recorded while the handshake is allowed to
//! complete, so one run reports both "does it answer" and "would the certificate verify".
//! The probe is built from the sink's own pieces (`sink::tls` for the roots, verifier and
//! certificate wording, `sink::http` for the client settings), so its verdict is `run`'s.
//!
//! Every check ends OK, WARN (works, but worth knowing) or FAIL (the agent will not work),
//! and every WARN and FAIL carries a fix. Exit status: 0 unless a check failed.

use std::{
    fmt, fs, io,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};
use reqwest::StatusCode;

use sipnotify_common::{Counter, CounterSet};

use crate::{
    bpf::{self, AttachMode, CopyPath, LoadError, ProgramSettings},
    caps,
    capture::{
        af_packet::{AfPacketSettings, PacketSocket},
        source::{self, CaptureMode, Prediction},
    },
    logging::LogSettings,
    sink::{
        BridgeSettings, TlsSettings,
        http::{self, error_chain},
        tls,
    },
    source_filter::SourceFilter,
};

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Linux 5.11 moved BPF memory accounting from RLIMIT_MEMLOCK to the memory cgroup.
const MEMCG_ACCOUNTING: KernelVersion = KernelVersion::new(5, 11, 0);
/// What the default 8 MiB ring and the other maps need under RLIMIT_MEMLOCK accounting, with
/// room to spare.
const MEMLOCK_NEEDED: u64 = 32 << 20;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

const FIX_PERMISSIONS: &str = "run as root, or grant the binary the capabilities: \
     `setcap cap_bpf,cap_net_admin,cap_perfmon+ep $(command -v sipnotify-agent)`";
const FIX_KERNEL: &str = "XDP capture needs the BPF ring buffer of Linux 5.8 or newer";
/// What `cargo xtask test-kernels` proves, boot by boot (README "Supported kernels").
pub const SUPPORT_MATRIX: &str = "the kernel matrix covers Linux 5.10 (linear copy), 6.1, 6.12 \
     and 7.x (bpf_xdp_load_bytes), native and generic XDP and AF_PACKET on virtio-net";

/// What `doctor` checks, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoctorSettings {
    /// Interfaces the agent will capture on.
    pub ifaces: Vec<String>,
    /// The capture path `run` will be asked for (`--capture`).
    pub capture: CaptureMode,
    /// The bridge to probe: `None` skips it (`--no-bridge`); an error is a bridge flag that
    /// cannot work, reported as a failed check.
    pub bridge: Option<Result<BridgeSettings, String>>,
    /// The agent will run with `--insecure`: an untrusted certificate is then a warning.
    pub insecure: bool,
    /// How long to wait for the bridge's answer.
    pub request_timeout: Duration,
    /// The networks `run` will accept NOTIFYs from (`--sip-source`).
    pub senders: SourceFilter,
    /// HEP addresses `run --hep-listen` will use.
    pub hep_listen: Vec<std::net::SocketAddr>,
    /// A running agent's metrics endpoint, asked what it read from HEP.
    pub metrics: std::net::SocketAddr,
    /// Logging.
    pub log: LogSettings,
}

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth knowing.
    Warn,
    /// The agent will not work until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (every WARN and FAIL has one).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Some checks failed.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// At least one FAIL row.
    #[error("{failed} of {total} checks failed; the fixes are listed under them")]
    Failed {
        /// FAIL rows.
        failed: usize,
        /// All rows.
        total: usize,
    },
    /// The checks themselves could not run.
    #[error("the checks could not run: {0}")]
    Internal(String),
}

impl DoctorError {
    /// Process exit code: 1 (bad usage is the command line's, exit 2, before this runs).
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// Runs every check, prints the report on stdout, and fails if a check failed.
pub async fn doctor(settings: DoctorSettings) -> Result<(), DoctorError> {
    let checks = run_checks(&settings).await?;
    print!("{}", render(&checks));
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        return Err(DoctorError::Failed {
            failed,
            total: checks.len(),
        });
    }
    Ok(())
}

/// Runs every check and returns the rows, in report order.
pub async fn run_checks(settings: &DoctorSettings) -> Result<Vec<Check>, DoctorError> {
    let ifaces = settings.ifaces.clone();
    let capture = settings.capture;
    // Syscalls, /proc reads, `ip` and the verifier: off the async workers.
    let mut checks = tokio::task::spawn_blocking(move || system_checks(&ifaces, capture))
        .await
        .map_err(|e| DoctorError::Internal(e.to_string()))?;
    checks.push(senders_check(&settings.senders));
    let (hep, metrics) = (settings.hep_listen.clone(), settings.metrics);
    if !hep.is_empty() {
        let rows = tokio::task::spawn_blocking(move || {
            let text = agent_metrics(metrics);
            hep.iter()
                .map(|&addr| {
                    let bound = crate::hep::socket::bind(addr, 1 << 20).map(|_| ());
                    hep_listen_check(addr, bound, text.as_deref())
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| DoctorError::Internal(e.to_string()))?;
        checks.extend(rows);
    }
    if let Some(bridge) = &settings.bridge {
        checks.extend(bridge_checks(bridge, settings).await);
    }
    Ok(checks)
}

/// Whether NOTIFYs are accepted from the SIP Servers only.
fn senders_check(senders: &SourceFilter) -> Check {
    if senders.allows_everyone() {
        return Check::warn(
            "sip senders",
            "no sip_source: any host that can reach the watched ports can make the bridge act",
            "set sip_source to the SIP Server addresses (--sip-source CIDR, or sip_source = [\"…\"] in the config file)",
        );
    }
    Check::ok(
        "sip senders",
        format!("NOTIFYs accepted only from {senders}"),
    )
}

/// A running agent's Prometheus text, if one answers at `addr` within a second.
fn agent_metrics(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: doctor\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The HEP datagrams a running agent's metrics count, by outcome.
fn hep_outcomes(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("sipnotify_hep_packets_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            let outcome = labels.split("outcome=\"").nth(1)?.split('"').next()?;
            Some((outcome.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Whether `run --hep-listen ADDR` can receive there: the address binds (and reading HEP
/// needs no capability), or a running agent already holds it, with what it read.
pub fn hep_listen_check(
    addr: std::net::SocketAddr,
    bound: std::io::Result<()>,
    metrics: Option<&str>,
) -> Check {
    let name = format!("hep on {addr}");
    match bound {
        Ok(()) => Check::ok(
            name,
            "the address can be bound; reading HEP needs no capability and no eBPF",
        ),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => match metrics {
            Some(text) if text.contains("sipnotify_hep_datagrams_total") => {
                let outcomes = hep_outcomes(text);
                let read: u64 = metrics_value(text, "sipnotify_hep_datagrams_total");
                let listed: Vec<String> =
                    outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
                let detail = format!(
                    "a running agent receives HEP here: {read} datagrams read ({})",
                    if listed.is_empty() {
                        "none yet".to_owned()
                    } else {
                        listed.join(", ")
                    }
                );
                let refused = outcomes.iter().any(|(o, n)| o == "auth_failed" && *n > 0);
                if read == 0 || refused {
                    Check::warn(
                        name,
                        detail,
                        "point the PBX's HEP at this address (Asterisk hep.conf \
                         capture_address, Kamailio siptrace duplicate_uri) with the same key \
                         as --hep-auth-key-file (README \"SIP over TLS: read it from the PBX\")",
                    )
                } else {
                    Check::ok(name, detail)
                }
            }
            _ => Check::fail(
                name,
                "the address is in use by another program",
                "pick a free port for --hep-listen, or stop what holds it (`ss -ulpn`)",
            ),
        },
        Err(err) => Check::fail(
            name,
            format!("cannot bind it: {err}"),
            "use an address of this host (`ip addr`), e.g. 127.0.0.1:9060 when the PBX runs here",
        ),
    }
}

fn metrics_value(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn system_checks(ifaces: &[String], capture: CaptureMode) -> Vec<Check> {
    let kernel = KernelVersion::current().map_err(|err| err.to_string());
    let version = kernel.as_ref().ok().copied();
    let mut checks = vec![
        kernel_check(kernel),
        btf_check(fs::metadata(BTF_PATH).is_ok()),
        object_check(bpf::OBJECT.len()),
        permissions_check(
            // SAFETY: geteuid has no preconditions and cannot fail.
            unsafe { libc::geteuid() },
            fs::read_to_string("/proc/self/status")
                .ok()
                .as_deref()
                .and_then(parse_cap_eff),
        ),
        capabilities_check(caps::Capabilities::current()),
        // Before the program load below, which raises the limit for this process.
        memlock_check(version, memlock_limit()),
        probe_check(
            "xdp programs",
            "XDP program type",
            is_program_supported(ProgramType::Xdp).map_err(|e| e.to_string()),
        ),
        probe_check(
            "ring buffer",
            "BPF ring buffer maps",
            is_map_supported(MapType::RingBuf).map_err(|e| e.to_string()),
        ),
        copy_path_check(
            is_helper_supported(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_load_bytes)
                .map_err(|e| e.to_string()),
        ),
    ];
    let settings = ProgramSettings {
        ports: vec![5061],
        // The smallest ring: the load proves the map type, not the size.
        ring_bytes: 4096,
        senders: SourceFilter::default(),
    };
    // The real program, loaded the way `run` loads it: its verdict is `run`'s.
    let loaded = bpf::load(&settings).map(|l| l.copy);
    checks.push(program_load_check(loaded.as_ref().copied()));
    let existing = existing_interfaces();
    for iface in ifaces {
        let index = bpf::interface_index(iface);
        let xdp = index.is_ok().then(|| attached_xdp(iface));
        let prediction = index.as_ref().ok().map(|&ifindex| {
            let other_program = matches!(&xdp, Some(Ok(Some(prog)))
                if prog.name.as_deref() != Some(sipnotify_common::PROGRAM_NAME));
            let busy = LoadError::InterfaceBusy(iface.clone());
            let xdp_verdict = match &loaded {
                Err(err) => Err(err),
                Ok(_) if other_program => Err(&busy),
                Ok(_) => Ok(()),
            };
            // A real packet socket with the real filter, closed at once: its verdict is `run`'s.
            let af = AfPacketSettings {
                ports: vec![5061],
                ring_bytes: 1 << 20,
                block_timeout: Duration::from_millis(1),
            };
            let af_verdict = PacketSocket::open(iface, ifindex, &af).map(drop);
            let plan = source::AutoPlan::choose(AttachMode::Auto, source::driver(iface).as_deref());
            source::predict(capture, plan, xdp_verdict, af_verdict.as_ref().copied())
        });
        // A running agent's program: what has it seen on the watched ports?
        let running = match &xdp {
            Some(Ok(Some(XdpProgram {
                id: Some(id),
                name: Some(name),
                ..
            }))) if name == sipnotify_common::PROGRAM_NAME => u32::try_from(*id).ok(),
            _ => None,
        };
        checks.push(interface_check(iface, index, xdp, &existing));
        if let Some(prediction) = prediction {
            checks.push(capture_path_check(iface, capture, &prediction));
        }
        if let Some(id) = running {
            checks.push(tls_on_port_check(iface, bpf::program_counters(id)));
        }
    }
    checks
}

/// Which path `run --capture MODE` would take on `iface`, and why.
pub fn capture_path_check(iface: &str, mode: CaptureMode, prediction: &Prediction) -> Check {
    let name = format!("capture {iface}");
    match prediction {
        Prediction::Xdp { why: None } => Check::ok(name, "run would capture with XDP"),
        Prediction::Xdp { why: Some(why) } => {
            Check::ok(name, format!("run would capture with XDP: {why}"))
        }
        Prediction::AfPacket {
            fallback: None,
            cheaper: None,
        } => Check::ok(name, "run would capture with AF_PACKET"),
        Prediction::AfPacket {
            fallback: None,
            cheaper: Some(why),
        } => Check::ok(
            name,
            format!("run would capture with AF_PACKET, the cheapest path here: {why}"),
        ),
        Prediction::AfPacket {
            fallback: Some(why),
            ..
        } => Check::warn(
            name,
            format!("run would capture with AF_PACKET: {why}"),
            "nothing to do unless you want XDP's lower cost per packet: fix the XDP rows above",
        ),
        Prediction::Neither { reason } => Check::fail(
            name,
            format!("run --capture {mode} cannot capture here: {reason}"),
            FIX_PERMISSIONS,
        ),
    }
}

/// The kernel release, for the record: what the agent can do is probed by the rows below,
/// not read off this number.
pub fn kernel_check(found: Result<KernelVersion, String>) -> Check {
    match found {
        Ok(version) => Check::ok(
            "kernel",
            format!("Linux {version}; what it can do is probed below; {SUPPORT_MATRIX}"),
        ),
        Err(err) => Check::warn(
            "kernel",
            format!("cannot read the kernel version: {err}"),
            "check `uname -r`; the rows below probe what this kernel can do",
        ),
    }
}

/// The kernel describes its own types (BTF).
pub fn btf_check(present: bool) -> Check {
    if present {
        Check::ok("btf", format!("{BTF_PATH} present"))
    } else {
        // The program uses no CO-RE relocations, so it loads without kernel BTF; what is lost
        // is type information in verifier messages and bpftool output.
        Check::warn(
            "btf",
            format!("{BTF_PATH} missing: the program loads, but verifier messages lose type names"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

/// The eBPF object is in the binary.
pub fn object_check(len: usize) -> Check {
    if len > 0 {
        Check::ok("ebpf object", format!("embedded ({len} bytes)"))
    } else {
        Check::fail(
            "ebpf object",
            "this binary was built without the eBPF program",
            "run `cargo xtask setup`, then rebuild (SIPNOTIFY_REQUIRE_EBPF=1 makes a missing toolchain an error)",
        )
    }
}

/// The effective capability set from `/proc/self/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let hex = line.strip_prefix("CapEff:")?.trim();
        u64::from_str_radix(hex, 16).ok()
    })
}

/// The line `run` logs at start: which capture paths the capabilities allow.
pub fn capabilities_check(held: Option<caps::Capabilities>) -> Check {
    const NAME: &str = "capabilities";
    let Some(held) = held else {
        return Check::warn(NAME, "cannot read /proc/self/status", FIX_PERMISSIONS);
    };
    let line = held.summary();
    match (
        held.can_load_xdp() && held.can_attach_xdp(),
        held.can_open_af_packet(),
    ) {
        (true, _) => Check::ok(NAME, line),
        (false, true) => Check::warn(
            NAME,
            line,
            "for XDP, grant CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN where the kernel or systemd predates CAP_BPF: the packages' drop-in does that)",
        ),
        (false, false) => Check::fail(NAME, line, FIX_PERMISSIONS),
    }
}

/// The process may load and attach BPF programs.
pub fn permissions_check(euid: u32, cap_eff: Option<u64>) -> Check {
    let Some(caps) = cap_eff else {
        return Check::warn(
            "permissions",
            format!("euid {euid}; cannot read the capabilities from /proc/self/status"),
            FIX_PERMISSIONS,
        );
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    // Since Linux 5.8 CAP_SYS_ADMIN still implies what CAP_BPF and CAP_PERFMON grant.
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !(has(CAP_PERFMON) || admin) {
        missing.push("CAP_PERFMON");
    }
    let who = if euid == 0 {
        "root".to_owned()
    } else {
        format!("euid {euid}")
    };
    if missing.is_empty() {
        Check::ok(
            "permissions",
            format!("{who} with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        )
    } else {
        Check::fail(
            "permissions",
            format!("{who} without {}", missing.join(", ")),
            FIX_PERMISSIONS,
        )
    }
}

/// RLIMIT_MEMLOCK, current and maximum, or `None` when it cannot be read.
fn memlock_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur, limit.rlim_max))
}

fn show_limit(bytes: u64) -> String {
    if bytes == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// Locked-memory limit, which only matters before Linux 5.11.
pub fn memlock_check(kernel: Option<KernelVersion>, limit: Option<(u64, u64)>) -> Check {
    let shown = limit.map_or_else(|| "unknown".to_owned(), |(cur, _)| show_limit(cur));
    if kernel.is_some_and(|k| k >= MEMCG_ACCOUNTING) {
        return Check::ok(
            "memlock",
            format!(
                "{shown}; irrelevant on Linux 5.11 and later (BPF memory is charged to the memory cgroup)"
            ),
        );
    }
    match limit {
        Some((cur, max)) if cur >= MEMLOCK_NEEDED || max >= MEMLOCK_NEEDED => Check::ok(
            "memlock",
            format!(
                "{shown} (the agent raises it to {} at start)",
                show_limit(max)
            ),
        ),
        _ => Check::warn(
            "memlock",
            format!("{shown}: too low for the default 8 MiB ring buffer on this kernel"),
            "raise it: `ulimit -l unlimited`, or LimitMEMLOCK=infinity in the systemd unit",
        ),
    }
}

/// An aya feature probe.
pub fn probe_check(name: &str, what: &str, result: Result<bool, String>) -> Check {
    match result {
        Ok(true) => Check::ok(name, format!("{what} supported")),
        Ok(false) => Check::fail(
            name,
            format!("{what} not supported by this kernel"),
            FIX_KERNEL,
        ),
        Err(err) => Check::warn(
            name,
            format!("cannot probe for {what}: {err}"),
            "run doctor with the agent's privileges (root or CAP_BPF) to probe",
        ),
    }
}

/// Which copy path the kernel's helpers allow (either one captures).
pub fn copy_path_check(load_bytes: Result<bool, String>) -> Check {
    const NAME: &str = "bpf_xdp_load_bytes";
    match load_bytes {
        Ok(true) => Check::ok(
            NAME,
            "supported: the multi-buffer program copies with bpf_xdp_load_bytes",
        ),
        Ok(false) => Check::ok(
            NAME,
            "not in this kernel: the single-buffer program copies from the linear area",
        ),
        Err(err) => Check::warn(
            NAME,
            format!("cannot probe for bpf_xdp_load_bytes: {err}"),
            "run doctor with the agent's privileges (root or CAP_BPF) to probe",
        ),
    }
}

/// Loading the embedded program, which runs the verifier on this kernel.
pub fn program_load_check(result: Result<CopyPath, &LoadError>) -> Check {
    const NAME: &str = "program load";
    match result {
        Ok(copy) => Check::ok(
            NAME,
            format!(
                "the verifier accepts {} ({copy}) with its ring buffer (loaded, not attached)",
                copy.program_name()
            ),
        ),
        Err(err) => {
            let fix = match err {
                LoadError::NoObject => "run `cargo xtask setup`, then rebuild".to_owned(),
                LoadError::PermissionDenied => FIX_PERMISSIONS.to_owned(),
                LoadError::RingBufUnsupported { .. } => FIX_KERNEL.to_owned(),
                LoadError::Rejected { .. } => {
                    "report the verifier's lines above with `uname -r` to the sipnotify developers"
                        .to_owned()
                }
                _ => "run with SIPNOTIFY_LOG=debug for details and report them with `uname -r`"
                    .to_owned(),
            };
            Check::fail(NAME, err.to_string(), fix)
        }
    }
}

/// An XDP program found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    /// The program id (`bpftool prog show id N`).
    pub id: Option<u64>,
    /// Its name, when `ip` reports it.
    pub name: Option<String>,
    /// native, generic, offload or multi.
    pub mode: &'static str,
}

/// Reads the `xdp` object of `ip -j link show dev IFACE` output.
pub fn parse_xdp(json: &str) -> Result<Option<XdpProgram>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("unexpected `ip -j link` output: {e}"))?;
    let Some(xdp) = value.get(0).and_then(|link| link.get("xdp")) else {
        return Ok(None);
    };
    let mode = match xdp.get("mode").and_then(serde_json::Value::as_u64) {
        Some(1) => "native",
        Some(2) => "generic",
        Some(3) => "offload",
        Some(4) => "multi",
        _ => "unknown",
    };
    // One program: `prog` directly; several (one per mode): under `attached`.
    let prog = xdp.get("prog").or_else(|| {
        xdp.get("attached")
            .and_then(|a| a.get(0))
            .and_then(|a| a.get("prog"))
    });
    Ok(Some(XdpProgram {
        id: prog
            .and_then(|p| p.get("id"))
            .and_then(serde_json::Value::as_u64),
        name: prog
            .and_then(|p| p.get("name"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        mode,
    }))
}

/// Asks `ip` whether an XDP program is attached to `iface`.
fn attached_xdp(iface: &str) -> Result<Option<XdpProgram>, String> {
    let output = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .map_err(|e| format!("cannot run `ip`: {}", e.to_string().to_lowercase()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "`ip link show dev {iface}` failed: {}",
            stderr.trim()
        ));
    }
    parse_xdp(&String::from_utf8_lossy(&output.stdout))
}

fn existing_interfaces() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An interface exists and no other XDP program holds it.
pub fn interface_check(
    iface: &str,
    index: Result<u32, LoadError>,
    xdp: Option<Result<Option<XdpProgram>, String>>,
    existing: &[String],
) -> Check {
    let name = format!("iface {iface}");
    let index = match index {
        Ok(index) => index,
        Err(err) => {
            let fix = if existing.is_empty() {
                "pick an existing interface (see `ip link`)".to_owned()
            } else {
                format!(
                    "pick an existing interface: {} (see `ip link`)",
                    existing.join(", ")
                )
            };
            return Check::fail(name, err.to_string(), fix);
        }
    };
    match xdp {
        None | Some(Ok(None)) => Check::ok(name, format!("index {index}, no XDP program attached")),
        Some(Ok(Some(prog))) => {
            let id = prog.id.map_or_else(String::new, |id| format!(" id {id}"));
            if prog.name.as_deref() == Some(sipnotify_common::PROGRAM_NAME) {
                Check::warn(
                    name,
                    format!(
                        "sipnotify's program{id} is attached ({} mode): an agent is running on it",
                        prog.mode
                    ),
                    "nothing to do if that agent is meant to run; stop it before starting another",
                )
            } else {
                let named = prog.name.map_or_else(String::new, |n| format!(" `{n}`"));
                Check::fail(
                    name,
                    format!(
                        "another XDP program{named}{id} is attached ({} mode)",
                        prog.mode
                    ),
                    format!(
                        "remove it if nothing needs it (`ip link set dev {iface} xdp off`), or pick another interface"
                    ),
                )
            }
        }
        Some(Err(err)) => Check::warn(
            name,
            format!("index {index}; cannot tell whether an XDP program is attached: {err}"),
            "install iproute2 (`ip`), or check with `bpftool net show`",
        ),
    }
}

/// Whether the running agent's program on `iface` saw TLS on the watched ports.
pub fn tls_on_port_check(iface: &str, counters: Result<CounterSet, String>) -> Check {
    let name = format!("tls on {iface}");
    match counters {
        Ok(counters) => {
            let tls = counters.get(Counter::TlsRecord) + counters.get(Counter::DtlsRecord);
            if tls == 0 {
                Check::ok(
                    name,
                    "nothing on the watched ports looks like TLS or DTLS since the agent started",
                )
            } else {
                Check::warn(
                    name,
                    format!(
                        "{tls} packets to a watched port started like a TLS or DTLS record since \
                         the agent started: the port carries TLS; sipnotify can only read \
                         plaintext SIP"
                    ),
                    "configure the SIP Server's trunk to this host as UDP or TCP",
                )
            }
        }
        Err(reason) => Check::warn(
            name,
            format!("cannot read the running agent's counters: {reason}"),
            "run doctor as root (or with CAP_BPF and CAP_SYS_ADMIN) to read them",
        ),
    }
}

/// The bridge answers, and how its certificate verifies.
async fn bridge_checks(
    bridge: &Result<BridgeSettings, String>,
    settings: &DoctorSettings,
) -> Vec<Check> {
    let bridge = match bridge {
        Ok(bridge) => bridge,
        Err(reason) => {
            return vec![Check::fail(
                "bridge",
                reason.clone(),
                "correct the flag named in the message",
            )];
        }
    };
    let probe = probe_bridge(bridge, settings.request_timeout).await;
    let mut checks = classify_bridge(
        bridge.url.as_str(),
        settings.insecure,
        settings.request_timeout,
        &probe,
    );
    // A bridge that requires a certificate this agent lacks fails the handshake: the row
    // must show then above all, so it is not limited to answered probes.
    if bridge.url.scheme() == "https" && (probe.reply.is_ok() || probe.asked_for_client_certificate)
    {
        checks.push(client_certificate_check(
            probe.asked_for_client_certificate,
            bridge.client_identity.is_some(),
            probe.reply.is_ok(),
        ));
    }
    checks
}

/// Whether the bridge asked for a client certificate (mutual TLS), whether one is set, and
/// whether the bridge answered the probe (a bridge that asked and did not answer an agent
/// without a certificate requires one).
pub fn client_certificate_check(asked: bool, configured: bool, answered: bool) -> Check {
    const NAME: &str = "bridge client certificate";
    match (asked, configured) {
        (true, false) if !answered => Check::fail(
            NAME,
            "the bridge requires a client certificate and none is configured",
            "pass --client-cert PEM --client-key PEM (client_cert, client_key in the config file)",
        ),
        (true, true) => Check::ok(
            NAME,
            "the bridge asked for a client certificate; --client-cert answers it",
        ),
        (true, false) => Check::warn(
            NAME,
            "the bridge asked for a client certificate and none is configured",
            "if the bridge requires one, pass --client-cert PEM --client-key PEM (client_cert, client_key in the config file)",
        ),
        (false, true) => Check::warn(
            NAME,
            "the bridge did not ask for a client certificate: --client-cert is not used",
            "drop --client-cert/--client-key, or make the bridge require client certificates",
        ),
        (false, false) => Check::ok(NAME, "the bridge does not ask for a client certificate"),
    }
}

/// What one HEAD request to the bridge found.
#[derive(Debug)]
pub struct BridgeProbe {
    /// The reply's status, or why there was none.
    pub reply: Result<StatusCode, ProbeFailure>,
    /// The certificate verdict, when a TLS handshake got that far.
    pub verification: Option<tls::Verdict>,
    /// How long the request took.
    pub elapsed: Duration,
    /// The bridge sent a TLS certificate request (it wants mutual TLS).
    pub asked_for_client_certificate: bool,
}

/// Why the bridge did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Nothing listens on the port.
    Refused,
    /// No answer in time.
    Timeout,
    /// The host name does not resolve.
    Dns(String),
    /// The client could not be set up.
    Client(String),
    /// Anything else (TLS handshake, reset, …), as an error chain.
    Other(String),
}

async fn probe_bridge(bridge: &BridgeSettings, timeout: Duration) -> BridgeProbe {
    let (url, settings) = (&bridge.url, &bridge.tls);
    let started = Instant::now();
    let provider = tls::provider();
    let certificate =
        tls::ClientCertificate::new(bridge.client_identity.as_ref(), &provider).map(Arc::new);
    // With --insecure the verdict is still worth knowing: verify against the system roots.
    let (extra_roots, pins) = match settings {
        TlsSettings::Verify { extra_roots, pins } => (extra_roots.as_slice(), pins.as_slice()),
        TlsSettings::Insecure => (&[][..], &[][..]),
    };
    // The sink's verifier, recording: the handshake completes either way, so the probe
    // learns whether the bridge answers as well as whether its certificate would verify.
    let verifier = tls::Verifier::verifying(&provider, extra_roots, pins)
        .map(|verifier| Arc::new(verifier.recording()));
    let client = verifier
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|verifier| {
            let certificate = certificate.as_ref().map_err(ToString::to_string)?;
            let mut config =
                tls::config_with_verifier(provider, verifier.clone(), certificate.clone())
                    .map_err(|e| e.to_string())?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let user_agent = format!("{} doctor", http::USER_AGENT);
            http::client_builder(config, timeout, &user_agent)
                .build()
                .map_err(|e| error_chain(&e))
        });
    let reply = match client {
        Err(reason) => Err(ProbeFailure::Client(reason)),
        Ok(client) => match client.head(url.clone()).send().await {
            Ok(response) => Ok(response.status()),
            Err(err) => Err(classify_error(&err)),
        },
    };
    BridgeProbe {
        reply,
        verification: verifier.ok().and_then(|verifier| verifier.take_verdict()),
        elapsed: started.elapsed(),
        asked_for_client_certificate: certificate.is_ok_and(|c| c.asked()),
    }
}

fn classify_error(err: &reqwest::Error) -> ProbeFailure {
    let chain = error_chain(err);
    if err.is_timeout() {
        return ProbeFailure::Timeout;
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return ProbeFailure::Refused,
                io::ErrorKind::TimedOut => return ProbeFailure::Timeout,
                _ => {}
            }
        }
        current = e.source();
    }
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        return ProbeFailure::Dns(chain);
    }
    ProbeFailure::Other(chain)
}

/// Turns a probe into the `bridge` and `bridge tls` rows.
pub fn classify_bridge(
    url: &str,
    insecure: bool,
    timeout: Duration,
    probe: &BridgeProbe,
) -> Vec<Check> {
    const START_FIX: &str = "start the bridge, or pass --bridge-url with its address (an agent without a bridge runs with --no-bridge --stdout)";
    let mut checks = Vec::new();
    let answer = match &probe.reply {
        Ok(status) if status.is_server_error() => Check::warn(
            "bridge",
            format!("{url} answers, but with HTTP {status}"),
            "check the bridge's log: it may be failing or starting up",
        ),
        Ok(status) => Check::ok(
            "bridge",
            format!(
                "{url} answers (HTTP {} to a HEAD probe in {} ms)",
                status.as_u16(),
                probe.elapsed.as_millis()
            ),
        ),
        Err(ProbeFailure::Refused) => {
            Check::fail("bridge", format!("{url}: connection refused"), START_FIX)
        }
        Err(ProbeFailure::Timeout) => Check::fail(
            "bridge",
            format!(
                "{url}: no answer within {}",
                humantime::format_duration(timeout)
            ),
            "check that the bridge runs and that no firewall drops the connection",
        ),
        Err(ProbeFailure::Dns(reason)) => Check::fail(
            "bridge",
            format!("{url}: cannot resolve the host ({reason})"),
            "check the host name in --bridge-url, or use the bridge's IP address",
        ),
        Err(ProbeFailure::Client(reason)) => Check::fail(
            "bridge",
            format!("cannot set up a tls client: {reason}"),
            "report this with `sipnotify-agent --version`",
        ),
        Err(ProbeFailure::Other(reason)) => {
            Check::fail("bridge", format!("{url}: {reason}"), START_FIX)
        }
    };
    checks.push(answer);
    if let Some(verdict) = &probe.verification {
        checks.push(tls_check(verdict, insecure));
    } else if url.starts_with("http://") && probe.reply.is_ok() {
        checks.push(Check::ok(
            "bridge tls",
            "plain http: no certificate to verify",
        ));
    }
    checks
}

/// The certificate verdict as a row: which kind of trust applied, or why there is none.
pub fn tls_check(verdict: &tls::Verdict, insecure: bool) -> Check {
    const NAME: &str = "bridge tls";
    let fingerprint = &verdict.fingerprint;
    let trusted = match &verdict.result {
        Ok(tls::TrustedBy::Chain) => {
            "certificate verified: signed by a trusted CA (from --ca-file or the system)"
        }
        Ok(tls::TrustedBy::OwnCertificate) => {
            "certificate verified: it is the bridge's own certificate from --ca-file, trusted as it is (self-signed; name and dates checked)"
        }
        Ok(tls::TrustedBy::Pin) => {
            "certificate verified: its fingerprint matches --pin-sha256 (name and dates checked)"
        }
        Ok(tls::TrustedBy::Unchecked) => "certificate not checked",
        Err(err) => {
            let remedy = match err {
                rustls::Error::InvalidCertificate(cert) => tls::remedy(cert),
                _ => {
                    "pass --ca-file PEM with the bridge's own certificate or the CA certificate that signed it, or --insecure to skip verification"
                }
            };
            return if insecure {
                Check::warn(
                    NAME,
                    format!(
                        "not verified (--insecure): it would fail verification: {} (sha-256 {fingerprint})",
                        describe_tls(err)
                    ),
                    format!("instead of --insecure: {remedy}"),
                )
            } else {
                Check::fail(
                    NAME,
                    format!("untrusted: {} (sha-256 {fingerprint})", describe_tls(err)),
                    remedy,
                )
            };
        }
    };
    let suffix = if insecure {
        "; --insecure is not needed"
    } else {
        ""
    };
    Check::ok(NAME, format!("{trusted}{suffix}"))
}

/// A certificate problem in words (the sink's wording, for a certificate error).
pub fn describe_tls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => tls::describe(cert),
        other => other.to_string(),
    }
}

/// The report: a table of check, status and detail, a `fix:` line under every WARN and FAIL,
/// and a count.
pub fn render(checks: &[Check]) -> String {
    let name_width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .chain(["CHECK".len()])
        .max()
        .unwrap_or(5);
    const STATUS_WIDTH: usize = 6;
    let indent = " ".repeat(name_width + 2 + STATUS_WIDTH + 2);
    let mut out = format!(
        "{:<name_width$}  {:<STATUS_WIDTH$}  DETAIL\n",
        "CHECK", "STATUS"
    );
    for check in checks {
        out.push_str(&format!(
            "{:<name_width$}  {:<STATUS_WIDTH$}  {}\n",
            check.name,
            check.status.to_string(),
            check.detail
        ));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("{indent}fix: {fix}\n"));
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let warnings = count(Status::Warn);
    out.push_str(&format!(
        "\n{} checks: {} ok, {} {}, {} failed\n",
        checks.len(),
        count(Status::Ok),
        warnings,
        if warnings == 1 { "warning" } else { "warnings" },
        count(Status::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use rustls::CertificateError;

    use super::*;
    use crate::sink::TrustedBy;

    const STATUS: &str = "Name:\tsipnotify-agent\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";

    #[test]
    fn capabilities_are_read_from_proc_status() {
        assert_eq!(parse_cap_eff(STATUS), Some(0x1fffeffffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn permissions_need_bpf_net_admin_and_perfmon() {
        let all = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        assert_eq!(permissions_check(0, Some(all)).status, Status::Ok);
        assert_eq!(permissions_check(1000, Some(all)).status, Status::Ok);
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for CAP_NET_ADMIN.
        let admin = 1 << CAP_SYS_ADMIN;
        let check = permissions_check(0, Some(admin));
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.detail, "root without CAP_NET_ADMIN");
        let none = permissions_check(1000, Some(0));
        assert_eq!(
            none.detail,
            "euid 1000 without CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"
        );
        assert!(none.fix.as_deref().unwrap_or_default().contains("setcap"));
        assert_eq!(permissions_check(0, None).status, Status::Warn);
    }

    #[test]
    fn kernel_version_is_reported_not_gated() {
        let old = kernel_check(Ok(KernelVersion::new(5, 10, 0)));
        assert_eq!(old.status, Status::Ok);
        assert!(
            old.detail.starts_with(
                "Linux 5.10.0; what it can do is probed below; the kernel matrix covers"
            ),
            "{}",
            old.detail
        );
        assert_eq!(kernel_check(Err("x".into())).status, Status::Warn);
    }

    #[test]
    fn memlock_only_matters_before_5_11() {
        let new = Some(KernelVersion::new(6, 1, 0));
        let old = Some(KernelVersion::new(5, 10, 0));
        assert_eq!(memlock_check(new, Some((65536, 65536))).status, Status::Ok);
        assert_eq!(
            memlock_check(old, Some((65536, 65536))).status,
            Status::Warn
        );
        let raisable = memlock_check(old, Some((65536, libc::RLIM_INFINITY)));
        assert_eq!(raisable.status, Status::Ok);
        assert!(raisable.detail.contains("unlimited"), "{}", raisable.detail);
    }

    #[test]
    fn missing_pieces_fail_with_a_fix() {
        assert_eq!(object_check(1000).status, Status::Ok);
        let missing = object_check(0);
        assert_eq!(missing.status, Status::Fail);
        assert!(
            missing
                .fix
                .unwrap_or_default()
                .contains("cargo xtask setup")
        );
        assert_eq!(btf_check(true).status, Status::Ok);
        assert_eq!(btf_check(false).status, Status::Warn);
        assert_eq!(probe_check("x", "X", Ok(true)).status, Status::Ok);
        assert_eq!(probe_check("x", "X", Ok(false)).status, Status::Fail);
        assert_eq!(
            probe_check("x", "X", Err("EPERM".into())).status,
            Status::Warn
        );
        let load = program_load_check(Err(&LoadError::PermissionDenied));
        assert_eq!(load.status, Status::Fail);
        assert_eq!(load.fix.as_deref(), Some(FIX_PERMISSIONS));
        assert_eq!(copy_path_check(Ok(false)).status, Status::Ok);
        assert_eq!(copy_path_check(Ok(true)).status, Status::Ok);
        let rejected = program_load_check(Err(&LoadError::Rejected {
            kernel: "6.1.0-9-amd64".into(),
            program: "sipnotify_xdp",
            copy: CopyPath::LoadBytes,
            log_tail: vec!["R3 min value is outside of the allowed memory range".into()],
        }));
        assert_eq!(rejected.status, Status::Fail);
        assert!(
            rejected.detail.starts_with("kernel 6.1.0-9-amd64 refused"),
            "{}",
            rejected.detail
        );
        assert!(
            rejected
                .detail
                .ends_with("    R3 min value is outside of the allowed memory range")
        );
    }

    #[test]
    fn the_capture_row_names_the_path_and_the_reason() {
        let xdp = capture_path_check("eth0", CaptureMode::Auto, &Prediction::Xdp { why: None });
        assert_eq!(
            (xdp.name.as_str(), xdp.status),
            ("capture eth0", Status::Ok)
        );
        assert!(xdp.detail.contains("XDP"), "{}", xdp.detail);
        let fallback = capture_path_check(
            "eth0",
            CaptureMode::Auto,
            &Prediction::AfPacket {
                fallback: Some("the interface already has another XDP program attached".into()),
                cheaper: None,
            },
        );
        assert_eq!(fallback.status, Status::Warn);
        let cheaper = capture_path_check(
            "veth1",
            CaptureMode::Auto,
            &Prediction::AfPacket {
                fallback: None,
                cheaper: Some(source::AutoPlan::AfPacket.why()),
            },
        );
        assert_eq!(cheaper.status, Status::Ok);
        assert!(
            cheaper.detail.contains("AF_PACKET, the cheapest path here")
                && cheaper.detail.contains("+341 ns"),
            "{}",
            cheaper.detail
        );
        assert!(
            fallback
                .detail
                .contains("AF_PACKET: the interface already has another XDP")
        );
        let neither = capture_path_check(
            "eth0",
            CaptureMode::Xdp,
            &Prediction::Neither {
                reason: "permission denied".into(),
            },
        );
        assert_eq!(neither.status, Status::Fail);
    }

    #[test]
    fn xdp_state_is_read_from_ip_json() {
        assert_eq!(parse_xdp(r#"[{"ifindex":1,"ifname":"lo"}]"#), Ok(None));
        let one = r#"[{"ifname":"veth0","xdp":{"mode":2,"prog":{"id":42,"name":"sipnotify_xdp","tag":"ab","jited":1}}}]"#;
        assert_eq!(
            parse_xdp(one),
            Ok(Some(XdpProgram {
                id: Some(42),
                name: Some("sipnotify_xdp".into()),
                mode: "generic"
            }))
        );
        let multi = r#"[{"xdp":{"mode":4,"attached":[{"mode":1,"prog":{"id":7}}]}}]"#;
        assert_eq!(
            parse_xdp(multi),
            Ok(Some(XdpProgram {
                id: Some(7),
                name: None,
                mode: "multi"
            }))
        );
        assert!(parse_xdp("not json").is_err());
    }

    #[test]
    fn interfaces_fail_when_missing_or_taken() {
        let existing = vec!["eth0".to_owned(), "lo".to_owned()];
        let missing = interface_check(
            "nope0",
            Err(LoadError::NoSuchInterface("nope0".into())),
            None,
            &existing,
        );
        assert_eq!(missing.status, Status::Fail);
        assert_eq!(missing.detail, "interface `nope0` does not exist");
        assert_eq!(
            missing.fix.as_deref(),
            Some("pick an existing interface: eth0, lo (see `ip link`)")
        );
        assert_eq!(
            interface_check("lo", Ok(1), Some(Ok(None)), &existing).status,
            Status::Ok
        );
        let other = XdpProgram {
            id: Some(9),
            name: Some("xdp_fw".into()),
            mode: "native",
        };
        let taken = interface_check("eth0", Ok(2), Some(Ok(Some(other))), &existing);
        assert_eq!(taken.status, Status::Fail);
        assert!(taken.detail.contains("`xdp_fw` id 9"), "{}", taken.detail);
        assert!(
            taken
                .fix
                .unwrap_or_default()
                .contains("ip link set dev eth0 xdp off")
        );
        let ours = XdpProgram {
            id: Some(3),
            name: Some(sipnotify_common::PROGRAM_NAME.into()),
            mode: "generic",
        };
        assert_eq!(
            interface_check("eth0", Ok(2), Some(Ok(Some(ours))), &existing).status,
            Status::Warn
        );
        assert_eq!(
            interface_check("eth0", Ok(2), Some(Err("no ip".into())), &existing).status,
            Status::Warn
        );
    }

    fn probe(
        reply: Result<StatusCode, ProbeFailure>,
        verification: Option<Result<TrustedBy, rustls::Error>>,
    ) -> BridgeProbe {
        BridgeProbe {
            reply,
            verification: verification.map(|result| tls::Verdict {
                result,
                fingerprint: FINGERPRINT.parse().unwrap(),
            }),
            elapsed: Duration::from_millis(3),
            asked_for_client_certificate: false,
        }
    }

    const FINGERPRINT: &str = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

    #[test]
    fn bridge_answers_and_certificates_are_classified() {
        let url = "https://127.0.0.1:8000/genesys-call-notify";
        let t = Duration::from_secs(5);
        let refused = classify_bridge(url, false, t, &probe(Err(ProbeFailure::Refused), None));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].status, Status::Fail);
        assert!(
            refused[0].detail.ends_with("connection refused"),
            "{}",
            refused[0].detail
        );
        assert!(refused[0].fix.is_some());

        let untrusted = Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let rows = classify_bridge(
            url,
            false,
            t,
            &probe(Ok(StatusCode::NOT_FOUND), Some(untrusted.clone())),
        );
        assert_eq!(rows[0].status, Status::Ok);
        assert!(rows[0].detail.contains("HTTP 404"), "{}", rows[0].detail);
        assert_eq!(rows[1].status, Status::Fail);
        assert_eq!(
            rows[1].detail,
            format!(
                "untrusted: signed by an unknown certificate authority (sha-256 {FINGERPRINT})"
            )
        );
        let fix = rows[1].fix.clone().unwrap_or_default();
        assert!(
            fix.contains("--ca-file") && fix.contains("--insecure"),
            "{fix}"
        );

        let insecure = classify_bridge(
            url,
            true,
            t,
            &probe(Ok(StatusCode::NOT_FOUND), Some(untrusted)),
        );
        assert_eq!(insecure[1].status, Status::Warn);
        let chain = Some(Ok(TrustedBy::Chain));
        let verified = classify_bridge(url, false, t, &probe(Ok(StatusCode::OK), chain.clone()));
        assert_eq!(verified[1].status, Status::Ok);
        assert!(
            verified[1].detail.contains("signed by a trusted CA"),
            "{}",
            verified[1].detail
        );
        // Each kind of trust is named.
        let own = Some(Ok(TrustedBy::OwnCertificate));
        let own = classify_bridge(url, false, t, &probe(Ok(StatusCode::OK), own));
        assert!(
            own[1]
                .detail
                .contains("the bridge's own certificate from --ca-file"),
            "{}",
            own[1].detail
        );
        let pinned = Some(Ok(TrustedBy::Pin));
        let pinned = classify_bridge(url, false, t, &probe(Ok(StatusCode::OK), pinned));
        assert!(
            pinned[1].detail.contains("--pin-sha256"),
            "{}",
            pinned[1].detail
        );

        let down = classify_bridge(
            url,
            false,
            t,
            &probe(Ok(StatusCode::SERVICE_UNAVAILABLE), chain),
        );
        assert_eq!(down[0].status, Status::Warn);
        let slow = classify_bridge(url, false, t, &probe(Err(ProbeFailure::Timeout), None));
        assert_eq!(slow[0].detail, format!("{url}: no answer within 5s"));
        let plain = classify_bridge(
            "http://127.0.0.1:8000/x",
            false,
            t,
            &probe(Ok(StatusCode::OK), None),
        );
        assert_eq!(plain[1].status, Status::Ok);
    }

    #[test]
    fn certificate_problems_read_as_words() {
        let err = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            describe_tls(&err(CertificateError::BadEncoding)),
            "bad encoding"
        );
        assert_eq!(describe_tls(&err(CertificateError::Expired)), "expired");
    }

    #[test]
    fn the_report_is_a_table_with_fixes_under_failures() {
        let checks = vec![
            Check::ok("kernel", "Linux 6.18"),
            Check::fail(
                "iface nope0",
                "interface `nope0` does not exist",
                "pick another",
            ),
        ];
        let text = render(&checks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "CHECK        STATUS  DETAIL");
        assert_eq!(lines[1], "kernel       OK      Linux 6.18");
        assert_eq!(
            lines[2],
            "iface nope0  FAIL    interface `nope0` does not exist"
        );
        assert_eq!(lines[3], format!("{}fix: pick another", " ".repeat(21)));
        assert_eq!(lines[5], "2 checks: 1 ok, 0 warnings, 1 failed");
    }

    #[test]
    fn the_client_certificate_row_says_whether_the_bridge_asked() {
        assert_eq!(
            client_certificate_check(true, true, true).status,
            Status::Ok
        );
        let missing = client_certificate_check(true, false, true);
        assert_eq!(missing.status, Status::Warn);
        assert!(missing.fix.unwrap_or_default().contains("--client-cert"));
        let required = client_certificate_check(true, false, false);
        assert_eq!(required.status, Status::Fail);
        assert!(required.fix.unwrap_or_default().contains("--client-cert"));
        assert_eq!(
            client_certificate_check(false, true, true).status,
            Status::Warn
        );
        assert_eq!(
            client_certificate_check(false, false, true).status,
            Status::Ok
        );
    }

    #[test]
    fn the_senders_row_warns_without_sip_source() {
        assert_eq!(senders_check(&SourceFilter::default()).status, Status::Warn);
        let listed = SourceFilter::new(vec!["192.0.2.10".parse().unwrap()]);
        let row = senders_check(&listed);
        assert_eq!(row.status, Status::Ok);
        assert!(row.detail.contains("192.0.2.10/32"), "{}", row.detail);
    }

    #[test]
    fn the_hep_row_binds_or_reads_the_running_agent() {
        let addr: std::net::SocketAddr = "127.0.0.1:9060".parse().unwrap();
        assert_eq!(hep_listen_check(addr, Ok(()), None).status, Status::Ok);
        let in_use = || Err(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        assert_eq!(hep_listen_check(addr, in_use(), None).status, Status::Fail);
        let running = "sipnotify_hep_datagrams_total 12\n\
            sipnotify_hep_packets_total{outcome=\"sip\"} 10\n\
            sipnotify_hep_packets_total{outcome=\"not_sip\"} 2\n\
            sipnotify_hep_packets_total{outcome=\"auth_failed\"} 0\n";
        let check = hep_listen_check(addr, in_use(), Some(running));
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert_eq!(
            check.detail,
            "a running agent receives HEP here: 12 datagrams read (sip 10, not_sip 2)"
        );
        let refused = running.replace("auth_failed\"} 0", "auth_failed\"} 3");
        assert_eq!(
            hep_listen_check(addr, in_use(), Some(&refused)).status,
            Status::Warn
        );
    }
}
