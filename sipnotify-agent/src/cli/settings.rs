//! Flags → validated settings: every check that clap cannot make, once, before anything runs.
//! A value that cannot work is a [`SettingsError`] naming the flag and the value (exit 2).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use reqwest::Url;
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

use super::{
    args::{
        Command, DeliveryArgs, DoctorArgs, HEP_KEY_ENV, HepArgs, LogArgs, PipelineArgs, ReplayArgs,
        RunArgs, SIGNING_KEY_ENV, SpoolArgs, TOKEN_ENV, Toggle,
    },
    config::{Environment, Parsed},
};
use crate::{
    capture::CaptureSettings,
    dedup::DedupSettings,
    doctor::DoctorSettings,
    hep::{AuthKey, HepSettings},
    logging::LogSettings,
    pipeline::PipelineSettings,
    reassembly::ReassemblySettings,
    replay::ReplaySettings,
    run::RunSettings,
    sink::{
        BatchSettings, BearerToken, BodyMode, BridgeSettings, ClientIdentity, Fingerprint,
        RetrySettings, SigningKey, SinkSettings, TlsSettings,
    },
    sip,
    source_filter::SourceFilter,
    spool::{SpoolError, SpoolSettings},
};

/// A body must hold at least one notification plus the array brackets.
const MIN_BATCH_MAX_BYTES: usize = 256;

/// A flag with a value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Too few or too many ports, or port 0.
    #[error("{0}")]
    Ports(String),
    /// A ring size the kernel will not accept.
    #[error("ring buffer size {0} must be a power of two of at least 4096 bytes")]
    RingBytes(u32),
    /// A header name that is not an RFC 3261 token.
    #[error("--extra-header `{0}` is not a valid header name")]
    ExtraHeader(String),
    /// The de-duplicator must remember at least one transaction.
    #[error("--dedup-max-entries must be at least 1, got {0}")]
    DedupMaxEntries(usize),
    /// `--metrics-listen` is neither an address nor `off`.
    #[error("--metrics-listen `{0}` is not an address such as 127.0.0.1:9464 (or `off`)")]
    MetricsListen(String),
    /// The bridge URL does not parse.
    #[error("invalid --bridge-url `{url}`: {reason}")]
    BridgeUrl {
        /// The value given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// `--insecure` and `--ca-file` together.
    #[error("--insecure and --ca-file `{}` contradict each other: pick one", path.display())]
    InsecureWithCaFile {
        /// The CA file given.
        path: PathBuf,
    },
    /// `--insecure` and `--pin-sha256` contradict each other.
    #[error("--insecure and --pin-sha256 contradict each other: drop --insecure")]
    InsecureWithPin,
    /// A `--pin-sha256` value is not a fingerprint.
    #[error("invalid --pin-sha256: {reason}")]
    Pin {
        /// Why.
        reason: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("cannot use --ca-file `{}`: {reason}", path.display())]
    CaFile {
        /// The CA file given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The token file cannot be read or its content is not a usable token.
    #[error("cannot use --bridge-token-file `{}`: {reason}", path.display())]
    TokenFile {
        /// The token file given.
        path: PathBuf,
        /// Why it cannot be used (never the token itself).
        reason: String,
    },
    /// The token environment variable is not a usable token.
    #[error("cannot use ${TOKEN_ENV}: {reason}")]
    TokenEnv {
        /// Why it cannot be used (never the token itself).
        reason: String,
    },
    /// `run` without an interface or a HEP address.
    #[error("nothing to read: give --iface IFACE to capture, or --hep-listen ADDR:PORT for HEP")]
    NothingToRead,
    /// The HEP key file cannot be read or is empty.
    #[error("cannot use --hep-auth-key-file `{}`: {reason}", path.display())]
    HepKeyFile {
        /// The key file given.
        path: PathBuf,
        /// Why (never the key itself).
        reason: String,
    },
    /// The HEP key variable is empty.
    #[error("cannot use ${HEP_KEY_ENV}: it is empty")]
    HepKeyEnv,
    /// `--hep-forward` names one of the agent's own `--hep-listen` addresses.
    #[error("--hep-forward {0} is a --hep-listen address: every datagram would loop")]
    HepForwardLoop(SocketAddr),
    /// The signing key file cannot be read or holds no usable key.
    #[error("cannot use --bridge-signing-key-file `{}`: {reason}", path.display())]
    SigningKeyFile {
        /// The key file given.
        path: PathBuf,
        /// Why it cannot be used (never the key itself).
        reason: String,
    },
    /// The signing key variable is not a usable key.
    #[error("cannot use ${SIGNING_KEY_ENV}: {reason}")]
    SigningKeyEnv {
        /// Why it cannot be used (never the key itself).
        reason: String,
    },
    /// The client certificate or key cannot be used.
    #[error("cannot use the client certificate: {reason}")]
    ClientIdentity {
        /// Why, naming the files.
        reason: String,
    },
    /// `--no-bridge` without `--stdout` would deliver nowhere.
    #[error("--no-bridge without --stdout would deliver nowhere")]
    NowhereToDeliver,
    /// A count that must be at least some minimum.
    #[error("--{flag} must be at least {min}, not {value}")]
    TooSmall {
        /// The flag, without dashes.
        flag: &'static str,
        /// The smallest usable value.
        min: usize,
        /// The value given.
        value: usize,
    },
    /// A duration that must not be zero.
    #[error("--{flag} must be longer than 0, not `{}`", humantime::format_duration(*value))]
    ZeroDuration {
        /// The flag, without dashes.
        flag: &'static str,
        /// The value given.
        value: Duration,
    },
    /// A spool setting that cannot work.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The retry delays are the wrong way round.
    #[error(
        "--retry-initial `{}` is longer than --retry-max `{}`",
        humantime::format_duration(*initial),
        humantime::format_duration(*max)
    )]
    RetryOrder {
        /// `--retry-initial`.
        initial: Duration,
        /// `--retry-max`.
        max: Duration,
    },
}

impl SettingsError {
    /// Process exit code: always 2, a configuration error.
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// What the chosen subcommand runs with.
#[derive(Debug)]
pub enum CommandSettings {
    /// `run`.
    Run(RunSettings),
    /// `run --check-config`: validated, not run.
    CheckConfig(RunSettings),
    /// `replay`.
    Replay(ReplaySettings),
    /// `doctor`.
    Doctor(DoctorSettings),
}

impl CommandSettings {
    /// The logging settings of any command.
    pub fn log(&self) -> &LogSettings {
        match self {
            Self::Run(s) | Self::CheckConfig(s) => &s.log,
            Self::Replay(s) => &s.log,
            Self::Doctor(s) => &s.log,
        }
    }
}

impl Parsed {
    /// Validates the parsed command line into the chosen command's settings; `env` supplies
    /// the bridge token variable.
    pub fn settings(&self, env: &Environment) -> Result<CommandSettings, SettingsError> {
        let secrets = Secrets {
            token: env.get_str(TOKEN_ENV),
            signing_key: env.get_str(SIGNING_KEY_ENV),
            hep_key: env.get_str(HEP_KEY_ENV),
        };
        Ok(match &self.cli.command {
            Command::Run(args) if args.check_config => {
                CommandSettings::CheckConfig(run_settings(args, &secrets)?)
            }
            Command::Run(args) => CommandSettings::Run(run_settings(args, &secrets)?),
            Command::Replay(args) => CommandSettings::Replay(replay_settings(args, &secrets)?),
            Command::Doctor(args) => CommandSettings::Doctor(doctor_settings(args)),
        })
    }
}

fn log_settings(args: &LogArgs) -> LogSettings {
    LogSettings {
        format: args.log_format,
        log_sip: args.log_sip,
    }
}

/// Secrets from the environment (never from argv): the bridge token, the signing key and the
/// HEP key.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// `$SIPNOTIFY_BRIDGE_TOKEN`.
    pub token: Option<String>,
    /// `$SIPNOTIFY_BRIDGE_SIGNING_KEY`.
    pub signing_key: Option<String>,
    /// `$SIPNOTIFY_HEP_AUTH_KEY`.
    pub hep_key: Option<String>,
}

impl Secrets {
    /// Only a bearer token.
    pub fn token(token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..Self::default()
        }
    }
}

fn run_settings(args: &RunArgs, secrets: &Secrets) -> Result<RunSettings, SettingsError> {
    check_ports(&args.ports)?;
    if args.ifaces.is_empty() && args.hep.hep_listen.is_empty() {
        return Err(SettingsError::NothingToRead);
    }
    if args.ring_bytes < 4096 || !args.ring_bytes.is_power_of_two() {
        return Err(SettingsError::RingBytes(args.ring_bytes));
    }
    let mut pipeline = pipeline_settings(&args.pipeline)?;
    pipeline.senders = SourceFilter::new(args.sip_sources.clone());
    let mut hep = hep_settings(&args.hep, secrets.hep_key.clone())?;
    hep.sip_senders = pipeline.senders.clone();
    let delivery = sink_settings(&args.delivery, secrets)?;
    // Only what is posted needs keeping: `--stdout` alone (a read-only root, a rescue system)
    // runs without a spool unless asked for one.
    let spool = spool_settings(&args.spool, delivery.bridge.is_some())?;
    let metrics_listen = match args.metrics_listen.as_str() {
        "off" => None,
        addr => Some(
            addr.parse::<SocketAddr>()
                .map_err(|_| SettingsError::MetricsListen(addr.to_owned()))?,
        ),
    };
    Ok(RunSettings {
        capture: CaptureSettings {
            ifaces: args.ifaces.clone(),
            mode: args.capture,
            ports: args.ports.clone(),
            xdp_mode: args.xdp_mode,
            ring_bytes: args.ring_bytes,
            poll_interval: args.poll_interval,
            senders: pipeline.senders.clone(),
        },
        pipeline,
        delivery,
        metrics_listen,
        spool,
        log: log_settings(&args.log),
        hep,
    })
}

/// The HEP source's settings; the key from `--hep-auth-key-file`, else `$SIPNOTIFY_HEP_AUTH_KEY`
/// (a trailing newline is not part of it).
fn hep_settings(args: &HepArgs, key_env: Option<String>) -> Result<HepSettings, SettingsError> {
    let auth_key = match (&args.hep_auth_key_file, key_env) {
        (Some(path), _) => {
            let fail = |reason: String| SettingsError::HepKeyFile {
                path: path.clone(),
                reason,
            };
            let bytes = std::fs::read(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
            let key = bytes.trim_ascii_end();
            if key.is_empty() {
                return Err(fail("the file is empty".to_owned()));
            }
            Some(AuthKey(key.into()))
        }
        (None, Some(env)) if env.trim_end().is_empty() => return Err(SettingsError::HepKeyEnv),
        (None, Some(env)) => Some(AuthKey(env.trim_end().as_bytes().into())),
        (None, None) => None,
    };
    if let Some(forward) = args.hep_forward.filter(|f| args.hep_listen.contains(f)) {
        return Err(SettingsError::HepForwardLoop(forward));
    }
    if args.hep_recv_buffer == 0 {
        return Err(SettingsError::TooSmall {
            flag: "hep-recv-buffer",
            min: 1,
            value: 0,
        });
    }
    Ok(HepSettings {
        listen: args.hep_listen.clone(),
        auth_key,
        forward: args.hep_forward,
        recv_buffer: args.hep_recv_buffer,
        senders: SourceFilter::new(args.hep_sources.clone()),
        // `run` sets it from its `--sip-source`.
        sip_senders: SourceFilter::default(),
    })
}

/// The spool's settings, or `None` when it is off (`on_by_default` for the command).
fn spool_settings(
    args: &SpoolArgs,
    on_by_default: bool,
) -> Result<Option<SpoolSettings>, SettingsError> {
    let on = args
        .spool
        .map_or(on_by_default, |toggle| toggle == Toggle::On);
    if !on {
        return Ok(None);
    }
    let settings = SpoolSettings {
        max_bytes: args.spool_max_bytes,
        ..SpoolSettings::new(&args.spool_dir)
    };
    settings.validate()?;
    Ok(Some(settings))
}

fn replay_settings(args: &ReplayArgs, secrets: &Secrets) -> Result<ReplaySettings, SettingsError> {
    check_ports(&args.ports)?;
    let mut pipeline = pipeline_settings(&args.pipeline)?;
    pipeline.senders = SourceFilter::new(args.sip_sources.clone());
    let mut delivery = sink_settings(&args.delivery, secrets)?;
    // Captured long ago by definition: the live agent's freshness limit does not apply.
    delivery.max_age = None;
    Ok(ReplaySettings {
        file: args.file.clone(),
        ports: args.ports.clone(),
        hep_port: args.hep_port,
        speed: args.speed,
        pipeline,
        delivery,
        spool: spool_settings(&args.spool, false)?,
        log: log_settings(&args.log),
    })
}

/// Doctor reports a bad bridge flag as a failed check (with the reason) rather than refusing
/// to run: the other checks are still worth having.
fn doctor_settings(args: &DoctorArgs) -> DoctorSettings {
    let bridge = (!args.no_bridge).then(|| {
        let flags = DeliveryArgs {
            bridge_url: Some(args.bridge_url.clone()),
            ca_file: args.ca_file.clone(),
            pin_sha256: args.pin_sha256.clone(),
            insecure: args.insecure,
            request_timeout: args.request_timeout,
            client_cert: args.client_cert.clone(),
            client_key: args.client_key.clone(),
            ..DeliveryArgs::default()
        };
        // The sink's own validation: the URL and CA file are judged as `run` would judge them.
        bridge_settings(&args.bridge_url, &flags, &Secrets::default())
            .map_err(|err| err.to_string())
    });
    DoctorSettings {
        ifaces: args.ifaces.clone(),
        capture: args.capture,
        bridge,
        insecure: args.insecure,
        request_timeout: args.request_timeout,
        senders: SourceFilter::new(args.sip_sources.clone()),
        hep_listen: args.hep_listen.clone(),
        metrics: args.metrics_listen,
        log: log_settings(&args.log),
    }
}

fn check_ports(ports: &[u16]) -> Result<(), SettingsError> {
    if ports.is_empty() || ports.len() > sipnotify_common::MAX_PORTS {
        return Err(SettingsError::Ports(format!(
            "between 1 and {} ports may be watched, got {}",
            sipnotify_common::MAX_PORTS,
            ports.len()
        )));
    }
    if let Some(zero) = ports.iter().find(|&&p| p == 0) {
        return Err(SettingsError::Ports(format!(
            "port {zero} is not a valid UDP port"
        )));
    }
    Ok(())
}

fn pipeline_settings(args: &PipelineArgs) -> Result<PipelineSettings, SettingsError> {
    if args.dedup_max_entries == 0 {
        return Err(SettingsError::DedupMaxEntries(args.dedup_max_entries));
    }
    if let Some(bad) = args
        .extra_headers
        .iter()
        .find(|name| !sip::is_token(name.as_bytes()))
    {
        return Err(SettingsError::ExtraHeader(bad.clone()));
    }
    Ok(PipelineSettings {
        extra_headers: args.extra_headers.clone(),
        allow_missing_call_uuid: args.allow_missing_call_uuid,
        dedup: DedupSettings {
            window: args.dedup_window,
            max_entries: args.dedup_max_entries,
        },
        // No flags: the defaults are sized for any NOTIFY (see `reassembly::fragment` and
        // `reassembly::tcp`), and bounded in memory.
        reassembly: ReassemblySettings::default(),
        // `run` and `replay` set it from their `--sip-source`.
        senders: SourceFilter::default(),
    })
}

/// Validates the delivery flags, reading the CA, token, key and certificate files; `secrets`
/// holds what the environment gave. Public for the tests and benches that deliver without a
/// command line.
pub fn sink_settings(
    args: &DeliveryArgs,
    secrets: &Secrets,
) -> Result<SinkSettings, SettingsError> {
    if args.no_bridge && !args.stdout {
        return Err(SettingsError::NowhereToDeliver);
    }
    // Output means what it says: --stdout alone prints and posts nothing; a bridge URL given
    // anywhere (flag, environment, config file) asks for the bridge too.
    let url = match (&args.bridge_url, args.stdout) {
        _ if args.no_bridge => None,
        (Some(url), _) => Some(url.as_str()),
        (None, false) => Some(super::DEFAULT_BRIDGE_URL),
        (None, true) => None,
    };
    let bridge = match url {
        None => None,
        Some(url) => Some(bridge_settings(url, args, secrets)?),
    };
    let at_least = |flag, min, value| {
        if value < min {
            Err(SettingsError::TooSmall { flag, min, value })
        } else {
            Ok(value)
        }
    };
    let non_zero = |flag, value: Duration| {
        if value.is_zero() {
            Err(SettingsError::ZeroDuration { flag, value })
        } else {
            Ok(value)
        }
    };
    let batch = BatchSettings {
        max_events: at_least("batch-max-events", 1, args.batch_max_events)?,
        max_bytes: at_least("batch-max-bytes", MIN_BATCH_MAX_BYTES, args.batch_max_bytes)?,
        linger: args.batch_linger,
    };
    let max_in_flight = at_least("max-in-flight", 1, args.max_in_flight)?;
    let queue_capacity = at_least("queue-capacity", 1, args.queue_capacity)?;
    let retry = RetrySettings {
        initial: non_zero("retry-initial", args.retry_initial)?,
        max: non_zero("retry-max", args.retry_max)?,
    };
    if retry.initial > retry.max {
        return Err(SettingsError::RetryOrder {
            initial: retry.initial,
            max: retry.max,
        });
    }
    Ok(SinkSettings {
        bridge,
        stdout: args.stdout,
        mode: if args.array_mode {
            BodyMode::Array
        } else {
            BodyMode::Object
        },
        batch,
        extras: args.extras,
        max_in_flight,
        max_age: (!args.max_age.is_zero()).then_some(args.max_age),
        retry,
        shutdown_timeout: args.shutdown_timeout,
        queue_capacity,
    })
}

fn bridge_settings(
    url: &str,
    args: &DeliveryArgs,
    secrets: &Secrets,
) -> Result<BridgeSettings, SettingsError> {
    let url = parse_bridge_url(url)?;
    let tls = tls_settings(args)?;
    let token = bearer_token(args.bridge_token_file.as_deref(), secrets.token.clone())?;
    let signing_key = signing_key(
        args.bridge_signing_key_file.as_deref(),
        secrets.signing_key.as_deref(),
    )?;
    let client_identity = client_identity(args)?;
    if args.request_timeout.is_zero() {
        return Err(SettingsError::ZeroDuration {
            flag: "request-timeout",
            value: args.request_timeout,
        });
    }
    Ok(BridgeSettings {
        url,
        tls,
        token,
        signing_key,
        client_identity,
        request_timeout: args.request_timeout,
    })
}

fn parse_bridge_url(raw: &str) -> Result<Url, SettingsError> {
    let invalid = |reason: String| SettingsError::BridgeUrl {
        url: raw.to_owned(),
        reason,
    };
    let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "https" | "http" => {}
        other => return Err(invalid(format!("scheme `{other}` is not http or https"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in the URL would show up in logs and `ps`; the token file is the way.
        return Err(invalid(
            "credentials in the url are not supported; use --bridge-token-file".to_owned(),
        ));
    }
    Ok(url)
}

fn tls_settings(args: &DeliveryArgs) -> Result<TlsSettings, SettingsError> {
    let pins = args
        .pin_sha256
        .iter()
        .map(|text| text.parse().map_err(|reason| SettingsError::Pin { reason }))
        .collect::<Result<Vec<Fingerprint>, _>>()?;
    match (&args.ca_file, args.insecure) {
        (Some(path), true) => Err(SettingsError::InsecureWithCaFile { path: path.clone() }),
        (None, true) if !pins.is_empty() => Err(SettingsError::InsecureWithPin),
        (None, true) => Ok(TlsSettings::Insecure),
        (None, false) => Ok(TlsSettings::Verify {
            extra_roots: Vec::new(),
            pins,
        }),
        (Some(path), false) => Ok(TlsSettings::Verify {
            extra_roots: read_ca_file(path)?,
            pins,
        }),
    }
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let fail = |reason: String| SettingsError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a pem certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(fail("no `BEGIN CERTIFICATE` block in it".to_owned()));
    }
    // Parse each root now so a bad file is a configuration error, not a failed handshake.
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| fail(format!("unusable certificate ({e})")))?;
    }
    Ok(certs)
}

fn signing_key(
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<SigningKey>, SettingsError> {
    if let Some(path) = file {
        let fail = |reason: String| SettingsError::SigningKeyFile {
            path: path.to_owned(),
            reason,
        };
        let raw = std::fs::read_to_string(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        return SigningKey::new(&raw).map(Some).map_err(fail);
    }
    match env {
        Some(raw) if !raw.trim().is_empty() => SigningKey::new(raw)
            .map(Some)
            .map_err(|reason| SettingsError::SigningKeyEnv { reason }),
        _ => Ok(None),
    }
}

fn client_identity(args: &DeliveryArgs) -> Result<Option<ClientIdentity>, SettingsError> {
    let (cert, key) = match (&args.client_cert, &args.client_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) | (None, Some(_)) => {
            return Err(SettingsError::ClientIdentity {
                reason: "--client-cert and --client-key go together: give both".to_owned(),
            });
        }
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| SettingsError::ClientIdentity {
            reason: format!(
                "cannot read {}: {}",
                path.display(),
                e.to_string().to_lowercase()
            ),
        })
    };
    ClientIdentity::from_pem(&read(cert)?, &read(key)?)
        .map(Some)
        .map_err(|reason| SettingsError::ClientIdentity {
            reason: format!("{} and {}: {reason}", cert.display(), key.display()),
        })
}

fn bearer_token(
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<BearerToken>, SettingsError> {
    if let Some(path) = file {
        let fail = |reason: String| SettingsError::TokenFile {
            path: path.to_owned(),
            reason,
        };
        let raw = std::fs::read_to_string(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        return BearerToken::new(&raw).map(Some).map_err(fail);
    }
    match env {
        Some(raw) if !raw.trim().is_empty() => BearerToken::new(&raw)
            .map(Some)
            .map_err(|reason| SettingsError::TokenEnv { reason }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use clap::Parser;

    use super::*;
    use crate::event::JsonOptions;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        delivery: DeliveryArgs,
    }

    fn parse(args: &[&str]) -> Result<DeliveryArgs, clap::Error> {
        Flags::try_parse_from(std::iter::once("sipnotify").chain(args.iter().copied()))
            .map(|flags| flags.delivery)
    }

    fn settings(args: &[&str]) -> Result<SinkSettings, String> {
        let args = parse(args).map_err(|e| e.to_string())?;
        sink_settings(&args, &Secrets::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_flag_defaults() {
        assert_eq!(parse(&[]).ok(), Some(DeliveryArgs::default()));
    }

    #[test]
    fn default_settings_are_valid_and_verify_tls() {
        let settings = settings(&[]).unwrap();
        let bridge = settings.bridge.clone().unwrap();
        assert_eq!(bridge.url.as_str(), super::super::args::DEFAULT_BRIDGE_URL);
        assert_eq!(
            bridge.tls,
            TlsSettings::Verify {
                extra_roots: Vec::new(),
                pins: Vec::new(),
            }
        );
        assert_eq!(settings.mode, BodyMode::Object);
        assert_eq!(settings.max_age, Some(Duration::from_secs(3600)));
        assert!(!settings.json_options().with_id);
    }

    #[test]
    fn durations_parse_in_human_units() {
        let args = parse(&[
            "--batch-linger",
            "2ms",
            "--max-age",
            "0",
            "--retry-max",
            "1m",
        ]);
        let args = args.unwrap();
        assert_eq!(args.batch_linger, Duration::from_millis(2));
        assert_eq!(args.retry_max, Duration::from_secs(60));
        let settings = sink_settings(&args, &Secrets::default()).unwrap();
        assert_eq!(settings.max_age, None);
        assert!(parse(&["--request-timeout", "5 parsecs"]).is_err());
    }

    #[test]
    fn bad_values_are_named_in_lowercase_messages() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--bridge-url", "ftp://x/y"],
                "invalid --bridge-url `ftp://x/y`",
            ),
            (
                &["--bridge-url", "not a url"],
                "invalid --bridge-url `not a url`",
            ),
            (&["--bridge-url", "https://u:p@h/x"], "credentials"),
            (
                &["--batch-max-events", "0"],
                "--batch-max-events must be at least 1, not 0",
            ),
            (
                &["--batch-max-bytes", "10"],
                "--batch-max-bytes must be at least 256, not 10",
            ),
            (
                &["--max-in-flight", "0"],
                "--max-in-flight must be at least 1",
            ),
            (
                &["--queue-capacity", "0"],
                "--queue-capacity must be at least 1",
            ),
            (
                &["--request-timeout", "0s"],
                "--request-timeout must be longer than 0",
            ),
            (
                &["--retry-initial", "10s", "--retry-max", "1s"],
                "--retry-initial `10s` is longer",
            ),
            (
                &["--ca-file", "/nonexistent/ca.pem"],
                "cannot use --ca-file `/nonexistent/ca.pem`",
            ),
            (
                &["--bridge-token-file", "/nonexistent/token"],
                "cannot use --bridge-token-file `/nonexistent/token`",
            ),
        ];
        for (args, expected) in cases {
            let message = settings(args).err().unwrap_or_default();
            assert!(message.contains(expected), "{args:?}: {message}");
            assert!(!message.starts_with(char::is_uppercase), "{message}");
        }
    }

    #[test]
    fn insecure_conflicts_with_ca_file() {
        assert!(parse(&["--insecure", "--ca-file", "x.pem"]).is_err());
        let args = DeliveryArgs {
            insecure: true,
            ca_file: Some("x.pem".into()),
            ..DeliveryArgs::default()
        };
        let err = sink_settings(&args, &Secrets::default()).err();
        assert!(matches!(
            err,
            Some(SettingsError::InsecureWithCaFile { .. })
        ));
        let insecure = settings(&["--insecure"]).unwrap();
        assert_eq!(insecure.bridge.unwrap().tls, TlsSettings::Insecure);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "just text").unwrap();
        let path = file.path().to_str().unwrap();
        let message = settings(&["--ca-file", path]).err().unwrap();
        assert!(
            message.contains("no `BEGIN CERTIFICATE` block"),
            "{message}"
        );
    }

    #[test]
    fn token_comes_from_the_file_first_then_the_environment() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  s3cret-token  ").unwrap();
        let args = DeliveryArgs {
            bridge_token_file: Some(file.path().to_owned()),
            ..DeliveryArgs::default()
        };
        let from_file = sink_settings(&args, &Secrets::token("env-token"));
        let token = from_file.unwrap().bridge.unwrap().token.unwrap();
        assert_eq!(token.expose(), "s3cret-token");
        assert!(!format!("{token:?}").contains("s3cret"));

        let from_env = sink_settings(&DeliveryArgs::default(), &Secrets::token("env"));
        assert_eq!(
            from_env.unwrap().bridge.unwrap().token.unwrap().expose(),
            "env"
        );

        let bad = sink_settings(&DeliveryArgs::default(), &Secrets::token("two words"));
        let message = bad.err().unwrap().to_string();
        assert!(message.contains("$SIPNOTIFY_BRIDGE_TOKEN"), "{message}");
        assert!(!message.contains("two words"), "{message}");
    }

    #[test]
    fn no_bridge_needs_stdout() {
        assert!(parse(&["--no-bridge"]).is_err());
        let args = DeliveryArgs {
            no_bridge: true,
            ..DeliveryArgs::default()
        };
        assert!(matches!(
            sink_settings(&args, &Secrets::default()),
            Err(SettingsError::NowhereToDeliver)
        ));
        let stdout_only = settings(&["--stdout", "--no-bridge"]).unwrap();
        assert!(stdout_only.bridge.is_none() && stdout_only.stdout);
    }

    #[test]
    fn array_mode_objects_carry_their_id() {
        let settings = settings(&["--array-mode", "--extras"]).unwrap();
        assert_eq!(settings.mode, BodyMode::Array);
        assert_eq!(
            settings.json_options(),
            JsonOptions {
                extras: true,
                with_id: true
            }
        );
    }

    #[test]
    fn port_ring_and_pipeline_checks_name_the_bad_value() {
        assert!(check_ports(&[5061]).is_ok());
        assert_eq!(
            check_ports(&[0]).unwrap_err().to_string(),
            "port 0 is not a valid UDP port"
        );
        assert!(
            check_ports(&[1; 17])
                .unwrap_err()
                .to_string()
                .contains("got 17")
        );
        assert_eq!(
            SettingsError::RingBytes(5000).to_string(),
            "ring buffer size 5000 must be a power of two of at least 4096 bytes"
        );
        let args = PipelineArgs {
            extra_headers: vec!["X-Genesys-Foo".into(), "bad name".into()],
            ..PipelineArgs::default()
        };
        assert_eq!(
            pipeline_settings(&args).unwrap_err().to_string(),
            "--extra-header `bad name` is not a valid header name"
        );
        let args = PipelineArgs {
            dedup_max_entries: 0,
            ..PipelineArgs::default()
        };
        assert!(
            pipeline_settings(&args)
                .unwrap_err()
                .to_string()
                .contains("got 0")
        );
    }

    fn command_settings(list: &[&str]) -> Result<CommandSettings, String> {
        let args: Vec<std::ffi::OsString> = list.iter().map(Into::into).collect();
        let env = Environment::default();
        let parsed = super::super::config::parse(args, &env, Path::new("/nonexistent/sipnotify"))
            .map_err(|e| e.to_string())?;
        parsed.settings(&env).map_err(|e| e.to_string())
    }

    #[test]
    fn the_spool_is_on_for_run_and_off_for_replay_unless_asked() {
        let run = |extra: &[&str]| {
            let list = [&["sipnotify-agent", "run", "--iface", "eth0"], extra].concat();
            match command_settings(&list)? {
                CommandSettings::Run(run) => Ok::<_, String>(run.spool),
                other => panic!("{other:?}"),
            }
        };
        let on = run(&[]).unwrap().unwrap();
        assert_eq!(on.dir, Path::new("/var/lib/sipnotify"));
        assert_eq!(on.max_bytes, 1 << 30);
        assert_eq!(run(&["--spool", "off"]).unwrap(), None);
        let custom = run(&["--spool-dir", "/srv/spool", "--spool-max-bytes", "2097152"]);
        let custom = custom.unwrap().unwrap();
        assert_eq!(
            (custom.dir.as_path(), custom.max_bytes),
            (Path::new("/srv/spool"), 2 << 20)
        );
        assert_eq!(
            run(&["--spool-max-bytes", "1000"]).unwrap_err(),
            "--spool-max-bytes must be at least 1048576, not 1000"
        );
        // Stdout alone posts nothing and keeps nothing, unless a spool is asked for.
        assert_eq!(run(&["--stdout"]).unwrap(), None);
        assert_eq!(run(&["--stdout", "--no-bridge"]).unwrap(), None);
        assert!(run(&["--stdout", "--spool", "on"]).unwrap().is_some());
        assert!(
            run(&["--stdout", "--bridge-url", "https://127.0.0.1:8000/notify"])
                .unwrap()
                .is_some()
        );

        let replay = |extra: &[&str]| {
            let list = [&["sipnotify-agent", "replay", "x.pcap"], extra].concat();
            match command_settings(&list) {
                Ok(CommandSettings::Replay(replay)) => replay.spool,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(replay(&[]), None);
        assert!(replay(&["--spool", "on"]).is_some());
    }

    /// `run` settings from `list` with `env` and the config file `file` (if any).
    fn run_with(
        list: &[&str],
        env: &[(&str, &str)],
        file: Option<&str>,
    ) -> Result<RunSettings, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sipnotify.toml");
        if let Some(text) = file {
            std::fs::write(&config, text).unwrap();
        }
        let args: Vec<std::ffi::OsString> = list.iter().map(Into::into).collect();
        let env: Environment = env.iter().copied().collect();
        let parsed = super::super::config::parse(args, &env, &config).map_err(|e| e.to_string())?;
        match parsed.settings(&env).map_err(|e| e.to_string())? {
            CommandSettings::Run(run) => Ok(run),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hep_listen_needs_no_iface_and_comes_from_flag_environment_or_file() {
        let flag = run_with(
            &["sipnotify-agent", "run", "--hep-listen", "127.0.0.1:9060"],
            &[],
            None,
        )
        .unwrap();
        assert!(flag.capture.ifaces.is_empty());
        assert_eq!(flag.hep.listen, vec!["127.0.0.1:9060".parse().unwrap()]);
        assert_eq!(flag.hep.auth_key, None);
        assert_eq!(flag.hep.recv_buffer, crate::hep::DEFAULT_RECV_BUFFER);
        let env = run_with(
            &["sipnotify-agent", "run"],
            &[
                ("SIPNOTIFY_HEP_LISTEN", "127.0.0.1:9060,[::1]:9061"),
                ("SIPNOTIFY_HEP_AUTH_KEY", "s3cret"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(env.hep.listen.len(), 2);
        assert_eq!(env.hep.auth_key, Some(AuthKey(b"s3cret"[..].into())));
        let file = run_with(
            &["sipnotify-agent", "run"],
            &[],
            Some("hep_listen = [\"0.0.0.0:9060\"]\nhep_forward = \"192.0.2.9:9060\"\n"),
        )
        .unwrap();
        assert_eq!(file.hep.forward, Some("192.0.2.9:9060".parse().unwrap()));
        // Neither an interface nor a HEP address: nothing to read.
        assert!(run_with(&["sipnotify-agent", "run"], &[], None).is_err());
    }

    #[test]
    fn the_hep_key_file_wins_and_bad_hep_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hep.key");
        std::fs::write(&key, "from-file\n").unwrap();
        let base = ["sipnotify-agent", "run", "--hep-listen", "127.0.0.1:9060"];
        let with_file = [&base[..], &["--hep-auth-key-file", key.to_str().unwrap()]].concat();
        let run = run_with(&with_file, &[("SIPNOTIFY_HEP_AUTH_KEY", "from-env")], None).unwrap();
        assert_eq!(run.hep.auth_key, Some(AuthKey(b"from-file"[..].into())));
        assert!(
            !format!("{run:?}").contains("from-file"),
            "the key is never printed"
        );
        std::fs::write(&key, "\n").unwrap();
        assert!(
            run_with(&with_file, &[], None)
                .unwrap_err()
                .contains("the file is empty")
        );
        assert_eq!(
            run_with(&base, &[("SIPNOTIFY_HEP_AUTH_KEY", " ")], None).unwrap_err(),
            "cannot use $SIPNOTIFY_HEP_AUTH_KEY: it is empty"
        );
        let looped = [&base[..], &["--hep-forward", "127.0.0.1:9060"]].concat();
        assert_eq!(
            run_with(&looped, &[], None).unwrap_err(),
            "--hep-forward 127.0.0.1:9060 is a --hep-listen address: every datagram would loop"
        );
    }
}
