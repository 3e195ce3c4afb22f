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

/// An interface's capture, whichever path it took.
pub enum Source {
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
pub fn open(iface: &str, settings: &SourceSettings) -> Result<Source, SourceError> {
    let program = ProgramSettings {
        ports: settings.ports.clone(),
        ring_bytes: settings.ring_bytes,
    };
    let fallback = match settings.mode {
        CaptureMode::AfPacket => None,
        CaptureMode::Xdp => {
            let attached = bpf::attach(iface, settings.xdp_mode, &program)?;
            return Ok(Source::Xdp(Box::new(attached)));
        }
        CaptureMode::Auto => match bpf::attach(iface, settings.xdp_mode, &program) {
            Ok(attached) => return Ok(Source::Xdp(Box::new(attached))),
            Err(err) => match fallback_reason(&err) {
                Some(reason) => {
                    warn!(iface, reason = %reason, "XDP capture is not possible here; capturing with AF_PACKET");
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
    Ok(Source::AfPacket(socket))
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
