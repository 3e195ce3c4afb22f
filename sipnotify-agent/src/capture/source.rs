//! Choosing the capture path for an interface (`--capture auto`), or the one asked for.
//!
//! `auto` takes the path that costs the host least per packet it does not capture (RTP, on a
//! PBX), among those that can run here ([`AutoPlan`]): native XDP where the driver runs it on
//! the frame in place (the program: +4 to +5 ns in `BPF_PROG_TEST_RUN`; on virtio_net no dearer than
//! AF_PACKET within the noise of `cargo xtask bench vm-tax`), AF_PACKET where the driver's
//! native XDP copies (veth) or where there is no native XDP, since generic XDP costs more than
//! AF_PACKET's classic filter (+316 ns against about nothing, `benches/capture.rs` on veth).
//! Generic XDP is the last resort. Within that order the choice is made by trying: only the reasons that make XDP
//! impossible here (a kernel that lacks a feature, an interface held by another XDP program,
//! BPF loading not permitted, a build without the program) fall back to AF_PACKET, with that
//! reason logged once. A bad interface name stays a configuration error.

use std::{
    fmt,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    str::FromStr,
    time::Duration,
};

use tracing::{info, warn};

use super::af_packet::{AfPacketError, AfPacketSettings, PacketSocket};
use crate::{
    bpf::{self, AttachMode, AttachedProgram, LoadError, ProgramSettings},
    source_filter::SourceFilter,
};

/// Which capture path `run` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureMode {
    /// XDP where possible, AF_PACKET otherwise.
    #[default]
    Auto,
    /// XDP only: fail when it cannot run.
    Xdp,
    /// AF_PACKET only (needs just CAP_NET_RAW; Linux 3.10 and later).
    AfPacket,
}

impl CaptureMode {
    /// Every mode, for help texts and parsing.
    pub const ALL: [CaptureMode; 3] = [CaptureMode::Auto, CaptureMode::Xdp, CaptureMode::AfPacket];

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Auto => "auto",
            CaptureMode::Xdp => "xdp",
            CaptureMode::AfPacket => "af-packet",
        }
    }
}

impl fmt::Display for CaptureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaptureMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| format!("capture mode `{text}` is not one of auto, xdp, af-packet"))
    }
}

/// Why `auto` cannot use XDP on an interface, in words for the log and `doctor`; `None` when
/// the error is one AF_PACKET would not avoid (a missing interface, bad settings).
pub fn fallback_reason(err: &LoadError) -> Option<String> {
    match err {
        LoadError::NoObject => Some("this build has no eBPF program".to_owned()),
        LoadError::RingBufUnsupported { .. } => Some(format!(
            "the kernel lacks a feature XDP capture needs: {err}"
        )),
        LoadError::Rejected { .. } => Some(format!("the kernel refused the XDP program: {err}")),
        LoadError::InterfaceBusy(_) => {
            Some("the interface already has another XDP program attached".to_owned())
        }
        LoadError::PermissionDenied => Some("loading BPF programs is not permitted".to_owned()),
        LoadError::Load(_) => Some(format!("the kernel refused the XDP program: {err}")),
        LoadError::Attach { .. } => Some(format!("attaching XDP failed: {err}")),
        LoadError::NoSuchInterface(_) | LoadError::Settings(_) => None,
    }
}

/// Drivers whose native XDP handles each frame as a copy: veth runs native XDP on socket
/// buffers the stack already built, reallocating those without XDP's headroom (every frame
/// from a local sender). Measured there (`benches/capture.rs`, RTP-like traffic to an
/// unwatched port): +341 ns per packet, where AF_PACKET's classic filter costs about nothing.
/// virtio_net is not here: in the kernel-matrix VMs (`cargo xtask bench vm-tax`, TCG guests
/// on Linux 6.1 and 6.12, guest CPU per datagram to an unwatched port) its native XDP cost no
/// more than AF_PACKET within the noise of the measurement (README, "What the agent costs").
const NATIVE_XDP_COPIES: &[&str] = &["veth"];

/// Why `auto` takes AF_PACKET where the driver's native XDP copies.
const COPIES_WHY: &str = "native XDP copies every frame on this driver (+341 ns per packet of \
    other traffic measured on veth) while AF_PACKET's filter costs about nothing";
/// Why `auto` tries native XDP first (and what it takes where the driver has none).
const NATIVE_WHY: &str = "native XDP where the driver runs it, before any socket buffer exists \
    (the program: +4 to +5 ns per packet of other traffic in BPF_PROG_TEST_RUN; on virtio_net in the \
    kernel-matrix VMs no dearer than AF_PACKET within the noise); where it has none, AF_PACKET, \
    since generic XDP costs more per packet than AF_PACKET (+316 ns against about nothing, \
    measured on veth)";
/// Why `auto` takes AF_PACKET rather than generic XDP where native XDP cannot run.
const GENERIC_WHY: &str = "generic XDP costs more per packet of other traffic than AF_PACKET \
    (+316 ns against about nothing, measured on veth)";

/// What `--capture auto` tries on an interface, cheapest for the host first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPlan {
    /// Native XDP; AF_PACKET where the driver cannot run it; generic XDP only if AF_PACKET
    /// cannot open either.
    NativeXdp,
    /// AF_PACKET, the driver's native XDP being a copy; XDP only if the socket cannot open.
    AfPacket,
    /// XDP in the `--xdp-mode` named (native or generic), AF_PACKET where it is impossible.
    AsAsked,
}

impl AutoPlan {
    /// The plan for an interface whose driver is `driver` (when known), under `xdp_mode`.
    pub fn choose(xdp_mode: AttachMode, driver: Option<&str>) -> Self {
        match xdp_mode {
            AttachMode::Native | AttachMode::Generic => AutoPlan::AsAsked,
            AttachMode::Auto if driver.is_some_and(|d| NATIVE_XDP_COPIES.contains(&d)) => {
                AutoPlan::AfPacket
            }
            AttachMode::Auto => AutoPlan::NativeXdp,
        }
    }

    /// The cost reason, in words for the log and `doctor`.
    pub fn why(self) -> &'static str {
        match self {
            AutoPlan::NativeXdp => NATIVE_WHY,
            AutoPlan::AfPacket => COPIES_WHY,
            AutoPlan::AsAsked => "--xdp-mode names the XDP mode",
        }
    }
}

/// The kernel driver behind `iface` (`ethtool -i`), `None` when it cannot be asked.
pub fn driver(iface: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain socket(2); the result is checked and owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid value of both C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, &from) in request.ifr_name.iter_mut().zip(name) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes at most a `DrvInfo` through
    // `ifru_data`, which points at `info`, alive for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) };
    if rc != 0 {
        return None;
    }
    let end = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.driver.len());
    std::str::from_utf8(&info.driver[..end])
        .ok()
        .map(str::to_owned)
}

/// What `run` would capture an interface with, and why: what `doctor` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The XDP program; under `auto`, why that is the cheapest path here.
    Xdp {
        /// The cost reason (`None` when XDP was asked for).
        why: Option<&'static str>,
    },
    /// AF_PACKET; under `auto`, the reason XDP is not possible or costs more.
    AfPacket {
        /// Why XDP is impossible (`None` when AF_PACKET was asked for or is cheaper).
        fallback: Option<String>,
        /// Why AF_PACKET is the cheaper path here, under `auto`.
        cheaper: Option<&'static str>,
    },
    /// Neither path can start.
    Neither {
        /// Why.
        reason: String,
    },
}

/// Predicts the path for `mode` (under `auto`, following `plan`) from what loading XDP and
/// opening a packet socket found.
pub fn predict(
    mode: CaptureMode,
    plan: AutoPlan,
    xdp: Result<(), &LoadError>,
    af_packet: Result<(), &AfPacketError>,
) -> Prediction {
    let af = |fallback: Option<String>| match af_packet {
        Ok(()) => Prediction::AfPacket {
            fallback,
            cheaper: None,
        },
        Err(err) => Prediction::Neither {
            reason: match fallback {
                Some(why) => format!("xdp: {why}; af-packet: {err}"),
                None => err.to_string(),
            },
        },
    };
    match (mode, xdp) {
        (CaptureMode::AfPacket, _) => af(None),
        (CaptureMode::Auto, _) if plan == AutoPlan::AfPacket && af_packet.is_ok() => {
            Prediction::AfPacket {
                fallback: None,
                cheaper: Some(plan.why()),
            }
        }
        (CaptureMode::Xdp, Ok(())) => Prediction::Xdp { why: None },
        (CaptureMode::Auto, Ok(())) => Prediction::Xdp {
            why: Some(plan.why()),
        },
        (CaptureMode::Xdp, Err(err)) => Prediction::Neither {
            reason: err.to_string(),
        },
        (CaptureMode::Auto, Err(err)) => match fallback_reason(err) {
            Some(why) => af(Some(why)),
            None => Prediction::Neither {
                reason: err.to_string(),
            },
        },
    }
}

/// An interface's capture, whichever path it took.
pub enum Capture {
    /// The XDP program, attached (boxed: it carries its maps and loader state).
    Xdp(Box<AttachedProgram>),
    /// A packet socket with its ring.
    AfPacket(PacketSocket),
}

/// Why no capture path could start on an interface.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// XDP failed and no fallback was allowed or possible.
    #[error(transparent)]
    Xdp(#[from] LoadError),
    /// AF_PACKET failed (after XDP's reason, when `auto` fell back).
    #[error("{}{source}", fallback.as_ref().map(|r| format!("xdp: {r}; af-packet: ")).unwrap_or_default())]
    AfPacket {
        /// Why XDP was not used, under `auto`.
        fallback: Option<String>,
        /// Why AF_PACKET failed.
        #[source]
        source: AfPacketError,
    },
}

impl SourceError {
    /// The process exit code (2 for configuration, 1 otherwise).
    pub fn exit_code(&self) -> u8 {
        match self {
            SourceError::Xdp(err) => err.exit_code(),
            SourceError::AfPacket { .. } => 1,
        }
    }
}

/// How to open a source.
#[derive(Clone, Debug)]
pub struct SourceSettings {
    /// Which path.
    pub mode: CaptureMode,
    /// XDP attach mode.
    pub xdp_mode: AttachMode,
    /// UDP destination ports.
    pub ports: Vec<u16>,
    /// Ring size (either path).
    pub ring_bytes: u32,
    /// AF_PACKET block timeout (the poll interval).
    pub poll: Duration,
    /// Who may send NOTIFYs, for the XDP program's trie.
    pub senders: SourceFilter,
}

/// Opens the capture on `iface` as `settings.mode` asks.
pub fn open(iface: &str, settings: &SourceSettings) -> Result<Capture, SourceError> {
    let program = ProgramSettings {
        ports: settings.ports.clone(),
        ring_bytes: settings.ring_bytes,
        senders: settings.senders.clone(),
    };
    let mut generic_last = false;
    let fallback = match settings.mode {
        CaptureMode::AfPacket => None,
        CaptureMode::Xdp => {
            let attached = bpf::attach(iface, settings.xdp_mode, &program)?;
            return Ok(Capture::Xdp(Box::new(attached)));
        }
        CaptureMode::Auto => {
            let plan = AutoPlan::choose(settings.xdp_mode, driver(iface).as_deref());
            if plan == AutoPlan::AfPacket {
                match open_af_packet(iface, settings, None) {
                    Ok(socket) => {
                        info!(
                            iface,
                            why = plan.why(),
                            "AF_PACKET capture started: the cheapest path here"
                        );
                        return Ok(socket);
                    }
                    Err(af_err) => {
                        warn!(iface, error = %af_err, "AF_PACKET capture is not possible here; trying XDP");
                        return match bpf::attach(iface, AttachMode::Auto, &program) {
                            Ok(attached) => Ok(Capture::Xdp(Box::new(attached))),
                            // Neither path: say why each failed, in the words XDP-first uses.
                            Err(xdp_err) => Err(match (fallback_reason(&xdp_err), af_err) {
                                (Some(why), SourceError::AfPacket { source, .. }) => {
                                    SourceError::AfPacket {
                                        fallback: Some(why),
                                        source,
                                    }
                                }
                                _ => xdp_err.into(),
                            }),
                        };
                    }
                }
            }
            let first = match plan {
                AutoPlan::NativeXdp => AttachMode::Native,
                AutoPlan::AfPacket | AutoPlan::AsAsked => settings.xdp_mode,
            };
            match bpf::attach(iface, first, &program) {
                Ok(attached) => return Ok(Capture::Xdp(Box::new(attached))),
                // No native XDP in this driver: AF_PACKET costs less than generic XDP.
                Err(err @ LoadError::Attach { .. }) if plan == AutoPlan::NativeXdp => {
                    generic_last = true;
                    info!(iface, error = %err, why = GENERIC_WHY, "no native XDP on this interface; AF_PACKET rather than generic XDP");
                    Some(format!("{}; {GENERIC_WHY}", err))
                }
                Err(err) => match fallback_reason(&err) {
                    Some(reason) => {
                        warn!(iface, reason = %reason, "XDP capture is not possible here; falling back to AF_PACKET");
                        Some(reason)
                    }
                    None => return Err(err.into()),
                },
            }
        }
    };
    match open_af_packet(iface, settings, fallback) {
        Err(err) if generic_last => {
            warn!(iface, error = %err, "AF_PACKET capture is not possible here; trying generic XDP");
            let attached = bpf::attach(iface, AttachMode::Generic, &program)?;
            Ok(Capture::Xdp(Box::new(attached)))
        }
        opened => opened,
    }
}

/// Opens the AF_PACKET capture on `iface`; `fallback` is why XDP was not used, for the error.
fn open_af_packet(
    iface: &str,
    settings: &SourceSettings,
    fallback: Option<String>,
) -> Result<Capture, SourceError> {
    let ifindex = bpf::interface_index(iface)?;
    let af = AfPacketSettings {
        ports: settings.ports.clone(),
        ring_bytes: settings.ring_bytes,
        block_timeout: settings.poll,
    };
    let socket = PacketSocket::open(iface, ifindex, &af)
        .map_err(|source| SourceError::AfPacket { fallback, source })?;
    info!(iface, "AF_PACKET capture started");
    Ok(Capture::AfPacket(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in CaptureMode::ALL {
            assert_eq!(mode.as_str().parse::<CaptureMode>(), Ok(mode));
        }
        assert_eq!(
            "pcap".parse::<CaptureMode>().unwrap_err(),
            "capture mode `pcap` is not one of auto, xdp, af-packet"
        );
    }

    #[test]
    fn the_prediction_follows_the_mode_and_the_reasons() {
        let busy = LoadError::InterfaceBusy("eth0".into());
        let denied = AfPacketError::PermissionDenied {
            iface: "eth0".into(),
        };
        let native = AutoPlan::NativeXdp;
        assert_eq!(
            predict(CaptureMode::Auto, native, Ok(()), Ok(())),
            Prediction::Xdp {
                why: Some(NATIVE_WHY)
            }
        );
        assert_eq!(
            predict(CaptureMode::AfPacket, native, Ok(()), Ok(())),
            Prediction::AfPacket {
                fallback: None,
                cheaper: None
            }
        );
        // Where native XDP copies, AF_PACKET is taken though XDP could run.
        assert_eq!(
            predict(CaptureMode::Auto, AutoPlan::AfPacket, Ok(()), Ok(())),
            Prediction::AfPacket {
                fallback: None,
                cheaper: Some(COPIES_WHY)
            }
        );
        assert_eq!(
            predict(CaptureMode::Auto, AutoPlan::AfPacket, Ok(()), Err(&denied)),
            Prediction::Xdp {
                why: Some(COPIES_WHY)
            }
        );
        match predict(CaptureMode::Auto, native, Err(&busy), Ok(())) {
            Prediction::AfPacket {
                fallback: Some(why),
                ..
            } => assert!(why.contains("another XDP program"), "{why}"),
            other => panic!("expected a fallback, got {other:?}"),
        }
        match predict(CaptureMode::Auto, native, Err(&busy), Err(&denied)) {
            Prediction::Neither { reason } => {
                assert!(
                    reason.contains("xdp: ") && reason.contains("CAP_NET_RAW"),
                    "{reason}"
                );
            }
            other => panic!("expected neither, got {other:?}"),
        }
        assert!(matches!(
            predict(CaptureMode::Xdp, native, Err(&busy), Ok(())),
            Prediction::Neither { .. }
        ));
    }

    #[test]
    fn auto_plans_the_cheapest_path_for_the_driver() {
        // veth's native XDP copies: AF_PACKET first.
        assert_eq!(
            AutoPlan::choose(AttachMode::Auto, Some("veth")),
            AutoPlan::AfPacket
        );
        // Real NICs run native XDP in place; an unknown driver is tried natively too.
        for driver in [Some("virtio_net"), Some("ixgbe"), Some("mlx5_core"), None] {
            assert_eq!(
                AutoPlan::choose(AttachMode::Auto, driver),
                AutoPlan::NativeXdp,
                "{driver:?}"
            );
        }
        // A mode named on the command line is obeyed.
        for mode in [AttachMode::Native, AttachMode::Generic] {
            assert_eq!(AutoPlan::choose(mode, Some("veth")), AutoPlan::AsAsked);
        }
        assert!(AutoPlan::AfPacket.why().contains("+341 ns"));
        assert!(GENERIC_WHY.contains("+316 ns"));
    }

    #[test]
    fn the_driver_of_a_missing_interface_is_unknown() {
        assert_eq!(driver("sipnotify-none0"), None);
        assert_eq!(driver("a-name-longer-than-ifnamsiz"), None);
    }

    #[test]
    fn only_what_af_packet_avoids_falls_back() {
        assert!(
            fallback_reason(&LoadError::InterfaceBusy("eth0".into()))
                .unwrap()
                .contains("another XDP program")
        );
        assert!(
            fallback_reason(&LoadError::PermissionDenied)
                .unwrap()
                .contains("not permitted")
        );
        let old = LoadError::RingBufUnsupported {
            kernel: "5.4.0-150-generic".into(),
        };
        assert!(fallback_reason(&old).unwrap().contains("lacks a feature"));
        assert_eq!(
            fallback_reason(&LoadError::NoSuchInterface("x".into())),
            None
        );
    }
}
