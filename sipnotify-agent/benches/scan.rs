//! Is the hand-written SSE2/SWAR byte search in `sip::scan` worth keeping beside the `memchr`
//! crate? Each group runs one search the parser makes, on the real Genesys NOTIFYs of the
//! corpus (`shared/corpus/genesys-notify`), with the hand-written search, `memchr`'s and a
//! plain byte loop as the floor:
//!
//! - `line_end`: from each line start to its LF, over whole messages (`lines::line_at`, the
//!   start line and the header iterator's error path);
//! - `via_params`: `;` `,` `"` through each Via value (`fields::via_branch`), against
//!   `memchr3`;
//! - `name_addr`: the first of eight delimiters in each To/From/Contact value
//!   (`uri::parse_name_addr`), which `memchr` has no search for (it stops at three bytes);
//! - `header_lines`: every line end and the first colon of each line, the header iterator's
//!   work: 64-byte LF and `:` masks (`scan::block_masks`) against `memchr` per line.
//!
//! `cargo bench -p sipnotify-agent --bench scan -- --warm-up-time 1 --measurement-time 3`

use std::{hint::black_box, path::Path};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sipnotify_agent::sip::scan::{block_masks, find_any, find_byte};

/// Every message of the Genesys corpus.
fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/genesys-notify");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the shared/ corpus must sit beside the repository clone)",
                dir.display()
            )
        })
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sip"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .sip messages in {}", dir.display());
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("a corpus message"))
        .collect()
}

/// The trimmed values of the headers called one of `names` (case-insensitive), in order.
fn values<'a>(messages: &'a [Vec<u8>], names: &[&str]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    for message in messages {
        for line in message.split(|&b| b == b'\n') {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
            if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                out.push(line[colon + 1..].trim_ascii());
            }
        }
    }
    out
}

/// Walks `buf` line by line with `find`, returning how many lines it saw.
fn count_lines(buf: &[u8], find: impl Fn(&[u8]) -> Option<usize>) -> usize {
    let (mut at, mut lines) = (0, 0);
    while let Some(i) = buf.get(at..).and_then(&find) {
        at += i + 1;
        lines += 1;
    }
    lines
}

/// Walks the `;`-separated parameters of `value` with `find` (the Via walk's search).
fn count_params(value: &[u8], find: impl Fn(&[u8]) -> Option<usize>) -> usize {
    let (mut at, mut stops) = (0, 0);
    while let Some(i) = value.get(at..).and_then(&find) {
        at += i + 1;
        stops += 1;
    }
    stops
}

/// Every line end and the first colon of each line, from 64-byte masks.
fn header_lines_masks(buf: &[u8]) -> (usize, usize) {
    let (mut lines, mut colon_sum) = (0, 0);
    let mut seeking_colon = true;
    for (n, block) in buf.chunks(64).enumerate() {
        let mut padded = [0u8; 64];
        padded[..block.len()].copy_from_slice(block);
        let (mut newlines, mut colons) = block_masks(&padded);
        let base = n * 64;
        // Merge the two masks in position order.
        while newlines | colons != 0 {
            let next_lf = newlines.trailing_zeros();
            let next_colon = colons.trailing_zeros();
            if next_colon < next_lf {
                if seeking_colon {
                    colon_sum += base + next_colon as usize;
                    seeking_colon = false;
                }
                colons &= colons - 1;
            } else {
                lines += 1;
                seeking_colon = true;
                newlines &= newlines - 1;
            }
        }
    }
    (lines, colon_sum)
}

/// Every line end and the first colon of each line, with `memchr` per line.
fn header_lines_memchr(buf: &[u8]) -> (usize, usize) {
    let (mut lines, mut colon_sum, mut at) = (0, 0, 0);
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        if let Some(c) = memchr::memchr(b':', &buf[at..at + i]) {
            colon_sum += at + c;
        }
        lines += 1;
        at += i + 1;
    }
    (lines, colon_sum)
}

fn bench(c: &mut Criterion) {
    let messages = corpus();
    let all: Vec<u8> = messages.concat();
    let vias = values(&messages, &["via", "v"]);
    let addrs = values(&messages, &["to", "t", "from", "f", "contact", "m"]);
    let via_bytes: usize = vias.iter().map(|v| v.len()).sum();
    let addr_bytes: usize = addrs.iter().map(|v| v.len()).sum();

    // Every contender must find the same things, or the figures compare nothing.
    let lf = count_lines(&all, |h| find_byte(b'\n', h));
    assert_eq!(lf, count_lines(&all, |h| memchr::memchr(b'\n', h)));
    assert!(lf > 100, "{lf} lines");
    for v in &vias {
        assert_eq!(
            count_params(v, |h| find_any([b';', b',', b'"'], h)),
            count_params(v, |h| memchr::memchr3(b';', b',', b'"', h))
        );
    }
    assert_eq!(header_lines_masks(&all), header_lines_memchr(&all));

    let mut group = c.benchmark_group("line_end");
    group.throughput(Throughput::Bytes(all.len() as u64));
    group.bench_function("sse2", |b| {
        b.iter(|| count_lines(black_box(&all), |h| find_byte(b'\n', h)));
    });
    group.bench_function("memchr", |b| {
        b.iter(|| count_lines(black_box(&all), |h| memchr::memchr(b'\n', h)));
    });
    group.bench_function("loop", |b| {
        b.iter(|| count_lines(black_box(&all), |h| h.iter().position(|&x| x == b'\n')));
    });
    group.finish();

    let mut group = c.benchmark_group("via_params");
    group.throughput(Throughput::Bytes(via_bytes as u64));
    let run = |find: &dyn Fn(&[u8]) -> Option<usize>| {
        vias.iter()
            .map(|v| count_params(black_box(v), find))
            .sum::<usize>()
    };
    group.bench_function("sse2", |b| {
        b.iter(|| run(&|h| find_any([b';', b',', b'"'], h)));
    });
    group.bench_function("memchr3", |b| {
        b.iter(|| run(&|h| memchr::memchr3(b';', b',', b'"', h)));
    });
    group.bench_function("loop", |b| {
        b.iter(|| run(&|h| h.iter().position(|x| [b';', b',', b'"'].contains(x))));
    });
    group.finish();

    const DELIMITERS: [u8; 8] = [b'<', b';', b',', b'?', b' ', b'\t', b'\r', b'\n'];
    let mut group = c.benchmark_group("name_addr");
    group.throughput(Throughput::Bytes(addr_bytes as u64));
    group.bench_function("sse2", |b| {
        b.iter(|| {
            addrs
                .iter()
                .filter_map(|v| find_any(DELIMITERS, black_box(v)))
                .sum::<usize>()
        });
    });
    group.bench_function("loop", |b| {
        b.iter(|| {
            addrs
                .iter()
                .filter_map(|v| black_box(v).iter().position(|x| DELIMITERS.contains(x)))
                .sum::<usize>()
        });
    });
    group.finish();

    let mut group = c.benchmark_group("header_lines");
    for (name, message) in [("corpus", &all), ("one_message", &messages[0])] {
        group.throughput(Throughput::Bytes(message.len() as u64));
        group.bench_with_input(BenchmarkId::new("masks", name), message, |b, m| {
            b.iter(|| header_lines_masks(black_box(m)));
        });
        group.bench_with_input(BenchmarkId::new("memchr", name), message, |b, m| {
            b.iter(|| header_lines_memchr(black_box(m)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
