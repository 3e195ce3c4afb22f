//! The spool's storage: a segmented append-only log with a CRC32 per record, and an
//! acknowledgement watermark.
//!
//! Why hand-written, after measuring (docs/ARCHITECTURE.md, "Decisions and why": "A
//! hand-written spool, not an embedded store"): the spool is a FIFO with
//! out-of-order acknowledgements, written through for every notification at up to ~170 k/s on
//! two cores. An append-only file does that with one `write(2)` per batch and no read-modify-write;
//! an embedded B-tree (redb) or LSM (fjall) would add a transaction, a key index and compaction
//! to get a queue, plus a large dependency. Vector's `disk_v2` buffer is the model: segments,
//! length + checksum framing, deletion of whole segments once every record in them is acked.
//!
//! Layout in the spool directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: records with ids from N on, in id order. A record is
//!   `len u32 | crc32 u32 | id u64 | captured_ns u64 | payload` (little-endian); the CRC covers
//!   id, time and payload. Segments written before a restart are never appended to again.
//! - `acked`: the watermark (every id below it is done) and its CRC, 12 bytes rewritten in
//!   place (one `pwrite` inside one sector; the CRC catches a torn one, read as 0, which
//!   delivers the survivors again rather than losing them).
//! - `lock`: held with `flock` while an agent uses the directory.
//!
//! Durability: every append reaches the kernel at once (one `write(2)`), so a SIGKILL loses
//! nothing written; `sync` (`fdatasync`) runs on the caller's cadence, so a power cut loses at
//! most that long. It runs only while something written is not yet acknowledged: what the
//! bridge already has needs no disk (at 100 NOTIFY/s delivery acknowledges each within a
//! millisecond, and the sync would be all the spool's cost). Acks above the watermark are
//! kept in memory only: after a crash the few notifications acked out of order are delivered
//! again, with the same `Idempotency-Key`.
//! A torn or corrupt record is found by its CRC, skipped with what follows it up to the next
//! valid record, and the ids lost are counted; nothing in a spool file can crash the agent.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, SystemTime},
};

use super::{
    acks::Acks,
    codec::{self, DecodeError},
    record::{HEADER, MAX_PAYLOAD, Parsed, encode_record, parse_at, resync},
    settings::{Recovered, SpoolCounts, SpoolError, SpoolGauges, SpoolSettings},
};
use crate::event::Notification;

const READ_CHUNK: usize = 256 << 10;
const SEGMENT_SUFFIX: &str = ".seg";

#[derive(Debug)]
struct Segment {
    first_id: u64,
    /// One past the last id this segment can hold (the next segment's first id); for the head,
    /// one past the last id written.
    end_id: u64,
    /// Valid bytes (a torn tail found at open is not counted, and never read).
    bytes: u64,
    path: PathBuf,
    first_captured_ns: Option<u64>,
}

/// Where the reader is: the next record to hand out has id `next_id`, at or after `offset` in
/// the segment starting at `segment`.
#[derive(Debug)]
struct Cursor {
    next_id: u64,
    segment: u64,
    offset: u64,
    file: Option<File>,
    buf: Vec<u8>,
    /// Segment offset of `buf[0]`.
    buf_offset: u64,
}

impl Cursor {
    fn move_to(&mut self, segment: u64) {
        self.segment = segment;
        self.offset = 0;
        self.file = None;
        self.buf.clear();
        self.buf_offset = 0;
    }
}

/// File work of a sync that may block: `fdatasync`, deletions.
#[derive(Debug, Default)]
pub struct SyncJob {
    data: Option<(File, PathBuf)>,
    delete: Vec<PathBuf>,
}

impl SyncJob {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.data.is_none() && self.delete.is_empty()
    }

    /// Whether it forces records to the disk (tests).
    #[cfg(test)]
    fn syncs_data(&self) -> bool {
        self.data.is_some()
    }

    /// Does it (blocking).
    pub fn run(self) -> Result<(), SpoolError> {
        if let Some((file, path)) = &self.data {
            file.sync_data().map_err(io_error(path))?;
        }
        for path in &self.delete {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }
}

/// The `acked` file, kept open: the watermark is rewritten in place at every sync.
#[derive(Debug)]
struct WatermarkFile {
    file: File,
    path: PathBuf,
}

impl WatermarkFile {
    fn open(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(Self { file, path })
    }

    fn read(&self) -> Option<u64> {
        let mut bytes = [0; 12];
        self.file.read_exact_at(&mut bytes, 0).ok()?;
        let (value, crc) = bytes.split_at(8);
        let value: [u8; 8] = value.try_into().ok()?;
        let crc: [u8; 4] = crc.try_into().ok()?;
        (crc32fast::hash(&value) == u32::from_le_bytes(crc)).then(|| u64::from_le_bytes(value))
    }

    /// A page-cache write, like an append: no reason to leave the async thread for it.
    fn write(&self, watermark: u64) -> Result<(), SpoolError> {
        let value = watermark.to_le_bytes();
        let mut bytes = [0; 12];
        bytes[..8].copy_from_slice(&value);
        bytes[8..].copy_from_slice(&crc32fast::hash(&value).to_le_bytes());
        self.file
            .write_all_at(&bytes, 0)
            .map_err(io_error(&self.path))
    }
}

/// The spool's storage. One owner writes and reads; [`Acks`] is shared.
#[derive(Debug)]
pub struct Spool {
    settings: SpoolSettings,
    _lock: File,
    /// Oldest first; the last one is the head when `head` is set.
    segments: VecDeque<Segment>,
    head: Option<File>,
    /// The id the next append gets.
    next_id: u64,
    total_bytes: u64,
    cursor: Cursor,
    acks: Acks,
    counts: SpoolCounts,
    /// Appended since the last sync.
    dirty: bool,
    /// The watermark last written to `acked`.
    saved_watermark: u64,
    acked: WatermarkFile,
    scratch: Vec<u8>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

fn segment_name(first_id: u64) -> String {
    format!("{first_id:020}{SEGMENT_SUFFIX}")
}

fn lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this `File` owns for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Reads a whole segment and returns (one past the last valid id, valid bytes, first
/// captured time, corrupt count), resynchronising after corruption.
fn scan_segment(path: &Path, first_id: u64) -> Result<(u64, u64, Option<u64>, u64), SpoolError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let mut at = 0;
    let mut end_id = first_id;
    let mut valid = 0;
    let mut first_captured = None;
    let mut corrupt = 0;
    while at < bytes.len() {
        match parse_at(&bytes, at) {
            Parsed::Record {
                id,
                captured_ns,
                next,
                ..
            } if id >= end_id => {
                first_captured.get_or_insert(captured_ns);
                end_id = id + 1;
                at = next;
                valid = next;
            }
            Parsed::Incomplete => {
                corrupt += 1;
                break;
            }
            _ => match resync(&bytes, at + 1, end_id, u64::MAX) {
                // The reader meets (and counts) this one again: only find the end here.
                Some((next_at, _)) => at = next_at,
                None => {
                    corrupt += 1;
                    break;
                }
            },
        }
    }
    Ok((end_id, valid as u64, first_captured, corrupt))
}

impl Spool {
    /// Opens (creating if needed) the spool in `settings.dir`, locks it, and finds what the
    /// previous run left.
    pub fn open(settings: SpoolSettings) -> Result<(Self, Recovered), SpoolError> {
        settings.validate()?;
        let dir = settings.dir.clone();
        let dir_error = |e: io::Error| SpoolError::Dir {
            dir: dir.clone(),
            reason: e.to_string().to_lowercase(),
        };
        fs::create_dir_all(&dir).map_err(dir_error)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(dir_error)?;
        if !lock_exclusive(&lock).map_err(dir_error)? {
            return Err(SpoolError::Locked { dir });
        }
        // Prove that segments can be created here now, not at the first notification.
        let probe = dir.join("probe.tmp");
        fs::write(&probe, b"").map_err(dir_error)?;
        let _ = fs::remove_file(&probe);

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(dir_error)? {
            let entry = entry.map_err(dir_error)?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let acked = WatermarkFile::open(dir.join("acked")).map_err(dir_error)?;
        let watermark = acked.read().unwrap_or(0);
        let mut segments = VecDeque::new();
        let mut corrupt = 0;
        for (i, &first_id) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first_id));
            let segment = match firsts.get(i + 1) {
                Some(&next) => {
                    let bytes = fs::metadata(&path).map_err(io_error(&path))?.len();
                    Segment {
                        first_id,
                        end_id: next,
                        bytes,
                        path,
                        first_captured_ns: None,
                    }
                }
                None => {
                    let (end_id, bytes, first_captured_ns, bad) = scan_segment(&path, first_id)?;
                    corrupt += bad;
                    Segment {
                        first_id,
                        end_id,
                        bytes,
                        path,
                        first_captured_ns,
                    }
                }
            };
            segments.push_back(segment);
        }
        // Drop segments wholly below the watermark (acked before the last run ended).
        while segments.len() > 1 && segments.front().is_some_and(|s| s.end_id <= watermark) {
            if let Some(done) = segments.pop_front() {
                let _ = fs::remove_file(&done.path);
            }
        }
        let next_id = segments
            .back()
            .map_or(watermark, |s| s.end_id)
            .max(watermark);
        let first = segments.front().map_or(next_id, |s| s.first_id);
        let start = watermark.max(first);
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let mut cursor = Cursor {
            next_id: start,
            segment: first,
            offset: 0,
            file: None,
            buf: Vec::new(),
            buf_offset: 0,
        };
        if let Some(s) = segments
            .iter()
            .find(|s| s.first_id <= start && start < s.end_id)
        {
            cursor.move_to(s.first_id);
        }
        let recovered = Recovered {
            pending: next_id - start,
            bytes: total_bytes,
            corrupt,
        };
        let acks = Acks::default();
        acks.on_disk.store(next_id - start, Ordering::Relaxed);
        let spool = Self {
            settings,
            _lock: lock,
            segments,
            head: None,
            next_id,
            total_bytes,
            cursor,
            acks,
            counts: SpoolCounts {
                dropped_full: 0,
                corrupt,
            },
            dirty: false,
            saved_watermark: watermark,
            acked,
            scratch: Vec::new(),
        };
        Ok((spool, recovered))
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &SpoolSettings {
        &self.settings
    }

    /// The handle that acknowledges handed-out records.
    pub fn acks(&self) -> Acks {
        self.acks.clone()
    }

    /// Drops and corruption since open.
    pub fn counts(&self) -> SpoolCounts {
        self.counts
    }

    /// Whether a timer has nothing to do: everything written is synced, every record is done
    /// and its watermark saved. The spooler's timer sleeps while this holds.
    pub fn settled(&self) -> bool {
        !self.dirty && self.watermark() == self.saved_watermark && self.gauges().entries == 0
    }

    /// Whether every appended record has been handed out.
    pub fn caught_up(&self) -> bool {
        self.cursor.next_id >= self.next_id
    }

    /// The id the next append gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Appends `batch` with one write; returns the id of its first record. When the spool is
    /// full, the oldest segments are dropped first (see [`Spool::counts`]). On an error nothing
    /// of the batch is in the spool.
    pub fn append(&mut self, batch: &[Notification]) -> Result<u64, SpoolError> {
        let first_id = self.next_id;
        if batch.is_empty() {
            return Ok(first_id);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut first_captured = None;
        for (i, n) in batch.iter().enumerate() {
            first_captured.get_or_insert_with(|| codec::captured_ns(n));
            encode_record(first_id + i as u64, n, &mut scratch);
        }
        let result = self.write_batch(&scratch, first_id, batch.len() as u64, first_captured);
        self.scratch = scratch;
        result.map(|()| first_id)
    }

    fn write_batch(
        &mut self,
        bytes: &[u8],
        first_id: u64,
        count: u64,
        first_captured: Option<u64>,
    ) -> Result<(), SpoolError> {
        let len = bytes.len() as u64;
        let rotate = match (self.head.as_ref(), self.segments.back()) {
            (Some(_), Some(head)) => {
                head.bytes > 0 && head.bytes + len > self.settings.segment_bytes()
            }
            _ => true,
        };
        if rotate {
            self.rotate(first_id)?;
        }
        self.make_room(len);
        let (Some(file), Some(head)) = (self.head.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::Io {
                path: self.settings.dir.clone(),
                source: io::Error::other("no head segment"),
            });
        };
        if let Err(source) = file.write_all(bytes) {
            // Cut a partial write off so the segment stays valid, and start a new one next time.
            let _ = file.set_len(head.bytes);
            let path = head.path.clone();
            self.head = None;
            return Err(SpoolError::Io { path, source });
        }
        head.bytes += len;
        head.end_id = first_id + count;
        if head.first_captured_ns.is_none() {
            head.first_captured_ns = first_captured;
        }
        self.total_bytes += len;
        self.next_id = first_id + count;
        self.dirty = true;
        self.publish_on_disk();
        Ok(())
    }

    fn rotate(&mut self, first_id: u64) -> Result<(), SpoolError> {
        let path = self.settings.dir.join(segment_name(first_id));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        // A file of that name can only be a leftover of a failed write: start it empty.
        file.set_len(0).map_err(io_error(&path))?;
        if let Some(old) = self.head.take() {
            let _ = old.sync_data();
        }
        if self.segments.back().is_some_and(|s| s.first_id == first_id) {
            // An empty segment of that name found at open: the new one replaces it.
            if let Some(empty) = self.segments.pop_back() {
                self.total_bytes -= empty.bytes;
            }
        }
        self.segments.push_back(Segment {
            first_id,
            end_id: first_id,
            bytes: 0,
            path,
            first_captured_ns: None,
        });
        self.head = Some(file);
        Ok(())
    }

    fn publish_on_disk(&self) {
        self.acks.on_disk.store(
            self.next_id.saturating_sub(self.cursor.next_id),
            Ordering::Relaxed,
        );
    }

    /// Drops the oldest segments until `len` more bytes fit.
    fn make_room(&mut self, len: u64) {
        while self.total_bytes + len > self.settings.max_bytes && self.segments.len() > 1 {
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            let _ = fs::remove_file(&oldest.path);
            self.total_bytes -= oldest.bytes;
            if self.cursor.next_id < oldest.end_id {
                // Never handed out: these are lost.
                let from = self.cursor.next_id.max(oldest.first_id);
                self.counts.dropped_full += oldest.end_id - from;
                self.cursor.next_id = oldest.end_id;
            }
            if self.cursor.segment == oldest.first_id {
                let next = self.segments.front().map_or(self.next_id, |s| s.first_id);
                self.cursor.move_to(next);
            }
        }
    }

    /// Hands out the records `first_id..first_id + count` just appended without reading them
    /// back (the fast path); only valid when [`Spool::caught_up`] was true before the append.
    pub fn hand_out_appended(&mut self, first_id: u64, batch: &[Notification]) {
        if self.cursor.next_id != first_id {
            return;
        }
        let mut window = self.acks.lock();
        for (i, n) in batch.iter().enumerate() {
            window.hand_out(first_id + i as u64, codec::captured_ns(n));
        }
        drop(window);
        self.cursor.next_id = first_id + batch.len() as u64;
        self.publish_on_disk();
        // The reader resumes after this batch, in the head segment.
        if let Some(head) = self.segments.back() {
            self.cursor.segment = head.first_id;
            self.cursor.offset = head.bytes;
            self.cursor.file = None;
            self.cursor.buf.clear();
        }
    }

    /// Reads up to `max` records not yet handed out, in id order, hands them out and appends
    /// `(id, notification)` to `out`. Returns how many.
    pub fn read_pending(
        &mut self,
        max: usize,
        out: &mut Vec<(u64, Notification)>,
    ) -> Result<usize, SpoolError> {
        let mut taken = 0;
        while taken < max && self.cursor.next_id < self.next_id {
            let Some(index) = self
                .segments
                .iter()
                .position(|s| s.first_id == self.cursor.segment)
            else {
                // The cursor's segment is gone: go to the first one that can hold its id.
                match self
                    .segments
                    .iter()
                    .find(|s| s.end_id > self.cursor.next_id)
                {
                    Some(s) => {
                        let first = s.first_id;
                        self.cursor.move_to(first);
                        continue;
                    }
                    None => break,
                }
            };
            let (limit, end_id, path) = {
                let s = &self.segments[index];
                (s.bytes, s.end_id, s.path.clone())
            };
            if self.cursor.offset >= limit || self.cursor.next_id >= end_id {
                let missing = end_id.saturating_sub(self.cursor.next_id);
                if missing > 0 {
                    self.counts.corrupt += missing;
                    tracing::warn!(
                        file = %path.display(),
                        records = missing,
                        "spool segment ends early; the missing records are counted as corrupt"
                    );
                    self.cursor.next_id = end_id;
                }
                match self.segments.get(index + 1) {
                    Some(next) => {
                        let first = next.first_id;
                        self.cursor.move_to(first);
                        continue;
                    }
                    None => break,
                }
            }
            self.fill(&path, limit)?;
            let at = (self.cursor.offset - self.cursor.buf_offset) as usize;
            match parse_at(&self.cursor.buf, at) {
                Parsed::Record {
                    id,
                    captured_ns,
                    payload,
                    next,
                } => {
                    self.cursor.offset = self.cursor.buf_offset + next as u64;
                    if id < self.cursor.next_id {
                        // Acked before the restart (below the watermark) or already read.
                        continue;
                    }
                    if id >= end_id {
                        self.corrupt_at(&path, limit, end_id)?;
                        continue;
                    }
                    match codec::decode(&self.cursor.buf[payload]) {
                        Ok(n) => {
                            if id > self.cursor.next_id {
                                self.counts.corrupt += id - self.cursor.next_id;
                            }
                            self.acks.lock().hand_out(id, captured_ns);
                            self.cursor.next_id = id + 1;
                            out.push((id, n));
                            taken += 1;
                        }
                        Err(error) => self.undecodable(&path, id, &error),
                    }
                }
                Parsed::Incomplete
                    if self.cursor.buf_offset + (self.cursor.buf.len() as u64) < limit =>
                {
                    // `fill` reads more next time round.
                    self.cursor.buf.drain(..at);
                    self.cursor.buf_offset = self.cursor.offset;
                    self.read_more(&path, limit)?;
                }
                Parsed::Incomplete | Parsed::Corrupt => self.corrupt_at(&path, limit, end_id)?,
            }
        }
        self.publish_on_disk();
        Ok(taken)
    }

    fn undecodable(&mut self, path: &Path, id: u64, error: &DecodeError) {
        tracing::warn!(file = %path.display(), id, %error, "spool record does not decode; skipped");
        self.counts.corrupt += 1;
        self.cursor.next_id = id + 1;
    }

    /// Makes sure the buffer holds bytes from the cursor's offset.
    fn fill(&mut self, path: &Path, limit: u64) -> Result<(), SpoolError> {
        let c = &mut self.cursor;
        let buffered_end = c.buf_offset + c.buf.len() as u64;
        if c.offset >= c.buf_offset && c.offset + (HEADER as u64) <= buffered_end {
            return Ok(());
        }
        if c.offset >= c.buf_offset && c.offset <= buffered_end {
            let keep = (c.offset - c.buf_offset) as usize;
            c.buf.drain(..keep);
        } else {
            c.buf.clear();
        }
        c.buf_offset = c.offset;
        self.read_more(path, limit)
    }

    fn read_more(&mut self, path: &Path, limit: u64) -> Result<(), SpoolError> {
        let c = &mut self.cursor;
        if c.file.is_none() {
            c.file = Some(File::open(path).map_err(io_error(path))?);
        }
        let Some(file) = c.file.as_ref() else {
            return Ok(());
        };
        let from = c.buf_offset + c.buf.len() as u64;
        let want = (limit.saturating_sub(from) as usize).min(READ_CHUNK.max(HEADER + MAX_PAYLOAD));
        let old = c.buf.len();
        c.buf.resize(old + want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut c.buf[old + got..], from + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    c.buf.truncate(old);
                    return Err(SpoolError::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        c.buf.truncate(old + got);
        if got == 0 {
            // The file is shorter than we thought (truncated behind our back): treat the rest
            // as corrupt by pretending the buffer is complete.
            c.offset = limit;
        }
        Ok(())
    }

    /// The record at the cursor is bad: skip to the next valid record in this segment.
    fn corrupt_at(&mut self, path: &Path, limit: u64, end_id: u64) -> Result<(), SpoolError> {
        // Load the rest of the segment (at most a segment's size) and search it.
        let c = &mut self.cursor;
        let rest_len = limit.saturating_sub(c.offset) as usize;
        let mut rest = vec![0; rest_len];
        if let Some(file) = c.file.as_ref() {
            let mut got = 0;
            while got < rest_len {
                match file.read_at(&mut rest[got..], c.offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(SpoolError::Io {
                            path: path.to_owned(),
                            source,
                        });
                    }
                }
            }
            rest.truncate(got);
        }
        let (lost, new_offset, next_id) = match resync(&rest, 1, c.next_id, end_id) {
            Some((at, id)) => ((id - c.next_id).max(1), c.offset + at as u64, id),
            None => (
                (end_id.saturating_sub(c.next_id)).max(1),
                limit,
                c.next_id.max(end_id),
            ),
        };
        tracing::warn!(
            file = %path.display(),
            offset = c.offset,
            records = lost,
            "corrupt spool record (checksum or framing); skipped to the next valid record"
        );
        self.counts.corrupt += lost;
        c.offset = new_offset;
        c.buf.clear();
        c.buf_offset = new_offset;
        c.next_id = next_id;
        Ok(())
    }

    /// The lowest id not yet done.
    fn watermark(&self) -> u64 {
        self.acks
            .lock()
            .first_unacked()
            .map_or(self.cursor.next_id, |(id, _)| id)
    }

    /// Forces written records to the disk, saves the watermark, and deletes segments whose
    /// records are all done. Blocking (see [`Spool::sync_job`] for the async side).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.sync_job()?.run()
    }

    /// Saves the watermark, and returns the blocking part of a sync, to run off the async
    /// threads: the in-memory state is updated now, the files when the job runs. A failed
    /// job is redone by the next one.
    pub fn sync_job(&mut self) -> Result<SyncJob, SpoolError> {
        let mut job = SyncJob::default();
        let watermark = self.watermark();
        if watermark != self.saved_watermark {
            self.acked.write(watermark)?;
            self.saved_watermark = watermark;
        }
        if self.dirty {
            // Everything written already acknowledged: a power cut can only take back what
            // the bridge has, so there is nothing to force to the disk.
            if watermark < self.next_id
                && let (Some(file), Some(head)) = (self.head.as_ref(), self.segments.back())
            {
                job.data = file.try_clone().ok().map(|f| (f, head.path.clone()));
            }
            self.dirty = job.data.is_none() && watermark < self.next_id;
        }
        // Delete done segments, never the head.
        while self.segments.len() > 1
            && self.segments.front().is_some_and(|s| s.end_id <= watermark)
        {
            if let Some(done) = self.segments.pop_front() {
                self.total_bytes -= done.bytes;
                job.delete.push(done.path);
            }
        }
        Ok(job)
    }

    /// Sizes for the metrics.
    pub fn gauges(&self) -> SpoolGauges {
        let window = self.acks.lock();
        let on_disk_only = self.next_id.saturating_sub(self.cursor.next_id);
        let oldest_ns = window.first_unacked().map(|(_, ns)| ns).or_else(|| {
            (on_disk_only > 0)
                .then(|| {
                    self.segments
                        .iter()
                        .find(|s| s.end_id > self.cursor.next_id)
                        .and_then(|s| s.first_captured_ns)
                })
                .flatten()
        });
        let oldest_age = oldest_ns.and_then(|ns| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
                .ok()
        });
        SpoolGauges {
            bytes: self.total_bytes,
            entries: window.unacked + on_disk_only,
            oldest_age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample;
    use crate::spool::{DEFAULT_FSYNC_EVERY, MIN_MAX_BYTES};

    fn numbered(cseq: u32) -> Notification {
        let mut n = sample();
        n.cseq = cseq;
        n.call_id = format!("call-{}", cseq % 7);
        n
    }

    fn settings(dir: &Path) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_owned(),
            max_bytes: MIN_MAX_BYTES,
            fsync_every: DEFAULT_FSYNC_EVERY,
        }
    }

    fn read_all(spool: &mut Spool) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while spool.read_pending(100, &mut out).unwrap() > 0 {}
        out.into_iter().map(|(id, n)| (id, n.cseq)).collect()
    }

    fn append_range(spool: &mut Spool, range: std::ops::Range<u32>) {
        let batch: Vec<_> = range.map(numbered).collect();
        spool.append(&batch).unwrap();
    }

    #[test]
    fn appended_records_read_back_in_order_and_acks_release_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert_eq!(recovered, Recovered::default());
        append_range(&mut spool, 0..10);
        append_range(&mut spool, 10..15);
        let read = read_all(&mut spool);
        assert_eq!(read.len(), 15);
        assert!(
            read.iter()
                .enumerate()
                .all(|(i, &(id, cseq))| id == i as u64 && cseq == i as u32)
        );
        assert!(spool.caught_up());
        assert_eq!(spool.gauges().entries, 15);
        let acks = spool.acks();
        // Out of order: the watermark stays at the first unacked id.
        acks.ack(3);
        acks.ack(0);
        assert_eq!(spool.watermark(), 1);
        for id in 0..15 {
            acks.ack(id);
        }
        assert_eq!(spool.watermark(), 15);
        assert_eq!(spool.gauges().entries, 0);
    }

    #[test]
    fn only_unacked_records_survive_a_kill_and_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
            append_range(&mut spool, 0..20);
            let read = read_all(&mut spool);
            assert_eq!(read.len(), 20);
            for id in 0..8 {
                spool.acks().ack(id);
            }
            // An out-of-order ack above the watermark is not saved: delivered again later.
            spool.acks().ack(12);
            spool.sync().unwrap();
            append_range(&mut spool, 20..25);
            // Dropped without any close: what a SIGKILL leaves.
        }
        let (mut spool, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert_eq!(recovered.pending, 17);
        assert_eq!(recovered.corrupt, 0);
        let cseqs: Vec<u32> = read_all(&mut spool).into_iter().map(|(_, c)| c).collect();
        assert_eq!(cseqs, (8..25).collect::<Vec<_>>());
        // New records follow the old ones.
        append_range(&mut spool, 100..102);
        let more: Vec<u32> = read_all(&mut spool).into_iter().map(|(_, c)| c).collect();
        assert_eq!(more, [100, 101]);
    }

    #[test]
    fn the_lock_keeps_a_second_agent_out() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(settings(dir.path())).unwrap();
        let second = Spool::open(settings(dir.path()));
        let error = second.err().unwrap();
        assert!(matches!(error, SpoolError::Locked { .. }));
        assert!(error.is_config());
        assert!(error.to_string().contains("in use by another"), "{error}");
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let error = Spool::open(settings(&file.join("spool"))).err().unwrap();
        assert!(error.is_config());
        let message = error.to_string();
        assert!(message.starts_with("cannot use --spool-dir `"), "{message}");
        assert!(message.contains("plain-file"), "{message}");
        let small = SpoolSettings {
            max_bytes: 10,
            ..settings(dir.path())
        };
        assert!(matches!(
            Spool::open(small),
            Err(SpoolError::TooSmall { max_bytes: 10 })
        ));
    }

    #[test]
    fn a_full_spool_drops_the_oldest_records_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        // ~150 bytes a record: 1 MiB holds about 7 000.
        for chunk in 0..100 {
            append_range(&mut spool, chunk * 100..chunk * 100 + 100);
        }
        let gauges = spool.gauges();
        assert!(gauges.bytes <= MIN_MAX_BYTES, "{}", gauges.bytes);
        let dropped = spool.counts().dropped_full;
        assert!(dropped > 0);
        let read = read_all(&mut spool);
        // Every record is either read back or counted as dropped, and the survivors are the
        // newest, in order.
        assert_eq!(read.len() as u64 + dropped, 10_000);
        assert_eq!(read.first().map(|r| r.0), Some(dropped));
        assert_eq!(read.last().map(|r| r.1), Some(9_999));
        assert!(read.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    }

    #[test]
    fn acked_segments_are_deleted_on_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        for chunk in 0..20 {
            append_range(&mut spool, chunk * 100..chunk * 100 + 100);
        }
        let segments = |dir: &Path| {
            fs::read_dir(dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
                .count()
        };
        assert!(segments(dir.path()) > 2);
        let read = read_all(&mut spool);
        for (id, _) in &read {
            spool.acks().ack(*id);
        }
        spool.sync().unwrap();
        assert_eq!(segments(dir.path()), 1);
        assert_eq!(spool.gauges().entries, 0);
        drop(spool);
        let (_, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert_eq!(recovered.pending, 0);
    }

    #[test]
    fn what_the_bridge_acknowledged_before_the_sync_is_not_forced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        append_range(&mut spool, 0..10);
        for (id, _) in read_all(&mut spool) {
            spool.acks().ack(id);
        }
        let job = spool.sync_job().unwrap();
        assert!(!job.syncs_data());
        assert!(spool.settled());
        append_range(&mut spool, 10..20);
        let read = read_all(&mut spool);
        spool.acks().ack(read[0].0);
        assert!(spool.sync_job().unwrap().syncs_data());
        assert!(!spool.settled());
    }

    #[test]
    fn the_watermark_is_rewritten_in_place_and_a_torn_one_delivers_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        append_range(&mut spool, 0..10);
        let read = read_all(&mut spool);
        for (id, _) in &read[..4] {
            spool.acks().ack(*id);
        }
        spool.sync().unwrap();
        for (id, _) in &read[4..6] {
            spool.acks().ack(*id);
        }
        spool.sync().unwrap();
        drop(spool);
        assert_eq!(fs::read(dir.path().join("acked")).unwrap().len(), 12);
        let (spool, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert_eq!(recovered.pending, 4);
        drop(spool);
        // A torn watermark is read as 0: the survivors are delivered again, none is lost.
        let mut bytes = fs::read(dir.path().join("acked")).unwrap();
        bytes[3] ^= 0xff;
        fs::write(dir.path().join("acked"), &bytes).unwrap();
        let (_, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert_eq!(recovered.pending, 10);
    }

    fn only_segment(dir: &Path) -> PathBuf {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension() == Some("seg".as_ref()))
            .unwrap()
    }

    #[test]
    fn a_torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
            append_range(&mut spool, 0..10);
        }
        let path = only_segment(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        // Half a record at the end, as a power cut in the middle of a write leaves it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 30).unwrap();
        let (mut spool, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert_eq!(recovered.corrupt, 1);
        assert_eq!(recovered.pending, 9);
        let cseqs: Vec<u32> = read_all(&mut spool).into_iter().map(|(_, c)| c).collect();
        assert_eq!(cseqs, (0..9).collect::<Vec<_>>());
        // Appending goes on in a new segment, after the good records.
        append_range(&mut spool, 50..51);
        assert_eq!(read_all(&mut spool), [(9, 50)]);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let record_len;
        {
            let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
            append_range(&mut spool, 0..10);
            record_len = spool.gauges().bytes / 10;
            // A second segment, so the first one is not scanned at open but while reading.
            spool.rotate(10).unwrap();
            append_range(&mut spool, 10..12);
        }
        let first = dir.path().join(segment_name(0));
        let mut bytes = fs::read(&first).unwrap();
        // Flip a byte in the payload of record 4.
        let at = (record_len * 4 + 40) as usize;
        bytes[at] ^= 0x55;
        fs::write(&first, &bytes).unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        let cseqs: Vec<u32> = read_all(&mut spool).into_iter().map(|(_, c)| c).collect();
        let expected: Vec<u32> = (0..12).filter(|&c| c != 4).collect();
        assert_eq!(cseqs, expected);
        assert_eq!(spool.counts().corrupt, 1);
    }

    #[test]
    fn a_full_spool_with_some_batches_handed_out_from_memory_reads_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        let mut handed = 0u64;
        for chunk in 0..80u32 {
            let batch: Vec<_> = (chunk * 256..chunk * 256 + 256).map(numbered).collect();
            let caught_up = spool.caught_up();
            let first = spool.append(&batch).unwrap();
            // The delivery queue had room for the first 30 batches only.
            if caught_up && chunk < 30 {
                spool.hand_out_appended(first, &batch);
                handed += 256;
            }
        }
        let read = read_all(&mut spool);
        let dropped = spool.counts().dropped_full;
        assert!(dropped > 0);
        assert_eq!(handed + read.len() as u64 + dropped, 80 * 256);
        assert!(spool.caught_up());
    }

    #[test]
    fn garbage_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name(0)), vec![0xA5; 5000]).unwrap();
        fs::write(dir.path().join(segment_name(7)), b"short").unwrap();
        fs::write(dir.path().join("acked"), b"nonsense").unwrap();
        let (mut spool, recovered) = Spool::open(settings(dir.path())).unwrap();
        assert!(recovered.corrupt >= 1);
        assert!(read_all(&mut spool).is_empty());
        append_range(&mut spool, 0..3);
        assert_eq!(read_all(&mut spool).len(), 3);
    }

    #[test]
    fn fast_path_hand_out_skips_the_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        let batch: Vec<_> = (0..5).map(numbered).collect();
        assert!(spool.caught_up());
        let first = spool.append(&batch).unwrap();
        spool.hand_out_appended(first, &batch);
        assert!(spool.caught_up());
        assert_eq!(spool.gauges().entries, 5);
        append_range(&mut spool, 5..7);
        assert_eq!(read_all(&mut spool), [(5, 5), (6, 6)]);
        for id in 0..7 {
            spool.acks().ack(id);
        }
        assert_eq!(spool.watermark(), 7);
    }

    #[test]
    fn per_call_order_holds_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
            append_range(&mut spool, 0..30);
        }
        let (mut spool, _) = Spool::open(settings(dir.path())).unwrap();
        append_range(&mut spool, 30..60);
        let read: Vec<Notification> = {
            let mut out = Vec::new();
            while spool.read_pending(7, &mut out).unwrap() > 0 {}
            out.into_iter().map(|(_, n)| n).collect()
        };
        for call in 0..7 {
            let cseqs: Vec<u32> = read
                .iter()
                .filter(|n| n.call_id == format!("call-{call}"))
                .map(|n| n.cseq)
                .collect();
            assert!(cseqs.windows(2).all(|w| w[0] < w[1]), "{call}: {cseqs:?}");
        }
        assert_eq!(read.len(), 60);
    }
}
