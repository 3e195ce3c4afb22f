//! Choosing the capture path for an interface: XDP where the kernel and the interface allow
//! it, AF_PACKET otherwise (`--capture auto`), or the one asked for.
//!
//! The choice is made by trying: `auto` loads and attaches the XDP program, and only the
//! reasons that make XDP impossible here (a kernel that lacks a feature, an interface held by
//! another XDP program, BPF loading not permitted, a build without the program) fall back to
//! AF_PACKET, with that reason logged once. A bad interface name stays a configuration error.

use std::{fmt, str::FromStr, time::Duration};

use tracing::{info, warn};

use super::af_packet::{AfPacketError, AfPacketSettings, PacketSocket};
use crate::bpf::{self, AttachMode, AttachedProgram, LoadError, ProgramSettings};

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

/// What `run` would capture an interface with, and why: what `doctor` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The XDP program.
    Xdp,
    /// AF_PACKET; under `auto`, the reason XDP is not possible.
    AfPacket {
        /// Why not XDP (`None` when AF_PACKET was asked for).
        fallback: Option<String>,
    },
    /// Neither path can start.
    Neither {
        /// Why.
        reason: String,
    },
}

/// Predicts the path for `mode` from what loading XDP and opening a packet socket found.
pub fn predict(
    mode: CaptureMode,
    xdp: Result<(), &LoadError>,
    af_packet: Result<(), &AfPacketError>,
) -> Prediction {
    let af = |fallback: Option<String>| match af_packet {
        Ok(()) => Prediction::AfPacket { fallback },
        Err(err) => Prediction::Neither {
            reason: match fallback {
                Some(why) => format!("xdp: {why}; af-packet: {err}"),
                None => err.to_string(),
            },
        },
    };
    match (mode, xdp) {
        (CaptureMode::AfPacket, _) => af(None),
        (CaptureMode::Xdp | CaptureMode::Auto, Ok(())) => Prediction::Xdp,
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
}

/// Opens the capture on `iface` as `settings.mode` asks.
pub fn open(iface: &str, settings: &SourceSettings) -> Result<Capture, SourceError> {
    let program = ProgramSettings {
        ports: settings.ports.clone(),
        ring_bytes: settings.ring_bytes,
    };
    let fallback = match settings.mode {
        CaptureMode::AfPacket => None,
        CaptureMode::Xdp => {
            let attached = bpf::attach(iface, settings.xdp_mode, &program)?;
            return Ok(Capture::Xdp(Box::new(attached)));
        }
        CaptureMode::Auto => match bpf::attach(iface, settings.xdp_mode, &program) {
            Ok(attached) => return Ok(Capture::Xdp(Box::new(attached))),
            Err(err) => match fallback_reason(&err) {
                Some(reason) => {
                    warn!(iface, reason = %reason, "XDP capture is not possible here; falling back to AF_PACKET");
                    Some(reason)
                }
                None => return Err(err.into()),
            },
        },
    };
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
        assert_eq!(predict(CaptureMode::Auto, Ok(()), Ok(())), Prediction::Xdp);
        assert_eq!(
            predict(CaptureMode::AfPacket, Ok(()), Ok(())),
            Prediction::AfPacket { fallback: None }
        );
        match predict(CaptureMode::Auto, Err(&busy), Ok(())) {
            Prediction::AfPacket {
                fallback: Some(why),
            } => assert!(why.contains("another XDP program"), "{why}"),
            other => panic!("expected a fallback, got {other:?}"),
        }
        match predict(CaptureMode::Auto, Err(&busy), Err(&denied)) {
            Prediction::Neither { reason } => {
                assert!(
                    reason.contains("xdp: ") && reason.contains("CAP_NET_RAW"),
                    "{reason}"
                );
            }
            other => panic!("expected neither, got {other:?}"),
        }
        assert!(matches!(
            predict(CaptureMode::Xdp, Err(&busy), Ok(())),
            Prediction::Neither { .. }
        ));
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
