//! Loads the embedded XDP program, configures it and attaches it to one interface.
//!
//! Each interface gets its own program instance with its own ring buffer and counters: a busy
//! interface cannot starve another's ring, and the counters are per interface for free.
//! The program is attached through a `bpf_link`, so it is detached when the agent exits for
//! any reason, a crash included.

mod kernel;

use std::{error::Error as StdError, ffi::CString, fmt, io, sync::Arc};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{Xdp, XdpMode},
};
use sipnotify_common::{
    CONFIG_GLOBAL, Counter, CounterSet, EVENTS_MAP, MAX_PORTS, PROGRAM_NAME, STATS_MAP, SipConfig,
};
use tracing::{debug, info};

pub use kernel::{KernelVersion, MIN_KERNEL};

/// The XDP object built by `build.rs`; empty when the build had no BPF toolchain.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipnotify"));

/// How to attach the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

/// Why the program could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary was built without the BPF toolchain.
    #[error("this build has no eBPF program; run `cargo xtask setup` and rebuild")]
    NoObject,
    /// The running kernel predates a feature the program needs.
    #[error(
        "kernel {found} is too old: sipnotify needs Linux {}.{} or newer (XDP multi-buffer and bpf_xdp_load_bytes)",
        MIN_KERNEL.major, MIN_KERNEL.minor
    )]
    KernelTooOld {
        /// The running kernel.
        found: KernelVersion,
    },
    /// The kernel version could not be read.
    #[error("cannot read the kernel version: {0}")]
    KernelVersion(#[source] io::Error),
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
    /// The kernel rejected the object (verifier, map creation, …).
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

impl LoadError {
    /// The process exit code for this error (design.md: 2 for configuration, 1 otherwise).
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
    /// Every counter summed over CPUs.
    pub fn read(&self) -> Result<CounterSet, aya::maps::MapError> {
        let mut totals = CounterSet::default();
        for counter in Counter::ALL {
            let values = self.map.get(&(counter as u32), 0)?;
            totals.values[counter as usize] = values.iter().sum();
        }
        Ok(totals)
    }
}

/// Checks what can be checked before touching the kernel: the object and the kernel version.
pub fn preflight() -> Result<(), LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let found = KernelVersion::current().map_err(LoadError::KernelVersion)?;
    if found < MIN_KERNEL {
        return Err(LoadError::KernelTooOld { found });
    }
    Ok(())
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

/// Loads a fresh program instance configured with `settings`, without attaching it.
pub fn load(settings: &ProgramSettings) -> Result<Ebpf, LoadError> {
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
    // Wake the reader early once a quarter of the ring is pending; below that the 1 ms poll
    // collects records without a wake-up per event.
    config.wakeup_bytes = u64::from(settings.ring_bytes / 4);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(EVENTS_MAP, settings.ring_bytes)
        .override_global(CONFIG_GLOBAL, &config, true)
        .load(OBJECT)
        .map_err(|err| LoadError::from_os(err, LoadError::Load))?;

    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoadError::Settings("the object has no XDP program"))?
        .try_into()
        .map_err(|err| LoadError::Load(Box::new(err)))?;
    program
        .load()
        .map_err(|err| LoadError::from_os(err, LoadError::Load))?;
    Ok(ebpf)
}

/// Loads the program and attaches it to `iface`.
pub fn attach(
    iface: &str,
    mode: AttachMode,
    settings: &ProgramSettings,
) -> Result<AttachedProgram, LoadError> {
    let ifindex = interface_index(iface)?;
    let mut ebpf = load(settings)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoadError::Settings("the object has no XDP program"))?
        .try_into()
        .map_err(|err| LoadError::Load(Box::new(err)))?;

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
    info!(iface, mode, "XDP program attached");

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
        events,
        stats: KernelStats { map: stats },
        logger,
        guard: ProgramGuard(ebpf),
    })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it so a 16 MiB ring fits
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
