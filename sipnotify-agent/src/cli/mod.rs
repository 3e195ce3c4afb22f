//! The command line, the agent's contract with operators and packaging: `run`, `replay`,
//! `doctor`, each with flags, `SIPNOTIFY_*` variables and a config file. This module owns every
//! clap type and every default; nothing outside it sees clap.
//!
//! - `args`: the clap types, their defaults and help;
//! - `config`: flags over `SIPNOTIFY_*` environment variables over the config file;
//! - `settings`: the parsed flags validated into one settings value per command
//!   (`RunSettings`, `ReplaySettings`, `DoctorSettings`), which the command modules take.
//!
//! Flag names are part of the contract; every flag has a one-line help and, where the choice
//! is not obvious, a longer one.

mod args;
mod config;
mod settings;

pub use args::{
    Cli, Command, DEFAULT_BRIDGE_URL, DeliveryArgs, DoctorArgs, HEP_KEY_ENV, HepArgs, LogArgs,
    PipelineArgs, ReplayArgs, RunArgs, SIGNING_KEY_ENV, TOKEN_ENV, parse_duration,
};
pub use config::{DEFAULT_CONFIG, Environment, Parsed, command, first_line, parse};
pub use settings::{CommandSettings, Secrets, SettingsError, sink_settings};
