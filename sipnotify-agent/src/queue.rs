//! The bounded hand-offs between the capture path, the stage and the delivery loop.
//!
//! The producer is the ring-buffer reader: if it waited, the kernel ring buffer would fill and
//! lose NOTIFYs it cannot count per call. So `push` never waits; when the queue is full it
//! drops the OLDEST notification, because a fresh call (an agent about to answer) matters more
//! than one that has been waiting while the bridge was down. The consumer side is async.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use metrics::Counter;
use tokio::sync::Notify;

use crate::{event::Notification, loss::Loss};

/// What happened to a pushed notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; nothing was lost.
    Queued,
    /// Queued, and the oldest queued notification was dropped to make room.
    DroppedOldest,
    /// The queue is closed (shutting down): the notification was dropped.
    Closed,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

#[derive(Debug)]
struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes consumers on push and on close.
    ready: Notify,
    /// Wakes a producer waiting for room (the spool) when notifications are taken.
    room: Notify,
    /// Notifications dropped to make room, since creation (for the drop log).
    dropped: AtomicU64,
    capacity: usize,
    /// Drop counters, registered once rather than looked up on the overload path.
    dropped_full: Counter,
    dropped_closed: Counter,
}

/// A bounded multi-producer multi-consumer queue. Cloning shares the queue.
#[derive(Debug)]
pub struct Queue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The queue the pipeline pushes parsed notifications into.
pub type NotificationQueue = Queue<Notification>;

impl<T> Queue<T> {
    /// An empty queue holding at most `capacity` notifications (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    // Grow on demand: a large capacity should not cost memory while idle.
                    items: VecDeque::with_capacity(capacity.min(1024)),
                    closed: false,
                }),
                ready: Notify::new(),
                room: Notify::new(),
                dropped: AtomicU64::new(0),
                capacity,
                dropped_full: Loss::QueueFull.counter(),
                dropped_closed: Loss::Closed.counter(),
            }),
        }
    }

    /// Queues `n` without waiting, dropping the oldest notification when full.
    pub fn push(&self, n: T) -> Pushed {
        let outcome = {
            let mut state = self.lock();
            if state.closed {
                Pushed::Closed
            } else {
                let dropped = if state.items.len() >= self.inner.capacity {
                    state.items.pop_front();
                    true
                } else {
                    false
                };
                state.items.push_back(n);
                if dropped {
                    Pushed::DroppedOldest
                } else {
                    Pushed::Queued
                }
            }
        };
        match outcome {
            Pushed::Queued => self.inner.ready.notify_one(),
            Pushed::DroppedOldest => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                self.inner.dropped_full.increment(1);
                self.inner.ready.notify_one();
            }
            Pushed::Closed => self.inner.dropped_closed.increment(1),
        }
        outcome
    }

    /// The next notification, waiting for one; `None` once the queue is closed and drained.
    /// Cancel-safe: nothing is taken unless the future completes.
    pub async fn pop(&self) -> Option<T> {
        let mut out = Vec::with_capacity(1);
        self.pop_batch(1, &mut out).await;
        out.pop()
    }

    /// Waits until at least one notification is queued, then moves up to `max` of them (in
    /// order) to the end of `out` and returns how many. Returns 0 only once the queue is closed
    /// and drained (or when `max` is 0). Cancel-safe.
    pub async fn pop_batch(&self, max: usize, out: &mut Vec<T>) -> usize {
        self.pop_into::<T, _>(max, out).await
    }

    /// [`Queue::pop_batch`] into a deque of what the items convert into.
    pub async fn pop_batch_into<U>(&self, max: usize, out: &mut VecDeque<U>) -> usize
    where
        T: Into<U>,
    {
        self.pop_into::<U, _>(max, out).await
    }

    async fn pop_into<U, E: Extend<U>>(&self, max: usize, out: &mut E) -> usize
    where
        T: Into<U>,
    {
        if max == 0 {
            return 0;
        }
        loop {
            // Register interest before looking, so a push or close between the look and the
            // wait still wakes us.
            let ready = self.inner.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut state = self.lock();
                let taken = take(&mut state.items, max, out);
                if taken > 0 {
                    let more = !state.items.is_empty();
                    drop(state);
                    self.inner.room.notify_one();
                    if more {
                        // Pass the wake-up on: another consumer may be waiting.
                        self.inner.ready.notify_one();
                    }
                    return taken;
                }
                if state.closed {
                    return 0;
                }
            }
            ready.await;
        }
    }

    /// Moves up to `max` queued notifications to `out` without waiting; returns how many.
    pub fn try_pop_batch(&self, max: usize, out: &mut Vec<T>) -> usize {
        self.try_pop_into::<T, _>(max, out)
    }

    /// [`Queue::try_pop_batch`] into a deque of what the items convert into.
    pub fn try_pop_batch_into<U>(&self, max: usize, out: &mut VecDeque<U>) -> usize
    where
        T: Into<U>,
    {
        self.try_pop_into::<U, _>(max, out)
    }

    fn try_pop_into<U, E: Extend<U>>(&self, max: usize, out: &mut E) -> usize
    where
        T: Into<U>,
    {
        let taken = take(&mut self.lock().items, max, out);
        if taken > 0 {
            self.inner.room.notify_one();
        }
        taken
    }

    /// Free places now.
    pub fn room(&self) -> usize {
        self.inner.capacity.saturating_sub(self.len())
    }

    /// Waits until a consumer takes something (or the queue closes), if it is full now.
    /// For one producer that must not drop (the spool refilling from disk, a replay).
    /// Cancel-safe.
    pub async fn wait_for_room(&self) {
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.room() > 0 || self.is_closed() {
                return;
            }
            room.await;
        }
    }

    /// Notifications dropped to make room since the queue was made.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Stops accepting notifications; consumers drain what is queued and then see the end.
    pub fn close(&self) {
        self.lock().closed = true;
        self.inner.room.notify_one();
        self.inner.ready.notify_waiters();
        // A consumer between its look and its wait holds an enabled `Notified`, which
        // `notify_waiters` reaches; `notify_one` also leaves a permit for the next one.
        self.inner.ready.notify_one();
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Notifications queued now (for the queue-depth gauge).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// The most notifications the queue holds.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The critical sections cannot panic half-way through an update, so a poisoned lock
        // still guards a consistent queue.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn take<T: Into<U>, U, E: Extend<U>>(items: &mut VecDeque<T>, max: usize, out: &mut E) -> usize {
    let n = items.len().min(max);
    out.extend(items.drain(..n).map(Into::into));
    n
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::tests::sample;

    fn numbered(cseq: u32) -> Notification {
        let mut n = sample();
        n.cseq = cseq;
        n
    }

    #[test]
    fn full_queue_drops_the_oldest_and_never_blocks() {
        let queue = NotificationQueue::new(3);
        for cseq in 0..3 {
            assert_eq!(queue.push(numbered(cseq)), Pushed::Queued);
        }
        assert_eq!(queue.push(numbered(3)), Pushed::DroppedOldest);
        assert_eq!(queue.push(numbered(4)), Pushed::DroppedOldest);
        assert_eq!(queue.len(), 3);
        let mut out = Vec::new();
        assert_eq!(queue.try_pop_batch(10, &mut out), 3);
        let cseqs: Vec<u32> = out.iter().map(|n| n.cseq).collect();
        assert_eq!(cseqs, [2, 3, 4]);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let queue = NotificationQueue::new(8);
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await.map(|n| n.cseq) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!consumer.is_finished());
        queue.push(numbered(7));
        assert_eq!(consumer.await.ok().flatten(), Some(7));
    }

    #[tokio::test]
    async fn pop_batch_takes_what_is_there_up_to_max() {
        let queue = NotificationQueue::new(8);
        for cseq in 0..5 {
            queue.push(numbered(cseq));
        }
        let mut out = Vec::new();
        assert_eq!(queue.pop_batch(3, &mut out).await, 3);
        assert_eq!(queue.pop_batch(3, &mut out).await, 2);
        let cseqs: Vec<u32> = out.iter().map(|n| n.cseq).collect();
        assert_eq!(cseqs, [0, 1, 2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn close_drains_then_ends_and_refuses_pushes() {
        let queue = NotificationQueue::new(8);
        queue.push(numbered(1));
        queue.close();
        assert!(queue.is_closed());
        assert_eq!(queue.push(numbered(2)), Pushed::Closed);
        assert_eq!(queue.pop().await.map(|n| n.cseq), Some(1));
        assert_eq!(queue.pop().await, None);
    }

    #[tokio::test]
    async fn a_producer_waits_for_room_until_a_pop_or_close() {
        let queue = NotificationQueue::new(2);
        queue.push(numbered(0));
        tokio::time::timeout(Duration::from_secs(2), queue.wait_for_room())
            .await
            .expect("room left: no wait");
        queue.push(numbered(1));
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.wait_for_room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!producer.is_finished(), "full: the producer waits");
        assert_eq!(queue.pop().await.map(|n| n.cseq), Some(0));
        let woke = tokio::time::timeout(Duration::from_secs(2), producer).await;
        assert!(matches!(woke, Ok(Ok(()))), "a pop makes room");

        queue.push(numbered(2));
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.wait_for_room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!producer.is_finished());
        queue.close();
        let woke = tokio::time::timeout(Duration::from_secs(2), producer).await;
        assert!(matches!(woke, Ok(Ok(()))), "closing ends the wait");
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_consumer() {
        let queue = NotificationQueue::new(8);
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.close();
        let result = tokio::time::timeout(Duration::from_secs(2), consumer).await;
        assert!(matches!(result, Ok(Ok(None))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producer_and_consumers_lose_nothing_below_capacity() {
        const TOTAL: u32 = 20_000;
        let queue = NotificationQueue::new(TOTAL as usize);
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut batch = Vec::new();
                    while queue.pop_batch(64, &mut batch).await > 0 {
                        seen.extend(batch.drain(..).map(|n| n.cseq));
                    }
                    seen
                })
            })
            .collect();
        let producer = std::thread::spawn({
            let queue = queue.clone();
            move || {
                for cseq in 0..TOTAL {
                    assert_eq!(queue.push(numbered(cseq)), Pushed::Queued);
                }
                queue.close();
            }
        });
        let mut all = Vec::new();
        for consumer in consumers {
            all.extend(consumer.await.unwrap_or_default());
        }
        assert!(producer.join().is_ok());
        all.sort_unstable();
        assert_eq!(all, (0..TOTAL).collect::<Vec<_>>());
    }
}
