//! The agent's own TLS identity, for bridges that require mutual TLS: the client certificate
//! chain and key of `--client-cert`/`--client-key` (checked to belong together when the
//! command line reads them), and the resolver that presents it during a handshake and
//! remembers whether the server asked (`doctor` reports that).
//!
//! It depends on nothing else in `sink`: the settings hold a `ClientIdentity`, and `tls` puts
//! a `ClientCertificate` into the client configuration.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    sign::CertifiedKey,
};

use super::provider;

/// A client certificate chain and its private key (`--client-cert`, `--client-key`), for
/// bridges that require mutual TLS. Its `Debug` form never shows the key.
pub struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// The certificates of `cert_pem` (leaf first) and the one private key of `key_pem`
    /// (PKCS#8, PKCS#1 or SEC1), checked to belong together.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("the certificate file does not parse: {err}"))?;
        if certs.is_empty() {
            return Err("the certificate file holds no certificate".to_owned());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|err| format!("the key file holds no private key: {err}"))?;
        let identity = Self { certs, key };
        identity.certified_key(&provider())?;
        Ok(identity)
    }

    /// The identity as rustls presents it; an error when the key does not fit the
    /// certificate or is of a kind the provider cannot sign with.
    fn certified_key(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
        let signer = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|err| format!("the private key cannot be used: {err}"))?;
        let certified = CertifiedKey::new(self.certs.clone(), signer);
        match certified.keys_match() {
            // A key rustls cannot compare is let through: the handshake will tell.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(Arc::new(certified))
            }
            Err(err) => Err(format!(
                "the private key does not belong to the certificate: {err}"
            )),
        }
    }
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.certs == other.certs && self.key.secret_der() == other.key.secret_der()
    }
}

impl Eq for ClientIdentity {}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientIdentity({} certificates, <key>)",
            self.certs.len()
        )
    }
}

/// Presents the client certificate when the server asks for one, and remembers whether it
/// asked: `doctor` reports that.
#[derive(Debug, Default)]
pub(crate) struct ClientCertificate {
    identity: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl ClientCertificate {
    /// Presents `identity` (none: answers a request with no certificate).
    pub(crate) fn new(
        identity: Option<&ClientIdentity>,
        provider: &CryptoProvider,
    ) -> Result<Self, String> {
        let identity = identity
            .map(|identity| identity.certified_key(provider))
            .transpose()?;
        Ok(Self {
            identity,
            asked: AtomicBool::new(false),
        })
    }

    /// Whether a server asked for a client certificate so far.
    pub(crate) fn asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.identity.clone()
    }

    fn has_certs(&self) -> bool {
        self.identity.is_some()
    }
}
