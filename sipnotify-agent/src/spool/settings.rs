//! What the spool runs with (directory, bound, sync cadence), why it cannot be used, and what
//! it reports: what opening found, its counters and its gauges.

use std::{io, path::PathBuf, time::Duration};

/// Default bound of the spool on disk: hours of a large site's traffic (~300 bytes a record).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// The smallest bound accepted: a few segments of a few records.
pub const MIN_MAX_BYTES: u64 = 1 << 20;
/// How often written records are forced to the disk by default.
pub const DEFAULT_FSYNC_EVERY: Duration = Duration::from_millis(100);

/// Where and how big the spool is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The directory (created if missing; must be writable).
    pub dir: PathBuf,
    /// The most bytes of segments on disk; beyond it the oldest segment is dropped.
    pub max_bytes: u64,
    /// How often written records are `fdatasync`ed (the window a power cut can lose).
    pub fsync_every: Duration,
}

impl SpoolSettings {
    /// Settings for `dir` with the default bound and cadence.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            fsync_every: DEFAULT_FSYNC_EVERY,
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), SpoolError> {
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(SpoolError::TooSmall {
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(64 << 10, 16 << 20)
    }
}

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The directory cannot be created or written.
    #[error("cannot use --spool-dir `{}`: {reason}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another agent holds the directory.
    #[error(
        "--spool-dir `{}` is in use by another sipnotify-agent; give each agent its own \
         --spool-dir, or --spool off",
        dir.display()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The bound is too small to hold anything useful.
    #[error("--spool-max-bytes must be at least {MIN_MAX_BYTES}, not {max_bytes}")]
    TooSmall {
        /// The value given.
        max_bytes: u64,
    },
    /// A read or write failed while running.
    #[error("spool file `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SpoolError {
    /// Whether this is a configuration problem found at start (exit 2).
    pub fn is_config(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

/// What opening the spool found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records left undelivered by the previous run (some may be acked already: at most the
    /// out-of-order acks of the last moments).
    pub pending: u64,
    /// Bytes of segments on disk.
    pub bytes: u64,
    /// Corrupt or torn records found in the last segment (others are found as they are read).
    pub corrupt: u64,
}

/// Counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolCounts {
    /// Records dropped, never handed out, because the spool was full.
    pub dropped_full: u64,
    /// Records lost to corruption (ids skipped between valid records, or 1 per torn tail).
    pub corrupt: u64,
}

/// A point-in-time view for metrics and the shutdown summary.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpoolGauges {
    /// Bytes of segments on disk.
    pub bytes: u64,
    /// Records not yet acknowledged.
    pub entries: u64,
    /// Age of the oldest record not yet acknowledged (to within a segment for records not
    /// read back yet).
    pub oldest_age: Option<Duration>,
}
