//! Whole frames from the userspace sources (AF_PACKET, capture files) through the XDP
//! program's own capture decision (`sipnotify_common::decide`), counted as the program counts.

use sipnotify_common::{
    Counter, CounterSet, SipConfig,
    decide::{self, Decision, Skip},
    net::Frame,
};

use super::record::Record;

/// The most bytes [`SplicedFrame`] puts in front of the captured ones: an Ethernet header with
/// one VLAN tag.
const MAX_HEAD: usize = 18;

/// A frame as the header walk expects it: a few synthesised bytes (an Ethernet header for a
/// capture without one, or one with the VLAN tag the NIC stripped put back) followed by the
/// captured bytes.
#[derive(Clone, Copy, Debug)]
pub struct SplicedFrame<'a> {
    head: [u8; MAX_HEAD],
    head_len: usize,
    body: &'a [u8],
}

impl<'a> SplicedFrame<'a> {
    /// The captured bytes as they are.
    pub fn whole(body: &'a [u8]) -> Self {
        Self {
            head: [0; MAX_HEAD],
            head_len: 0,
            body,
        }
    }

    /// `head` (at most 18 bytes; longer is cut) in front of `body`.
    pub fn spliced(head: &[u8], body: &'a [u8]) -> Self {
        let head_len = head.len().min(MAX_HEAD);
        let mut frame = Self {
            head: [0; MAX_HEAD],
            head_len,
            body,
        };
        frame.head[..head_len].copy_from_slice(&head[..head_len]);
        frame
    }

    /// The bytes from `offset` (in frame coordinates) to the end of the frame.
    pub fn tail(&self, offset: usize) -> &'a [u8] {
        offset
            .checked_sub(self.head_len)
            .and_then(|at| self.body.get(at..))
            .unwrap_or_default()
    }
}

impl Frame for SplicedFrame<'_> {
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if let Some(at) = offset.checked_sub(self.head_len) {
            return self.body.load::<N>(at);
        }
        // Starts inside the synthesised head; may run on into the body.
        let mut out = [0u8; N];
        for (i, slot) in out.iter_mut().enumerate() {
            let at = offset.checked_add(i)?;
            *slot = match at.checked_sub(self.head_len) {
                None => self.head[at],
                Some(body_at) => *self.body.get(body_at)?,
            };
        }
        Some(out)
    }
}

/// Runs the capture decision on one frame and counts it in `counts` as the XDP program counts
/// in its map (`packets_seen`, which the agent sums from the program's outcomes), the tallies,
/// and one outcome (`copied` for a record).
pub fn inspect<'a>(
    frame: &SplicedFrame<'a>,
    ports: &SipConfig,
    counts: &mut CounterSet,
    timestamp_ns: u64,
    ifindex: u32,
) -> Result<Record<'a>, Skip> {
    counts.add(Counter::PacketsSeen);
    match decide::decide(frame, ports, &mut |c| counts.add(c)) {
        Decision::Skip(skip) => {
            counts.add(skip.counter());
            Err(skip)
        }
        Decision::Capture(capture) => {
            let present = frame.tail(capture.payload_offset());
            let len = capture.captured_len(present.len());
            let header = capture.header(len, timestamp_ns, ifindex, &mut |c| counts.add(c));
            counts.add(Counter::Copied);
            Ok(Record {
                header,
                payload: &present[..len],
            })
        }
    }
}
