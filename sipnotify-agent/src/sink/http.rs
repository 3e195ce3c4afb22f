//! One POST to the bridge and what its reply means.
//!
//! The client keeps a keep-alive pool (HTTP/1.1 connections, or one multiplexed HTTP/2
//! connection when the bridge offers h2), so requests in flight do not each pay a TLS
//! handshake. Redirects are not followed: a redirected POST would become a GET and silently
//! lose the body. Every reply body is read to the end so its connection goes back to the pool.
//! `doctor` builds its HEAD probe's client with the same `client_builder`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{
    Client, ClientBuilder, Method, StatusCode, Url,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue},
};
use rustls::ClientConfig;

use super::{
    retry::{self, StatusClass},
    settings::{BridgeSettings, ClientError},
    sign::{SIGNATURE_HEADER, SigningKey},
    tls,
};

/// How much of a refusal's body goes into the log.
const EXCERPT_CHARS: usize = 200;

/// The `User-Agent` of the agent's requests.
pub(crate) const USER_AGENT: &str = concat!("sipnotify-agent/", env!("CARGO_PKG_VERSION"));

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Why a request did not get a usable reply (it will be retried).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The bridge answered with a status worth retrying.
    #[error("the bridge answered {status}")]
    Status {
        /// The status.
        status: StatusCode,
    },
    /// No reply within the request timeout.
    #[error("no reply within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The request timeout.
        timeout: Duration,
    },
    /// The bridge's certificate failed verification.
    #[error("the bridge's tls certificate is not trusted ({reason}): {remedy}")]
    UntrustedCertificate {
        /// What the verifier said.
        reason: String,
        /// What the operator can do about it.
        remedy: &'static str,
    },
    /// The bridge refused the TLS handshake over the client certificate (none, or not one
    /// it trusts).
    #[error("{remedy}")]
    ClientCertificate {
        /// What the bridge's alert means and what to do.
        remedy: String,
    },
    /// The connection could not be made (refused, reset, TLS handshake, DNS).
    #[error("cannot connect to the bridge: {reason}")]
    Connect {
        /// The error chain.
        reason: String,
    },
    /// The connection broke during the exchange.
    #[error("the request failed: {reason}")]
    Other {
        /// The error chain.
        reason: String,
    },
}

/// What one request achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The bridge acknowledged it (2xx).
    Delivered {
        /// The status.
        status: StatusCode,
    },
    /// It failed in a way that can succeed later: it will be retried.
    Errored {
        /// Why.
        error: SendError,
        /// The bridge's `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// The bridge refused it; it is not retried.
    Rejected {
        /// The status.
        status: StatusCode,
        /// The start of the reply body, for the log.
        body_excerpt: String,
    },
}

/// What the check before capture found, when it is not a configuration error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeCheck {
    /// The bridge answered (any status but 404 and 410).
    Answered {
        /// Its status to the OPTIONS request.
        status: StatusCode,
    },
    /// No answer now (refused, timed out, reset): the bridge may be down, which capture
    /// outlives.
    Unreachable {
        /// Why, for the warning.
        error: SendError,
    },
}

/// A definite configuration error found by the check before capture: every notification
/// would be refused or never sent, so the agent must not start capturing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BridgeConfigError {
    /// The certificate fails verification.
    #[error("the tls certificate of the bridge at {url} is not trusted ({reason}): {remedy}")]
    UntrustedCertificate {
        /// The bridge URL.
        url: String,
        /// What the verifier said.
        reason: String,
        /// What the operator can do about it.
        remedy: &'static str,
    },
    /// The bridge requires a client certificate this agent does not present (or refuses the
    /// one it presents).
    #[error("the bridge at {url} refused the tls handshake: {remedy}")]
    ClientCertificate {
        /// The bridge URL.
        url: String,
        /// What the bridge's alert means and what to do.
        remedy: String,
    },
    /// Nothing lives at the URL's path.
    #[error(
        "the bridge at {url} answers {status}: there is no such endpoint; check the path in \
         --bridge-url (the bridge's route, e.g. /genesys-call-notify)"
    )]
    NotFound {
        /// The bridge URL.
        url: String,
        /// 404 or 410.
        status: StatusCode,
    },
}

impl BatchOutcome {
    /// The `outcome` label of `sipnotify_deliveries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Errored { .. } => "errored",
            Self::Rejected { .. } => "rejected",
        }
    }
}

/// The bridge client.
#[derive(Clone, Debug)]
pub(crate) struct BridgeClient {
    client: Client,
    url: Url,
    authorization: Option<HeaderValue>,
    signing: Option<SigningKey>,
    timeout: Duration,
}

impl BridgeClient {
    pub(crate) fn new(
        settings: &BridgeSettings,
        max_in_flight: usize,
    ) -> Result<Self, ClientError> {
        let client_error = |reason: String| ClientError { reason };
        let authorization = settings
            .token
            .as_ref()
            .map(|token| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| client_error("the bearer token is not a header value".into()))?;
                value.set_sensitive(true);
                Ok::<_, ClientError>(value)
            })
            .transpose()?;
        let client = client_builder(
            tls::client_config(&settings.tls, settings.client_identity.as_ref())?,
            settings.request_timeout,
            USER_AGENT,
        )
        .pool_max_idle_per_host(max_in_flight)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| client_error(error_chain(&e)))?;
        Ok(Self {
            client,
            url: settings.url.clone(),
            authorization,
            signing: settings.signing_key.clone(),
            timeout: settings.request_timeout,
        })
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// POSTs `body` once and classifies the result.
    pub(crate) async fn send(&self, body: Bytes, key: &str) -> BatchOutcome {
        // Signed per attempt: a retry carries its own timestamp.
        let signature = self.signing.as_ref().and_then(|k| k.header(&body));
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Ok(key) = HeaderValue::from_str(key) {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return self.failed(&error),
        };
        let status = response.status();
        match retry::classify(status) {
            StatusClass::Delivered => match response.bytes().await {
                Ok(_) => BatchOutcome::Delivered { status },
                // The bridge said yes; a reply body cut short does not change that.
                Err(_) => BatchOutcome::Delivered { status },
            },
            StatusClass::Retry => {
                let retry_after = retry::retry_after(response.headers());
                // Drain so the connection can be reused; its content does not matter.
                let _ = response.bytes().await;
                BatchOutcome::Errored {
                    error: SendError::Status { status },
                    retry_after,
                }
            }
            StatusClass::Reject => {
                let body = response.bytes().await.unwrap_or_default();
                BatchOutcome::Rejected {
                    status,
                    body_excerpt: excerpt(&body),
                }
            }
        }
    }

    /// Asks the bridge, without sending a notification, whether the URL works: one OPTIONS
    /// request through the delivery client (same TLS verification, same HTTP settings).
    ///
    /// OPTIONS rather than HEAD: Express (the bridge of the field report) answers OPTIONS on
    /// any route it has with 200 and `Allow: POST`, other frameworks answer 405 on a POST-only
    /// route, and all of them 404 only when nothing lives at the path; HEAD is a 404 on an
    /// Express POST route.
    pub(crate) async fn check(&self) -> Result<BridgeCheck, BridgeConfigError> {
        let mut request = self.client.request(Method::OPTIONS, self.url.clone());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return match self.failed(&error) {
                    BatchOutcome::Errored {
                        error: SendError::UntrustedCertificate { reason, remedy },
                        ..
                    } => Err(BridgeConfigError::UntrustedCertificate {
                        url: self.url.to_string(),
                        reason,
                        remedy,
                    }),
                    BatchOutcome::Errored {
                        error: SendError::ClientCertificate { remedy },
                        ..
                    } => Err(BridgeConfigError::ClientCertificate {
                        url: self.url.to_string(),
                        remedy,
                    }),
                    BatchOutcome::Errored { error, .. } => Ok(BridgeCheck::Unreachable { error }),
                    // `failed` only makes errors.
                    _ => Ok(BridgeCheck::Unreachable {
                        error: SendError::Other {
                            reason: error_chain(&error),
                        },
                    }),
                };
            }
        };
        let status = response.status();
        let _ = response.bytes().await;
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Err(BridgeConfigError::NotFound {
                url: self.url.to_string(),
                status,
            });
        }
        Ok(BridgeCheck::Answered { status })
    }

    fn failed(&self, error: &reqwest::Error) -> BatchOutcome {
        let error = if let Some(cert) = tls::certificate_error(error) {
            SendError::UntrustedCertificate {
                reason: tls::describe(&cert),
                remedy: tls::remedy(&cert),
            }
        } else if let Some(remedy) = tls::client_certificate_refusal(error) {
            SendError::ClientCertificate { remedy }
        } else if error.is_timeout() {
            SendError::Timeout {
                timeout: self.timeout,
            }
        } else if error.is_connect() {
            SendError::Connect {
                reason: error_chain(error),
            }
        } else {
            SendError::Other {
                reason: error_chain(error),
            }
        };
        BatchOutcome::Errored {
            error,
            retry_after: None,
        }
    }
}

/// A client builder with what every request of the agent to the bridge needs: `tls`, `timeout`
/// for the whole request and for connecting, no redirects, no proxy, and `user_agent`. The
/// doctor's probe starts from it too, so it reaches the bridge the way `run` does.
pub(crate) fn client_builder(
    tls: ClientConfig,
    timeout: Duration,
    user_agent: &str,
) -> ClientBuilder {
    Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(user_agent)
}

/// `error: cause: cause…`, the way the agent reports errors on one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

/// The first characters of a reply body, on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_single_line() {
        assert_eq!(excerpt(b"bad\njson"), "bad json");
        let long = vec![b'x'; 500];
        let short = excerpt(&long);
        assert_eq!(short.chars().count(), EXCERPT_CHARS + 1);
        assert!(short.ends_with('…'));
    }

    #[test]
    fn outcome_labels_are_the_metric_labels() {
        let delivered = BatchOutcome::Delivered {
            status: StatusCode::OK,
        };
        assert_eq!(delivered.label(), "delivered");
        let rejected = BatchOutcome::Rejected {
            status: StatusCode::BAD_REQUEST,
            body_excerpt: String::new(),
        };
        assert_eq!(rejected.label(), "rejected");
    }
}
