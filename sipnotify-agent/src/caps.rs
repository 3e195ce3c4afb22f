//! The process's capabilities: what they allow at start, and dropping all of them once capture
//! is set up.
//!
//! At start `run` (and `doctor`) read the effective set from `/proc/self/status` and say in
//! one line which capture paths it allows and what is missing, in the words of the unit file
//! (`CAP_BPF not held and CAP_SYS_ADMIN not held: XDP cannot load`). Once every interface is
//! attached and every socket open, [`drop_all`] empties the bounding (where it may), ambient,
//! inheritable, permitted and effective sets: the parser reads hostile input all day, and a
//! bug in it then cannot load BPF programs or open packet sockets. An attached `bpf_link`
//! needs no capability to stay attached, or to be detached when the agent closes it.
//!
//! Capabilities belong to threads, and the async runtime's threads exist before capture is
//! set up, so every thread is made to drop its own through a signal, as libcap's `psx` does;
//! the `caps` crate acts on the calling thread only, so the few syscalls are written here.

use std::{
    fmt::Write as _,
    fs, io,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// `CAP_NET_ADMIN`: attach XDP programs to interfaces.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`: packet sockets (AF_PACKET).
pub const CAP_NET_RAW: u32 = 13;
/// `CAP_SETPCAP`: shrink the bounding set.
pub const CAP_SETPCAP: u32 = 8;
/// `CAP_SYS_ADMIN`: every BPF operation, on kernels before 5.8 the only way to load.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` (Linux 5.8).
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux 5.8).
pub const CAP_BPF: u32 = 39;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Why the capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A `prctl` or `capset` call failed.
    #[error("cannot drop capabilities: {step} failed: {source}")]
    Syscall {
        /// Which call.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Some threads still held capabilities after the signal.
    #[error("cannot drop capabilities: {threads} threads still hold some")]
    Threads {
        /// How many.
        threads: usize,
    },
}

/// What the process holds, and what the kernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The effective set (`CapEff`).
    pub effective: u64,
    /// Whether the kernel knows `CAP_BPF` (`cap_last_cap` ≥ 39: Linux 5.8 or a backport);
    /// without it only `CAP_SYS_ADMIN` loads BPF programs.
    pub kernel_has_cap_bpf: bool,
}

impl Capabilities {
    /// This process's, from `/proc`; `None` when they cannot be read.
    pub fn current() -> Option<Self> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let effective = parse_cap_eff(&status)?;
        let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            // An unreadable value: assume a kernel new enough, the CAP_BPF word then decides.
            .unwrap_or(CAP_BPF);
        Some(Self {
            effective,
            kernel_has_cap_bpf: last >= CAP_BPF,
        })
    }

    fn has(&self, cap: u32) -> bool {
        self.effective & (1u64 << cap) != 0
    }

    /// Whether loading the XDP program is permitted (a missing kernel feature aside).
    pub fn can_load_xdp(&self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.kernel_has_cap_bpf && self.has(CAP_BPF))
    }

    /// Whether attaching it to an interface is permitted.
    pub fn can_attach_xdp(&self) -> bool {
        self.has(CAP_NET_ADMIN)
    }

    /// Whether a packet socket may be opened.
    pub fn can_open_af_packet(&self) -> bool {
        self.has(CAP_NET_RAW)
    }

    /// One line: the capture paths these capabilities allow, and what is missing.
    pub fn summary(&self) -> String {
        let mut line = String::new();
        let xdp = self.can_load_xdp() && self.can_attach_xdp();
        if xdp {
            line.push_str("XDP can load and attach");
        } else {
            let mut missing = Vec::new();
            if !self.can_load_xdp() {
                missing.push(if self.kernel_has_cap_bpf {
                    "CAP_BPF not held and CAP_SYS_ADMIN not held"
                } else {
                    "CAP_SYS_ADMIN not held (this kernel has no CAP_BPF)"
                });
            }
            if !self.can_attach_xdp() {
                missing.push("CAP_NET_ADMIN not held");
            }
            let _ = write!(line, "{}: XDP cannot load", missing.join(", "));
        }
        match (xdp, self.can_open_af_packet()) {
            (true, true) => line.push_str("; AF_PACKET can open (the fallback)"),
            (true, false) => line.push_str("; CAP_NET_RAW not held: no AF_PACKET fallback"),
            (false, true) => line.push_str("; capturing with AF_PACKET"),
            (false, false) => {
                line.push_str("; CAP_NET_RAW not held: AF_PACKET cannot open either");
            }
        }
        let _ = write!(line, " (CapEff {:016x})", self.effective);
        line
    }
}

/// The `CapEff:` value of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let hex = line.strip_prefix("CapEff:")?.trim();
        u64::from_str_radix(hex, 16).ok()
    })
}

/// What [`drop_all`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The effective set before.
    pub before: u64,
    /// What was kept (nothing, unless the kernel needs `CAP_BPF` for reading counters).
    pub kept: u64,
    /// Whether the bounding set could be emptied too (it takes `CAP_SETPCAP`, which the
    /// unit does not grant; `NoNewPrivileges=yes` already keeps an exec from regaining any).
    pub bounding: bool,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the calling thread's sets; async-signal-safe (raw syscalls only, no allocation),
/// so the signal handler below runs it too. Returns false when the ambient or `capset` step
/// failed. The bounding set is emptied only with `bounding` (it needs `CAP_SETPCAP`); a
/// capability this kernel does not know answers EINVAL, which is nothing to drop.
fn drop_raw(bounding: bool, keep: u64) -> bool {
    if bounding {
        for cap in 0..64 as libc::c_ulong {
            if keep & (1u64 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    cap,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
        }
    }
    // SAFETY: prctl with integer arguments only.
    let ambient = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, which these are.
    let set = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    ambient == 0 && set == 0
}

/// Whether the signal handler should empty the bounding set too.
static BOUNDING: AtomicBool = AtomicBool::new(false);
/// What the signal handler keeps (see [`drop_all`]).
static KEEP: AtomicU64 = AtomicU64::new(0);
/// Threads whose handler failed.
static FAILED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_drop_signal(_signal: libc::c_int) {
    if !drop_raw(BOUNDING.load(Ordering::SeqCst), KEEP.load(Ordering::SeqCst)) {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Capabilities belong to threads, not processes: the signal every other thread is sent to
/// drop its own (as libcap's `psx` does).
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// How long [`drop_all`] waits for every thread to have dropped.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// Whether `check` still succeeds on a thread without capabilities: run on a short-lived
/// thread that drops its own (capabilities are per thread), so the process keeps them. The
/// agent asks it whether its kernel counters stay readable: kernels before 6.0 (Debian 11's
/// 5.10) refuse every `bpf()` call to a process without `CAP_BPF` when
/// `kernel.unprivileged_bpf_disabled` is set, the distributions' default.
pub fn survives_drop(check: impl FnOnce() -> bool + Send + 'static) -> bool {
    std::thread::spawn(move || drop_raw(false, 0) && check())
        .join()
        .unwrap_or(false)
}

/// Drops every capability but those in `keep` from every thread of the process (see the
/// module docs): this thread directly, the others through a signal, then checks
/// `/proc/self/task/*/status` until every thread's effective set is `keep` at most (threads
/// started meanwhile inherit from a thread that dropped, or are signalled in the next round).
pub fn drop_all(keep: u64) -> Result<Dropped, CapsError> {
    let before = Capabilities::current().map_or(0, |c| c.effective);
    let keep = keep & before;
    let bounding = before & (1u64 << CAP_SETPCAP) != 0;
    BOUNDING.store(bounding, Ordering::SeqCst);
    KEEP.store(keep, Ordering::SeqCst);
    // SAFETY: a zeroed sigaction with a plain handler and an empty mask is a valid argument.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_drop_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(drop_signal(), &raw const action, std::ptr::null_mut())
    };
    if installed != 0 {
        return Err(CapsError::Syscall {
            step: "sigaction",
            source: io::Error::last_os_error(),
        });
    }
    if !drop_raw(bounding, keep) {
        return Err(CapsError::Syscall {
            step: "capset",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: getpid and the gettid system call have no preconditions. gettid goes through
    // syscall(2) because glibc only wraps it from 2.30, and the shipped binary targets 2.17.
    let (pid, me) = unsafe {
        (
            libc::getpid(),
            libc::syscall(libc::SYS_gettid) as libc::pid_t,
        )
    };
    let deadline = Instant::now() + DROP_WAIT;
    let mut signalled: Vec<u32> = Vec::new();
    loop {
        let holding: Vec<u32> = thread_cap_eff()
            .into_iter()
            .filter(|&(tid, eff)| eff & !keep != 0 && tid != me as u32)
            .map(|(tid, _)| tid)
            .collect();
        if holding.is_empty() {
            break;
        }
        if FAILED.load(Ordering::SeqCst) > 0 || Instant::now() >= deadline {
            return Err(CapsError::Threads {
                threads: holding.len(),
            });
        }
        for &tid in &holding {
            if !signalled.contains(&tid) {
                signalled.push(tid);
                // SAFETY: tgkill to a thread of this process with a handled signal.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid as libc::pid_t, drop_signal()) };
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Dropped {
        before,
        kept: keep,
        bounding,
    })
}

/// The effective set of every thread of this process, from `/proc/self/task/*/status`.
pub fn thread_cap_eff() -> Vec<(u32, u64)> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let status = fs::read_to_string(task.path().join("status")).ok()?;
            Some((tid, parse_cap_eff(&status)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32], kernel_has_cap_bpf: bool) -> Capabilities {
        Capabilities {
            effective: list.iter().fold(0, |set, cap| set | 1u64 << cap),
            kernel_has_cap_bpf,
        }
    }

    #[test]
    fn the_line_says_which_paths_the_capabilities_allow() {
        let unit = caps(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW], true);
        assert!(
            unit.summary()
                .starts_with("XDP can load and attach; AF_PACKET can open")
        );
        // systemd 245 dropped CAP_BPF and CAP_PERFMON from the unit's lists.
        let old_systemd = caps(&[CAP_NET_ADMIN, CAP_NET_RAW], true);
        assert_eq!(
            old_systemd.summary(),
            "CAP_BPF not held and CAP_SYS_ADMIN not held: XDP cannot load; capturing with \
             AF_PACKET (CapEff 0000000000003000)"
        );
        // A 4.18 or 5.4 kernel: only CAP_SYS_ADMIN loads programs.
        let old_kernel = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW], false);
        assert!(!old_kernel.can_load_xdp());
        assert!(
            old_kernel
                .summary()
                .contains("CAP_SYS_ADMIN not held (this kernel has no CAP_BPF)")
        );
        let drop_in = caps(&[CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW], false);
        assert!(drop_in.summary().starts_with("XDP can load and attach"));
        let nothing = caps(&[], true);
        assert!(nothing.summary().contains("CAP_NET_ADMIN not held"));
        assert!(nothing.summary().contains("AF_PACKET cannot open either"));
    }

    #[test]
    fn cap_eff_is_read_from_a_status_text() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000003000\n";
        assert_eq!(parse_cap_eff(status), Some(0xc0_0000_3000));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
