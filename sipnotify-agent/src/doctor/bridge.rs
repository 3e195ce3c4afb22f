//! The bridge rows: one HEAD request (never a POST: a probe must not reach the call logic)
//! says whether the bridge answers; its certificate is verified and the verdict recorded
//! while the handshake is allowed to complete, so one run reports both "does it answer" and
//! "would the certificate verify"; and whether it asked for a client certificate.
//!
//! The probe is built from the sink's own pieces (`sink::tls` for the roots, verifier and
//! certificate wording, `sink::http` for the client settings), so its verdict is `run`'s.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use super::{Check, DoctorSettings};
use crate::sink::{
    self, BridgeSettings, ClientError, TlsSettings,
    http::{self, error_chain},
    identity, tls,
};

/// The bridge answers, and how its certificate verifies.
pub(super) async fn checks(
    bridge: &Result<BridgeSettings, String>,
    settings: &DoctorSettings,
) -> Vec<Check> {
    let bridge = match bridge {
        Ok(bridge) => bridge,
        Err(reason) => {
            return vec![Check::fail(
                "bridge",
                reason.clone(),
                "correct the flag named in the message",
            )];
        }
    };
    let probe = probe_bridge(bridge, settings.request_timeout).await;
    let mut checks = classify_bridge(
        bridge.url.as_str(),
        settings.insecure,
        settings.request_timeout,
        &probe,
    );
    // A bridge that requires a certificate this agent lacks fails the handshake: the row
    // must show then above all, so it is not limited to answered probes.
    if bridge.url.scheme() == "https" && (probe.reply.is_ok() || probe.asked_for_client_certificate)
    {
        checks.push(client_certificate_check(
            probe.asked_for_client_certificate,
            bridge.client_identity.is_some(),
            probe.reply.is_ok(),
        ));
    }
    checks
}

/// Whether the bridge asked for a client certificate (mutual TLS), whether one is set, and
/// whether the bridge answered the probe (a bridge that asked and did not answer an agent
/// without a certificate requires one).
pub fn client_certificate_check(asked: bool, configured: bool, answered: bool) -> Check {
    const NAME: &str = "bridge client certificate";
    match (asked, configured) {
        (true, false) if !answered => Check::fail(
            NAME,
            "the bridge requires a client certificate and none is configured",
            "pass --client-cert PEM --client-key PEM (client_cert, client_key in the config file)",
        ),
        (true, true) => Check::ok(
            NAME,
            "the bridge asked for a client certificate; --client-cert answers it",
        ),
        (true, false) => Check::warn(
            NAME,
            "the bridge asked for a client certificate and none is configured",
            "if the bridge requires one, pass --client-cert PEM --client-key PEM (client_cert, client_key in the config file)",
        ),
        (false, true) => Check::warn(
            NAME,
            "the bridge did not ask for a client certificate: --client-cert is not used",
            "drop --client-cert/--client-key, or make the bridge require client certificates",
        ),
        (false, false) => Check::ok(NAME, "the bridge does not ask for a client certificate"),
    }
}

/// What one HEAD request to the bridge found.
#[derive(Debug)]
pub struct BridgeProbe {
    /// The reply's status, or why there was none.
    pub reply: Result<StatusCode, ProbeFailure>,
    /// The certificate verdict, when a TLS handshake got that far.
    pub verification: Option<tls::Verdict>,
    /// How long the request took.
    pub elapsed: Duration,
    /// The bridge sent a TLS certificate request (it wants mutual TLS).
    pub asked_for_client_certificate: bool,
}

/// Why the bridge did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Nothing listens on the port.
    Refused,
    /// No answer in time.
    Timeout,
    /// The host name does not resolve.
    Dns(String),
    /// The client could not be set up.
    Client(String),
    /// Anything else (TLS handshake, reset, …), as an error chain.
    Other(String),
}

async fn probe_bridge(bridge: &BridgeSettings, timeout: Duration) -> BridgeProbe {
    let (url, settings) = (&bridge.url, &bridge.tls);
    let started = Instant::now();
    let provider = sink::provider();
    let certificate = identity::ClientCertificate::new(bridge.client_identity.as_ref(), &provider)
        .map_err(|reason| ClientError { reason })
        .map(Arc::new);
    // With --insecure the verdict is still worth knowing: verify against the system roots.
    let (extra_roots, pins) = match settings {
        TlsSettings::Verify { extra_roots, pins } => (extra_roots.as_slice(), pins.as_slice()),
        TlsSettings::Insecure => (&[][..], &[][..]),
    };
    // The sink's verifier, recording: the handshake completes either way, so the probe
    // learns whether the bridge answers as well as whether its certificate would verify.
    let verifier = tls::Verifier::verifying(&provider, extra_roots, pins)
        .map(|verifier| Arc::new(verifier.recording()));
    let client = verifier
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|verifier| {
            let certificate = certificate.as_ref().map_err(ToString::to_string)?;
            let mut config =
                tls::config_with_verifier(provider, verifier.clone(), certificate.clone())
                    .map_err(|e| e.to_string())?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let user_agent = format!("{} doctor", http::USER_AGENT);
            http::client_builder(config, timeout, &user_agent)
                .build()
                .map_err(|e| error_chain(&e))
        });
    let reply = match client {
        Err(reason) => Err(ProbeFailure::Client(reason)),
        Ok(client) => match client.head(url.clone()).send().await {
            Ok(response) => Ok(response.status()),
            Err(err) => Err(classify_error(&err)),
        },
    };
    BridgeProbe {
        reply,
        verification: verifier.ok().and_then(|verifier| verifier.take_verdict()),
        elapsed: started.elapsed(),
        asked_for_client_certificate: certificate.is_ok_and(|c| c.asked()),
    }
}

fn classify_error(err: &reqwest::Error) -> ProbeFailure {
    let chain = error_chain(err);
    if err.is_timeout() {
        return ProbeFailure::Timeout;
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return ProbeFailure::Refused,
                io::ErrorKind::TimedOut => return ProbeFailure::Timeout,
                _ => {}
            }
        }
        current = e.source();
    }
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        return ProbeFailure::Dns(chain);
    }
    ProbeFailure::Other(chain)
}

/// Turns a probe into the `bridge` and `bridge tls` rows.
pub fn classify_bridge(
    url: &str,
    insecure: bool,
    timeout: Duration,
    probe: &BridgeProbe,
) -> Vec<Check> {
    const START_FIX: &str = "start the bridge, or pass --bridge-url with its address (an agent without a bridge runs with --no-bridge --stdout)";
    let mut checks = Vec::new();
    let answer = match &probe.reply {
        Ok(status) if status.is_server_error() => Check::warn(
            "bridge",
            format!("{url} answers, but with HTTP {status}"),
            "check the bridge's log: it may be failing or starting up",
        ),
        Ok(status) => Check::ok(
            "bridge",
            format!(
                "{url} answers (HTTP {} to a HEAD probe in {} ms)",
                status.as_u16(),
                probe.elapsed.as_millis()
            ),
        ),
        Err(ProbeFailure::Refused) => {
            Check::fail("bridge", format!("{url}: connection refused"), START_FIX)
        }
        Err(ProbeFailure::Timeout) => Check::fail(
            "bridge",
            format!(
                "{url}: no answer within {}",
                humantime::format_duration(timeout)
            ),
            "check that the bridge runs and that no firewall drops the connection",
        ),
        Err(ProbeFailure::Dns(reason)) => Check::fail(
            "bridge",
            format!("{url}: cannot resolve the host ({reason})"),
            "check the host name in --bridge-url, or use the bridge's IP address",
        ),
        Err(ProbeFailure::Client(reason)) => Check::fail(
            "bridge",
            format!("cannot set up a tls client: {reason}"),
            "report this with `sipnotify-agent --version`",
        ),
        Err(ProbeFailure::Other(reason)) => {
            Check::fail("bridge", format!("{url}: {reason}"), START_FIX)
        }
    };
    checks.push(answer);
    if let Some(verdict) = &probe.verification {
        checks.push(tls_check(verdict, insecure));
    } else if url.starts_with("http://") && probe.reply.is_ok() {
        checks.push(Check::ok(
            "bridge tls",
            "plain http: no certificate to verify",
        ));
    }
    checks
}

/// The certificate verdict as a row: which kind of trust applied, or why there is none.
pub fn tls_check(verdict: &tls::Verdict, insecure: bool) -> Check {
    const NAME: &str = "bridge tls";
    let fingerprint = &verdict.fingerprint;
    let trusted = match &verdict.result {
        Ok(tls::TrustedBy::Chain) => {
            "certificate verified: signed by a trusted CA (from --ca-file or the system)"
        }
        Ok(tls::TrustedBy::OwnCertificate) => {
            "certificate verified: it is the bridge's own certificate from --ca-file, trusted as it is (self-signed; name and dates checked)"
        }
        Ok(tls::TrustedBy::Pin) => {
            "certificate verified: its fingerprint matches --pin-sha256 (name and dates checked)"
        }
        Ok(tls::TrustedBy::Unchecked) => "certificate not checked",
        Err(err) => {
            let remedy = match err {
                rustls::Error::InvalidCertificate(cert) => tls::remedy(cert),
                _ => {
                    "pass --ca-file PEM with the bridge's own certificate or the CA certificate that signed it, or --insecure to skip verification"
                }
            };
            return if insecure {
                Check::warn(
                    NAME,
                    format!(
                        "not verified (--insecure): it would fail verification: {} (sha-256 {fingerprint})",
                        describe_tls(err)
                    ),
                    format!("instead of --insecure: {remedy}"),
                )
            } else {
                Check::fail(
                    NAME,
                    format!("untrusted: {} (sha-256 {fingerprint})", describe_tls(err)),
                    remedy,
                )
            };
        }
    };
    let suffix = if insecure {
        "; --insecure is not needed"
    } else {
        ""
    };
    Check::ok(NAME, format!("{trusted}{suffix}"))
}

/// A certificate problem in words (the sink's wording, for a certificate error).
pub fn describe_tls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => tls::describe(cert),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use rustls::CertificateError;

    use super::*;
    use crate::{doctor::Status, sink::TrustedBy};

    fn probe(
        reply: Result<StatusCode, ProbeFailure>,
        verification: Option<Result<TrustedBy, rustls::Error>>,
    ) -> BridgeProbe {
        BridgeProbe {
            reply,
            verification: verification.map(|result| tls::Verdict {
                result,
                fingerprint: FINGERPRINT.parse().unwrap(),
            }),
            elapsed: Duration::from_millis(3),
            asked_for_client_certificate: false,
        }
    }

    const FINGERPRINT: &str = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

    #[test]
    fn bridge_answers_and_certificates_are_classified() {
        let url = "https://127.0.0.1:8000/genesys-call-notify";
        let t = Duration::from_secs(5);
        let refused = classify_bridge(url, false, t, &probe(Err(ProbeFailure::Refused), None));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].status, Status::Fail);
        assert!(
            refused[0].detail.ends_with("connection refused"),
            "{}",
            refused[0].detail
        );
        assert!(refused[0].fix.is_some());

        let untrusted = Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let rows = classify_bridge(
            url,
            false,
            t,
            &probe(Ok(StatusCode::NOT_FOUND), Some(untrusted.clone())),
        );
        assert_eq!(rows[0].status, Status::Ok);
        assert!(rows[0].detail.contains("HTTP 404"), "{}", rows[0].detail);
        assert_eq!(rows[1].status, Status::Fail);
        assert_eq!(
            rows[1].detail,
            format!(
                "untrusted: signed by an unknown certificate authority (sha-256 {FINGERPRINT})"
            )
        );
        let fix = rows[1].fix.clone().unwrap_or_default();
        assert!(
            fix.contains("--ca-file") && fix.contains("--insecure"),
            "{fix}"
        );

        let insecure = classify_bridge(
            url,
            true,
            t,
            &probe(Ok(StatusCode::NOT_FOUND), Some(untrusted)),
        );
        assert_eq!(insecure[1].status, Status::Warn);
        let chain = Some(Ok(TrustedBy::Chain));
        let verified = classify_bridge(url, false, t, &probe(Ok(StatusCode::OK), chain.clone()));
        assert_eq!(verified[1].status, Status::Ok);
        assert!(
            verified[1].detail.contains("signed by a trusted CA"),
            "{}",
            verified[1].detail
        );
        // Each kind of trust is named.
        let own = Some(Ok(TrustedBy::OwnCertificate));
        let own = classify_bridge(url, false, t, &probe(Ok(StatusCode::OK), own));
        assert!(
            own[1]
                .detail
                .contains("the bridge's own certificate from --ca-file"),
            "{}",
            own[1].detail
        );
        let pinned = Some(Ok(TrustedBy::Pin));
        let pinned = classify_bridge(url, false, t, &probe(Ok(StatusCode::OK), pinned));
        assert!(
            pinned[1].detail.contains("--pin-sha256"),
            "{}",
            pinned[1].detail
        );

        let down = classify_bridge(
            url,
            false,
            t,
            &probe(Ok(StatusCode::SERVICE_UNAVAILABLE), chain),
        );
        assert_eq!(down[0].status, Status::Warn);
        let slow = classify_bridge(url, false, t, &probe(Err(ProbeFailure::Timeout), None));
        assert_eq!(slow[0].detail, format!("{url}: no answer within 5s"));
        let plain = classify_bridge(
            "http://127.0.0.1:8000/x",
            false,
            t,
            &probe(Ok(StatusCode::OK), None),
        );
        assert_eq!(plain[1].status, Status::Ok);
    }

    #[test]
    fn certificate_problems_read_as_words() {
        let err = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            describe_tls(&err(CertificateError::BadEncoding)),
            "bad encoding"
        );
        assert_eq!(describe_tls(&err(CertificateError::Expired)), "expired");
    }

    #[test]
    fn the_client_certificate_row_says_whether_the_bridge_asked() {
        assert_eq!(
            client_certificate_check(true, true, true).status,
            Status::Ok
        );
        let missing = client_certificate_check(true, false, true);
        assert_eq!(missing.status, Status::Warn);
        assert!(missing.fix.unwrap_or_default().contains("--client-cert"));
        let required = client_certificate_check(true, false, false);
        assert_eq!(required.status, Status::Fail);
        assert!(required.fix.unwrap_or_default().contains("--client-cert"));
        assert_eq!(
            client_certificate_check(false, true, true).status,
            Status::Warn
        );
        assert_eq!(
            client_certificate_check(false, false, true).status,
            Status::Ok
        );
    }
}
