//! The agent's top-level error and its exit code: 0 ok, 2 for bad usage or configuration
//! (with a one-line `sipnotify: …` reason), 1 for runtime failures.

use crate::{
    bpf::LoadError,
    capture::source::SourceError,
    sink::{BridgeConfigError, ClientError},
    spool::SpoolError,
    telemetry::TelemetryError,
};

/// Everything that can end `run` once its settings are valid (bad settings never get here:
/// the command line refuses them with exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The XDP program could not be loaded or attached, or an interface does not exist.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// No capture path could start on an interface (`--capture`).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A HEP socket could not be opened (`--hep-listen`, `--hep-forward`).
    #[error(transparent)]
    Hep(#[from] crate::hep::HepSourceError),
    /// The metrics endpoint could not start (its port is taken, say).
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The bridge client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The check before capture found a configuration error at the bridge (an untrusted
    /// certificate, no endpoint at the URL): nothing was attached.
    #[error(transparent)]
    Bridge(#[from] BridgeConfigError),
    /// The spool cannot be used: its directory is not writable or is in use (exit 2), or
    /// what an earlier run left cannot be read (exit 1).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Delivery stopped with an error.
    #[error("{0}")]
    Delivery(String),
    /// An I/O failure while running.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Load(err) => err.exit_code(),
            AgentError::Source(err) => err.exit_code(),
            AgentError::Bridge(_) | AgentError::Hep(_) => 2,
            AgentError::Spool(err) if err.is_config() => 2,
            AgentError::Spool(_) => 1,
            AgentError::Telemetry(_)
            | AgentError::Client(_)
            | AgentError::Io { .. }
            | AgentError::Delivery(_) => 1,
        }
    }
}
