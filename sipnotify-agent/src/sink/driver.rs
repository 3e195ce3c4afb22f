//! The delivery loop: queue → batches → requests in flight → outcomes.
//!
//! Throughput comes from not waiting for each reply: up to `max_in_flight` requests run at
//! once over the client's keep-alive pool, each in its own task that retries until delivered,
//! refused, or too old. A permit is taken BEFORE a notification leaves the queue, so while the
//! bridge is slow or down the backlog stays in the queue, where the drop-oldest policy and the
//! depth gauge see it.
//!
//! Shutdown (the token): the queue is closed, what is queued and in flight keeps going until
//! `shutdown_timeout`, then the rest is counted as undelivered. A closed queue alone (end of a
//! replay) drains completely. An untrusted bridge certificate before the bridge ever answered
//! is a configuration mistake: delivery stops with an error naming both remedies, rather than
//! retrying into the void.
//!
//! With the spool, each notification settled (delivered, refused for good, expired) is
//! acknowledged by its spool id; what is still unsettled at the end stays in the spool for the
//! next start. The bridge's state changes are logged once each: a WARN when it starts failing
//! (the error and what to check), an INFO when it is back (how long it was out, the backlog).

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use metrics::{Counter, Histogram};
use tokio::{
    io::AsyncWrite,
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    batch::{self, Batch, Batcher, call_key},
    http::{BatchOutcome, BridgeCheck, BridgeConfigError, HttpSink, SendError},
    retry::Backoff,
    settings::{BodyMode, ClientError, RetrySettings, SinkSettings, TlsSettings},
    stdout::JsonLines,
};
use crate::{
    event::{JsonOptions, Notification},
    oplog::{DropLog, human},
    queue::NotificationQueue,
    spool::{self, Acks},
};

/// Repeated warnings (bridge down, refusals) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What a delivery run achieved, in notifications (not requests, except where named).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Acknowledged by the bridge (or, with no bridge, written to stdout).
    pub delivered: u64,
    /// Refused by the bridge (4xx other than 408/429); not retried.
    pub rejected: u64,
    /// Dropped because they were older than the max age.
    pub expired: u64,
    /// Still queued or in flight when delivery stopped (shutdown deadline or fatal error).
    pub undelivered: u64,
    /// Requests sent, retries included.
    pub requests: u64,
    /// Requests that were retried.
    pub retries: u64,
}

/// Why delivery stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The bridge client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Delivery stopped with an error; `report` says what happened until then.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct DeliveryFailed {
    /// Why it stopped.
    #[source]
    pub error: DeliveryError,
    /// The counts until then.
    pub report: DeliveryReport,
}

/// A configured delivery, ready to run. Build it early so configuration errors surface before
/// capture starts, and take [`Delivery::health`] for `/healthz`.
#[derive(Debug)]
pub struct Delivery {
    settings: SinkSettings,
    http: Option<HttpSink>,
    health: BridgeHealth,
    acks: Option<Acks>,
    drops: Arc<DropLog>,
}

impl Delivery {
    /// Builds the HTTP client for `settings` (validated by the command line).
    pub fn new(settings: SinkSettings) -> Result<Self, ClientError> {
        let http = match &settings.bridge {
            Some(bridge) => {
                if bridge.tls == TlsSettings::Insecure {
                    tracing::warn!(
                        url = %bridge.url,
                        "--insecure: the bridge's tls certificate is not verified"
                    );
                }
                if bridge.token.is_some() && bridge.url.scheme() == "http" {
                    tracing::warn!(url = %bridge.url, "the bearer token is sent over plain http");
                }
                Some(HttpSink::new(bridge, settings.max_in_flight)?)
            }
            None => None,
        };
        Ok(Self {
            settings,
            http,
            health: BridgeHealth::default(),
            acks: None,
            drops: Arc::default(),
        })
    }

    /// Checks the bridge before capture, through the delivery client (see `HttpSink::check`):
    /// `Ok(None)` without a bridge; `Err` for a definite configuration error (an untrusted
    /// certificate, no endpoint at the URL), on which nothing should be captured.
    pub async fn check_bridge(&self) -> Result<Option<BridgeCheck>, BridgeConfigError> {
        let Some(http) = &self.http else {
            return Ok(None);
        };
        let check = http.check().await?;
        let answered = matches!(check, BridgeCheck::Answered { .. });
        if answered {
            self.health.mark_answered();
        }
        // Before capture, so `/metrics` has it from the first scrape.
        publish_bridge_up(answered);
        Ok(Some(check))
    }

    /// Acknowledges settled notifications to the spool they came from.
    pub fn with_spool_acks(mut self, acks: Acks) -> Self {
        self.acks = Some(acks);
        self
    }

    /// Logs drops (expired) through `drops`, shared with the rest of the agent.
    pub fn with_drop_log(mut self, drops: Arc<DropLog>) -> Self {
        self.drops = drops;
        self
    }

    /// [`Delivery::check_bridge`] as `run` and `replay` use it before capturing: a
    /// configuration error is returned (exit 2, nothing captured); a bridge that does not
    /// answer gets one warning, and capture goes on (what comes waits for it).
    pub async fn check_before_capture(&self) -> Result<(), BridgeConfigError> {
        let Some(http) = &self.http else {
            return Ok(());
        };
        match self.check_bridge().await? {
            Some(BridgeCheck::Answered { status }) => {
                tracing::info!(url = %http.url(), %status, "the bridge answers");
            }
            Some(BridgeCheck::Unreachable { error }) => tracing::warn!(
                url = %http.url(),
                %error,
                "the bridge does not answer; capturing anyway: notifications are kept and \
                 delivered when it does"
            ),
            None => {}
        }
        Ok(())
    }

    /// Whether the bridge has answered at least once; shared with the running delivery.
    pub fn health(&self) -> BridgeHealth {
        self.health.clone()
    }

    /// Delivers from `queue` (stdout lines, if enabled, go to the process's stdout) until the
    /// queue is closed and drained, or `shutdown` is cancelled and its deadline passes.
    pub async fn run(
        self,
        queue: NotificationQueue,
        shutdown: CancellationToken,
    ) -> Result<DeliveryReport, DeliveryFailed> {
        self.run_with_output(queue, shutdown, tokio::io::stdout())
            .await
    }

    /// Like [`Delivery::run`], with the JSON lines going to `out` instead of stdout.
    pub async fn run_with_output<W: AsyncWrite + Unpin + Send>(
        self,
        queue: NotificationQueue,
        shutdown: CancellationToken,
        out: W,
    ) -> Result<DeliveryReport, DeliveryFailed> {
        let json = self.settings.json_options();
        let lines = self.settings.stdout.then(|| JsonLines::new(out, json));
        let acks = self.acks.clone();
        let drops = Arc::clone(&self.drops);
        let backlog_queue = queue.clone();
        let answered = self.health.has_answered();
        let shared = self.http.map(|http| {
            publish_bridge_up(answered);
            Arc::new(Shared {
                acks: acks.clone(),
                drops: Arc::clone(&drops),
                queue: backlog_queue,
                bridge: Mutex::new(BridgeState::default()),
                http,
                mode: self.settings.mode,
                json,
                max_age: self.settings.max_age,
                retry: self.settings.retry,
                health: self.health.clone(),
                counters: Counters::default(),
                metrics: Metrics::new(),
                fatal: Mutex::new(None),
                stop: CancellationToken::new(),
                refusals: LogLimiter::default(),
                failures: LogLimiter::default(),
            })
        });
        let mode = if shared.is_some() {
            self.settings.mode
        } else {
            // Stdout alone has nothing to batch for.
            BodyMode::Object
        };
        let run = Run {
            queue,
            shutdown,
            shutdown_timeout: self.settings.shutdown_timeout,
            deadline: None,
            batcher: Batcher::new(mode, self.settings.batch, json),
            lines,
            stdout_written: 0,
            semaphore: Arc::new(Semaphore::new(self.settings.max_in_flight)),
            tasks: JoinSet::new(),
            max_age: self.settings.max_age,
            json,
            shared,
            acks,
            drops,
        };
        run.go().await
    }
}

/// Builds a [`Delivery`] from `settings` and runs it; see [`Delivery::run`].
pub async fn deliver(
    queue: NotificationQueue,
    settings: SinkSettings,
    shutdown: CancellationToken,
) -> Result<DeliveryReport, DeliveryFailed> {
    match Delivery::new(settings) {
        Ok(delivery) => delivery.run(queue, shutdown).await,
        Err(error) => Err(DeliveryFailed {
            error: error.into(),
            report: DeliveryReport {
                undelivered: queue.len() as u64,
                ..DeliveryReport::default()
            },
        }),
    }
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    /// Notifications handed to request tasks and not yet settled.
    in_flight: AtomicU64,
}

/// Metric handles, registered once rather than looked up for every request.
#[derive(Debug)]
struct Metrics {
    delivered: Counter,
    errored: Counter,
    rejected: Counter,
    retries: Counter,
    dropped_rejected: Counter,
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
            dropped_rejected: metrics::counter!("sipnotify_dropped_total", "reason" => "rejected"),
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
    http: HttpSink,
    mode: BodyMode,
    json: JsonOptions,
    max_age: Option<Duration>,
    retry: RetrySettings,
    health: BridgeHealth,
    counters: Counters,
    metrics: Metrics,
    fatal: Mutex<Option<DeliveryError>>,
    /// Cancelled on a fatal error.
    stop: CancellationToken,
    refusals: LogLimiter,
    failures: LogLimiter,
    acks: Option<Acks>,
    drops: Arc<DropLog>,
    /// For the backlog in the recovery line.
    queue: NotificationQueue,
    bridge: Mutex<BridgeState>,
}

/// Whether the bridge is failing, since when.
#[derive(Debug, Default)]
struct BridgeState {
    down_since: Option<Instant>,
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
    fn ack(&self, notifications: &[Notification]) {
        for n in notifications {
            spool::ack(self.acks.as_ref(), n);
        }
    }

    /// Notifications waiting for the bridge: in the spool, or in the queue and in flight.
    fn backlog(&self) -> u64 {
        match &self.acks {
            Some(acks) => acks.backlog(),
            None => self.queue.len() as u64 + self.counters.in_flight.load(Ordering::Relaxed),
        }
    }

    /// The bridge answered: if it was failing, say that it is back.
    fn bridge_answered(&self) {
        self.health.mark_answered();
        let down_since = self
            .bridge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .down_since
            .take();
        publish_bridge_up(true);
        if let Some(since) = down_since {
            tracing::info!(
                url = %self.http.url(),
                outage = %human(since.elapsed()),
                backlog = self.backlog(),
                "the bridge is back; delivering the backlog"
            );
        }
    }

    /// A request failed in a way worth retrying.
    fn bridge_failed(&self, error: &SendError, delay: Duration) {
        let started = {
            let mut state = self.bridge.lock().unwrap_or_else(PoisonError::into_inner);
            match state.down_since {
                Some(since) => Err(since),
                None => {
                    state.down_since = Some(Instant::now());
                    Ok(())
                }
            }
        };
        publish_bridge_up(false);
        let check = what_to_check(error, self.http.url());
        if let SendError::UntrustedCertificate { .. } = error {
            // A configuration error found after capture began (the check before capture
            // passed, or the certificate changed since): never fatal, so nothing captured is
            // lost to it, but loud, every time the limiter lets it through.
            if started.is_ok() || self.failures.allow().is_some() {
                tracing::error!(
                    url = %self.http.url(),
                    %error,
                    backlog = self.backlog(),
                    keeping = if self.acks.is_some() { "in the spool" } else { "in memory" },
                    "the bridge's tls certificate is refused: nothing reaches the bridge until \
                     this is fixed; notifications are kept and retried meanwhile"
                );
            }
            return;
        }
        match started {
            Ok(()) => {
                // Keep the next failures out of the log for a while: this line said it.
                let _ = self.failures.allow();
                tracing::warn!(
                    url = %self.http.url(),
                    %error,
                    check = %check,
                    keeping = if self.acks.is_some() { "in the spool" } else { "in memory" },
                    "the bridge is failing; retrying until it answers"
                );
            }
            Err(since) => {
                if let Some(suppressed) = self.failures.allow() {
                    tracing::warn!(
                        %error,
                        down_for = %human(since.elapsed()),
                        retry_in = %human(delay),
                        backlog = self.backlog(),
                        failed_requests = suppressed + 1,
                        check = %check,
                        "the bridge is still failing"
                    );
                }
            }
        }
    }

    fn take_fatal(&self) -> Option<DeliveryError> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
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

fn is_expired(n: &Notification, max_age: Option<Duration>, now: SystemTime) -> bool {
    max_age.is_some_and(|max| {
        now.duration_since(n.meta.captured_at)
            .is_ok_and(|age| age > max)
    })
}

/// Drops the expired notifications of `batch` (re-encoding an array body if any went),
/// acknowledges them to the spool and logs them; returns how many went.
fn drop_expired(
    batch: &mut Batch,
    max_age: Option<Duration>,
    mode: BodyMode,
    json: JsonOptions,
    acks: Option<&Acks>,
    drops: &DropLog,
) -> u64 {
    if max_age.is_none() {
        return 0;
    }
    let now = SystemTime::now();
    let before = batch.notifications.len();
    batch.notifications.retain(|n| {
        let expired = is_expired(n, max_age, now);
        if expired {
            spool::ack(acks, n);
        }
        !expired
    });
    let dropped = (before - batch.notifications.len()) as u64;
    if dropped > 0 {
        drops.record("max_age", dropped);
        batch.body = match mode {
            BodyMode::Array if !batch.notifications.is_empty() => {
                batch::encode_array(&batch.notifications, json).ok()
            }
            _ => None,
        };
    }
    dropped
}

/// Sends one batch until it is delivered, refused, expired, or delivery stops; returns the
/// call keys of the batch, which are then free for their next notification.
async fn send_batch(
    shared: Arc<Shared>,
    mut batch: Batch,
    _permit: OwnedSemaphorePermit,
) -> Vec<u64> {
    let calls: Vec<u64> = batch.notifications.iter().map(call_key).collect();
    let counters = &shared.counters;
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
                        shared.ack(&batch.notifications);
                        counters.rejected.fetch_add(count, Ordering::Relaxed);
                        counters.in_flight.fetch_sub(count, Ordering::Relaxed);
                        return calls;
                    }
                }
            }
        };
        let key = batch::idempotency_key(&batch.notifications, shared.mode);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = shared.http.send(body, &key).await;
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
                shared.ack(&batch.notifications);
                counters.delivered.fetch_add(count, Ordering::Relaxed);
                counters.in_flight.fetch_sub(count, Ordering::Relaxed);
                shared.bridge_answered();
                return calls;
            }
            BatchOutcome::Rejected {
                status,
                body_excerpt,
            } => {
                shared.metrics.dropped_rejected.increment(count);
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
                shared.ack(&batch.notifications);
                counters.rejected.fetch_add(count, Ordering::Relaxed);
                counters.in_flight.fetch_sub(count, Ordering::Relaxed);
                shared.bridge_answered();
                return calls;
            }
            BatchOutcome::Errored { error, retry_after } => {
                if let SendError::Status { .. } = error {
                    shared.health.mark_answered();
                }
                let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
                shared.bridge_failed(&error, delay);
                counters.retries.fetch_add(1, Ordering::Relaxed);
                shared.metrics.retries.increment(1);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.stop.cancelled() => return calls,
                }
                let expired = drop_expired(
                    &mut batch,
                    shared.max_age,
                    shared.mode,
                    shared.json,
                    shared.acks.as_ref(),
                    &shared.drops,
                );
                if expired > 0 {
                    counters.expired.fetch_add(expired, Ordering::Relaxed);
                    counters.in_flight.fetch_sub(expired, Ordering::Relaxed);
                }
                if batch.notifications.is_empty() {
                    return calls;
                }
            }
        }
    }
}

/// Why the main loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Queue closed and drained.
    Drained,
    /// Shutdown deadline passed.
    Deadline,
    /// A fatal error.
    Fatal,
}

/// One delivery run's state.
struct Run<W> {
    queue: NotificationQueue,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    deadline: Option<Instant>,
    batcher: Batcher,
    lines: Option<JsonLines<W>>,
    /// Notifications written to stdout (the delivered count when there is no bridge).
    stdout_written: u64,
    semaphore: Arc<Semaphore>,
    /// Request tasks; each returns the call keys of its batch.
    tasks: JoinSet<Vec<u64>>,
    max_age: Option<Duration>,
    json: JsonOptions,
    shared: Option<Arc<Shared>>,
    acks: Option<Acks>,
    drops: Arc<DropLog>,
}

/// The next finished request task, or never when there is none.
async fn next_settled(tasks: &mut JoinSet<Vec<u64>>) -> Vec<u64> {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    match tasks.join_next().await {
        Some(Ok(calls)) => calls,
        // Aborted or panicked: nothing to release that anyone waits for any more.
        _ => Vec::new(),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Cancelled on a fatal error, or never (stdout only).
async fn stopped(shared: Option<&Arc<Shared>>) {
    match shared {
        Some(shared) => shared.stop.cancelled().await,
        None => std::future::pending().await,
    }
}

impl<W: AsyncWrite + Unpin + Send> Run<W> {
    async fn go(mut self) -> Result<DeliveryReport, DeliveryFailed> {
        let mut end = self.main_loop().await;
        if end == End::Drained {
            end = self.wait_for_requests().await;
        }
        if end != End::Drained {
            self.queue.close();
            self.tasks.abort_all();
        }
        while self.tasks.join_next().await.is_some() {}
        self.flush_lines().await;
        self.report()
    }

    fn reap(&mut self) {
        while let Some(joined) = self.tasks.try_join_next() {
            if let Ok(calls) = joined {
                self.batcher.release(calls);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.deadline = Some(deadline);
        self.queue.close();
        tracing::info!(
            queued = self.queue.len() + self.batcher.in_hand(),
            timeout = %humantime::format_duration(self.shutdown_timeout),
            "shutting down: delivering what is queued and in flight"
        );
    }

    async fn main_loop(&mut self) -> End {
        loop {
            self.reap();
            let permit = if self.shared.is_some() {
                tokio::select! {
                    biased;
                    () = stopped(self.shared.as_ref()) => return End::Fatal,
                    () = self.shutdown.cancelled(), if self.deadline.is_none() => {
                        self.begin_shutdown();
                        continue;
                    }
                    () = until(self.deadline) => return End::Deadline,
                    calls = next_settled(&mut self.tasks) => {
                        self.batcher.release(calls);
                        continue;
                    }
                    permit = Arc::clone(&self.semaphore).acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        // The semaphore is never closed; treat it as the end anyway.
                        Err(_) => return End::Drained,
                    },
                }
            } else {
                None
            };
            let next = tokio::select! {
                biased;
                () = stopped(self.shared.as_ref()) => return End::Fatal,
                () = self.shutdown.cancelled(), if self.deadline.is_none() => {
                    self.begin_shutdown();
                    continue;
                }
                () = until(self.deadline) => return End::Deadline,
                calls = next_settled(&mut self.tasks) => {
                    self.batcher.release(calls);
                    // The permit (if any) is dropped; the loop takes one again.
                    continue;
                }
                batch = self.batcher.next(&self.queue) => batch,
            };
            let Some(mut batch) = next else {
                return End::Drained;
            };
            self.write_lines(&batch).await;
            let (Some(permit), Some(shared)) = (permit, self.shared.as_ref()) else {
                // Stdout only: written is settled.
                for n in &batch.notifications {
                    spool::ack(self.acks.as_ref(), n);
                }
                self.batcher
                    .release(batch.notifications.iter().map(call_key));
                continue;
            };
            let calls: Vec<u64> = batch.notifications.iter().map(call_key).collect();
            let expired = drop_expired(
                &mut batch,
                self.max_age,
                shared.mode,
                self.json,
                self.acks.as_ref(),
                &self.drops,
            );
            shared
                .counters
                .expired
                .fetch_add(expired, Ordering::Relaxed);
            if self.batcher.unencodable > 0 {
                shared.counters.rejected.fetch_add(
                    std::mem::take(&mut self.batcher.unencodable),
                    Ordering::Relaxed,
                );
            }
            if batch.notifications.is_empty() {
                self.batcher.release(calls);
                continue;
            }
            shared
                .counters
                .in_flight
                .fetch_add(batch.notifications.len() as u64, Ordering::Relaxed);
            self.tasks
                .spawn(send_batch(Arc::clone(shared), batch, permit));
        }
    }

    async fn wait_for_requests(&mut self) -> End {
        loop {
            tokio::select! {
                biased;
                () = stopped(self.shared.as_ref()) => return End::Fatal,
                () = self.shutdown.cancelled(), if self.deadline.is_none() => self.begin_shutdown(),
                () = until(self.deadline) => return End::Deadline,
                joined = self.tasks.join_next() => match joined {
                    None => return End::Drained,
                    Some(Ok(calls)) => self.batcher.release(calls),
                    Some(Err(_)) => {}
                },
            }
        }
    }

    async fn write_lines(&mut self, batch: &Batch) {
        let Some(lines) = self.lines.as_mut() else {
            return;
        };
        for n in &batch.notifications {
            match lines.push(n) {
                Ok(()) => self.stdout_written += 1,
                Err(error) => tracing::warn!(%error, "cannot encode a notification as json"),
            }
        }
        // Flush when the burst is over, so a lone notification shows at once.
        if lines.wants_flush() || (self.queue.is_empty() && self.batcher.in_hand() == 0) {
            self.flush_lines().await;
        }
    }

    async fn flush_lines(&mut self) {
        let Some(lines) = self.lines.as_mut() else {
            return;
        };
        if let Err(error) = lines.flush().await {
            // A closed pipe (`| head`) must not stop delivery to the bridge.
            tracing::warn!(%error, "cannot write to stdout; stdout output stopped");
            self.lines = None;
        }
    }

    fn report(&self) -> Result<DeliveryReport, DeliveryFailed> {
        let left = (self.queue.len() + self.batcher.in_hand()) as u64;
        let Some(shared) = &self.shared else {
            return Ok(DeliveryReport {
                delivered: self.stdout_written,
                undelivered: left,
                ..DeliveryReport::default()
            });
        };
        let c = &shared.counters;
        let report = DeliveryReport {
            delivered: c.delivered.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            undelivered: left + c.in_flight.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        };
        if report.undelivered > 0 && self.acks.is_none() {
            // With the spool they are kept for the next start, not dropped.
            self.drops.record("shutdown", report.undelivered);
        }
        match shared.take_fatal() {
            Some(error) => Err(DeliveryFailed { error, report }),
            None => Ok(report),
        }
    }
}

/// `sipnotify_bridge_up`: until the first request, whether the check before capture got an
/// answer (an idle agent whose bridge answered must not look like one whose bridge is down);
/// then set by every request.
fn publish_bridge_up(up: bool) {
    metrics::gauge!("sipnotify_bridge_up").set(if up { 1.0 } else { 0.0 });
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
    use super::*;
    use crate::{event::tests::sample, sink::settings::BatchSettings};

    /// Stdout only, with this test's own values (`--stdout --no-bridge`).
    fn stdout_only() -> SinkSettings {
        SinkSettings {
            bridge: None,
            stdout: true,
            mode: BodyMode::Object,
            batch: BatchSettings {
                max_events: 500,
                max_bytes: 1 << 20,
                linger: Duration::from_millis(1),
            },
            extras: false,
            max_in_flight: 64,
            max_age: Some(Duration::from_secs(60)),
            retry: RetrySettings {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            shutdown_timeout: Duration::from_secs(5),
            queue_capacity: 100,
        }
    }

    #[tokio::test]
    async fn stdout_only_writes_every_notification_and_ends_when_drained() {
        let queue = NotificationQueue::new(100);
        for cseq in 0..10 {
            let mut n = sample();
            n.cseq = cseq;
            queue.push(n);
        }
        queue.close();
        let delivery = Delivery::new(stdout_only()).unwrap();
        let mut out = Vec::new();
        let report = delivery
            .run_with_output(queue, CancellationToken::new(), &mut out)
            .await
            .unwrap();
        assert_eq!(report.delivered, 10);
        assert_eq!(report.undelivered, 0);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_the_queue_and_delivers_what_was_queued() {
        let queue = NotificationQueue::new(100);
        let mut settings = stdout_only();
        settings.shutdown_timeout = Duration::from_millis(200);
        let delivery = Delivery::new(settings).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let queue = queue.clone();
            let shutdown = shutdown.clone();
            async move {
                delivery
                    .run_with_output(queue, shutdown, tokio::io::sink())
                    .await
            }
        });
        queue.push(sample());
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.cancel();
        let report = task.await.unwrap().unwrap();
        assert_eq!(report.delivered, 1);
        assert!(queue.is_closed());
    }

    #[test]
    fn expiry_follows_the_capture_time() {
        let mut n = sample();
        let now = SystemTime::now();
        n.meta.captured_at = now - Duration::from_secs(61);
        assert!(is_expired(&n, Some(Duration::from_secs(60)), now));
        assert!(!is_expired(&n, None, now));
        n.meta.captured_at = now - Duration::from_secs(59);
        assert!(!is_expired(&n, Some(Duration::from_secs(60)), now));
        // A capture clock ahead of ours is not "old".
        n.meta.captured_at = now + Duration::from_secs(5);
        assert!(!is_expired(&n, Some(Duration::from_secs(60)), now));
    }

    #[test]
    fn log_limiter_lets_the_first_through_and_counts_the_rest() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.state.lock().unwrap().1, 2);
    }
}
