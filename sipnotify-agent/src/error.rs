//! The agent's top-level error and its exit code (design.md: 2 for bad usage or
//! configuration, 1 for runtime failures).

use crate::bpf::LoadError;

/// Everything that can end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag or configuration value is invalid.
    #[error("{0}")]
    Config(String),
    /// The XDP program could not be loaded or attached.
    #[error(transparent)]
    Load(#[from] LoadError),
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
            AgentError::Config(_) => 2,
            AgentError::Load(err) => err.exit_code(),
            AgentError::Io { .. } | AgentError::Delivery(_) => 1,
        }
    }
}
