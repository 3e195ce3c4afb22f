//! The rustls client configuration for the bridge, and recognising certificate failures.
//!
//! Verification is on by default against the system roots plus `--ca-file`; `--insecure`
//! swaps in a verifier that accepts any certificate (still checking handshake signatures, so
//! the connection is encrypted, just not authenticated). A failed verification must reach the
//! operator as "pass --ca-file PEM or --insecure", so the error chain is searched for it.

use std::{error::Error as StdError, sync::Arc};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
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
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(client_error)?;
    let mut config = match settings {
        TlsSettings::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified::new(&provider, false)))
            .with_no_client_auth(),
        TlsSettings::Verify { extra_roots } => {
            let mut roots = RootCertStore::empty();
            for cert in extra_roots {
                roots.add(cert.clone()).map_err(client_error)?;
            }
            // Unparsable system roots are skipped, as every TLS client does.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                // Without any root nothing can be verified; fail each handshake with the
                // same "untrusted" error (naming both remedies) instead of refusing to start,
                // so the message is the one the operator will search for.
                tracing::warn!(
                    "no system CA certificates found; the bridge certificate cannot be verified \
                     without --ca-file PEM (or --insecure)"
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Unverified::new(&provider, true)))
                    .with_no_client_auth()
            } else {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A verifier that skips the certificate check (`--insecure`), or fails it with
/// `UnknownIssuer` when there is no root at all. Handshake signatures are still verified.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
    reject: bool,
}

impl Unverified {
    fn new(provider: &CryptoProvider, reject: bool) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
            reject,
        }
    }
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.reject {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))
        } else {
            Ok(ServerCertVerified::assertion())
        }
    }

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
    fn configs_build_for_both_modes() {
        assert!(client_config(&TlsSettings::Insecure).is_ok());
        let verify = TlsSettings::Verify {
            extra_roots: Vec::new(),
        };
        let config = client_config(&verify).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
    }
}
