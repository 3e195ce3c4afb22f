//! Turning queued notifications into request bodies.
//!
//! Object mode: one notification per request, its body encoded by the request task (so the
//! JSON work spreads over the runtime's threads). Array mode: a batch closes when it holds
//! `max_events`, when one more object would pass `max_bytes`, or `linger` after its first
//! notification, whichever comes first; the body is encoded while the batch fills, so its
//! size is exact.
//!
//! The batcher keeps everything it has taken from the queue in itself, so a cancelled
//! `next` (shutdown) loses nothing and `in_hand` can count it as undelivered.
//!
//! A [`Batch`] carries the stage's tickets for its notifications; a sink settles it
//! (`settle`, `expire`) without knowing what a ticket is, and one dropped unsettled stays
//! outstanding (undelivered; with the spool, kept for the next start).
//!
//! Order per Call-ID: a notification whose call already has one in a batch not yet settled
//! (delivered, refused or expired) waits, parked behind it, until the delivery loop reports
//! that batch settled (`release`). Requests run concurrently and retry independently, so without
//! this a `talk` that failed once could reach the bridge after the `hold` that followed it.
//! Within one array batch, notifications of a call keep their order in the array.

use std::{
    collections::{HashMap, HashSet, VecDeque, hash_map::Entry},
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    ledger::{Ledger, Settled},
    settings::{BatchSettings, BodyMode},
};
use crate::{
    event::{Fnv1a, JsonOptions, Notification},
    queue::Queue,
    stage::{Staged, Ticket},
};

/// The key the per-call order is kept by: a hash of the Call-ID.
pub(crate) fn call_key(n: &Notification) -> u64 {
    // FNV-1a: stable and cheap; a collision only serialises two calls, it never reorders.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in n.call_id.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Notifications for one request, with the array body when in array mode.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) notifications: Vec<Notification>,
    /// The encoded array (array mode); object bodies are encoded by the sender.
    pub(crate) body: Option<Bytes>,
    /// The stage's tickets, one per notification, in the same order.
    tickets: Vec<Ticket>,
    /// Where settling reports; `None` for a copy (another sink settles the batch).
    ledger: Option<Arc<Ledger>>,
}

impl Batch {
    /// Hands the batch to `ledger`: from now on it settles there.
    pub(crate) fn bind(&mut self, ledger: &Arc<Ledger>) {
        ledger.taken(self.tickets.len() as u64);
        self.ledger = Some(Arc::clone(ledger));
    }

    /// The same notifications for a sink that sees them but does not settle them.
    pub(crate) fn copy(&self) -> Self {
        Self {
            notifications: self.notifications.clone(),
            body: self.body.clone(),
            tickets: Vec::new(),
            ledger: None,
        }
    }

    /// Whether nothing is left to send.
    pub(crate) fn is_empty(&self) -> bool {
        self.notifications.is_empty()
    }

    /// Settles every notification of the batch as `how`.
    pub(crate) fn settle(mut self, how: Settled) {
        if let Some(ledger) = self.ledger.take() {
            ledger.settle(std::mem::take(&mut self.tickets), how);
        }
    }

    /// Removes the notifications older than `max_age` (captured before `now - max_age`) and
    /// settles them as expired, re-encoding an array body if any went; returns how many.
    pub(crate) fn expire(
        &mut self,
        max_age: Option<Duration>,
        mode: BodyMode,
        json: JsonOptions,
    ) -> u64 {
        if max_age.is_none() {
            return 0;
        }
        let now = SystemTime::now();
        if !self
            .notifications
            .iter()
            .any(|n| is_expired(n, max_age, now))
        {
            return 0;
        }
        let mut expired = Vec::new();
        let mut kept_tickets = Vec::with_capacity(self.tickets.len());
        let mut tickets = std::mem::take(&mut self.tickets).into_iter();
        self.notifications.retain(|n| {
            let ticket = tickets.next();
            let old = is_expired(n, max_age, now);
            match (old, ticket) {
                (true, Some(ticket)) => expired.push(ticket),
                (false, Some(ticket)) => kept_tickets.push(ticket),
                _ => {}
            }
            !old
        });
        self.tickets = kept_tickets;
        let count = expired.len() as u64;
        if let Some(ledger) = &self.ledger {
            ledger.settle(expired, Settled::Expired);
        }
        self.body = match mode {
            BodyMode::Array if !self.notifications.is_empty() => {
                encode_array(&self.notifications, json).ok()
            }
            _ => None,
        };
        count
    }

    /// Notifications waiting for the sinks, this batch's included (for the log).
    pub(crate) fn backlog(&self) -> u64 {
        self.ledger.as_ref().map_or(0, |ledger| ledger.backlog())
    }

    /// Where the backlog is kept, for the log.
    pub(crate) fn keeping(&self) -> &'static str {
        self.ledger
            .as_ref()
            .map_or("in memory", |ledger| ledger.keeping())
    }
}

/// Whether `n` is older than `max_age` at `now`; a capture clock ahead of ours is not old.
pub(crate) fn is_expired(n: &Notification, max_age: Option<Duration>, now: SystemTime) -> bool {
    max_age.is_some_and(|max| {
        now.duration_since(n.meta.captured_at)
            .is_ok_and(|age| age > max)
    })
}

/// The body of one notification in object mode.
pub(crate) fn encode_object(n: &Notification, json: JsonOptions) -> serde_json::Result<Bytes> {
    serde_json::to_vec(&n.json(json)).map(Bytes::from)
}

/// An array body for `notifications`.
pub(crate) fn encode_array(
    notifications: &[Notification],
    json: JsonOptions,
) -> serde_json::Result<Bytes> {
    let mut body = Vec::with_capacity(notifications.len() * 160 + 2);
    body.push(b'[');
    for (i, n) in notifications.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &n.json(json))?;
    }
    body.push(b']');
    Ok(Bytes::from(body))
}

/// A stable key for a request: the notification's own key in object mode; for an array, a
/// hash of its members' transaction identities, so a retried batch keeps its key.
pub(crate) fn idempotency_key(notifications: &[Notification], mode: BodyMode) -> String {
    match (mode, notifications) {
        (BodyMode::Object, [one]) => one.idempotency_key(),
        _ => {
            // The members' transaction identities, as `Notification::idempotency_key` hashes
            // them, without formatting a key per member (this runs for every batch of up to
            // thousands).
            let mut hash = Fnv1a::new();
            for n in notifications {
                n.hash_transaction(&mut hash);
            }
            let hash = hash.finish();
            format!("batch-{hash:016x}-{}", notifications.len())
        }
    }
}

enum Added {
    Yes,
    /// Adding it would pass `max_bytes`: the batch is complete; the notification is returned.
    Full(Box<Staged>),
}

/// Fills batches from the queue.
#[derive(Debug)]
pub(crate) struct Batcher {
    mode: BodyMode,
    settings: BatchSettings,
    json: JsonOptions,
    /// Taken from the queue, not yet in `pending`.
    inbox: VecDeque<Staged>,
    /// The batch being filled.
    pending: Vec<Staged>,
    /// Its body so far (array mode), without the closing bracket.
    body: Vec<u8>,
    /// When the batch being filled closes at the latest.
    linger_until: Option<Instant>,
    /// Objects that could not be encoded (never expected; settled as rejected by the caller).
    unencodable: Vec<Ticket>,
    /// Calls with a notification in an unsettled batch, and what waits behind it.
    busy: HashMap<u64, VecDeque<Staged>>,
    /// Released from `busy`: next in line for their call, ahead of the inbox.
    ready: VecDeque<Staged>,
    parked: usize,
    /// Calls in the batch being filled (more of them may join it).
    filling: HashSet<u64>,
}

impl Batcher {
    pub(crate) fn new(mode: BodyMode, settings: BatchSettings, json: JsonOptions) -> Self {
        let settings = match mode {
            BodyMode::Object => BatchSettings {
                max_events: 1,
                ..settings
            },
            BodyMode::Array => settings,
        };
        Self {
            mode,
            settings,
            json,
            inbox: VecDeque::new(),
            pending: Vec::new(),
            body: Vec::new(),
            linger_until: None,
            unencodable: Vec::new(),
            busy: HashMap::new(),
            ready: VecDeque::new(),
            parked: 0,
            filling: HashSet::new(),
        }
    }

    /// Notifications taken from the queue but not yet handed out (parked ones included).
    pub(crate) fn in_hand(&self) -> usize {
        self.inbox.len() + self.pending.len() + self.ready.len() + self.parked
    }

    /// The tickets of the notifications that could not be encoded since the last call.
    pub(crate) fn take_unencodable(&mut self) -> Vec<Ticket> {
        std::mem::take(&mut self.unencodable)
    }

    /// The batch holding these calls' notifications has settled: the next notification of
    /// each call may go.
    pub(crate) fn release(&mut self, calls: impl IntoIterator<Item = u64>) {
        // A call with several notifications in the batch is released once.
        let calls: HashSet<u64> = calls.into_iter().collect();
        for call in calls {
            if let Entry::Occupied(mut waiting) = self.busy.entry(call) {
                match waiting.get_mut().pop_front() {
                    Some(next) => {
                        self.parked -= 1;
                        self.ready.push_back(next);
                    }
                    None => {
                        waiting.remove();
                    }
                }
            }
        }
    }

    /// Takes `n` into the batch being filled unless its call is busy (then parks it).
    fn admit(&mut self, n: Staged, released: bool) -> Option<Added> {
        let call = call_key(&n.notification);
        if !released && !self.filling.contains(&call) {
            match self.busy.entry(call) {
                Entry::Occupied(mut waiting) => {
                    waiting.get_mut().push_back(n);
                    self.parked += 1;
                    return None;
                }
                Entry::Vacant(slot) => {
                    slot.insert(VecDeque::new());
                }
            }
        }
        let unencodable = self.unencodable.len();
        let added = self.add(n);
        if self.unencodable.len() > unencodable {
            // Dropped: it no longer holds its call.
            if !self.filling.contains(&call) {
                self.release([call]);
            }
        } else if matches!(added, Added::Yes) {
            self.filling.insert(call);
        }
        Some(added)
    }

    /// The next batch; `None` once the queue is closed and everything was handed out.
    /// Cancel-safe.
    pub(crate) async fn next<T: Into<Staged>>(&mut self, queue: &Queue<T>) -> Option<Batch> {
        loop {
            loop {
                let (n, released) = match self.ready.pop_front() {
                    Some(n) => (n, true),
                    None => match self.inbox.pop_front() {
                        Some(n) => (n, false),
                        None => break,
                    },
                };
                match self.admit(n, released) {
                    None => {}
                    Some(Added::Yes) if self.pending.len() >= self.settings.max_events => {
                        return Some(self.finish());
                    }
                    Some(Added::Yes) => {}
                    Some(Added::Full(n)) => {
                        let call = call_key(&n.notification);
                        if self.filling.contains(&call) {
                            // Earlier ones of its call are in this batch: wait for it to settle.
                            self.busy.entry(call).or_default().push_back(*n);
                            self.parked += 1;
                        } else {
                            // Its call is marked busy already: it goes first next time.
                            self.ready.push_front(*n);
                        }
                        return Some(self.finish());
                    }
                }
            }
            let room = self.settings.max_events - self.pending.len();
            if self.pending.is_empty() {
                // An empty batch waits as long as it takes for its first notification.
                if queue.pop_batch_into(room, &mut self.inbox).await == 0 {
                    if self.parked > 0 {
                        // Closed, but notifications wait for their call's batch to settle:
                        // the driver releases them (and cancels this wait).
                        std::future::pending::<()>().await;
                    }
                    return None;
                }
            } else if queue.try_pop_batch_into(room, &mut self.inbox) == 0 {
                let Some(until) = self.linger_until else {
                    return Some(self.finish());
                };
                if queue.is_closed() {
                    return Some(self.finish());
                }
                match tokio::time::timeout_at(until, queue.pop_batch_into(room, &mut self.inbox))
                    .await
                {
                    Ok(taken) if taken > 0 => {}
                    // Linger over, or closed and drained: send what we have.
                    _ => return Some(self.finish()),
                }
            }
        }
    }

    fn add(&mut self, n: Staged) -> Added {
        if self.pending.is_empty() {
            self.linger_until = Some(Instant::now() + self.settings.linger);
        }
        if self.mode == BodyMode::Object {
            self.pending.push(n);
            return Added::Yes;
        }
        let before = self.body.len();
        self.body
            .push(if self.pending.is_empty() { b'[' } else { b',' });
        if serde_json::to_writer(&mut self.body, &n.notification.json(self.json)).is_err() {
            self.body.truncate(before);
            self.unencodable.push(n.ticket);
            tracing::warn!(
                call_id = %n.notification.call_id,
                "cannot encode a notification as json; dropped"
            );
            return Added::Yes;
        }
        // +1 for the closing bracket.
        if self.body.len() + 1 > self.settings.max_bytes && !self.pending.is_empty() {
            self.body.truncate(before);
            return Added::Full(Box::new(n));
        }
        self.pending.push(n);
        Added::Yes
    }

    fn finish(&mut self) -> Batch {
        self.linger_until = None;
        self.filling.clear();
        let (notifications, tickets) = self
            .pending
            .drain(..)
            .map(|staged| (staged.notification, staged.ticket))
            .unzip();
        let body = match self.mode {
            BodyMode::Object => None,
            BodyMode::Array => {
                let mut body = std::mem::take(&mut self.body);
                if body.is_empty() {
                    body.push(b'[');
                }
                body.push(b']');
                Some(Bytes::from(body))
            }
        };
        Batch {
            notifications,
            body,
            tickets,
            ledger: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{event::tests::sample, queue::NotificationQueue};

    fn numbered(cseq: u32) -> Notification {
        let mut n = sample();
        n.cseq = cseq;
        n.call_id = format!("call-{cseq}");
        n
    }

    /// Notification `cseq` of call `call`.
    fn of_call(call: u32, cseq: u32) -> Notification {
        let mut n = sample();
        n.cseq = cseq;
        n.call_id = format!("call-{call}");
        n
    }

    #[tokio::test]
    async fn a_call_waits_for_its_previous_batch_to_settle() {
        let queue = NotificationQueue::new(10);
        // Call 1: talk (1) then hold (2); call 2 in between.
        queue.push(of_call(1, 1));
        queue.push(of_call(2, 5));
        queue.push(of_call(1, 2));
        queue.close();
        let mut batcher = Batcher::new(
            BodyMode::Object,
            settings(500, 1 << 20, 1000),
            JsonOptions::default(),
        );
        let first = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&first), [1]);
        let second = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&second), [5]);
        // Call 1's hold waits for its talk's request to settle.
        let waiting = tokio::time::timeout(Duration::from_millis(50), batcher.next(&queue)).await;
        assert!(waiting.is_err());
        assert_eq!(batcher.in_hand(), 1);
        batcher.release([call_key(&first.notifications[0])]);
        let third = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&third), [2]);
        batcher.release([call_key(&third.notifications[0])]);
        assert!(batcher.next(&queue).await.is_none());
    }

    #[tokio::test]
    async fn one_array_batch_keeps_a_calls_notifications_in_order() {
        let queue = NotificationQueue::new(10);
        for cseq in 0..4 {
            queue.push(of_call(7, cseq));
        }
        queue.close();
        let mut batcher = Batcher::new(BodyMode::Array, settings(10, 1 << 20, 1000), ARRAY_JSON);
        let batch = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&batch), [0, 1, 2, 3]);
        batcher.release(batch.notifications.iter().map(call_key));
        assert!(batcher.next(&queue).await.is_none());
        assert_eq!(batcher.in_hand(), 0);
    }

    fn settings(max_events: usize, max_bytes: usize, linger_ms: u64) -> BatchSettings {
        BatchSettings {
            max_events,
            max_bytes,
            linger: Duration::from_millis(linger_ms),
        }
    }

    const ARRAY_JSON: JsonOptions = JsonOptions {
        extras: false,
        with_id: true,
    };

    fn cseqs(batch: &Batch) -> Vec<u32> {
        batch.notifications.iter().map(|n| n.cseq).collect()
    }

    #[tokio::test]
    async fn array_batches_close_at_max_events() {
        let queue = NotificationQueue::new(100);
        for cseq in 0..7 {
            queue.push(numbered(cseq));
        }
        queue.close();
        let mut batcher = Batcher::new(BodyMode::Array, settings(3, 1 << 20, 1000), ARRAY_JSON);
        let mut sizes = Vec::new();
        while let Some(batch) = batcher.next(&queue).await {
            let body = batch.body.clone().unwrap();
            let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            assert_eq!(parsed.len(), batch.notifications.len());
            for (value, n) in parsed.iter().zip(&batch.notifications) {
                assert_eq!(value["id"], n.idempotency_key());
            }
            sizes.push(batch.notifications.len());
        }
        assert_eq!(sizes, [3, 3, 1]);
        assert_eq!(batcher.in_hand(), 0);
    }

    #[tokio::test]
    async fn array_batches_close_before_passing_max_bytes() {
        let one = encode_array(&[numbered(0)], ARRAY_JSON).unwrap().len();
        // Room for two objects, not three.
        let max_bytes = one * 2 + 10;
        let queue = NotificationQueue::new(100);
        for cseq in 0..5 {
            queue.push(numbered(cseq));
        }
        queue.close();
        let mut batcher = Batcher::new(BodyMode::Array, settings(100, max_bytes, 1000), ARRAY_JSON);
        let mut seen = Vec::new();
        while let Some(batch) = batcher.next(&queue).await {
            let body = batch.body.unwrap();
            assert!(body.len() <= max_bytes, "{} > {max_bytes}", body.len());
            assert_eq!(
                body,
                encode_array(&batch.notifications, ARRAY_JSON).unwrap()
            );
            seen.push(
                batch
                    .notifications
                    .iter()
                    .map(|n| n.cseq)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(seen, [vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[tokio::test]
    async fn an_object_larger_than_max_bytes_goes_alone() {
        let queue = NotificationQueue::new(10);
        queue.push(numbered(1));
        queue.push(numbered(2));
        queue.close();
        let mut batcher = Batcher::new(BodyMode::Array, settings(10, 16, 1000), ARRAY_JSON);
        assert_eq!(batcher.next(&queue).await.map(|b| cseqs(&b)), Some(vec![1]));
        assert_eq!(batcher.next(&queue).await.map(|b| cseqs(&b)), Some(vec![2]));
        assert!(batcher.next(&queue).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn linger_starts_with_the_first_notification() {
        let queue = NotificationQueue::new(10);
        let mut batcher = Batcher::new(BodyMode::Array, settings(10, 1 << 20, 50), ARRAY_JSON);
        queue.push(numbered(1));
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                queue.push(numbered(2));
                tokio::time::sleep(Duration::from_millis(100)).await;
                queue.push(numbered(3));
            }
        });
        let start = Instant::now();
        let first = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&first), [1, 2]);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        let second = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&second), [3]);
        assert!(producer.await.is_ok());
    }

    #[tokio::test]
    async fn object_mode_hands_out_one_at_a_time() {
        let queue = NotificationQueue::new(10);
        queue.push(numbered(1));
        queue.push(numbered(2));
        queue.close();
        let mut batcher = Batcher::new(
            BodyMode::Object,
            settings(500, 1 << 20, 1000),
            JsonOptions::default(),
        );
        let first = batcher.next(&queue).await.unwrap();
        assert_eq!(cseqs(&first), [1]);
        assert!(first.body.is_none());
        assert_eq!(batcher.next(&queue).await.map(|b| cseqs(&b)), Some(vec![2]));
        assert!(batcher.next(&queue).await.is_none());
    }

    #[tokio::test]
    async fn a_cancelled_next_keeps_what_it_took() {
        let queue = NotificationQueue::new(10);
        let mut batcher = Batcher::new(BodyMode::Array, settings(10, 1 << 20, 10_000), ARRAY_JSON);
        queue.push(numbered(1));
        let cancelled = tokio::time::timeout(Duration::from_millis(20), batcher.next(&queue)).await;
        assert!(cancelled.is_err());
        assert_eq!(batcher.in_hand(), 1);
        queue.close();
        assert_eq!(batcher.next(&queue).await.map(|b| cseqs(&b)), Some(vec![1]));
    }

    #[test]
    fn batch_keys_are_stable_and_distinct() {
        let a = [numbered(1), numbered(2)];
        let b = [numbered(1), numbered(3)];
        assert_eq!(
            idempotency_key(&a, BodyMode::Array),
            idempotency_key(&a, BodyMode::Array)
        );
        assert_ne!(
            idempotency_key(&a, BodyMode::Array),
            idempotency_key(&b, BodyMode::Array)
        );
        assert_eq!(
            idempotency_key(&a[..1], BodyMode::Object),
            a[0].idempotency_key()
        );
    }
}
