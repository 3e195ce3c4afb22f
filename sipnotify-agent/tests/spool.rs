//! The durable spool end to end, through the built binary's `replay` (realtime pacing stands in
//! for live traffic; it needs no root and runs the same pipeline → spool → driver wiring as
//! `run`) against the HTTPS bridge stand-in: a 60 s outage at 1 000 NOTIFY/s, a SIGKILL or
//! a SIGTERM during an outage and a restart, a burst to a slow bridge, a full spool, a corrupt spool
//! file, and a spool directory that cannot be used.
//!
//! Each delivered object is checked by its CallUUID: every one exactly once, and a call's
//! `talk` acknowledged before its `hold`.

mod support;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use support::{BridgeOptions, Received, Reply, TestBridge};

/// A Genesys NOTIFY for notification `i`: call `i / 2`, `talk` then `hold`.
fn notify(i: u32) -> Vec<u8> {
    let call = i / 2;
    let event = if i.is_multiple_of(2) { "talk" } else { "hold" };
    format!(
        "NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bK-{i:010}\r\n\
From: sip:1003@192.168.210.81:5060;tag=A2BB77D7\r\n\
To: <sip:{dn}@192.168.210.81>;tag=f90c6227\r\n\
Call-ID: {call:08X}-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81\r\n\
CSeq: {cseq} NOTIFY\r\n\
Event: {event}\r\n\
Subscription-State: active\r\n\
X-Genesys-CallUUID: TTL7J9EM750GP936CFL0EO{i:010}\r\n\
Content-Length: 0\r\n\r\n",
        dn = 1000 + call % 500,
        cseq = 2 + i % 2,
    )
    .into_bytes()
}

fn index_of(object: &serde_json::Value) -> Option<u32> {
    object["call_uuid"]
        .as_str()?
        .strip_prefix("TTL7J9EM750GP936CFL0EO")?
        .parse()
        .ok()
}

/// A pcap of `count` NOTIFYs at `rate` per second.
fn write_stream(path: &Path, count: u32, rate: u32) {
    let mut writer = PcapWriter::with_header(Vec::new(), PcapHeader::default()).unwrap();
    for i in 0..count {
        let payload = notify(i);
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([192, 168, 210, 81], [192, 168, 210, 54], 64)
            .udp(5060, 5061);
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut frame, &payload).unwrap();
        let ts = Duration::from_secs(1_767_000_000) + Duration::from_secs(u64::from(i)) / rate;
        writer
            .write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))
            .unwrap();
    }
    fs::write(path, writer.into_writer()).unwrap();
}

struct Fixture {
    bridge: Arc<TestBridge>,
    dir: tempfile::TempDir,
    ca: PathBuf,
    spool: PathBuf,
}

impl Fixture {
    async fn new() -> Self {
        let bridge = Arc::new(TestBridge::start(BridgeOptions::default()).await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        bridge.write_ca_file(&ca).unwrap();
        let spool = dir.path().join("spool");
        Self {
            bridge,
            dir,
            ca,
            spool,
        }
    }

    fn pcap(&self, name: &str, count: u32, rate: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        write_stream(&path, count, rate);
        path
    }

    /// `replay FILE` into the bridge with the spool in this fixture's directory.
    fn replay(&self, file: &Path, extra: &[&str]) -> Replay {
        let (mut command, config) = support::isolated_agent();
        let log = self.dir.path().join(format!(
            "replay-{}.log",
            file.file_stem().and_then(|s| s.to_str()).unwrap_or("x")
        ));
        command
            .arg("replay")
            .arg(file)
            .args(["--bridge-url", self.bridge.url()])
            .arg("--ca-file")
            .arg(&self.ca)
            .args(["--spool", "on", "--spool-dir"])
            .arg(&self.spool)
            .args(extra)
            .env(
                "SIPNOTIFY_LOG",
                std::env::var("SPOOL_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        Replay {
            child: command.spawn().unwrap(),
            log,
            _config: config,
        }
    }
}

struct Replay {
    child: Child,
    log: PathBuf,
    _config: tempfile::NamedTempFile,
}

impl Replay {
    async fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, fs::read_to_string(&self.log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "replay still running after {limit:?}:\n{}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (SIGKILL: a crash or an OOM kill; SIGTERM: `systemctl stop`) and
    /// returns the log once the process has ended.
    async fn signal(mut self, signal: libc::c_int) -> String {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "still running 30 s after {signal}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every index delivered exactly once, with each call's `talk` before its `hold`.
fn check_exactly_once_in_order(received: &[Received], expected: impl Iterator<Item = u32>) {
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    for r in received {
        let index = index_of(&r.object).unwrap_or_else(|| panic!("{:?}", r.object));
        assert!(
            seen.insert(index, r.request).is_none(),
            "notification {index} was acknowledged twice"
        );
    }
    let expected: Vec<u32> = expected.collect();
    let missing: Vec<u32> = expected
        .iter()
        .copied()
        .filter(|i| !seen.contains_key(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} lost, first: {missing:?}",
        expected.len() - expected.iter().filter(|i| seen.contains_key(i)).count(),
        expected.len()
    );
    assert_eq!(seen.len(), expected.len(), "unexpected extra notifications");
    let mut out_of_order = 0;
    for (&index, &request) in &seen {
        if index % 2 == 1 {
            if let Some(&talk) = seen.get(&(index - 1)) {
                if talk >= request {
                    out_of_order += 1;
                }
            }
        }
    }
    assert_eq!(out_of_order, 0, "holds acknowledged before their talk");
}

fn summary_count(log: &str, key: &str) -> Option<u64> {
    let at = log.rfind(&format!("{key}="))?;
    log[at + key.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_outage_at_1000_per_second_loses_nothing() {
    const COUNT: u32 = 65_000;
    let f = Fixture::new().await;
    let pcap = f.pcap("outage", COUNT, 1_000);
    f.bridge
        .fail_for(Duration::from_secs(60), Reply::Status(503));
    let started = Instant::now();
    let (status, log) = f
        .replay(&pcap, &["--speed", "realtime"])
        .wait(Duration::from_secs(180))
        .await;
    assert!(status.success(), "{log}");
    eprintln!("replay took {:?}; its log:\n{log}", started.elapsed());
    check_exactly_once_in_order(&f.bridge.received(), 0..COUNT);
    assert!(log.contains("the bridge is failing"), "{log}");
    assert!(log.contains("the bridge is back"), "{log}");
    assert!(!log.contains("remedy=\"\""), "{log}");
    assert_eq!(
        summary_count(&log, "delivered"),
        Some(u64::from(COUNT)),
        "{log}"
    );
}

/// 3 000 NOTIFYs read during an outage, the agent stopped by `signal`, the bridge back, and
/// a restart that reads nothing new: every one is delivered once, in order.
async fn stopped_during_an_outage_loses_nothing_across_the_restart(signal: libc::c_int) {
    const COUNT: u32 = 3_000;
    let f = Fixture::new().await;
    let pcap = f.pcap("before-stop", COUNT, 1_000);
    f.bridge.set_default_reply(Reply::Status(503));
    let first = f.replay(&pcap, &["--speed", "realtime", "--shutdown-timeout", "1s"]);
    // The stream is 3 s long: everything has been read when the signal comes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = first.signal(signal).await;
    assert_eq!(f.bridge.acknowledged(), 0, "{log}");
    if signal == libc::SIGTERM {
        assert_eq!(
            summary_count(&log, "left_in_spool"),
            Some(u64::from(COUNT)),
            "{log}"
        );
    }
    f.bridge.set_default_reply(Reply::ok());
    let empty = f.pcap("after-restart", 0, 1_000);
    let (status, log) = f.replay(&empty, &[]).wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("spool: delivering what the previous run left"),
        "{log}"
    );
    check_exactly_once_in_order(&f.bridge.received(), 0..COUNT);
    assert_eq!(summary_count(&log, "left_in_spool"), Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_an_outage_loses_nothing_across_the_restart() {
    stopped_during_an_outage_loses_nothing_across_the_restart(libc::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_an_outage_keeps_the_backlog_for_the_restart() {
    stopped_during_an_outage_loses_nothing_across_the_restart(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_counts_and_logs_them() {
    const COUNT: u32 = 20_000;
    let f = Fixture::new().await;
    let pcap = f.pcap("full", COUNT, 1_000_000);
    f.bridge.set_default_reply(Reply::Status(503));
    // A small delivery queue, so the backlog waits on disk rather than in memory.
    let replay = f.replay(
        &pcap,
        &["--spool-max-bytes", "1048576", "--queue-capacity", "100"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.bridge.set_default_reply(Reply::ok());
    let (status, log) = replay.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{log}");
    let received = f.bridge.received();
    let dropped = summary_count(&log, "spool_full").unwrap_or_else(|| panic!("{log}"));
    assert!(dropped > 0, "{log}");
    assert!(log.contains("notifications dropped"), "{log}");
    assert!(log.contains("--spool-max-bytes"), "{log}");
    // The oldest went; what is left is delivered exactly once, the newest included.
    assert_eq!(received.len() as u64 + dropped, u64::from(COUNT), "{log}");
    let mut indexes: Vec<u32> = received
        .iter()
        .filter_map(|r| index_of(&r.object))
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), received.len());
    assert_eq!(indexes.last(), Some(&(COUNT - 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_file_is_skipped_counted_and_the_rest_delivered() {
    const COUNT: u32 = 2_000;
    let f = Fixture::new().await;
    let pcap = f.pcap("corrupt", COUNT, 1_000_000);
    f.bridge.set_default_reply(Reply::Status(503));
    let first = f.replay(&pcap, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.signal(libc::SIGKILL).await;
    let segment = fs::read_dir(&f.spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 8] {
        *byte ^= 0xA5;
    }
    fs::write(&segment, &bytes).unwrap();
    f.bridge.set_default_reply(Reply::ok());
    let empty = f.pcap("after-corruption", 0, 1_000);
    let (status, log) = f.replay(&empty, &[]).wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("corrupt spool record"), "{log}");
    let corrupt = summary_count(&log, "spool_corrupt").unwrap_or_else(|| panic!("{log}"));
    let received = f.bridge.received();
    assert!((1..=2).contains(&corrupt), "{log}");
    assert_eq!(received.len() as u64 + corrupt, u64::from(COUNT), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_a_slow_bridge_loses_nothing() {
    const COUNT: u32 = 50_000;
    let f = Fixture::new().await;
    // 10 000/s for 5 s, against a bridge that holds its replies back 80 % of the time.
    let pcap = f.pcap("burst", COUNT, 10_000);
    let slow = tokio::spawn({
        let bridge = Arc::clone(&f.bridge);
        async move {
            loop {
                bridge.pause_for(Duration::from_millis(40));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let (status, log) = f
        .replay(&pcap, &["--speed", "realtime"])
        .wait(Duration::from_secs(120))
        .await;
    slow.abort();
    assert!(status.success(), "{log}");
    check_exactly_once_in_order(&f.bridge.received(), 0..COUNT);
}

#[test]
fn a_spool_dir_that_cannot_be_used_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    fs::write(&file, b"").unwrap();
    let pcap = dir.path().join("one.pcap");
    write_stream(&pcap, 1, 1);
    let (mut command, _config) = support::isolated_agent();
    let output = command
        .arg("replay")
        .arg(&pcap)
        .args(["--stdout", "--no-bridge", "--spool", "on", "--spool-dir"])
        .arg(file.join("spool"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sipnotify: cannot use --spool-dir `"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
