//! Cost per packet of the XDP program under BPF_PROG_TEST_RUN, against an `XDP_PASS` no-op
//! loaded and run the same way in the same invocation (the machine is shared and noisy, so
//! only same-run ratios mean much). Needs root. Run with `cargo xtask bench xdp`.
//!
//! Both copy paths are measured: `bpf_xdp_load_bytes` (what 5.18 and later load) and the
//! linear copy (what 5.10–5.17 load), forced here on one kernel so the figures compare.
//!
//! Each figure is the median over RUNS runs of at least 1 M repeats. For the matching NOTIFY
//! the ring buffer is drained between batches, so the copy is timed, not the ring-full path.

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

fn frame_udp(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 168, 210, 81], [192, 168, 210, 54], 64)
        .udp(5060, dst_port);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).unwrap();
    frame
}

fn frame_tcp() -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 168, 210, 81], [192, 168, 210, 54], 64)
        .tcp(5060, 5061, 1, 1000);
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

    let load = |copy| {
        let mut loaded = bpf::load_with(
            &ProgramSettings {
                ports: vec![5061],
                ring_bytes: 32 << 20,
                senders: SourceFilter::default(),
            },
            Some(copy),
        )
        .expect("load sipnotify");
        let ring = RingBuf::try_from(loaded.ebpf.take_map(EVENTS_MAP).unwrap()).unwrap();
        (loaded, ring)
    };
    let mut paths: Vec<(LoadedProgram, RingBuf<MapData>)> =
        vec![load(CopyPath::LoadBytes), load(CopyPath::Linear)];
    let noop_prog: &Xdp = noop.program("sipnotify_noop").unwrap().try_into().unwrap();

    let other_port = frame_udp(5060, &notify_600());
    let tcp = frame_tcp();
    let notify = frame_udp(5061, &notify_600());

    let cases: [(&str, &[u8], bool); 3] = [
        ("udp, other port", &other_port, false),
        ("tcp", &tcp, false),
        ("600-byte NOTIFY, copied", &notify, true),
    ];
    println!("BPF_PROG_TEST_RUN, ns per packet, median of {RUNS} runs x {REPEATS} repeats");
    println!(
        "{:<26} {:>7} {:>11} {:>7} {:>6} {:>11} {:>7} {:>6}",
        "frame", "no-op", "load_bytes", "delta¹", "ratio", "linear", "delta¹", "ratio"
    );
    for (name, frame, copies) in cases {
        let mut base = Vec::new();
        let mut ours = [Vec::new(), Vec::new()];
        let mut deltas = [Vec::new(), Vec::new()];
        for _ in 0..RUNS {
            let b = time(noop_prog, frame, REPEATS, REPEATS, None);
            base.push(b);
            let batch = if copies { BATCH } else { REPEATS };
            for (i, (loaded, ring)) in paths.iter_mut().enumerate() {
                let o = time(loaded.program().unwrap(), frame, REPEATS, batch, Some(ring));
                ours[i].push(o);
                // Back-to-back pairs share the machine's state of the moment; the median of
                // their differences resists other load better than the difference of medians.
                deltas[i].push(o - b);
            }
        }
        let base = median(base);
        print!("{name:<26} {base:>7.1}");
        for i in 0..2 {
            let o = median(ours[i].clone());
            print!(
                " {o:>11.1} {:>+7.1} {:>5.2}x",
                median(deltas[i].clone()),
                o / base
            );
        }
        println!();
    }
    for (loaded, ring) in &mut paths {
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
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(loaded.ebpf.map(STATS_MAP).unwrap()).unwrap();
        let sum =
            |counter: Counter| -> u64 { stats.get(&(counter as u32), 0).unwrap().iter().sum() };
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
    println!("¹ median of the per-run differences between back-to-back no-op and sipnotify runs");
    println!("  ratio: sipnotify's median over the no-op's median, same run");
}
