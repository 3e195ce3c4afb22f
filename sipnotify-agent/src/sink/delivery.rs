//! The delivery loop: stage queue → batches → sinks → settled, and the report.
//!
//! Throughput comes from not waiting for each reply: a sink that limits what is in flight (the
//! bridge) gets up to `max_in_flight` batches at once, each settled by its own task. The slot
//! is taken BEFORE a notification leaves the queue, so while the bridge is slow or down the
//! backlog stays in the queue (and the stage), where the drop-oldest policy, the spool and the
//! depth gauge see it.
//!
//! Shutdown (the token): the queue is closed, what is queued and in flight keeps going until
//! `shutdown_timeout`, then the rest is counted as undelivered. A closed queue alone (end of a
//! replay) drains completely. What is unsettled at the end stays in the spool for the next
//! start, or without one is counted as lost (`shutdown`).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncWrite, Stdout as ProcessStdout},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    Sink,
    batch::{Batch, Batcher, call_key},
    bridge::{Bridge, BridgeHealth, publish_bridge_up},
    http::{BridgeCheck, BridgeClient, BridgeConfigError},
    ledger::Ledger,
    settings::{BodyMode, ClientError, SinkSettings, TlsSettings},
    stdout::Stdout,
};
use crate::{
    loss::{Loss, Losses},
    queue::Queue,
    stage::{Acker, Staged},
};

/// What a delivery run achieved, in notifications (not requests, except where named).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Acknowledged by the bridge (or, with no bridge, written to stdout).
    pub delivered: u64,
    /// Refused by the bridge (4xx other than 408/429); not retried.
    pub rejected: u64,
    /// Dropped because they were older than the max age.
    pub expired: u64,
    /// Still queued or in flight when delivery stopped (the shutdown deadline).
    pub undelivered: u64,
    /// Requests sent, retries included.
    pub requests: u64,
    /// Requests that were retried.
    pub retries: u64,
}

/// A configured delivery, ready to run. Build it early so configuration errors surface before
/// capture starts, and take [`Delivery::health`] for `/healthz`. `W` is where `--stdout`
/// writes (the process's stdout unless [`Delivery::with_stdout`] says otherwise).
#[derive(Debug)]
pub struct Delivery<W = ProcessStdout> {
    settings: SinkSettings,
    client: Option<BridgeClient>,
    health: BridgeHealth,
    acker: Acker,
    losses: Arc<Losses>,
    out: W,
}

impl Delivery {
    /// Builds the bridge client for `settings` (validated by the command line).
    pub fn new(settings: SinkSettings) -> Result<Self, ClientError> {
        let client = match &settings.bridge {
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
                Some(BridgeClient::new(bridge, settings.max_in_flight)?)
            }
            None => None,
        };
        Ok(Self {
            settings,
            client,
            health: BridgeHealth::default(),
            acker: Acker::default(),
            losses: Arc::default(),
            out: tokio::io::stdout(),
        })
    }
}

impl<W> Delivery<W> {
    /// The same delivery with `--stdout` writing to `out`.
    pub fn with_stdout<V>(self, out: V) -> Delivery<V> {
        Delivery {
            settings: self.settings,
            client: self.client,
            health: self.health,
            acker: self.acker,
            losses: self.losses,
            out,
        }
    }

    /// Settles through `acker` (the stage's) and counts losses in `losses`.
    pub fn with_stage(mut self, acker: Acker, losses: Arc<Losses>) -> Self {
        self.acker = acker;
        self.losses = losses;
        self
    }

    /// Checks the bridge before capture, through the delivery client (see
    /// `BridgeClient::check`): `Ok(None)` without a bridge; `Err` for a definite configuration
    /// error (an untrusted certificate, no endpoint at the URL), on which nothing should be
    /// captured.
    pub async fn check_bridge(&self) -> Result<Option<BridgeCheck>, BridgeConfigError> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let check = client.check().await?;
        let answered = matches!(check, BridgeCheck::Answered { .. });
        if answered {
            self.health.mark_answered();
        }
        // Before capture, so `/metrics` has it from the first scrape.
        publish_bridge_up(answered);
        Ok(Some(check))
    }

    /// [`Delivery::check_bridge`] as `run` and `replay` use it before capturing: a
    /// configuration error is returned (exit 2, nothing captured); a bridge that does not
    /// answer gets one warning, and capture goes on (what comes waits for it).
    pub async fn check_before_capture(&self) -> Result<(), BridgeConfigError> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        match self.check_bridge().await? {
            Some(BridgeCheck::Answered { status }) => {
                tracing::info!(url = %client.url(), %status, "the bridge answers");
            }
            Some(BridgeCheck::Unreachable { error }) => tracing::warn!(
                url = %client.url(),
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
}

impl<W: AsyncWrite + Unpin + Send> Delivery<W> {
    /// The sinks, in the order they see each batch; the last one settles it.
    fn sinks<'w>(
        settings: &SinkSettings,
        client: Option<BridgeClient>,
        health: BridgeHealth,
        out: W,
    ) -> Vec<Box<dyn Sink + 'w>>
    where
        W: 'w,
    {
        let mut sinks: Vec<Box<dyn Sink + 'w>> = Vec::new();
        if settings.stdout {
            sinks.push(Box::new(Stdout::new(out, settings.json_options())));
        }
        if let Some(client) = client {
            sinks.push(Box::new(Bridge::new(client, settings, health)));
        }
        sinks
    }

    /// Delivers from `queue` until it is closed and drained, or `shutdown` is cancelled and
    /// its deadline passes.
    pub async fn run<T>(self, queue: Queue<T>, shutdown: CancellationToken) -> DeliveryReport
    where
        T: Into<Staged> + Send + 'static,
    {
        let queued = queue.clone();
        let ledger = Arc::new(Ledger::new(
            self.acker,
            self.losses,
            Box::new(move || queued.len() as u64),
        ));
        let mut sinks = Self::sinks(&self.settings, self.client, self.health, self.out);
        // Batches take the settling sink's form (stdout alone has nothing to batch for).
        let mode = sinks.last().map_or(BodyMode::Object, |sink| sink.mode());
        let limits = sinks.last().is_some_and(|sink| sink.limits_in_flight());
        let buffering = sinks.iter().any(|sink| sink.buffers());
        let Some(settling) = sinks.pop() else {
            return DeliveryReport::default();
        };
        let run = Run {
            queue,
            shutdown,
            shutdown_timeout: self.settings.shutdown_timeout,
            deadline: None,
            batcher: Batcher::new(mode, self.settings.batch, self.settings.json_options()),
            copies: sinks,
            settling,
            slots: limits.then(|| Arc::new(Semaphore::new(self.settings.max_in_flight))),
            buffering,
            tasks: JoinSet::new(),
            ledger,
        };
        run.go().await
    }
}

/// Why the main loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Queue closed and drained.
    Drained,
    /// Shutdown deadline passed.
    Deadline,
}

/// One delivery run's state.
struct Run<'w, T> {
    queue: Queue<T>,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    deadline: Option<Instant>,
    batcher: Batcher,
    /// Sinks that see a copy of each batch.
    copies: Vec<Box<dyn Sink + 'w>>,
    /// The sink that settles each batch.
    settling: Box<dyn Sink + 'w>,
    /// Slots for batches in flight, when the settling sink limits them.
    slots: Option<Arc<Semaphore>>,
    /// Whether a sink buffers output to flush.
    buffering: bool,
    /// Work on batches; each returns the call keys of its batch (none for copies).
    tasks: JoinSet<Vec<u64>>,
    ledger: Arc<Ledger>,
}

/// The next finished task, or never when there is none.
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

/// A slot for one more batch in flight (when the settling sink limits them), then the next
/// batch: a notification leaves the queue only once it can be sent. `None` when the queue is
/// closed and drained.
async fn next_batch<T: Into<Staged>>(
    slots: Option<&Arc<Semaphore>>,
    batcher: &mut Batcher,
    queue: &Queue<T>,
) -> Option<(Batch, Option<OwnedSemaphorePermit>)> {
    let slot = match slots {
        // The semaphore is never closed; were it, that would end delivery like a drained queue.
        Some(slots) => Some(slots.clone().acquire_owned().await.ok()?),
        None => None,
    };
    let batch = batcher.next(queue).await?;
    Some((batch, slot))
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl<T: Into<Staged> + Send> Run<'_, T> {
    async fn go(mut self) -> DeliveryReport {
        let mut end = self.main_loop().await;
        if end == End::Drained {
            end = self.wait_for_tasks().await;
        }
        if end != End::Drained {
            self.queue.close();
            self.tasks.abort_all();
        }
        while self.tasks.join_next().await.is_some() {}
        self.flush(true).await;
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
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled(), if self.deadline.is_none() => {
                    self.begin_shutdown();
                    continue;
                }
                () = until(self.deadline) => return End::Deadline,
                calls = next_settled(&mut self.tasks) => {
                    self.batcher.release(calls);
                    // A slot already taken is given back; the loop takes one again.
                    continue;
                }
                next = next_batch(self.slots.as_ref(), &mut self.batcher, &self.queue) => next,
            };
            let Some((mut batch, slot)) = next else {
                return End::Drained;
            };
            self.ledger.refuse_untaken(self.batcher.take_unencodable());
            batch.bind(&self.ledger);
            let calls: Vec<u64> = batch.notifications.iter().map(call_key).collect();
            for sink in &mut self.copies {
                if let Some(work) = sink.take(batch.copy()) {
                    self.tasks.spawn(async move {
                        work.await;
                        Vec::new()
                    });
                }
            }
            match self.settling.take(batch) {
                None => self.batcher.release(calls),
                Some(work) => {
                    self.tasks.spawn(async move {
                        let _slot = slot;
                        work.await;
                        calls
                    });
                }
            }
            if self.buffering {
                // Flush when the burst is over, so a lone notification shows at once.
                let idle = self.queue.is_empty() && self.batcher.in_hand() == 0;
                self.flush(idle).await;
            }
        }
    }

    async fn wait_for_tasks(&mut self) -> End {
        loop {
            tokio::select! {
                biased;
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

    async fn flush(&mut self, idle: bool) {
        for sink in self.copies.iter_mut().chain([&mut self.settling]) {
            if sink.buffers() {
                sink.flush(idle).await;
            }
        }
    }

    fn report(&self) -> DeliveryReport {
        let left = (self.queue.len() + self.batcher.in_hand()) as u64;
        let counts = self.ledger.counts();
        let mut report = DeliveryReport {
            delivered: counts.delivered,
            rejected: counts.rejected,
            expired: counts.expired,
            undelivered: left + counts.outstanding,
            ..DeliveryReport::default()
        };
        for sink in self.copies.iter().chain([&self.settling]) {
            sink.report(&mut report);
        }
        if report.undelivered > 0 && !self.ledger.keeps_leftovers() {
            // With the spool they are kept for the next start, not lost.
            self.ledger
                .losses()
                .record(Loss::Shutdown, report.undelivered);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        event::tests::sample,
        queue::NotificationQueue,
        sink::{
            batch::is_expired,
            settings::{BatchSettings, RetrySettings},
        },
    };

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
        let mut out = Vec::new();
        let delivery = Delivery::new(stdout_only()).unwrap().with_stdout(&mut out);
        let report = delivery.run(queue, CancellationToken::new()).await;
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
        let delivery = Delivery::new(settings)
            .unwrap()
            .with_stdout(tokio::io::sink());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let queue = queue.clone();
            let shutdown = shutdown.clone();
            async move { delivery.run(queue, shutdown).await }
        });
        queue.push(sample());
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.cancel();
        let report = task.await.unwrap();
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
}
