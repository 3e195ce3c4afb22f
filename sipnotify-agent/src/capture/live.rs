//! Drains an attached program's ring buffer without ever blocking the kernel side.
//!
//! The XDP program submits records with `BPF_RB_NO_WAKEUP` and only forces a wake-up once a
//! quarter of the ring is pending, so the reader combines two triggers: epoll readiness (the
//! forced wake-ups) and a short poll timer that collects records at low rates with at most
//! one timer period of added latency. Each wake-up drains everything that is there.

use std::{io, os::fd::AsRawFd, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::bpf::ProgramLogger;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Default poll period: the latency floor at low rates, and cheap (1000 wake-ups a second).
pub const DEFAULT_POLL: Duration = Duration::from_millis(1);

/// Calls `on_record` for every record until `cancel` fires, then drains what is left once
/// more and returns.
pub async fn drain_ring(
    events: RingBuf<MapData>,
    poll: Duration,
    cancel: CancellationToken,
    mut on_record: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut ring = watch_readable(events)?;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut on_record);
                guard.clear_ready();
            }
            _ = ticker.tick() => drain(ring.get_mut(), &mut on_record),
        }
    }
    drain(ring.get_mut(), &mut on_record);
    Ok(())
}

/// Registers a map-backed object with the reactor.
fn watch_readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its map file descriptor (a ring buffer's), which stays open and
    // unchanged until `inner` is dropped, and the AsyncFd owns `inner`.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

fn drain(ring: &mut RingBuf<MapData>, on_record: &mut impl FnMut(&[u8])) {
    while let Some(item) = ring.next() {
        on_record(&item);
    }
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
