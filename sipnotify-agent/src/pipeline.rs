//! The per-record path shared by live capture and replay: decode → parse → de-dup → queue.
//!
//! It runs on the ring-buffer reader's task, so it never waits: parsing is linear and
//! allocation-free until a NOTIFY is accepted, the de-dup table is a short uncontended lock,
//! and the queue drops its oldest entry rather than block when the bridge falls behind.
//! Every record that does not become a queued notification is counted with its reason.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use metrics::Counter;

use crate::{
    capture::record::{Record, RecordError},
    dedup::{DedupSettings, Deduplicator, Transaction, Verdict},
    event::Notification,
    queue::NotificationQueue,
    sip::{self, ParseError, ParseOptions},
};

/// Parsing and de-duplication, as `run` and `replay` share them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineSettings {
    /// Headers copied into each notification under their names.
    pub extra_headers: Vec<String>,
    /// Deliver NOTIFYs without X-Genesys-CallUUID (with `call_uuid: null`).
    pub allow_missing_call_uuid: bool,
    /// The retransmission filter.
    pub dedup: DedupSettings,
}

/// What happened to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Queued for delivery.
    Queued,
    /// Queued; the oldest queued notification was dropped to make room.
    QueuedDroppingOldest,
    /// A retransmission of a transaction already queued.
    Duplicate,
    /// Not a usable NOTIFY.
    Rejected(ParseError),
    /// The record itself is malformed.
    BadRecord(RecordError),
    /// The queue is closed (shutting down).
    Closed,
}

/// The shared per-record path. Cheap to clone: one per reader task.
#[derive(Clone)]
pub struct Pipeline {
    options: Arc<ParseOptions>,
    dedup: Arc<Mutex<Deduplicator>>,
    queue: NotificationQueue,
    metrics: Arc<Metrics>,
    log_sip: bool,
}

/// Metric handles resolved once, off the per-record path.
struct Metrics {
    records: Counter,
    accepted: Counter,
    rejects: Vec<(ParseError, Counter)>,
    bad_records: Counter,
}

impl Pipeline {
    /// A pipeline feeding `queue`.
    pub fn new(settings: &PipelineSettings, queue: NotificationQueue) -> Self {
        let metrics = Metrics {
            records: metrics::counter!("sipnotify_records_total"),
            accepted: metrics::counter!("sipnotify_notifications_total"),
            rejects: ParseError::ALL
                .iter()
                .map(|&e| {
                    (
                        e,
                        metrics::counter!("sipnotify_parse_rejects_total", "reason" => e.reason()),
                    )
                })
                .collect(),
            bad_records: metrics::counter!("sipnotify_parse_rejects_total", "reason" => "bad_record"),
        };
        Self {
            options: Arc::new(ParseOptions::new(
                settings.extra_headers.iter().cloned(),
                settings.allow_missing_call_uuid,
            )),
            dedup: Arc::new(Mutex::new(Deduplicator::new(settings.dedup))),
            queue,
            metrics: Arc::new(metrics),
            log_sip: false,
        }
    }

    /// Log each accepted notification's identifiers at info level (`--log-sip`); otherwise
    /// they appear only at debug level, since DNs and call ids are personal data.
    pub fn log_sip(mut self, enabled: bool) -> Self {
        self.log_sip = enabled;
        self
    }

    /// Handles one raw ring-buffer record.
    pub fn handle_bytes(
        &self,
        bytes: &[u8],
        captured_at: impl FnOnce(&Record<'_>) -> SystemTime,
        iface: Option<&Arc<str>>,
    ) -> Outcome {
        match self.decode(bytes) {
            Ok(record) => {
                let at = captured_at(&record);
                self.handle(&record, at, iface)
            }
            Err(err) => Outcome::BadRecord(err),
        }
    }

    /// Decodes one raw ring-buffer record, counting it (and, if malformed, why).
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Record<'a>, RecordError> {
        self.metrics.records.increment(1);
        Record::decode(bytes).inspect_err(|_| self.metrics.bad_records.increment(1))
    }

    /// Handles one decoded record captured at `captured_at` (also the de-dup clock).
    pub fn handle(
        &self,
        record: &Record<'_>,
        captured_at: SystemTime,
        iface: Option<&Arc<str>>,
    ) -> Outcome {
        let notify = match sip::parse(record.payload, &self.options) {
            Ok(notify) => notify,
            Err(err) => {
                if let Some((_, counter)) = self.metrics.rejects.iter().find(|(e, _)| *e == err) {
                    counter.increment(1);
                }
                return Outcome::Rejected(err);
            }
        };
        // De-duplicate on the parsed bytes first: a retransmission costs no copy at all.
        let transaction = Transaction {
            call_id: notify.call_id,
            cseq: notify.cseq,
            via_branch: notify.via_branch,
        };
        let verdict = match self.dedup.lock() {
            Ok(mut dedup) => dedup.observe_transaction(transaction, captured_at),
            // A panic elsewhere while holding the lock cannot leave the table inconsistent
            // in a way that matters more than losing de-dup; keep delivering.
            Err(poisoned) => poisoned
                .into_inner()
                .observe_transaction(transaction, captured_at),
        };
        if verdict == Verdict::Duplicate {
            return Outcome::Duplicate;
        }
        let notification: Notification =
            notify.to_notification(&self.options, record.meta(captured_at, iface.cloned()));
        self.metrics.accepted.increment(1);
        if self.log_sip {
            tracing::info!(
                dn = %notification.dn,
                call_id = %notification.call_id,
                call_uuid = notification.call_uuid.as_deref().unwrap_or("-"),
                event = %notification.event,
                "notification"
            );
        } else {
            tracing::debug!(
                dn = %notification.dn,
                call_id = %notification.call_id,
                event = %notification.event,
                "notification"
            );
        }
        match self.queue.push(notification) {
            crate::queue::Pushed::Queued => Outcome::Queued,
            crate::queue::Pushed::DroppedOldest => Outcome::QueuedDroppingOldest,
            crate::queue::Pushed::Closed => Outcome::Closed,
        }
    }

    /// The queue this pipeline feeds.
    pub fn queue(&self) -> &NotificationQueue {
        &self.queue
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sipnotify_common::EventHeader;

    use super::*;

    const TALK: &[u8] = b"NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.210.81:5090;branch=z9hG4bK-1\r\n\
From: <sip:5551234@192.168.210.81>;tag=1\r\n\
To: <sip:1002@192.168.210.54>;tag=2\r\n\
Call-ID: abc@192.168.210.81\r\n\
CSeq: 3 NOTIFY\r\n\
Event: talk\r\n\
X-Genesys-CallUUID: UIVB8J6JE91C53UIM3VI59VHQ400001R\r\n\
Content-Length: 0\r\n\r\n";

    /// The flags' defaults (`--dedup-window 32s`, `--dedup-max-entries 65536`).
    fn settings() -> PipelineSettings {
        PipelineSettings {
            extra_headers: Vec::new(),
            allow_missing_call_uuid: false,
            dedup: DedupSettings {
                window: Duration::from_secs(32),
                max_entries: 65_536,
            },
        }
    }

    fn record(payload: &[u8]) -> Record<'_> {
        Record {
            header: EventHeader {
                ip_version: 4,
                dst_port: 5061,
                captured_len: payload.len() as u32,
                payload_len: payload.len() as u32,
                ..EventHeader::default()
            },
            payload,
        }
    }

    #[test]
    fn a_notify_is_queued_once_and_its_retransmission_is_dropped() {
        let queue = NotificationQueue::new(16);
        let pipeline = Pipeline::new(&settings(), queue.clone());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(pipeline.handle(&record(TALK), t0, None), Outcome::Queued);
        assert_eq!(
            pipeline.handle(&record(TALK), t0 + Duration::from_millis(500), None),
            Outcome::Duplicate
        );
        assert_eq!(queue.len(), 1);
        let mut out = Vec::new();
        queue.try_pop_batch(16, &mut out);
        assert_eq!(out[0].dn, "1002");
        assert_eq!(out[0].call_id, "abc@192.168.210.81");
        assert_eq!(out[0].event, "talk");
        assert_eq!(out[0].meta.captured_at, t0);
    }

    #[test]
    fn rejects_carry_their_reason() {
        let queue = NotificationQueue::new(16);
        let pipeline = Pipeline::new(&settings(), queue.clone());
        let invite = b"INVITE sip:a@b SIP/2.0\r\n\r\n";
        assert_eq!(
            pipeline.handle(&record(invite), SystemTime::now(), None),
            Outcome::Rejected(ParseError::NotNotify)
        );
        assert!(matches!(
            pipeline.handle_bytes(&[1, 2, 3], |_| SystemTime::now(), None),
            Outcome::BadRecord(RecordError::TooShort(3))
        ));
        assert!(queue.is_empty());
    }
}
