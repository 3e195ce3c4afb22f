//! Delivery of notifications to the WebRTC bridge (HTTPS POST) and to stdout (JSON lines).
//!
//! The flags (`DeliveryArgs`) are validated once into `SinkSettings`, so a bad value is a
//! configuration error (exit 2) before anything is captured. The driver (`deliver`,
//! `Delivery::run`) drains the queue with a bounded number of requests in flight, retries what
//! can succeed later, and on shutdown reports what it could not deliver.
//!
//! Layout: `batch` builds request bodies, `http` sends them and classifies replies, `retry`
//! holds the backoff, `tls` the rustls set-up, `stdout` the JSON-lines writer, `driver` the loop.

mod batch;
mod driver;
pub(crate) mod http;
mod retry;
mod stdout;
pub(crate) mod tls;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use reqwest::Url;
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

pub use driver::{Delivery, DeliveryError, DeliveryFailed, DeliveryReport, deliver};
pub use http::{BatchOutcome, BridgeCheck, BridgeConfigError, SendError};
pub use stdout::JsonLines;
pub use tls::{Fingerprint, TrustedBy, Verdict};

use crate::event::JsonOptions;

/// The bridge endpoint of the reference site (design.md).
pub const DEFAULT_BRIDGE_URL: &str = "https://127.0.0.1:8000/genesys-call-notify";
/// Environment variable that may hold the bridge's bearer token (never a flag: argv is public).
pub const TOKEN_ENV: &str = "SIPNOTIFY_BRIDGE_TOKEN";

const DEFAULT_BATCH_MAX_EVENTS: usize = 500;
const DEFAULT_BATCH_MAX_BYTES: usize = 1 << 20;
const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// About 18 MiB at most (an owned notification is under 1 KiB); 200 s of a busy site's
/// 100 NOTIFY/s while the bridge is down.
const DEFAULT_QUEUE_CAPACITY: usize = 20_000;
/// A body must hold at least one notification plus the array brackets.
const MIN_BATCH_MAX_BYTES: usize = 256;

/// Delivery flags shared by `run` and `replay`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliveryArgs {
    /// The bridge endpoint that receives each notification (HTTP POST of JSON).
    #[arg(long, value_name = "URL", default_value = DEFAULT_BRIDGE_URL)]
    pub bridge_url: String,

    /// Do not verify the bridge's TLS certificate (a warning is logged at start).
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,

    /// Trust the certificates in this PEM file: the CA that signed the bridge's certificate,
    /// or the bridge's own (self-signed) certificate, which is then trusted as it is whatever
    /// its CA flag says. The host name and dates are checked either way.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Trust the bridge certificate with this SHA-256 fingerprint (as `openssl x509 -noout
    /// -fingerprint -sha256 -in CERT` prints it; repeat for several). The host name and dates
    /// are still checked.
    #[arg(
        long = "pin-sha256",
        value_name = "FINGERPRINT",
        conflicts_with = "insecure"
    )]
    pub pin_sha256: Vec<String>,

    /// Send `Authorization: Bearer <token>` with the token read from this file; the token can
    /// also come from the SIPNOTIFY_BRIDGE_TOKEN environment variable.
    #[arg(long, value_name = "PATH")]
    pub bridge_token_file: Option<PathBuf>,

    /// Print each notification as one JSON line on stdout (the object the bridge gets).
    #[arg(long)]
    pub stdout: bool,

    /// Do not post to the bridge (with --stdout: print only).
    #[arg(long, requires = "stdout")]
    pub no_bridge: bool,

    /// Post a JSON array of notifications per request (for bridges that accept it); each
    /// object then carries its `id`.
    #[arg(long)]
    pub array_mode: bool,

    /// Array mode: the most notifications in one request.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_MAX_EVENTS)]
    pub batch_max_events: usize,

    /// Array mode: the largest request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BATCH_MAX_BYTES)]
    pub batch_max_bytes: usize,

    /// Array mode: how long a batch waits for more notifications after its first one.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// The most requests awaiting the bridge's reply at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Give up on one request (and retry it) after this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Drop (and count) notifications captured longer ago than this instead of delivering
    /// them late; 0 disables the limit.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_age: Duration,

    /// First retry delay (exponential backoff with full jitter).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_initial: Duration,

    /// Longest retry delay.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// On shutdown, keep delivering what is queued and in flight for at most this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// The most notifications waiting for delivery; when full the oldest is dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,

    /// Add caller, cseq, captured_at, src, dst and iface to each object.
    #[arg(long)]
    pub extras: bool,
}

impl Default for DeliveryArgs {
    /// The same values as the flags' defaults (a unit test keeps them in step).
    fn default() -> Self {
        Self {
            bridge_url: DEFAULT_BRIDGE_URL.to_owned(),
            insecure: false,
            ca_file: None,
            pin_sha256: Vec::new(),
            bridge_token_file: None,
            stdout: false,
            no_bridge: false,
            array_mode: false,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            batch_linger: Duration::from_millis(1),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: Duration::from_secs(5),
            max_age: Duration::from_secs(60),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            extras: false,
        }
    }
}

/// A delivery flag with a value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
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
    /// The HTTP client could not be built from these settings.
    #[error("cannot set up the bridge client: {reason}")]
    Client {
        /// What failed.
        reason: String,
    },
}

/// How the bridge's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSettings {
    /// Verify against the system roots plus the certificates of `--ca-file`, which are also
    /// trusted as they are when the bridge presents one of them, and the pins.
    Verify {
        /// The certificates of `--ca-file`.
        extra_roots: Vec<CertificateDer<'static>>,
        /// `--pin-sha256`.
        pins: Vec<Fingerprint>,
    },
    /// Accept any certificate (`--insecure`).
    Insecure,
}

/// A bearer token; its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps a token, rejecting one that cannot go in an HTTP header.
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".to_owned());
        }
        if token.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err("the token holds whitespace or non-ASCII characters".to_owned());
        }
        Ok(Self(token.to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Where and how to POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSettings {
    /// The endpoint.
    pub url: Url,
    /// Certificate checking.
    pub tls: TlsSettings,
    /// Optional bearer token.
    pub token: Option<BearerToken>,
    /// Per-request timeout (connect included).
    pub request_timeout: Duration,
}

/// The request body shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// One JSON object per request (what the existing bridge accepts).
    Object,
    /// A JSON array of objects per request.
    Array,
}

/// When an array-mode batch closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// The most notifications in one body.
    pub max_events: usize,
    /// The largest body in bytes (a single larger object is still sent alone).
    pub max_bytes: usize,
    /// How long a batch waits for more after its first notification.
    pub linger: Duration,
}

/// Retry backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Upper bound of every delay.
    pub max: Duration,
}

/// Validated delivery settings. Build them with [`SinkSettings::from_args`]; the fields are
/// public so tests, benches and `replay` can adjust them (e.g. `max_age = None` for old
/// captures), after which [`SinkSettings::validate`] checks them again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSettings {
    /// The bridge, unless `--no-bridge`.
    pub bridge: Option<BridgeSettings>,
    /// Also print JSON lines on stdout.
    pub stdout: bool,
    /// Object or array bodies.
    pub mode: BodyMode,
    /// Array-mode batching.
    pub batch: BatchSettings,
    /// Extras in the JSON objects.
    pub extras: bool,
    /// The most requests in flight.
    pub max_in_flight: usize,
    /// Notifications captured longer ago are dropped; `None` disables the limit.
    pub max_age: Option<Duration>,
    /// Retry backoff.
    pub retry: RetrySettings,
    /// How long shutdown keeps delivering.
    pub shutdown_timeout: Duration,
    /// Queue capacity (the caller creates the queue with it).
    pub queue_capacity: usize,
}

impl SinkSettings {
    /// Validates the flags, reading the CA and token files and the token variable.
    pub fn from_args(args: &DeliveryArgs) -> Result<Self, SinkConfigError> {
        Self::from_args_and_token_env(args, std::env::var(TOKEN_ENV).ok())
    }

    /// Like [`SinkSettings::from_args`] with the token variable's value given (for tests).
    pub fn from_args_and_token_env(
        args: &DeliveryArgs,
        token_env: Option<String>,
    ) -> Result<Self, SinkConfigError> {
        if args.no_bridge && !args.stdout {
            return Err(SinkConfigError::NowhereToDeliver);
        }
        let bridge = if args.no_bridge {
            None
        } else {
            Some(BridgeSettings {
                url: parse_bridge_url(&args.bridge_url)?,
                tls: tls_settings(args)?,
                token: bearer_token(args.bridge_token_file.as_deref(), token_env)?,
                request_timeout: args.request_timeout,
            })
        };
        let settings = Self {
            bridge,
            stdout: args.stdout,
            mode: if args.array_mode {
                BodyMode::Array
            } else {
                BodyMode::Object
            },
            batch: BatchSettings {
                max_events: args.batch_max_events,
                max_bytes: args.batch_max_bytes,
                linger: args.batch_linger,
            },
            extras: args.extras,
            max_in_flight: args.max_in_flight,
            max_age: (!args.max_age.is_zero()).then_some(args.max_age),
            retry: RetrySettings {
                initial: args.retry_initial,
                max: args.retry_max,
            },
            shutdown_timeout: args.shutdown_timeout,
            queue_capacity: args.queue_capacity,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the numeric and duration settings.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        let at_least = |flag, min, value| {
            if value < min {
                Err(SinkConfigError::TooSmall { flag, min, value })
            } else {
                Ok(())
            }
        };
        at_least("batch-max-events", 1, self.batch.max_events)?;
        at_least("batch-max-bytes", MIN_BATCH_MAX_BYTES, self.batch.max_bytes)?;
        at_least("max-in-flight", 1, self.max_in_flight)?;
        at_least("queue-capacity", 1, self.queue_capacity)?;
        let non_zero = |flag, value: Duration| {
            if value.is_zero() {
                Err(SinkConfigError::ZeroDuration { flag, value })
            } else {
                Ok(())
            }
        };
        if let Some(bridge) = &self.bridge {
            non_zero("request-timeout", bridge.request_timeout)?;
        }
        non_zero("retry-initial", self.retry.initial)?;
        non_zero("retry-max", self.retry.max)?;
        if self.retry.initial > self.retry.max {
            return Err(SinkConfigError::RetryOrder {
                initial: self.retry.initial,
                max: self.retry.max,
            });
        }
        Ok(())
    }

    /// The JSON options of every object this configuration emits.
    pub fn json_options(&self) -> JsonOptions {
        JsonOptions {
            extras: self.extras,
            with_id: self.mode == BodyMode::Array,
        }
    }
}

fn parse_bridge_url(raw: &str) -> Result<Url, SinkConfigError> {
    let invalid = |reason: String| SinkConfigError::BridgeUrl {
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

fn tls_settings(args: &DeliveryArgs) -> Result<TlsSettings, SinkConfigError> {
    let pins = args
        .pin_sha256
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|reason| SinkConfigError::Pin { reason })
        })
        .collect::<Result<Vec<Fingerprint>, _>>()?;
    match (&args.ca_file, args.insecure) {
        (Some(path), true) => Err(SinkConfigError::InsecureWithCaFile { path: path.clone() }),
        (None, true) if !pins.is_empty() => Err(SinkConfigError::InsecureWithPin),
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

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, SinkConfigError> {
    let fail = |reason: String| SinkConfigError::CaFile {
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

fn bearer_token(
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<BearerToken>, SinkConfigError> {
    if let Some(path) = file {
        let fail = |reason: String| SinkConfigError::TokenFile {
            path: path.to_owned(),
            reason,
        };
        let raw = std::fs::read_to_string(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        return BearerToken::new(&raw).map(Some).map_err(fail);
    }
    match env {
        Some(raw) if !raw.trim().is_empty() => BearerToken::new(&raw)
            .map(Some)
            .map_err(|reason| SinkConfigError::TokenEnv { reason }),
        _ => Ok(None),
    }
}

/// Whether the bridge has answered at least once (any HTTP status), for `/healthz`.
/// Cloning shares the flag.
#[derive(Clone, Debug, Default)]
pub struct BridgeHealth {
    answered: Arc<AtomicBool>,
}

impl BridgeHealth {
    /// True once any HTTP reply came back from the bridge.
    pub fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        delivery: DeliveryArgs,
    }

    fn parse(args: &[&str]) -> Result<DeliveryArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("sipnotify").chain(args.iter().copied()))
            .map(|cli| cli.delivery)
    }

    fn settings(args: &[&str]) -> Result<SinkSettings, SinkConfigError> {
        let args = parse(args).map_err(|e| SinkConfigError::Client {
            reason: e.to_string(),
        })?;
        SinkSettings::from_args_and_token_env(&args, None)
    }

    #[test]
    fn defaults_match_the_flag_defaults() {
        assert_eq!(parse(&[]).ok(), Some(DeliveryArgs::default()));
    }

    #[test]
    fn default_settings_are_valid_and_verify_tls() {
        let settings = settings(&[]).unwrap();
        let bridge = settings.bridge.clone().unwrap();
        assert_eq!(bridge.url.as_str(), DEFAULT_BRIDGE_URL);
        assert_eq!(
            bridge.tls,
            TlsSettings::Verify {
                extra_roots: Vec::new(),
                pins: Vec::new(),
            }
        );
        assert_eq!(settings.mode, BodyMode::Object);
        assert_eq!(settings.max_age, Some(Duration::from_secs(60)));
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
        let settings = SinkSettings::from_args_and_token_env(&args, None).unwrap();
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
            let message = settings(args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
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
        let err = SinkSettings::from_args_and_token_env(&args, None).err();
        assert!(matches!(
            err,
            Some(SinkConfigError::InsecureWithCaFile { .. })
        ));
        let insecure = settings(&["--insecure"]).unwrap();
        assert_eq!(insecure.bridge.unwrap().tls, TlsSettings::Insecure);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "just text").unwrap();
        let path = file.path().to_str().unwrap();
        let message = settings(&["--ca-file", path]).err().unwrap().to_string();
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
        let from_file = SinkSettings::from_args_and_token_env(&args, Some("env-token".into()));
        let token = from_file.unwrap().bridge.unwrap().token.unwrap();
        assert_eq!(token.expose(), "s3cret-token");
        assert!(!format!("{token:?}").contains("s3cret"));

        let from_env =
            SinkSettings::from_args_and_token_env(&DeliveryArgs::default(), Some("env".into()));
        assert_eq!(
            from_env.unwrap().bridge.unwrap().token.unwrap().expose(),
            "env"
        );

        let bad = SinkSettings::from_args_and_token_env(
            &DeliveryArgs::default(),
            Some("two words".into()),
        );
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
            SinkSettings::from_args_and_token_env(&args, None),
            Err(SinkConfigError::NowhereToDeliver)
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
}
