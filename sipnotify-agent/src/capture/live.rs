//! The live source: on every interface the capture path `--capture` chose (`source::open`),
//! the XDP program or an AF_PACKET ring, each drained without ever blocking the kernel side.
//!
//! Nothing runs while nothing arrives: an XDP ring's reader sleeps on the ring's readiness (the
//! kernel notifies when a record lands in a ring the reader has caught up with), an AF_PACKET
//! reader on its socket's (a block retired, full or after `tp_retire_blk_tov`). While records
//! keep coming, an XDP reader passes over its ring every `--poll-interval` instead, so a flood
//! costs one wake-up per period, not one per record.
//!
//! Every reader hands its records to the one pipeline (`crate::pipeline`), whose reassembly
//! stage, shared by every interface, puts TCP segments and fragments of a NOTIFY together; when
//! the readers have drained for the last time, the pipeline gives up what it still holds.

use std::{
    io,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{
    CaptureCounters, CaptureSettings,
    af_packet::{AfPacketStats, PacketSocket, read_ring},
    source::{self, SourceError, SourceSettings},
};
use crate::{
    bpf::{AttachedProgram, ProgramGuard, ProgramLogger},
    pipeline::{Pipeline, Source},
    reassembly::ReassemblyStats,
    record::monotonic_now,
    source_filter::SourceFilter,
};

/// Every interface of the settings captured, ready to be drained.
pub struct LiveSource {
    rings: Vec<Ring>,
    sockets: Vec<Socket>,
    ports: Vec<u16>,
    senders: SourceFilter,
    /// Capture counters per interface, until the metrics endpoint takes them.
    stats: Vec<(Arc<str>, CaptureCounters)>,
    poll: Duration,
    attached: Arc<AtomicBool>,
}

impl LiveSource {
    /// Opens the capture `capture.mode` asks for on every interface (closed again if a later
    /// one fails).
    pub fn attach(capture: &CaptureSettings) -> Result<Self, SourceError> {
        let settings = SourceSettings {
            mode: capture.mode,
            xdp_mode: capture.xdp_mode,
            ports: capture.ports.clone(),
            ring_bytes: capture.ring_bytes,
            poll: capture.poll_interval,
            senders: capture.senders.clone(),
        };
        let mut rings = Vec::new();
        let mut sockets = Vec::new();
        let mut stats = Vec::new();
        for name in &capture.ifaces {
            match source::open(name, &settings)? {
                source::Capture::Xdp(attached) => {
                    let AttachedProgram {
                        iface,
                        events,
                        stats: counters,
                        logger,
                        guard,
                        ..
                    } = *attached;
                    stats.push((iface.clone(), CaptureCounters::Xdp(counters)));
                    rings.push(Ring {
                        iface,
                        events,
                        logger,
                        guard,
                    });
                }
                source::Capture::AfPacket(socket) => {
                    let iface: Arc<str> = name.as_str().into();
                    let counters = Arc::new(AfPacketStats::default());
                    stats.push((iface.clone(), CaptureCounters::AfPacket(counters.clone())));
                    sockets.push(Socket {
                        iface,
                        socket,
                        stats: counters,
                    });
                }
            }
        }
        Ok(Self {
            rings,
            sockets,
            ports: capture.ports.clone(),
            senders: capture.senders.clone(),
            stats,
            poll: capture.poll_interval,
            attached: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The capture counters of every interface, for the metrics endpoint (taken once).
    pub fn take_kernel_stats(&mut self) -> Vec<(Arc<str>, CaptureCounters)> {
        std::mem::take(&mut self.stats)
    }

    /// True until the programs are detached at shutdown (for `/healthz`).
    pub fn attached(&self) -> Arc<AtomicBool> {
        self.attached.clone()
    }
}

/// What reading one interface needs; `guard` keeps its program attached.
struct Ring {
    iface: Arc<str>,
    events: RingBuf<MapData>,
    logger: Option<ProgramLogger>,
    guard: ProgramGuard,
}

/// What reading one AF_PACKET interface needs; dropping `socket` stops its capture.
struct Socket {
    iface: Arc<str>,
    socket: PacketSocket,
    stats: Arc<AfPacketStats>,
}

impl Source for LiveSource {
    /// What reassembly put together and gave up.
    type Report = ReassemblyStats;

    async fn feed(self, pipeline: Pipeline, stop: CancellationToken) -> ReassemblyStats {
        let stop_readers = CancellationToken::new();
        let mut readers = JoinSet::new();
        let mut guards = Vec::new();
        let clock = pipeline.clock();
        for ring in self.rings {
            let Ring {
                iface,
                events,
                logger,
                guard,
            } = ring;
            guards.push(guard);
            if let Some(logger) = logger {
                readers.spawn(forward_program_log(logger, stop_readers.clone()));
            }
            let pipeline = pipeline.clone();
            let cancel = stop_readers.clone();
            let poll = self.poll;
            readers.spawn(async move {
                let result = drain_ring(events, poll, cancel, |bytes| {
                    // Malformed records are counted by the pipeline and skipped. The program
                    // dates records on the monotonic clock, the pipeline's own.
                    if let Ok(record) = pipeline.decode(bytes) {
                        let at = clock.wall_time(record.header.timestamp_ns);
                        pipeline.push(&record, at, Some(&iface));
                    }
                })
                .await;
                if let Err(err) = result {
                    warn!(%iface, error = %err, "ring buffer reader failed");
                }
            });
        }
        for Socket {
            iface,
            socket,
            stats,
        } in self.sockets
        {
            let pipeline = pipeline.clone();
            let cancel = stop_readers.clone();
            let (ports, senders) = (self.ports.clone(), self.senders.clone());
            readers.spawn(async move {
                let result = read_ring(socket, &ports, &senders, stats, cancel, |record, at| {
                    // The ring dates frames by the wall clock (`at`, kept for the record);
                    // the pipeline's clock, which reassembly runs on, is the monotonic one.
                    let mut record = *record;
                    record.header.timestamp_ns =
                        u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
                    pipeline.push(&record, at, Some(&iface));
                })
                .await;
                if let Err(err) = result {
                    warn!(%iface, error = %err, "packet ring reader failed");
                }
            });
        }
        stop.cancelled().await;
        // Detach first so nothing new arrives, then drain the rings one last time.
        drop(guards);
        self.attached.store(false, Ordering::Relaxed);
        stop_readers.cancel();
        while readers.join_next().await.is_some() {}
        pipeline.finish(&mut |_| {})
    }
}

/// Records handled before a ring reader lets other tasks run (about a millisecond's work).
const PASS: usize = 1024;

/// Calls `on_record` for every record until `cancel` fires, then drains what is left once
/// more and returns.
///
/// Idle, the reader waits on the ring's readiness with no timer: the program submits without
/// `BPF_RB_NO_WAKEUP`, so the kernel notifies when a record lands in a ring the reader has
/// caught up with. While notifications come less than `poll` apart, it drains and then
/// sleeps `poll` without listening, as long as each pass finds records: reacting to every
/// notification would wake the reader for nearly every record (capture capped near
/// 0.4 M/s), while a pass every `poll` takes all that came. Slower than that (100 NOTIFY/s is
/// one every 10 ms), a timed pass after each record would only double the wake-ups, so the
/// reader goes straight back to waiting. A pass that finds nothing does too.
pub async fn drain_ring(
    events: RingBuf<MapData>,
    poll: Duration,
    cancel: CancellationToken,
    mut on_record: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut ring = watch_readable(events)?;
    // Passes at a steady period: a fresh `sleep(poll)` each time would round every wait up to
    // the timer's next millisecond, about 1.5 periods on average instead of one.
    let mut passes = tokio::time::interval(poll);
    passes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_woken: Option<Instant> = None;
    'idle: loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            // Cleared before draining, so a record landing after the pass re-arms it.
            guard = ring.readable_mut() => guard?.clear_ready(),
        }
        let woken = Instant::now();
        let busy = last_woken.is_some_and(|last| woken.duration_since(last) < poll);
        last_woken = Some(woken);
        // Only a busy reader arms the timer: armed, it would fire (a wake-up) even unheard.
        if busy {
            passes.reset();
        }
        loop {
            match (drain(ring.get_mut(), &mut on_record), busy) {
                (Drained::Empty, _) | (Drained::Some, false) => continue 'idle,
                (Drained::More, _) => tokio::task::yield_now().await,
                (Drained::Some, true) => tokio::select! {
                    biased;
                    () = cancel.cancelled() => break 'idle,
                    _ = passes.tick() => {}
                },
            }
        }
    }
    while drain(ring.get_mut(), &mut on_record) == Drained::More {}
    Ok(())
}

/// Registers a map-backed object with the reactor.
fn watch_readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its map file descriptor (a ring buffer's), which stays open and
    // unchanged until `inner` is dropped, and the AsyncFd owns `inner`.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

/// What one pass over a ring found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// Nothing: the reader has caught up and the kernel will notify it.
    Empty,
    /// Some records, and then nothing.
    Some,
    /// [`PASS`] records, so more may be waiting.
    More,
}

/// Hands on at most [`PASS`] records. A flood keeps the ring full, and a reader that never
/// returned would hold the runtime's one thread: the tasks it wakes (the spool, delivery)
/// would wait until the flood ends.
fn drain(ring: &mut RingBuf<MapData>, on_record: &mut impl FnMut(&[u8])) -> Drained {
    for n in 0..PASS {
        let Some(item) = ring.next() else {
            return if n == 0 {
                Drained::Empty
            } else {
                Drained::Some
            };
        };
        on_record(&item);
    }
    Drained::More
}

/// Forwards the XDP program's aya-log messages into the agent's log until `cancel` fires.
pub async fn forward_program_log(logger: ProgramLogger, cancel: CancellationToken) {
    let mut logger = match watch_readable(logger) {
        Ok(logger) => logger,
        Err(err) => {
            warn!(error = %err, "cannot watch the XDP program's log channel");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            guard = logger.readable_mut() => match guard {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(err) => {
                    warn!(error = %err, "the XDP program's log channel failed");
                    return;
                }
            },
        }
    }
}
