//! The running kernel's version, compared against what the program needs.

use std::{fmt, io};

/// The oldest kernel the program loads on: XDP multi-buffer (`xdp.frags`) and
/// `bpf_xdp_load_bytes` arrived in Linux 5.18; the ring
/// buffer (5.8) and XDP `bpf_link` (5.9) are older.
pub const MIN_KERNEL: KernelVersion = KernelVersion {
    major: 5,
    minor: 18,
};

/// A kernel `major.minor` version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl KernelVersion {
    /// The running kernel's version, from `uname(2)`.
    pub fn current() -> io::Result<Self> {
        // SAFETY: an all-zero utsname is a valid buffer for uname to fill.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `uts` is a valid, writable utsname.
        if unsafe { libc::uname(&mut uts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let release: Vec<u8> = uts
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let release = String::from_utf8_lossy(&release);
        Self::parse(&release).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unrecognised kernel release `{release}`"),
            )
        })
    }

    /// Parses the leading `major.minor` of a release string such as `6.18.44-fc-v595`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_release_strings() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v595"),
            Some(KernelVersion {
                major: 6,
                minor: 18
            })
        );
        assert_eq!(
            KernelVersion::parse("5.4.0-150-generic"),
            Some(KernelVersion { major: 5, minor: 4 })
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
    }

    #[test]
    fn orders_by_major_then_minor() {
        assert!(
            KernelVersion {
                major: 5,
                minor: 17
            } < MIN_KERNEL
        );
        assert!(KernelVersion { major: 6, minor: 1 } > MIN_KERNEL);
    }
}
