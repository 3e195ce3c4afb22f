//! Loads the embedded XDP program, configures it and attaches it to one interface.
//!
//! Each interface gets its own program instance with its own ring buffer and counters: a busy
//! interface cannot starve another's ring, and the counters are per interface for free.
//! The program is attached through a `bpf_link`, so it is detached when the agent exits for
//! any reason, a crash included.
//!
//! What the kernel can do is probed, never read off its version number: the BPF ring buffer
//! (5.8) must exist, and `bpf_xdp_load_bytes` (5.18, or a backport) picks the multi-buffer
//! program; without it the single-buffer program with the linear copy is loaded
//! ([`CopyPath`]). A refusal is reported as what it is: the verifier's own last lines and the
//! kernel release, or a missing permission.

use std::{error::Error as StdError, ffi::CString, fmt, io, sync::Arc};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        MapData, MapType, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, ProgramType, Xdp, XdpMode},
    sys::{BpfHelper, is_helper_supported, is_map_supported},
    util::KernelVersion,
};
use sipnotify_common::{
    CONFIG_GLOBAL, Counter, CounterSet, EVENTS_MAP, LINEAR_PROGRAM_NAME, MAX_PORTS,
    MAX_SENDER_PREFIXES, PROGRAM_NAME, SENDER_KEY_LEN, SENDERS_MAP, STATS_MAP, SipConfig,
};
use tracing::{debug, info, warn};

use crate::source_filter::SourceFilter;

/// How many of the verifier's last lines a rejection shows (the reason is at the end).
const VERIFIER_LINES: usize = 12;

/// The XDP object built by `build.rs`; empty when the build had no BPF toolchain.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipnotify"));

/// How to attach the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode when the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// What the program is told before it is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramSettings {
    /// UDP destination ports to watch (1..=MAX_PORTS of them).
    pub ports: Vec<u16>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Who may send NOTIFYs: written into `SIP_SENDERS` (none: the trie is not looked up).
    pub senders: SourceFilter,
}

/// How the program copies a NOTIFY's payload into its record: one program per path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPath {
    /// `bpf_xdp_load_bytes` on multi-buffer frames (Linux 5.18 and later).
    LoadBytes,
    /// A chunked copy from the linear area of single-buffer frames, for the verifiers of
    /// kernels without that helper (5.10–5.17).
    Linear,
}

impl CopyPath {
    /// The program in the object that copies this way.
    pub fn program_name(self) -> &'static str {
        match self {
            CopyPath::LoadBytes => PROGRAM_NAME,
            CopyPath::Linear => LINEAR_PROGRAM_NAME,
        }
    }

    /// The path for this kernel: `bpf_xdp_load_bytes` when an XDP program may call it.
    pub fn probe() -> CopyPath {
        match is_helper_supported(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_load_bytes) {
            Ok(true) => CopyPath::LoadBytes,
            Ok(false) => CopyPath::Linear,
            Err(err) => {
                // Only an unexpected syscall failure (no privileges, usually) gets here; the
                // load that follows reports it properly.
                debug!(error = %err, "cannot probe for bpf_xdp_load_bytes");
                CopyPath::Linear
            }
        }
    }
}

impl fmt::Display for CopyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyPath::LoadBytes => "bpf_xdp_load_bytes",
            CopyPath::Linear => "linear copy",
        })
    }
}

/// The running kernel's release, for messages (never for decisions).
pub fn kernel_release() -> String {
    KernelVersion::current().map_or_else(|_| "of unknown version".to_owned(), |v| v.to_string())
}

/// Why the program could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary was built without the BPF toolchain.
    #[error("this build has no eBPF program; run `cargo xtask setup` and rebuild")]
    NoObject,
    /// The kernel has no BPF ring buffer (before Linux 5.8), which XDP capture needs.
    #[error(
        "kernel {kernel} has no BPF ring buffer (Linux 5.8 and later have one), which XDP capture needs"
    )]
    RingBufUnsupported {
        /// The running kernel's release.
        kernel: String,
    },
    /// The verifier refused the program.
    #[error(
        "kernel {kernel} refused the XDP program `{program}` ({copy}); the verifier's last lines:\n{}",
        indent(log_tail)
    )]
    Rejected {
        /// The running kernel's release.
        kernel: String,
        /// The program the verifier refused.
        program: &'static str,
        /// Its copy path.
        copy: CopyPath,
        /// The last lines of the verifier log.
        log_tail: Vec<String>,
    },
    /// No interface by that name.
    #[error("interface `{0}` does not exist")]
    NoSuchInterface(String),
    /// Another XDP program is already attached.
    #[error(
        "interface `{0}` already has an XDP program attached; remove it (`ip link set dev {0} xdp off`) or pick another interface"
    )]
    InterfaceBusy(String),
    /// The process may not load BPF programs.
    #[error(
        "permission denied loading the XDP program: run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    PermissionDenied,
    /// Bad settings reached the loader.
    #[error("invalid program settings: {0}")]
    Settings(&'static str),
    /// The kernel refused the object for another reason (map creation, BTF, …).
    #[error("failed to load the XDP program: {0}")]
    Load(#[source] Box<dyn StdError + Send + Sync>),
    /// Attaching failed for another reason.
    #[error("failed to attach the XDP program to `{iface}` in {mode} mode: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// The mode tried.
        mode: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

fn indent(lines: &[String]) -> String {
    lines
        .iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    /// The process exit code for this error: 2 for a configuration error (a missing interface,
    /// bad settings), 1 for a failure at run time, as for every command.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::NoSuchInterface(_) | LoadError::Settings(_) => 2,
            _ => 1,
        }
    }

    /// Classifies an aya error by the OS error underneath it.
    fn from_os(
        err: impl StdError + Send + Sync + 'static,
        or: impl FnOnce(Box<dyn StdError + Send + Sync>) -> LoadError,
    ) -> LoadError {
        match os_error(&err) {
            Some(libc::EPERM | libc::EACCES) => LoadError::PermissionDenied,
            _ => or(Box::new(err)),
        }
    }

    /// Classifies a failed `BPF_PROG_LOAD` (see [`LoadError::rejection`]).
    fn from_program_load(err: ProgramError, copy: CopyPath) -> LoadError {
        if let ProgramError::LoadError {
            io_error,
            verifier_log,
        } = &err
        {
            let log = verifier_log.to_string();
            if let Some(rejected) = LoadError::rejection(io_error.raw_os_error(), &log, copy) {
                return rejected;
            }
        }
        LoadError::from_os(err, LoadError::Load)
    }

    /// A verifier log means the verifier ran and said no, whatever the errno (EACCES,
    /// EINVAL, E2BIG): that is a [`LoadError::Rejected`]. EPERM, or EACCES before the
    /// verifier wrote anything, is a missing capability (`None` here; `from_os` says so).
    fn rejection(errno: Option<i32>, log: &str, copy: CopyPath) -> Option<LoadError> {
        let log_tail = verifier_tail(log);
        (errno != Some(libc::EPERM) && !log_tail.is_empty()).then(|| LoadError::Rejected {
            kernel: kernel_release(),
            program: copy.program_name(),
            copy,
            log_tail,
        })
    }
}

/// The last lines of a verifier log that say why, without the statistics lines the verifier
/// prints after its verdict.
pub fn verifier_tail(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .filter(|line| {
            !(line.starts_with("processed ")
                || line.starts_with("verification time")
                || line.starts_with("stack depth"))
        })
        .collect();
    let start = lines.len().saturating_sub(VERIFIER_LINES);
    lines[start..].iter().map(|&l| l.to_owned()).collect()
}

/// The first `io::Error` code in an error's source chain.
fn os_error(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = err.source();
    }
    None
}

/// The program attached to one interface, with the maps the agent reads.
///
/// Dropping it detaches the program.
pub struct AttachedProgram {
    /// Interface name.
    pub iface: Arc<str>,
    /// Interface index.
    pub ifindex: u32,
    /// The mode the program ended up in.
    pub mode: &'static str,
    /// How the program copies payloads.
    pub copy: CopyPath,
    /// The ring buffer of captured NOTIFYs.
    pub events: RingBuf<MapData>,
    /// The per-CPU counters.
    pub stats: KernelStats,
    /// The program's log channel (aya-log), when the object has one.
    pub logger: Option<ProgramLogger>,
    /// Keeps the program attached; declared last so it drops after the maps.
    pub guard: ProgramGuard,
}

/// Owns a loaded program and its `bpf_link`: dropping it detaches the program.
pub struct ProgramGuard(#[expect(dead_code, reason = "held for its Drop")] Ebpf);

impl fmt::Debug for AttachedProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachedProgram")
            .field("iface", &self.iface)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("copy", &self.copy)
            .finish_non_exhaustive()
    }
}

/// The program's aya-log channel, forwarding into the `log` facade (and so into tracing).
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Reads the program's per-CPU counters.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

impl KernelStats {
    /// Wraps the program's `SIP_STATS` map.
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    /// Every counter summed over CPUs; `packets_seen` is the sum of the outcomes (the
    /// program counts exactly one outcome per packet and nothing else per packet).
    pub fn read(&self) -> Result<CounterSet, aya::maps::MapError> {
        let mut totals = CounterSet::default();
        for counter in Counter::ALL {
            let values = self.map.get(&(counter as u32), 0)?;
            totals.values[counter as usize] = values.iter().sum();
        }
        Ok(totals.with_total_from_outcomes())
    }
}

/// The counters of the loaded sipnotify program with id `program_id` (a running agent's, as
/// `ip link` names it), read through its stats map; for `doctor`.
pub fn program_counters(program_id: u32) -> Result<CounterSet, String> {
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == program_id)
        .ok_or_else(|| format!("cannot find program {program_id} among the loaded programs"))?;
    let maps = program
        .map_ids()
        .map_err(|e| format!("cannot list the maps of program {program_id}: {e}"))?
        .unwrap_or_default();
    for id in maps {
        let Ok(map) = MapData::from_id(id) else {
            continue;
        };
        let named = map
            .info()
            .is_ok_and(|info| info.name_as_str() == Some(STATS_MAP));
        if !named {
            continue;
        }
        let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))
            .map_err(|e| format!("map {id} of program {program_id}: {e}"))?;
        return KernelStats { map }
            .read()
            .map_err(|e| format!("cannot read map {id} of program {program_id}: {e}"));
    }
    Err(format!("program {program_id} has no {STATS_MAP} map"))
}

/// Checks what can be checked before loading: the object, and the BPF ring buffer.
pub fn preflight() -> Result<(), LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    match is_map_supported(MapType::RingBuf) {
        Ok(true) => Ok(()),
        Ok(false) => Err(LoadError::RingBufUnsupported {
            kernel: kernel_release(),
        }),
        Err(err) => {
            // An unexpected failure (EPERM without privileges): the load reports it.
            debug!(error = %err, "cannot probe for the BPF ring buffer");
            Ok(())
        }
    }
}

/// Index of the interface `name`.
pub fn interface_index(name: &str) -> Result<u32, LoadError> {
    let c_name = CString::new(name).map_err(|_| LoadError::NoSuchInterface(name.to_owned()))?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(LoadError::NoSuchInterface(name.to_owned()));
    }
    Ok(index)
}

/// A loaded (not attached) program instance and its maps.
pub struct LoadedProgram {
    /// The object: maps and both programs, of which one ([`Self::copy`]) is loaded.
    pub ebpf: Ebpf,
    /// The copy path of the loaded program.
    pub copy: CopyPath,
}

impl LoadedProgram {
    /// The loaded XDP program.
    pub fn program(&self) -> Result<&Xdp, LoadError> {
        self.ebpf
            .program(self.copy.program_name())
            .ok_or(LoadError::Settings("the object has no XDP program"))?
            .try_into()
            .map_err(|err| LoadError::Load(Box::new(err)))
    }

    /// The loaded XDP program, mutably (to attach it).
    pub fn program_mut(&mut self) -> Result<&mut Xdp, LoadError> {
        program_mut(&mut self.ebpf, self.copy)
    }
}

fn program_mut(ebpf: &mut Ebpf, copy: CopyPath) -> Result<&mut Xdp, LoadError> {
    ebpf.program_mut(copy.program_name())
        .ok_or(LoadError::Settings("the object has no XDP program"))?
        .try_into()
        .map_err(|err| LoadError::Load(Box::new(err)))
}

/// Loads a fresh program instance configured with `settings`, without attaching it, on the
/// copy path the kernel supports.
pub fn load(settings: &ProgramSettings) -> Result<LoadedProgram, LoadError> {
    load_with(settings, None)
}

/// [`load`], with the copy path forced (`Some`) instead of probed: tests and benchmarks run
/// the linear copy on kernels that also have the faster one.
pub fn load_with(
    settings: &ProgramSettings,
    copy: Option<CopyPath>,
) -> Result<LoadedProgram, LoadError> {
    load_object(OBJECT, settings, copy)
}

/// [`load_with`] for another object with the same programs and globals (tests load a
/// deliberately invalid one to see how a rejection is reported).
pub fn load_object(
    object: &[u8],
    settings: &ProgramSettings,
    copy: Option<CopyPath>,
) -> Result<LoadedProgram, LoadError> {
    preflight()?;
    if settings.ports.is_empty() || settings.ports.len() > MAX_PORTS {
        return Err(LoadError::Settings(
            "between 1 and 16 ports must be watched",
        ));
    }
    raise_memlock();
    let mut config = SipConfig::empty();
    for &port in &settings.ports {
        config.watch(port);
    }
    config.senders_limited = u64::from(!settings.senders.allows_everyone());
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(EVENTS_MAP, settings.ring_bytes)
        .override_global(CONFIG_GLOBAL, &config, true)
        .load(object)
        .map_err(|err| match err {
            EbpfError::ProgramError(err) => {
                LoadError::from_program_load(err, copy.unwrap_or(CopyPath::LoadBytes))
            }
            err => LoadError::from_os(err, LoadError::Load),
        })?;

    fill_senders(&mut ebpf, &settings.senders)?;

    let chosen = copy.unwrap_or_else(CopyPath::probe);
    let result = program_mut(&mut ebpf, chosen)?
        .load()
        .map_err(|err| LoadError::from_program_load(err, chosen));
    let loaded = match result {
        Ok(()) => chosen,
        // A kernel with the helper but a verifier that refuses its use (a partial backport)
        // still has the linear copy.
        Err(err @ LoadError::Rejected { .. })
            if copy.is_none() && chosen == CopyPath::LoadBytes =>
        {
            warn!(error = %err, "falling back to the linear copy");
            program_mut(&mut ebpf, CopyPath::Linear)?
                .load()
                .map_err(|err| LoadError::from_program_load(err, CopyPath::Linear))?;
            CopyPath::Linear
        }
        Err(err) => return Err(err),
    };
    debug!(copy = %loaded, program = loaded.program_name(), "XDP program loaded");
    Ok(LoadedProgram { ebpf, copy: loaded })
}

/// Writes the allowed networks into the program's `SIP_SENDERS` trie, before it runs.
fn fill_senders(ebpf: &mut Ebpf, senders: &SourceFilter) -> Result<(), LoadError> {
    if senders.networks().len() > MAX_SENDER_PREFIXES as usize {
        return Err(LoadError::Settings(
            "too many --sip-source networks for the program's trie",
        ));
    }
    if senders.allows_everyone() {
        return Ok(());
    }
    let map = ebpf
        .map_mut(SENDERS_MAP)
        .ok_or(LoadError::Settings("the object has no sender trie"))?;
    let mut trie: LpmTrie<_, [u8; SENDER_KEY_LEN], u8> =
        LpmTrie::try_from(map).map_err(|err| LoadError::Load(Box::new(err)))?;
    for network in senders.networks() {
        let (bits, key) = network.trie_prefix();
        trie.insert(&Key::new(bits, key), 1, 0)
            .map_err(|err| LoadError::Load(Box::new(err)))?;
    }
    Ok(())
}

/// Loads the program and attaches it to `iface`.
pub fn attach(
    iface: &str,
    mode: AttachMode,
    settings: &ProgramSettings,
) -> Result<AttachedProgram, LoadError> {
    let ifindex = interface_index(iface)?;
    let LoadedProgram { mut ebpf, copy } = load(settings)?;
    let program = program_mut(&mut ebpf, copy)?;

    let attempts: &[(XdpMode, &'static str)] = match mode {
        AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        AttachMode::Native => &[(XdpMode::Driver, "native")],
        AttachMode::Generic => &[(XdpMode::Skb, "generic")],
    };
    let mut used = None;
    for (i, &(xdp_mode, name)) in attempts.iter().enumerate() {
        match program.attach_to_if_index(ifindex, xdp_mode) {
            Ok(_) => {
                used = Some(name);
                break;
            }
            Err(err) => match os_error(&err) {
                Some(libc::EBUSY | libc::EEXIST) => {
                    return Err(LoadError::InterfaceBusy(iface.to_owned()));
                }
                Some(libc::EPERM | libc::EACCES) => return Err(LoadError::PermissionDenied),
                _ if i + 1 < attempts.len() => {
                    debug!(iface, mode = name, error = %err, "XDP attach failed, trying the next mode");
                }
                _ => {
                    return Err(LoadError::Attach {
                        iface: iface.to_owned(),
                        mode: name,
                        source: Box::new(err),
                    });
                }
            },
        }
    }
    let mode = used.ok_or(LoadError::Settings("no attach mode to try"))?;
    info!(iface, mode, copy = %copy, "XDP program attached");

    let events = ebpf
        .take_map(EVENTS_MAP)
        .ok_or(LoadError::Settings("the object has no ring buffer"))
        .and_then(|map| RingBuf::try_from(map).map_err(|err| LoadError::Load(Box::new(err))))?;
    let stats = ebpf
        .take_map(STATS_MAP)
        .ok_or(LoadError::Settings("the object has no counters"))
        .and_then(|map| PerCpuArray::try_from(map).map_err(|err| LoadError::Load(Box::new(err))))?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(err) => {
            debug!(error = %err, "the XDP program's log channel is unavailable");
            None
        }
    };
    Ok(AttachedProgram {
        iface: iface.into(),
        ifindex,
        mode,
        copy,
        events,
        stats: KernelStats::new(stats),
        logger,
        guard: ProgramGuard(ebpf),
    })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it so the ring (8 MiB by default) fits
/// (<https://lwn.net/Articles/837122/>). Newer kernels use memory cgroups and ignore it.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        debug!(
            error = %io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK; fine on Linux 5.11 and later"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG_6_1: &str = "func#0 @0\n0: R1=ctx(off=0,imm=0) R10=fp0\n; fn sipnotify_xdp\n\
        1209: (85) call bpf_xdp_load_bytes#189\n\
        invalid access to map value, value_size=9280 off=64 size=0\n\
        R3 min value is outside of the allowed memory range\n\
        processed 5180 insns (limit 1000000) max_states_per_insn 4 total_states 90 peak_states 90 mark_read 12\n";

    #[test]
    fn a_verifier_log_is_a_rejection_with_its_last_lines() {
        let err = LoadError::rejection(Some(libc::EACCES), LOG_6_1, CopyPath::LoadBytes)
            .expect("a rejection");
        let LoadError::Rejected {
            program, log_tail, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*program, PROGRAM_NAME);
        assert_eq!(
            log_tail.last().map(String::as_str),
            Some("R3 min value is outside of the allowed memory range"),
            "the statistics line is not the reason"
        );
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("kernel ")
                && first.ends_with(
                    "refused the XDP program `sipnotify_xdp` (bpf_xdp_load_bytes); the verifier's last lines:"
                ),
            "{first}"
        );
        assert!(text.contains("\n    R3 min value is outside"), "{text}");
        assert!(!text.contains("permission"), "{text}");
        // An unknown helper on an old kernel comes back as EINVAL with a log: still the verifier.
        assert!(
            LoadError::rejection(
                Some(libc::EINVAL),
                "unknown func bpf_xdp_load_bytes#189\n",
                CopyPath::LoadBytes
            )
            .is_some()
        );
    }

    #[test]
    fn no_log_or_eperm_is_a_permission_problem() {
        assert!(LoadError::rejection(Some(libc::EACCES), "", CopyPath::Linear).is_none());
        assert!(LoadError::rejection(Some(libc::EPERM), LOG_6_1, CopyPath::Linear).is_none());
        let denied =
            LoadError::from_os(io::Error::from_raw_os_error(libc::EACCES), LoadError::Load);
        assert!(matches!(denied, LoadError::PermissionDenied), "{denied:?}");
    }

    #[test]
    fn the_tail_is_bounded_and_skips_statistics() {
        let long: String = (0..40).map(|i| format!("{i}: insn\n")).collect();
        let tail = verifier_tail(&(long + "processed 40 insns\nverification time 12 usec\n"));
        assert_eq!(tail.len(), VERIFIER_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("39: insn"));
    }

    #[test]
    fn each_copy_path_names_its_program() {
        assert_eq!(CopyPath::LoadBytes.program_name(), "sipnotify_xdp");
        assert_eq!(CopyPath::Linear.program_name(), "sipnotify_lin");
        assert_eq!(CopyPath::Linear.to_string(), "linear copy");
    }
}
