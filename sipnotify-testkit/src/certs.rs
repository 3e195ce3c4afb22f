//! Bridge certificates made the way people make them, for the TLS tests: the openssl
//! one-liner (run for real), an mkcert-style local CA and leaf, and a small private CA with an
//! intermediate. Each is a [`ServerIdentity`] the bridge stand-in can serve, plus the PEM an
//! operator would hand to `--ca-file`; and a client CA with a client certificate for bridges
//! that require mutual TLS.
#![allow(
    clippy::missing_panics_doc,
    reason = "test support: a panic with context is the report"
)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate chain (leaf first) and its private key, both PEM: what a bridge serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    /// The leaf certificate, then any intermediates.
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

/// A bridge identity and the file an operator would pass as `--ca-file`.
#[derive(Clone, Debug)]
pub struct MadeCertificate {
    /// What the bridge serves.
    pub identity: ServerIdentity,
    /// The `--ca-file` PEM (the bridge's own certificate, or the CA's).
    pub ca_file: PathBuf,
}

/// Why openssl could not make the certificate; the caller decides whether that is a skip.
#[derive(Debug, thiserror::Error)]
pub enum OpensslError {
    /// The `openssl` command is not installed.
    #[error("the openssl command is not installed")]
    Missing,
    /// It ran and failed.
    #[error("openssl failed: {0}")]
    Failed(String),
}

/// `openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=<cn> -addext subjectAltName=<san>`,
/// the bridge setup of the field report: a self-signed certificate that openssl marks
/// `CA:TRUE`. The certificate itself is the `--ca-file`. Files are written into `dir`, named
/// after `name`.
pub fn openssl_one_liner(
    dir: &Path,
    name: &str,
    cn: &str,
    san: &str,
) -> Result<MadeCertificate, OpensslError> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let output = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OpensslError::Missing,
            _ => OpensslError::Failed(e.to_string()),
        })?;
    if !output.status.success() {
        return Err(OpensslError::Failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| OpensslError::Failed(e.to_string()))
    };
    Ok(MadeCertificate {
        identity: ServerIdentity {
            chain_pem: read(&cert)?,
            key_pem: read(&key)?,
        },
        ca_file: cert,
    })
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write a certificate file");
    path
}

/// A CA certificate's parameters: `CA:TRUE` (with a path length limit, if any), and the
/// usages a CA needs.
pub(crate) fn ca_params(cn: &str, path_len: Option<u8>) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "mkcert development certificate");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// What `mkcert -install && mkcert 127.0.0.1 localhost` makes: a local root CA (`CA:TRUE`,
/// path length 0) and a leaf for `names` with the serverAuth usage. `--ca-file` is the root
/// (`rootCA.pem`); `leaf_file` is the leaf alone, which an operator may pass instead.
pub fn mkcert_style(dir: &Path, names: &[&str]) -> (MadeCertificate, PathBuf) {
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params("mkcert root@bridge", Some(0))
        .expect("ca params")
        .self_signed(&ca_key)
        .expect("ca certificate");
    let key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params(names)
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf certificate");
    let made = MadeCertificate {
        identity: ServerIdentity {
            chain_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        },
        ca_file: write(dir, "rootCA.pem", &ca.pem()),
    };
    (made, write(dir, "bridge+1.pem", &leaf.pem()))
}

/// A small private PKI: a root, an intermediate, and a leaf for `names`; the bridge serves
/// the leaf and the intermediate, and `--ca-file` is the root.
pub fn private_ca(dir: &Path, names: &[&str]) -> MadeCertificate {
    let root_key = KeyPair::generate().expect("root key");
    let root = ca_params("Example Corp Root CA", None)
        .expect("root params")
        .self_signed(&root_key)
        .expect("root certificate");
    let issuing_key = KeyPair::generate().expect("intermediate key");
    let issuing = ca_params("Example Corp Issuing CA", Some(0))
        .expect("intermediate params")
        .signed_by(&issuing_key, &root, &root_key)
        .expect("intermediate certificate");
    let key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params(names)
        .signed_by(&key, &issuing, &issuing_key)
        .expect("leaf certificate");
    MadeCertificate {
        identity: ServerIdentity {
            chain_pem: format!("{}{}", leaf.pem(), issuing.pem()),
            key_pem: key.serialize_pem(),
        },
        ca_file: write(dir, "corp-root.pem", &root.pem()),
    }
}

/// Whether the openssl-made certificates can be tested here. When they cannot, prints why;
/// under `CI=true` a skip is a failure (CI installs openssl through `cargo xtask setup`).
pub fn openssl_or_skip(
    test: &str,
    made: Result<MadeCertificate, OpensslError>,
) -> Option<MadeCertificate> {
    match made {
        Ok(made) => Some(made),
        Err(OpensslError::Missing) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test} cannot be skipped in CI: the openssl command is not installed"
            );
            eprintln!("skipping {test}: the openssl command is not installed");
            None
        }
        Err(err) => panic!("{test}: {err}"),
    }
}

/// A client certificate for mutual TLS: a CA the bridge trusts for clients (`ca_pem`, what a
/// bridge is configured with) and a leaf with the clientAuth usage, written into `dir` as
/// `client.pem` and `client.key` (what `--client-cert` and `--client-key` take).
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    /// The CA the bridge checks client certificates against.
    pub ca_pem: String,
    /// The client's certificate file.
    pub cert_file: PathBuf,
    /// The client's private key file.
    pub key_file: PathBuf,
}

/// Makes a client CA and a client certificate signed by it (see [`ClientCertificate`]).
pub fn client_certificate(dir: &Path, cn: &str) -> ClientCertificate {
    std::fs::create_dir_all(dir).expect("the client certificate's directory");
    let ca_key = KeyPair::generate().expect("client ca key");
    let ca = ca_params(&format!("{cn} client CA"), Some(0))
        .expect("client ca params")
        .self_signed(&ca_key)
        .expect("client ca certificate");
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = params
        .signed_by(&key, &ca, &ca_key)
        .expect("client certificate");
    ClientCertificate {
        ca_pem: ca.pem(),
        cert_file: write(dir, "client.pem", &leaf.pem()),
        key_file: write(dir, "client.key", &key.serialize_pem()),
    }
}
