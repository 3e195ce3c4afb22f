//! Saying so when a watched port carries TLS.
//!
//! 5061 is the IANA port of SIP over TLS. When the SIP Server's trunk to this host is switched
//! to TLS, the NOTIFYs are still there but encrypted: nothing can be captured. The XDP program
//! counts packets to a watched port whose payload starts like a TLS record (or a DTLS record
//! on UDP), and the later segments of a TCP flow seen so (`tls_flow`, not copied); the agent
//! samples those counters and warns once, then again every [`REPEAT_EVERY`] while such packets
//! keep arriving, in words that name the fix: the PBX's own HEP feed, which carries the SIP
//! decrypted (`--hep-listen`). `doctor` reads the same counters from a running agent's program.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sipnotify_common::Counter;
use tokio_util::sync::CancellationToken;

use crate::capture::CaptureCounters;

/// How often the counters are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How often the warning is repeated while TLS keeps arriving.
pub const REPEAT_EVERY: Duration = Duration::from_secs(600);

/// The warning for `ports`, the watched ports (the counters do not say which one it was when
/// several are watched).
pub fn message(ports: &[u16]) -> String {
    let which = match ports {
        [port] => format!("port {port} carries"),
        many => {
            let list: Vec<String> = many.iter().map(u16::to_string).collect();
            format!("one of the watched ports ({}) carries", list.join(", "))
        }
    };
    format!(
        "{which} TLS; sipnotify cannot read encrypted SIP on the wire (those connections are \
         no longer copied). Read it from the PBX instead: in Asterisk's /etc/asterisk/hep.conf \
         set `[general]` `enabled = yes` and `capture_address = 127.0.0.1:9060` (modules \
         res_hep.so and res_hep_pjsip.so), and run sipnotify-agent with --hep-listen \
         127.0.0.1:9060 (README \"SIP over TLS: read it from the PBX\"); or configure the SIP \
         Server's trunk to this host as UDP or TCP"
    )
}

/// Samples the TLS counters of every interface until `cancel` fires, warning with
/// [`message`] when [`TlsAlarm`] says so.
pub async fn watch(
    counters: Arc<[(Arc<str>, CaptureCounters)]>,
    ports: Vec<u16>,
    cancel: CancellationToken,
) {
    // A counter that cannot be read counts as unchanged (telemetry logs the read error).
    let total = || -> u64 {
        counters
            .iter()
            .filter_map(|(_, counters)| counters.read().ok())
            .map(|c| {
                c.get(Counter::TlsRecord) + c.get(Counter::TlsFlow) + c.get(Counter::DtlsRecord)
            })
            .sum()
    };
    let mut alarm = TlsAlarm::new(total());
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Some(seen) = alarm.observe(total(), Instant::now()) {
            tracing::warn!(
                tls_packets = seen.packets,
                tls_packets_total = seen.total,
                "{}",
                message(&ports)
            );
        }
    }
}

/// Decides when to warn, from successive readings of the TLS counters (summed over
/// interfaces and CPUs).
#[derive(Debug)]
pub struct TlsAlarm {
    /// The reading at the start.
    start: u64,
    /// The last reading.
    seen: u64,
    /// The reading at the last warning, and when it was given.
    warned: Option<(u64, Instant)>,
}

/// One warning's worth of facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSeen {
    /// TLS/DTLS packets since the previous warning (or since the start).
    pub packets: u64,
    /// The counters' value.
    pub total: u64,
}

impl TlsAlarm {
    /// Starts from `baseline`, the counters' value when the program was attached.
    pub fn new(baseline: u64) -> Self {
        Self {
            start: baseline,
            seen: baseline,
            warned: None,
        }
    }

    /// Takes a reading at `now`; `Some` when it is time to warn: TLS arrived since the last
    /// reading, and there has been no warning yet or the last was [`REPEAT_EVERY`] ago.
    pub fn observe(&mut self, total: u64, now: Instant) -> Option<TlsSeen> {
        let arrived = total > self.seen;
        self.seen = total;
        if !arrived {
            return None;
        }
        let since = match self.warned {
            None => self.start,
            Some((_, at)) if now.duration_since(at) < REPEAT_EVERY => return None,
            Some((reading, _)) => reading,
        };
        self.warned = Some((total, now));
        Some(TlsSeen {
            packets: total - since,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_port_and_the_fix() {
        let one = message(&[5061]);
        assert!(one.starts_with("port 5061 carries TLS; "), "{one}");
        for remedy in [
            "capture_address = 127.0.0.1:9060",
            "enabled = yes",
            "res_hep_pjsip.so",
            "--hep-listen 127.0.0.1:9060",
            "trunk to this host as UDP or TCP",
        ] {
            assert!(one.contains(remedy), "{remedy}: {one}");
        }
        assert!(message(&[5060, 5061]).starts_with("one of the watched ports (5060, 5061)"));
    }

    #[test]
    fn warns_once_then_every_ten_minutes_while_it_continues() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut alarm = TlsAlarm::new(0);
        assert_eq!(alarm.observe(0, at(5)), None, "nothing yet");
        assert_eq!(
            alarm.observe(3, at(10)),
            Some(TlsSeen {
                packets: 3,
                total: 3
            })
        );
        // It continues, but the last warning is recent.
        assert_eq!(alarm.observe(10, at(15)), None);
        assert_eq!(alarm.observe(20, at(600)), None);
        // Ten minutes after the first warning, still arriving: again.
        assert_eq!(
            alarm.observe(25, at(610)),
            Some(TlsSeen {
                packets: 22,
                total: 25
            })
        );
        // It stopped: no warning however long it has been.
        assert_eq!(alarm.observe(25, at(2000)), None);
        // It started again: warned at once (the last warning is old).
        assert_eq!(
            alarm.observe(26, at(2005)),
            Some(TlsSeen {
                packets: 1,
                total: 26
            })
        );
    }

    #[test]
    fn what_was_counted_before_the_start_does_not_count() {
        let now = Instant::now();
        let mut alarm = TlsAlarm::new(40);
        assert_eq!(alarm.observe(40, now), None);
        assert_eq!(
            alarm.observe(41, now),
            Some(TlsSeen {
                packets: 1,
                total: 41
            })
        );
    }
}
