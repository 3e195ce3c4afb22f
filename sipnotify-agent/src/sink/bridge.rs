//! The bridge sink: encode a batch, POST it, retry until it is delivered, refused or too old,
//! and tell the operator how the bridge is doing.
//!
//! Each batch is one request task (the delivery loop runs up to `--max-in-flight` of them over
//! the client's keep-alive pool) that retries with full-jitter backoff, or the bridge's
//! `Retry-After`, until the bridge acknowledges it (2xx), refuses it for good (4xx other than
//! 408/429), or it is older than `--max-age`. Every try carries the same `Idempotency-Key`.
//!
//! The bridge's state changes are logged once each: a WARN when it starts failing (the error
//! and what to check), an INFO when it is back (how long it was out, the backlog), and while it
//! stays down a reminder at most every 5 s. An untrusted certificate found after capture began
//! is never fatal (nothing captured is lost to it) but logged as an error each time.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use metrics::{Counter, Histogram};
use tokio::time::Instant;

use super::{
    DeliveryReport, Sending, Sink,
    batch::{self, Batch},
    http::{BatchOutcome, BridgeClient, SendError},
    ledger::Settled,
    retry::Backoff,
    settings::{BodyMode, RetrySettings, SinkSettings},
};
use crate::{event::JsonOptions, logging::human};

/// Repeated warnings (bridge down, refusals) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

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

/// `sipnotify_bridge_up`: until the first request, whether the check before capture got an
/// answer (an idle agent whose bridge answered must not look like one whose bridge is down);
/// then set by every request.
pub(super) fn publish_bridge_up(up: bool) {
    metrics::gauge!("sipnotify_bridge_up").set(if up { 1.0 } else { 0.0 });
}

/// The bridge as a [`Sink`].
#[derive(Debug)]
pub(crate) struct Bridge {
    shared: Arc<Shared>,
}

impl Bridge {
    /// A sink posting through `client` with `settings`, reporting the bridge's answers to
    /// `health`.
    pub(crate) fn new(client: BridgeClient, settings: &SinkSettings, health: BridgeHealth) -> Self {
        publish_bridge_up(health.has_answered());
        Self {
            shared: Arc::new(Shared {
                client,
                mode: settings.mode,
                json: settings.json_options(),
                max_age: settings.max_age,
                retry: settings.retry,
                health,
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                metrics: Metrics::new(),
                refusals: LogLimiter::default(),
                failures: LogLimiter::default(),
                down_since: Mutex::new(None),
            }),
        }
    }
}

impl Sink for Bridge {
    fn mode(&self) -> BodyMode {
        self.shared.mode
    }

    fn limits_in_flight(&self) -> bool {
        true
    }

    fn take(&mut self, mut batch: Batch) -> Option<Sending> {
        let shared = &self.shared;
        batch.expire(shared.max_age, shared.mode, shared.json);
        if batch.is_empty() {
            return None;
        }
        Some(Box::pin(send(Arc::clone(shared), batch)))
    }

    fn report(&self, report: &mut DeliveryReport) {
        report.requests += self.shared.requests.load(Ordering::Relaxed);
        report.retries += self.shared.retries.load(Ordering::Relaxed);
    }
}

/// Metric handles, registered once rather than looked up for every request.
#[derive(Debug)]
struct Metrics {
    delivered: Counter,
    errored: Counter,
    rejected: Counter,
    retries: Counter,
    latency: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let outcome = |label: &'static str| metrics::counter!("sipnotify_deliveries_total", "outcome" => label);
        Self {
            delivered: outcome("delivered"),
            errored: outcome("errored"),
            rejected: outcome("rejected"),
            retries: metrics::counter!("sipnotify_retries_total"),
            latency: metrics::histogram!("sipnotify_delivery_latency_seconds"),
        }
    }

    /// `sipnotify_deliveries_total` for this outcome (labelled as [`BatchOutcome::label`]).
    fn deliveries(&self, outcome: &BatchOutcome) -> &Counter {
        match outcome {
            BatchOutcome::Delivered { .. } => &self.delivered,
            BatchOutcome::Errored { .. } => &self.errored,
            BatchOutcome::Rejected { .. } => &self.rejected,
        }
    }
}

/// What the request tasks share.
#[derive(Debug)]
struct Shared {
    client: BridgeClient,
    mode: BodyMode,
    json: JsonOptions,
    max_age: Option<Duration>,
    retry: RetrySettings,
    health: BridgeHealth,
    requests: AtomicU64,
    retries: AtomicU64,
    metrics: Metrics,
    refusals: LogLimiter,
    failures: LogLimiter,
    /// Since when the bridge is failing, if it is.
    down_since: Mutex<Option<Instant>>,
}

/// What to check for each kind of failure (never empty).
fn what_to_check(error: &SendError, url: &reqwest::Url) -> String {
    match error {
        SendError::Status { status } if status.as_u16() == 429 => {
            "the bridge is rate-limiting: check its load and limits".to_owned()
        }
        SendError::Status { .. } => {
            format!("the bridge at {url} is up but failing: check its own log and its backend")
        }
        SendError::Timeout { .. } => {
            "the bridge does not answer in time: check its load, or raise --request-timeout"
                .to_owned()
        }
        SendError::UntrustedCertificate { remedy, .. } => (*remedy).to_owned(),
        SendError::ClientCertificate { remedy } => remedy.clone(),
        SendError::Connect { .. } => format!(
            "check that the bridge is running and listening at {url}, and that no firewall is \
             in the way"
        ),
        SendError::Other { .. } => {
            "the connection broke: check the bridge and the network to it".to_owned()
        }
    }
}

impl Shared {
    /// The bridge answered: if it was failing, say that it is back.
    fn bridge_answered(&self, batch: &Batch) {
        self.health.mark_answered();
        let down_since = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        publish_bridge_up(true);
        if let Some(since) = down_since {
            tracing::info!(
                url = %self.client.url(),
                outage = %human(since.elapsed()),
                backlog = batch.backlog(),
                "the bridge is back; delivering the backlog"
            );
        }
    }

    /// A request for `batch` failed in a way worth retrying.
    fn bridge_failed(&self, batch: &Batch, error: &SendError, delay: Duration) {
        let started = {
            let mut down_since = self
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *down_since {
                Some(since) => Err(since),
                None => {
                    *down_since = Some(Instant::now());
                    Ok(())
                }
            }
        };
        publish_bridge_up(false);
        let url = self.client.url();
        if let SendError::UntrustedCertificate { .. } = error {
            // A configuration error found after capture began (the check before capture
            // passed, or the certificate changed since): never fatal, so nothing captured is
            // lost to it, but loud, every time the limiter lets it through.
            if started.is_ok() || self.failures.allow().is_some() {
                tracing::error!(
                    %url,
                    %error,
                    backlog = batch.backlog(),
                    keeping = batch.keeping(),
                    "the bridge's tls certificate is refused: nothing reaches the bridge until \
                     this is fixed; notifications are kept and retried meanwhile"
                );
            }
            return;
        }
        let check = what_to_check(error, url);
        match started {
            Ok(()) => {
                // Keep the next failures out of the log for a while: this line said it.
                let _ = self.failures.allow();
                tracing::warn!(
                    %url,
                    %error,
                    check = %check,
                    keeping = batch.keeping(),
                    "the bridge is failing; retrying until it answers"
                );
            }
            Err(since) => {
                if let Some(suppressed) = self.failures.allow() {
                    tracing::warn!(
                        %error,
                        down_for = %human(since.elapsed()),
                        retry_in = %human(delay),
                        backlog = batch.backlog(),
                        failed_requests = suppressed + 1,
                        check = %check,
                        "the bridge is still failing"
                    );
                }
            }
        }
    }
}

/// Lets a repeated warning through at most every [`LOG_EVERY`], counting the ones it held back.
#[derive(Debug, Default)]
struct LogLimiter {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// `Some(suppressed since the last one)` when this one may be logged.
    fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state
            .0
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
        {
            let suppressed = state.1;
            *state = (Some(now), 0);
            Some(suppressed)
        } else {
            state.1 += 1;
            None
        }
    }
}

/// Sends one batch until it is delivered, refused or expired (a task aborted at the shutdown
/// deadline leaves it unsettled).
async fn send(shared: Arc<Shared>, mut batch: Batch) {
    let mut backoff = Backoff::new(shared.retry);
    loop {
        let count = batch.notifications.len() as u64;
        let body = match &batch.body {
            Some(body) => body.clone(),
            None => {
                let encoded = match (shared.mode, batch.notifications.as_slice()) {
                    (BodyMode::Object, [n]) => batch::encode_object(n, shared.json),
                    _ => batch::encode_array(&batch.notifications, shared.json),
                };
                match encoded {
                    Ok(body) => {
                        batch.body = Some(body.clone());
                        body
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot encode notifications as json; dropped");
                        batch.settle(Settled::Rejected);
                        return;
                    }
                }
            }
        };
        let key = batch::idempotency_key(&batch.notifications, shared.mode);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = shared.client.send(body, &key).await;
        shared.metrics.deliveries(&outcome).increment(1);
        match outcome {
            BatchOutcome::Delivered { .. } => {
                let now = SystemTime::now();
                let latency = &shared.metrics.latency;
                for n in &batch.notifications {
                    let seconds = now
                        .duration_since(n.meta.captured_at)
                        .unwrap_or(Duration::ZERO)
                        .as_secs_f64();
                    latency.record(seconds);
                }
                shared.bridge_answered(&batch);
                batch.settle(Settled::Delivered);
                return;
            }
            BatchOutcome::Rejected {
                status,
                body_excerpt,
            } => {
                if let Some(suppressed) = shared.refusals.allow() {
                    tracing::warn!(
                        %status,
                        reply = %body_excerpt,
                        idempotency_key = %key,
                        notifications = count,
                        suppressed,
                        check = "the bridge's log for why it refuses these; they are not retried",
                        "the bridge refused a notification; not retrying"
                    );
                }
                shared.bridge_answered(&batch);
                batch.settle(Settled::Rejected);
                return;
            }
            BatchOutcome::Errored { error, retry_after } => {
                if let SendError::Status { .. } = error {
                    shared.health.mark_answered();
                }
                let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
                shared.bridge_failed(&batch, &error, delay);
                shared.retries.fetch_add(1, Ordering::Relaxed);
                shared.metrics.retries.increment(1);
                tokio::time::sleep(delay).await;
                batch.expire(shared.max_age, shared.mode, shared.json);
                if batch.is_empty() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_the_first_through_and_counts_the_rest() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.state.lock().unwrap().1, 2);
    }
}
