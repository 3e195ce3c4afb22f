//! Cost per packet of the XDP program under BPF_PROG_TEST_RUN, against an `XDP_PASS` no-op
//! loaded and run the same way in the same invocation (the machine is shared and noisy, so
//! only same-run ratios mean much). Needs root. Run with `cargo xtask bench xdp`.
//!
//! Both copy paths are measured: `bpf_xdp_load_bytes` (what 5.18 and later load) and the
//! linear copy (what 5.10–5.17 load), forced here on one kernel so the figures compare.
//! Each path is loaded twice: with no allowed-sender list, and with `--sip-source` set (the
//! LPM trie the program asks after the `NOTIFY ` match). Rows with the list set also give the
//! median per-run difference to the same frame through the program without a list.
//!
//! Each figure is the median over RUNS runs of at least 1 M repeats. For copied frames the
//! ring buffer is drained between batches, so the copy is timed, not the ring-full path.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use sipnotify_agent::{
    bpf::{self, CopyPath, LoadedProgram, ProgramSettings},
    source_filter::SourceFilter,
};
use sipnotify_common::{Counter, EVENTS_MAP, STATS_MAP};

const RUNS: usize = 11;
const REPEATS: u32 = 1_000_000;
/// Records per batch for the matching case: 20 000 × ~680 bytes fits a 32 MiB ring.
const BATCH: u32 = 20_000;

static NOOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipnotify-noop"));

/// The SIP Server: inside the allowed-sender list.
const ALLOWED: [u8; 4] = [192, 168, 210, 81];
/// Another host on the SIP network: outside it.
const STRANGER: [u8; 4] = [192, 168, 210, 66];

fn frame_udp(src: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [192, 168, 210, 54], 64)
        .udp(5060, dst_port);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

/// A TCP segment with 64 bytes of data (not a TLS record) to `dst_port`.
fn frame_tcp(dst_port: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(ALLOWED, [192, 168, 210, 54], 64)
        .tcp(40000, dst_port, 1, 1000);
    let mut frame = Vec::new();
    builder.write(&mut frame, &[0u8; 64]).unwrap();
    frame
}

fn notify_600() -> Vec<u8> {
    let mut payload = b"NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n".to_vec();
    payload.resize(598, b'x');
    payload.extend_from_slice(b"\r\n");
    payload
}

/// Mean ns per repeat over `total` repeats run in `batch`-sized test runs.
fn time(
    program: &Xdp,
    frame: &[u8],
    total: u32,
    batch: u32,
    ring: Option<&mut RingBuf<MapData>>,
) -> f64 {
    let mut ring = ring;
    let mut nanos = 0f64;
    let mut done = 0;
    while done < total {
        let repeat = batch.min(total - done);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, 2, "XDP_PASS");
        nanos += result.duration.as_nanos() as f64 * f64::from(repeat);
        done += repeat;
        if let Some(ring) = ring.as_deref_mut() {
            while ring.next().is_some() {}
        }
    }
    nanos / f64::from(total)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One loaded program and its ring.
type Loaded = (LoadedProgram, RingBuf<MapData>);

/// One row: a frame, whether it is copied (so the ring is drained between batches), and
/// whether it runs through the program with the allowed-sender list set.
struct Case<'a> {
    name: &'a str,
    frame: &'a [u8],
    copies: bool,
    listed: bool,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || bpf::OBJECT.is_empty() {
        eprintln!("skipping the xdp bench: it needs root and the eBPF object");
        return;
    }
    let mut noop = Ebpf::load(NOOP).expect("load the no-op");
    let noop_prog: &mut Xdp = noop
        .program_mut("sipnotify_noop")
        .unwrap()
        .try_into()
        .unwrap();
    noop_prog.load().unwrap();

    let load = |copy, senders: SourceFilter| -> Loaded {
        let mut loaded = bpf::load_with(
            &ProgramSettings {
                ports: vec![5061],
                ring_bytes: 32 << 20,
                senders,
            },
            Some(copy),
        )
        .expect("load sipnotify");
        let ring = RingBuf::try_from(loaded.ebpf.take_map(EVENTS_MAP).unwrap()).unwrap();
        (loaded, ring)
    };
    let list = || {
        SourceFilter::new(vec![
            "192.168.210.81".parse().unwrap(),
            "10.20.0.0/16".parse().unwrap(),
            "2001:db8:5::/48".parse().unwrap(),
        ])
    };
    // [copy path] → (no list, list set)
    let mut paths: Vec<(Loaded, Loaded)> = [CopyPath::LoadBytes, CopyPath::Linear]
        .into_iter()
        .map(|copy| (load(copy, SourceFilter::default()), load(copy, list())))
        .collect();
    let noop_prog: &Xdp = noop.program("sipnotify_noop").unwrap().try_into().unwrap();

    let other_port = frame_udp(ALLOWED, 5060, &notify_600());
    let tcp_other = frame_tcp(443);
    let tcp_watched = frame_tcp(5061);
    let notify = frame_udp(ALLOWED, 5061, &notify_600());
    let notify_stranger = frame_udp(STRANGER, 5061, &notify_600());

    let case = |name, frame, copies, listed| Case {
        name,
        frame,
        copies,
        listed,
    };
    let cases = [
        case("udp, other port", &other_port[..], false, false),
        case("udp, other port, list set", &other_port, false, true),
        case("tcp, other port (443)", &tcp_other, false, false),
        case("tcp, other port, list set", &tcp_other, false, true),
        case("tcp, watched port, copied", &tcp_watched, true, false),
        case("600-byte NOTIFY, copied", &notify, true, false),
        case("NOTIFY, list set, allowed", &notify, true, true),
        case("NOTIFY, list set, refused", &notify_stranger, false, true),
    ];
    println!("BPF_PROG_TEST_RUN, ns per packet, median of {RUNS} runs x {REPEATS} repeats");
    println!(
        "{:<27} {:>6} {:>10} {:>7} {:>6} {:>7} {:>8} {:>7} {:>6} {:>7}",
        "frame",
        "no-op",
        "load_bytes",
        "delta¹",
        "ratio",
        "list²",
        "linear",
        "delta¹",
        "ratio",
        "list²"
    );
    for c in cases {
        let mut base = Vec::new();
        let mut ours = [Vec::new(), Vec::new()];
        let mut deltas = [Vec::new(), Vec::new()];
        let mut list_deltas = [Vec::new(), Vec::new()];
        // The program without a list copies a NOTIFY the list refuses: drain its ring too.
        let batch = if c.copies || c.listed { BATCH } else { REPEATS };
        for _ in 0..RUNS {
            let b = time(noop_prog, c.frame, REPEATS, REPEATS, None);
            base.push(b);
            for (i, (plain, listed)) in paths.iter_mut().enumerate() {
                let (loaded, ring) = if c.listed { &mut *listed } else { &mut *plain };
                let o = time(
                    loaded.program().unwrap(),
                    c.frame,
                    REPEATS,
                    batch,
                    Some(ring),
                );
                ours[i].push(o);
                // Back-to-back pairs share the machine's state of the moment; the median of
                // their differences resists other load better than the difference of medians.
                deltas[i].push(o - b);
                if c.listed {
                    let (loaded, ring) = &mut *plain;
                    let p = time(
                        loaded.program().unwrap(),
                        c.frame,
                        REPEATS,
                        batch,
                        Some(ring),
                    );
                    list_deltas[i].push(o - p);
                }
            }
        }
        let base = median(base);
        print!("{:<27} {base:>6.1}", c.name);
        for i in 0..2 {
            let o = median(ours[i].clone());
            let list = if c.listed {
                format!("{:+.1}", median(list_deltas[i].clone()))
            } else {
                String::new()
            };
            let width = if i == 0 { 10 } else { 8 };
            print!(
                " {o:>width$.1} {:>+7.1} {:>5.2}x {list:>7}",
                median(deltas[i].clone()),
                o / base
            );
        }
        println!();
    }
    for ((loaded, ring), _) in &mut paths {
        let program = loaded.program().unwrap();
        // The reader's side of the same path: how fast the agent's drain loop empties a
        // ring the program has filled.
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            time(program, &notify, BATCH, BATCH, None);
            let start = std::time::Instant::now();
            let mut drained = 0u32;
            while ring.next().is_some() {
                drained += 1;
            }
            assert_eq!(drained, BATCH);
            rates.push(f64::from(drained) / start.elapsed().as_secs_f64());
        }
        let sum = counters(loaded);
        println!(
            "{}: ring drain (600-byte records) {:.2} M records/s, median of {RUNS}; \
             records copied: {}, lost to a full ring: {}, load failures: {}",
            loaded.copy,
            median(rates) / 1e6,
            sum(Counter::Copied),
            sum(Counter::RingbufFull),
            sum(Counter::LoadFailed),
        );
    }
    for (_, (loaded, _)) in &paths {
        let sum = counters(loaded);
        println!(
            "{}, list set: records copied: {}, refused (source_not_allowed): {}, lost to a full \
             ring: {}",
            loaded.copy,
            sum(Counter::Copied),
            sum(Counter::SourceNotAllowed),
            sum(Counter::RingbufFull),
        );
    }
    println!("¹ median of the per-run differences between back-to-back no-op and sipnotify runs");
    println!(
        "² list set: median of the per-run differences to the same frame through the program \
         without a list"
    );
    println!("  ratio: sipnotify's median over the no-op's median, same run");
}

/// The program's counters, summed over CPUs.
fn counters(loaded: &LoadedProgram) -> impl Fn(Counter) -> u64 + '_ {
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(loaded.ebpf.map(STATS_MAP).unwrap()).unwrap();
    move |counter: Counter| stats.get(&(counter as u32), 0).unwrap().iter().sum()
}
