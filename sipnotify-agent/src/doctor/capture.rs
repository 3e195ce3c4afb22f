//! The rows about capturing on this host: the kernel (release, BTF, feature probes, the
//! embedded program through the verifier), the process's permissions, capabilities and
//! locked-memory limit, each `--iface` (exists, no other XDP program, which path `run` would
//! take, TLS seen by a running agent) and the allowed senders.
//!
//! Kernel features are proven rather than inferred from the version where possible: aya's
//! probes load tiny programs and maps, and the embedded program itself is loaded (not
//! attached) so the verifier's verdict on this kernel is part of the report. Interfaces are
//! looked up and asked (through `ip -j link`) whether an XDP program already holds them.

use std::{fs, process::Command, time::Duration};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};
use sipnotify_common::{Counter, CounterSet};

use super::Check;
use crate::{
    bpf::{self, AttachMode, CopyPath, LoadError, ProgramSettings},
    caps,
    capture::{
        af_packet::{AfPacketSettings, PacketSocket},
        source::{self, CaptureMode, Prediction},
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

/// Whether NOTIFYs are accepted from the SIP Servers only.
pub(super) fn senders_check(senders: &SourceFilter) -> Check {
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

/// Every row about this host and the interfaces, in report order. Blocking (syscalls, /proc,
/// `ip`, the verifier).
pub(super) fn system_checks(ifaces: &[String], capture: CaptureMode) -> Vec<Check> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

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

    #[test]
    fn the_senders_row_warns_without_sip_source() {
        assert_eq!(senders_check(&SourceFilter::default()).status, Status::Warn);
        let listed = SourceFilter::new(vec!["192.0.2.10".parse().unwrap()]);
        let row = senders_check(&listed);
        assert_eq!(row.status, Status::Ok);
        assert!(row.detail.contains("192.0.2.10/32"), "{}", row.detail);
    }
}
