//! What delivery runs with: the bridge, TLS, token, batching, retry and shutdown settings
//! the command line validated, and the client error when they cannot be put to use.

use std::{fmt, str::FromStr, time::Duration};

use reqwest::Url;
use rustls::pki_types::CertificateDer;

use super::{identity::ClientIdentity, sign::SigningKey};
use crate::event::JsonOptions;

/// The bridge client could not be built (a runtime failure: the settings were valid).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the bridge client: {reason}")]
pub struct ClientError {
    /// What failed.
    pub reason: String,
}

/// The SHA-256 fingerprint of a certificate's DER bytes: what
/// `openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints, and what `--pin-sha256`
/// takes. Shown as colon-separated upper-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// 64 hex digits, in either case, with or without colons; openssl's whole output line
    /// (`sha256 Fingerprint=AB:CD:…`) is accepted too.
    fn from_str(text: &str) -> Result<Self, String> {
        let value = text.rsplit('=').next().unwrap_or(text).trim();
        let hex: Vec<u8> = value.bytes().filter(|&b| b != b':').collect();
        let digit = |b: u8| char::from(b).to_digit(16);
        if hex.len() != 64 || hex.iter().any(|&b| digit(b).is_none()) {
            return Err(format!(
                "`{text}` is not a sha-256 fingerprint (64 hex digits, colons allowed, as \
                 `openssl x509 -noout -fingerprint -sha256 -in CERT` prints)"
            ));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let high = digit(pair[0]).unwrap_or(0);
            let low = digit(pair[1]).unwrap_or(0);
            *byte = u8::try_from((high << 4) | low).unwrap_or(0);
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
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
    /// Signs every request (`X-Sipnotify-Signature`) when set.
    pub signing_key: Option<SigningKey>,
    /// The client certificate and key for bridges that require mutual TLS.
    pub client_identity: Option<ClientIdentity>,
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

/// Validated delivery settings, built by the command line (`cli::sink_settings`); the
/// fields are public so tests, benches and `replay` can adjust them (e.g. `max_age = None`
/// for old captures).
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
    /// The JSON options of every object this configuration emits.
    pub fn json_options(&self) -> JsonOptions {
        JsonOptions {
            extras: self.extras,
            with_id: self.mode == BodyMode::Array,
        }
    }
}
