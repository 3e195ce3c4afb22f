//! The rustls client configuration for the bridge, and recognising certificate failures.
//!
//! Verification is on by default. A certificate is trusted when it chains to the system roots
//! or to a CA in `--ca-file`, or when it is itself one of the certificates in `--ca-file` (the
//! bridge's own self-signed certificate, whatever its CA flag says) or matches a
//! `--pin-sha256` fingerprint; the host name and the dates are checked in every case.
//! `--insecure` makes the verifier accept any certificate (still checking handshake
//! signatures, so the connection is encrypted, just not authenticated). A failed verification
//! must reach the operator with its remedy (`remedy`), so the error chain is searched for it.
//!
//! `doctor` builds its probe from the same pieces (a recording `Verifier`,
//! `config_with_verifier`, `describe`, `remedy`), so it judges a certificate exactly as `run`
//! would, and says which kind of trust applied.

use std::{
    error::Error as StdError,
    sync::{Arc, Mutex, PoisonError},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
};

use super::{
    identity::{ClientCertificate, ClientIdentity},
    provider,
    settings::{ClientError, Fingerprint, TlsSettings},
};

/// A client configuration for `settings`, offering HTTP/2 and HTTP/1.1 through ALPN, that
/// presents `identity` when the bridge asks for a client certificate.
pub(crate) fn client_config(
    settings: &TlsSettings,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, ClientError> {
    let provider = provider();
    let client_error = |e: rustls::Error| ClientError {
        reason: e.to_string(),
    };
    let verifier = match settings {
        TlsSettings::Insecure => Verifier::insecure(&provider),
        TlsSettings::Verify { extra_roots, pins } => {
            let verifier =
                Verifier::verifying(&provider, extra_roots, pins).map_err(client_error)?;
            if verifier.trusts_nothing() {
                // Logged here rather than in `Verifier`: the doctor, which shares it, reports
                // the outcome in its `bridge tls` row instead.
                tracing::warn!(
                    "no system CA certificates found; the bridge certificate cannot be verified \
                     without --ca-file PEM (or --insecure)"
                );
            }
            verifier
        }
    };
    let certificate = Arc::new(
        ClientCertificate::new(identity, &provider).map_err(|reason| ClientError { reason })?,
    );
    let mut config =
        config_with_verifier(provider, Arc::new(verifier), certificate).map_err(client_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration (safe default protocol versions) that checks the server's
/// certificate with `verifier` and answers a certificate request with `certificate`. ALPN is
/// left empty for the caller to choose.
pub(crate) fn config_with_verifier(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    certificate: Arc<ClientCertificate>,
) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certificate))
}

/// The trusted roots without `--insecure`: `extra_roots` (from `--ca-file`) plus the system's.
/// An extra root that does not parse is an error; unparsable system roots are skipped, as
/// every TLS client does.
pub(crate) fn root_store(
    extra_roots: &[CertificateDer<'static>],
) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    Ok(roots)
}

/// Why a certificate was accepted; the doctor says which case applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedBy {
    /// It chains to a trusted CA (`--ca-file` or the system's).
    Chain,
    /// It is byte for byte one of the certificates in `--ca-file`: the bridge's own
    /// (typically self-signed) certificate, trusted as it is.
    OwnCertificate,
    /// Its fingerprint is one of the `--pin-sha256` values.
    Pin,
    /// `--insecure`: not checked at all.
    Unchecked,
}

/// What a recording verifier found about the last certificate it saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Accepted, and why; or why not.
    pub result: Result<TrustedBy, rustls::Error>,
    /// The certificate's SHA-256 fingerprint (what `--pin-sha256` would take).
    pub fingerprint: Fingerprint,
}

/// The certificate verifier of every bridge connection, the agent's and the doctor's.
///
/// A certificate the bridge presents is accepted when it is one of the certificates in
/// `--ca-file` byte for byte, or its fingerprint is pinned, and in both cases its name and
/// dates are right; otherwise webpki judges it against the trusted roots. The first case is
/// the self-signed bridge certificate made with `openssl req -x509 …`: openssl marks it
/// `CA:TRUE`, which webpki refuses in a server certificate (`CaUsedAsEndEntity`), yet the
/// operator who hands over that very certificate means "trust this one", as curl does.
///
/// Normally the verdict decides the handshake; a [`recording`](Self::recording) verifier (the
/// doctor's) keeps the verdict instead and lets the handshake complete either way, so one
/// probe learns both whether the bridge answers and whether its certificate would verify.
/// Handshake signatures are always checked, so even an unverified connection is encrypted,
/// and a certificate trusted as it is must still prove its private key.
#[derive(Debug)]
pub(crate) struct Verifier {
    trust: Trust,
    /// Certificates trusted as they are, with themselves as the only root (for the dates).
    own: Vec<(CertificateDer<'static>, RootCertStore)>,
    pins: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
    /// `Some` when recording: the verdict of the last certificate, until taken.
    verdict: Option<Mutex<Option<Verdict>>>,
}

/// What a certificate is checked against.
#[derive(Debug)]
enum Trust {
    /// webpki, against the trusted roots.
    Roots(Arc<WebPkiServerVerifier>),
    /// There is no root at all: every certificate is untrusted (`UnknownIssuer`).
    Nothing,
    /// `--insecure`: every certificate is accepted.
    Anything,
}

impl Verifier {
    /// The verifier without `--insecure`: the certificates of `--ca-file` (`ca_file`) as roots
    /// and as certificates trusted as they are, the system roots, and `pins`.
    pub(crate) fn verifying(
        provider: &Arc<CryptoProvider>,
        ca_file: &[CertificateDer<'static>],
        pins: &[Fingerprint],
    ) -> Result<Self, rustls::Error> {
        let mut verifier = Self::with_roots(provider, root_store(ca_file)?);
        for cert in ca_file {
            let mut itself = RootCertStore::empty();
            itself.add(cert.clone())?;
            verifier.own.push((cert.clone(), itself));
        }
        verifier.pins = pins.to_vec();
        Ok(verifier)
    }

    /// webpki against `roots`, and nothing else.
    fn with_roots(provider: &Arc<CryptoProvider>, roots: RootCertStore) -> Self {
        let trust = match WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(provider),
        )
        .build()
        {
            Ok(webpki) => Trust::Roots(webpki),
            // Without CRLs the only failure is an empty store (`NoRootAnchors`). Without any
            // root nothing can be verified; fail each handshake with the same "untrusted"
            // error (naming both remedies) instead of refusing to start, so the message is
            // the one the operator will search for.
            Err(_) => Trust::Nothing,
        };
        Self::new(provider, trust)
    }

    /// The `--insecure` verifier: any certificate is accepted.
    fn insecure(provider: &CryptoProvider) -> Self {
        Self::new(provider, Trust::Anything)
    }

    fn new(provider: &CryptoProvider, trust: Trust) -> Self {
        Self {
            trust,
            own: Vec::new(),
            pins: Vec::new(),
            algorithms: provider.signature_verification_algorithms,
            verdict: None,
        }
    }

    /// True when no certificate at all can pass (no root, no own certificate, no pin).
    fn trusts_nothing(&self) -> bool {
        matches!(self.trust, Trust::Nothing) && self.own.is_empty() && self.pins.is_empty()
    }

    /// This verifier, recording its verdict (see [`Verifier::take_verdict`]) rather than
    /// failing the handshake on it.
    pub(crate) fn recording(self) -> Self {
        Self {
            verdict: Some(Mutex::new(None)),
            ..self
        }
    }

    /// The recorded verdict, if recording and a certificate has been checked since the last
    /// call.
    pub(crate) fn take_verdict(&self) -> Option<Verdict> {
        self.verdict
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn judge(
        &self,
        end_entity: &CertificateDer<'_>,
        fingerprint: &Fingerprint,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<TrustedBy, rustls::Error> {
        let webpki = match &self.trust {
            Trust::Anything => return Ok(TrustedBy::Unchecked),
            Trust::Roots(webpki) => Some(webpki),
            Trust::Nothing => None,
        };
        if self.pins.contains(fingerprint) {
            let mut itself = RootCertStore::empty();
            itself.add(end_entity.clone().into_owned())?;
            self.check_as_is(end_entity, &itself, server_name, now)?;
            return Ok(TrustedBy::Pin);
        }
        if let Some((_, itself)) = self
            .own
            .iter()
            .find(|(cert, _)| cert.as_ref() == end_entity.as_ref())
        {
            self.check_as_is(end_entity, itself, server_name, now)?;
            return Ok(TrustedBy::OwnCertificate);
        }
        match webpki {
            Some(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| TrustedBy::Chain),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    /// The checks a certificate trusted as it is still has to pass: its name (with rustls's
    /// own name check) and its dates.
    fn check_as_is(
        &self,
        end_entity: &CertificateDer<'_>,
        itself: &RootCertStore,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        // The dates, through webpki with the certificate as its own root. webpki checks a
        // certificate's dates before anything else about it (`check_issuer_independent_properties`),
        // so any other complaint (the CA flag, a signature by an issuer not in the file) means
        // the dates passed; those complaints do not matter for a certificate the operator
        // handed over as it is. A unit test holds webpki to that order.
        match rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            itself,
            &[],
            now,
            self.algorithms.all,
        ) {
            Err(
                error @ rustls::Error::InvalidCertificate(
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. },
                ),
            ) => Err(error),
            _ => Ok(()),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        let result = self.judge(
            end_entity,
            &fingerprint,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match &self.verdict {
            Some(slot) => {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Verdict {
                    result,
                    fingerprint,
                });
                Ok(ServerCertVerified::assertion())
            }
            None => result.map(|_| ServerCertVerified::assertion()),
        }
    }

    // The same checks, with the same algorithms, as webpki's own verifier makes.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The certificate problem somewhere in `error`'s chain, if that is why it failed.
pub(crate) fn certificate_error(error: &(dyn StdError + 'static)) -> Option<CertificateError> {
    match rustls_error(error)? {
        rustls::Error::InvalidCertificate(cert) => Some(cert.clone()),
        _ => None,
    }
}

/// Why the bridge refused this client's certificate (or its lack of one), if the bridge's
/// TLS alert somewhere in `error`'s chain says so: what the operator should do.
pub(crate) fn client_certificate_refusal(error: &(dyn StdError + 'static)) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let rustls::Error::AlertReceived(alert) = rustls_error(error)? else {
        return None;
    };
    // A server sends these alerts about the client's certificate only (decrypt_error: its
    // signature does not verify, e.g. a CA of the same name but another key).
    match alert {
        Alert::CertificateRequired => Some(
            "the bridge requires a client certificate (mutual tls): pass --client-cert PEM \
             --client-key PEM (client_cert, client_key in the config file)"
                .to_owned(),
        ),
        Alert::BadCertificate
        | Alert::UnknownCA
        | Alert::CertificateUnknown
        | Alert::CertificateExpired
        | Alert::CertificateRevoked
        | Alert::UnsupportedCertificate
        | Alert::DecryptError
        | Alert::AccessDenied => Some(format!(
            "the bridge refused the client certificate (tls alert {alert:?}): pass a \
             --client-cert PEM --client-key PEM the bridge trusts"
        )),
        _ => None,
    }
}

/// The rustls error somewhere in `error`'s chain.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        // `io::Error::source` skips the error it wraps (tokio-rustls wraps the rustls error in
        // an io error, which hyper-util wraps in another), so step into it explicitly.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// What the operator can do about a certificate problem: always names `--ca-file` and
/// `--insecure`, and the likely fix first.
pub(crate) fn remedy(error: &CertificateError) -> &'static str {
    match error {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the certificate is not made out to the host in --bridge-url: use a --bridge-url \
             with a name the certificate holds, or give the bridge a certificate for that host \
             (openssl: -addext subjectAltName=IP:ADDRESS or DNS:NAME) and pass it as --ca-file \
             PEM, or --insecure to skip verification"
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => {
            "renew the bridge's certificate (or correct this host's clock) and pass the new one \
             as --ca-file PEM, or --insecure to skip verification"
        }
        _ => {
            "pass --ca-file PEM with the bridge's own certificate or the CA certificate that \
             signed it (or --pin-sha256 with its fingerprint), or --insecure to skip verification"
        }
    }
}

/// A one-line, lowercase description of a certificate problem for the operator.
pub(crate) fn describe(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => {
            return "signed by an unknown certificate authority".to_owned();
        }
        // webpki's word for a server certificate marked `CA:TRUE`, as openssl's self-signed
        // ones are; it only reaches here when that certificate is not in --ca-file.
        CertificateError::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            return "a self-signed (CA:TRUE) certificate that is not the one in --ca-file"
                .to_owned();
        }
        _ => {}
    }
    let text = error.to_string();
    // rustls prints plain variants by name (`BadEncoding`): make them words.
    if text.chars().all(char::is_alphanumeric) {
        let mut words = String::with_capacity(text.len() + 4);
        for (i, c) in text.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                words.push(' ');
            }
            words.extend(c.to_lowercase());
        }
        return words;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        // As hyper-util reports it: an io error inside an io error.
        let io = std::io::Error::other(io);
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Outer(#[source] std::io::Error);
        let outer = Outer(io);
        assert_eq!(
            certificate_error(&outer),
            Some(CertificateError::UnknownIssuer)
        );
        let other = std::io::Error::other("refused");
        assert_eq!(certificate_error(&other), None);
    }

    #[test]
    fn descriptions_read_as_words() {
        assert_eq!(
            describe(&CertificateError::UnknownIssuer),
            "signed by an unknown certificate authority"
        );
        assert_eq!(describe(&CertificateError::BadEncoding), "bad encoding");
        assert_eq!(describe(&CertificateError::Expired), "expired");
    }

    /// A self-signed certificate for `names`, `CA:TRUE` like the openssl one-liner's, valid
    /// between the two dates.
    fn self_signed(
        names: &[&str],
        ca_flag: bool,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if ca_flag {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bridge");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn bridge_cert(names: &[&str]) -> CertificateDer<'static> {
        self_signed(names, true, (2020, 1, 1), (2090, 1, 1))
    }

    fn judge(
        verifier: &Verifier,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    fn verifying(ca_file: &[CertificateDer<'static>], pins: &[Fingerprint]) -> Verifier {
        Verifier::verifying(&provider(), ca_file, pins).unwrap()
    }

    fn cert_error(result: Result<(), rustls::Error>) -> CertificateError {
        match result {
            Err(rustls::Error::InvalidCertificate(error)) => error,
            other => panic!("not a certificate error: {other:?}"),
        }
    }

    #[test]
    fn the_bridges_own_ca_flagged_certificate_is_trusted_with_its_name_checked() {
        let cert = bridge_cert(&["127.0.0.1"]);
        // webpki alone refuses it: the reason a --ca-file copy is trusted as it is.
        let webpki_only = Verifier::with_roots(
            &provider(),
            root_store(std::slice::from_ref(&cert)).unwrap(),
        );
        let refused = judge(&webpki_only, &cert, "127.0.0.1").unwrap_err();
        assert!(
            format!("{refused:?}").contains("CaUsedAsEndEntity"),
            "{refused:?}"
        );

        let verifier = verifying(std::slice::from_ref(&cert), &[]).recording();
        assert_eq!(judge(&verifier, &cert, "127.0.0.1"), Ok(()));
        let verdict = verifier.take_verdict().unwrap();
        assert_eq!(verdict.result, Ok(TrustedBy::OwnCertificate));
        assert_eq!(verdict.fingerprint, Fingerprint::of(&cert));

        let strict = verifying(std::slice::from_ref(&cert), &[]);
        assert_eq!(judge(&strict, &cert, "127.0.0.1"), Ok(()));
        let wrong_name = cert_error(judge(&strict, &cert, "127.0.0.2"));
        assert!(
            matches!(wrong_name, CertificateError::NotValidForNameContext { .. }),
            "{wrong_name:?}"
        );
        assert!(remedy(&wrong_name).contains("--bridge-url"));
        // Another certificate for the same name is not this one; webpki's complaint about it
        // (`CaUsedAsEndEntity`) is put in words that point at --ca-file.
        let other = bridge_cert(&["127.0.0.1"]);
        let unknown = cert_error(judge(&strict, &other, "127.0.0.1"));
        assert_eq!(
            describe(&unknown),
            "a self-signed (CA:TRUE) certificate that is not the one in --ca-file"
        );
        let advice = remedy(&unknown);
        assert!(
            advice.contains("--ca-file") && advice.contains("--insecure"),
            "{advice}"
        );
    }

    #[test]
    fn a_certificate_trusted_as_it_is_must_be_within_its_dates() {
        // These hold webpki to checking the dates before the CA flag (see `check_as_is`).
        let expired = self_signed(&["127.0.0.1"], true, (2001, 1, 1), (2002, 1, 1));
        let error = cert_error(judge(
            &verifying(std::slice::from_ref(&expired), &[]),
            &expired,
            "127.0.0.1",
        ));
        assert!(
            matches!(error, CertificateError::ExpiredContext { .. }),
            "{error:?}"
        );
        assert!(remedy(&error).contains("renew"));
        let future = self_signed(&["127.0.0.1"], true, (2080, 1, 1), (2090, 1, 1));
        let error = cert_error(judge(
            &verifying(std::slice::from_ref(&future), &[]),
            &future,
            "127.0.0.1",
        ));
        assert!(
            matches!(error, CertificateError::NotValidYetContext { .. }),
            "{error:?}"
        );
        // Without the CA flag the same rules hold.
        let plain = self_signed(&["bridge.example"], false, (2020, 1, 1), (2090, 1, 1));
        assert_eq!(
            judge(
                &verifying(std::slice::from_ref(&plain), &[]),
                &plain,
                "bridge.example"
            ),
            Ok(())
        );
    }

    #[test]
    fn a_pinned_certificate_is_trusted_with_its_name_checked() {
        let cert = bridge_cert(&["127.0.0.1", "bridge.example"]);
        let pin = Fingerprint::of(&cert);
        let verifier = verifying(&[], &[pin]).recording();
        assert_eq!(judge(&verifier, &cert, "bridge.example"), Ok(()));
        assert_eq!(verifier.take_verdict().unwrap().result, Ok(TrustedBy::Pin));
        let strict = verifying(&[], &[pin]);
        assert!(judge(&strict, &cert, "other.example").is_err());
        let unpinned = bridge_cert(&["127.0.0.1"]);
        assert!(judge(&strict, &unpinned, "127.0.0.1").is_err());
    }

    #[test]
    fn fingerprints_read_as_openssl_prints_them() {
        let cert = bridge_cert(&["127.0.0.1"]);
        let fingerprint = Fingerprint::of(&cert);
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(shown.parse::<Fingerprint>(), Ok(fingerprint));
        let bare = shown.replace(':', "").to_lowercase();
        assert_eq!(bare.parse::<Fingerprint>(), Ok(fingerprint));
        let openssl_line = format!("sha256 Fingerprint={shown}");
        assert_eq!(openssl_line.parse::<Fingerprint>(), Ok(fingerprint));
        let error = "AB:CD".parse::<Fingerprint>().unwrap_err();
        assert!(
            error.starts_with("`AB:CD` is not a sha-256 fingerprint"),
            "{error}"
        );
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn a_recording_verifier_keeps_the_verdict_and_lets_the_handshake_go_on() {
        let provider = provider();
        let cert = CertificateDer::from(vec![0u8; 4]);
        let name = ServerName::try_from("bridge.example").unwrap();
        let check = |verifier: &Verifier| {
            verifier
                .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .map(drop)
        };
        let untrusted = Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        // No root at all: untrusted, which fails the handshake unless recording.
        let strict = Verifier::with_roots(&provider, RootCertStore::empty());
        assert_eq!(check(&strict), untrusted);
        assert_eq!(strict.take_verdict(), None);
        let recording = Verifier::with_roots(&provider, RootCertStore::empty()).recording();
        assert_eq!(check(&recording), Ok(()));
        let verdict = recording.take_verdict().unwrap();
        assert_eq!(verdict.result.map(drop), untrusted);
        assert_eq!(recording.take_verdict(), None);
        assert_eq!(check(&Verifier::insecure(&provider)), Ok(()));
    }

    #[test]
    fn configs_build_for_both_modes() {
        assert!(client_config(&TlsSettings::Insecure, None).is_ok());
        let verify = TlsSettings::Verify {
            extra_roots: Vec::new(),
            pins: Vec::new(),
        };
        let config = client_config(&verify, None).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }
}
