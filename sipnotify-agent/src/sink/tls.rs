//! The rustls client configuration for the bridge, and recognising certificate failures.
//!
//! Verification is on by default against the system roots plus `--ca-file`; `--insecure`
//! makes the verifier accept any certificate (still checking handshake signatures, so the
//! connection is encrypted, just not authenticated). A failed verification must reach the
//! operator as "pass --ca-file PEM or --insecure", so the error chain is searched for it.
//!
//! `doctor` builds its probe from the same pieces (`root_store`, a recording `Verifier`,
//! `config_with_verifier`, `describe`), so it judges a certificate exactly as `run` would.

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
};

use super::{SinkConfigError, TlsSettings};

/// The crypto provider of every TLS connection here (ring: pure Rust plus a little assembly,
/// no cmake or Go toolchain needed).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration for `settings`, offering HTTP/2 and HTTP/1.1 through ALPN.
pub(crate) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, SinkConfigError> {
    let provider = provider();
    let client_error = |e: rustls::Error| SinkConfigError::Client {
        reason: e.to_string(),
    };
    let verifier = match settings {
        TlsSettings::Insecure => Verifier::insecure(&provider),
        TlsSettings::Verify { extra_roots } => {
            let roots = root_store(extra_roots).map_err(client_error)?;
            if roots.is_empty() {
                // Logged here rather than in `Verifier`: the doctor, which shares it, reports
                // the outcome in its `bridge tls` row instead.
                tracing::warn!(
                    "no system CA certificates found; the bridge certificate cannot be verified \
                     without --ca-file PEM (or --insecure)"
                );
            }
            Verifier::with_roots(&provider, roots)
        }
    };
    let mut config = config_with_verifier(provider, Arc::new(verifier)).map_err(client_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration (safe default protocol versions, no client certificate) that checks
/// the server's certificate with `verifier`. ALPN is left empty for the caller to choose.
pub(crate) fn config_with_verifier(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
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

/// The certificate verifier of every bridge connection, the agent's and the doctor's.
///
/// It judges the certificate by its `Trust`. Normally that verdict decides the handshake;
/// a [`recording`](Self::recording) verifier (the doctor's) keeps the verdict instead and lets
/// the handshake complete either way, so one probe learns both whether the bridge answers and
/// whether its certificate would verify. Handshake signatures are always checked, so even an
/// unverified connection is encrypted.
#[derive(Debug)]
pub(crate) struct Verifier {
    trust: Trust,
    algorithms: WebPkiSupportedAlgorithms,
    /// `Some` when recording: the verdict of the last certificate, until taken.
    verdict: Option<Mutex<Option<Result<(), rustls::Error>>>>,
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
    /// The verifier without `--insecure`: webpki against `roots`.
    pub(crate) fn with_roots(provider: &Arc<CryptoProvider>, roots: RootCertStore) -> Self {
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
            algorithms: provider.signature_verification_algorithms,
            verdict: None,
        }
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
    pub(crate) fn take_verdict(&self) -> Option<Result<(), rustls::Error>> {
        self.verdict
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
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
        let verdict = match &self.trust {
            Trust::Roots(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(drop),
            Trust::Nothing => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            Trust::Anything => Ok(()),
        };
        match &self.verdict {
            Some(slot) => {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(verdict);
                Ok(ServerCertVerified::assertion())
            }
            None => verdict.map(|()| ServerCertVerified::assertion()),
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
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(rustls::Error::InvalidCertificate(cert)) = e.downcast_ref::<rustls::Error>() {
            return Some(cert.clone());
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

/// A one-line, lowercase description of a certificate problem for the operator.
pub(crate) fn describe(error: &CertificateError) -> String {
    if let CertificateError::UnknownIssuer = error {
        return "signed by an unknown certificate authority".to_owned();
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
        assert_eq!(recording.take_verdict(), Some(untrusted));
        assert_eq!(recording.take_verdict(), None);
        assert_eq!(check(&Verifier::insecure(&provider)), Ok(()));
    }

    #[test]
    fn configs_build_for_both_modes() {
        assert!(client_config(&TlsSettings::Insecure).is_ok());
        let verify = TlsSettings::Verify {
            extra_roots: Vec::new(),
        };
        let config = client_config(&verify).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }
}
