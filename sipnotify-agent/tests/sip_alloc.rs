//! `sip::parse` makes zero heap allocations, shown with a counting global allocator. It is its
//! own test binary so the allocator does not affect other tests.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fs,
    path::Path,
};

use sipnotify_agent::sip::{self, Header, ParseOptions};

/// Counts allocations made by the current thread (other test-harness threads may allocate at
/// any time, so a global count would be flaky).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the thread-local may already be gone while a thread shuts down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `System`, which upholds the `GlobalAlloc` contract; the
// counter is a const-initialised thread-local `Cell` that itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn payloads() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    assert!(
        root.is_dir(),
        "SIP corpus not found at {} (shared/ must sit beside the repository clone)",
        root.display()
    );
    let mut out = Vec::new();
    for sub in ["genesys-notify", "rfc4475"] {
        for entry in fs::read_dir(root.join(sub)).expect("list corpus") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "sip" || e == "dat") {
                let bytes = fs::read(&path).expect("read corpus file");
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    // A NOTIFY that takes every path: compact names, folding, %-escapes, a body, params.
    out.push((
        "synthetic".to_owned(),
        b"\r\nNOTIFY sip:192.0.2.1 SIP/2.0\r\n\
          t: \"Agent <x>; \\\"y\\\"\"\r\n <sip:%31%30%30%32;p=1@[2001:db8::1]:5060>;tag=1\r\n\
          f: <tel:+1-555-1234>;tag=2\r\n\
          i: abc@h\r\n\
          CSeq: 7\r\n NOTIFY\r\n\
          v: SIP/2.0/UDP h;rport;branch=z9hG4bK-1, SIP/2.0/UDP g;branch=z9hG4bK-2\r\n\
          o: talk ; id=1\r\n\
          x-genesys-calluuid:  UUID  \r\n\
          l: 4\r\n\r\nbodyEXTRA"
            .to_vec(),
    ));
    out
}

#[test]
fn parse_makes_no_heap_allocations() {
    let options = ParseOptions::new(["Contact", "X-Genesys-ANI"], false);
    let lenient = ParseOptions::new(["Contact"], true);
    let payloads = payloads();
    let mut accepted = 0;
    let mut slots = [Header::EMPTY; 64];
    for (name, payload) in &payloads {
        let mut ok = false;
        let count = allocations_during(|| {
            ok = sip::parse(payload, &options).is_ok();
            let _ = sip::parse(payload, &lenient);
            let _ = sip::parse_message(payload, &mut slots);
        });
        assert_eq!(count, 0, "{name}: {count} allocations");
        accepted += usize::from(ok);
    }
    // The ten real NOTIFYs were accepted, so the full path ran allocation-free.
    assert_eq!(accepted, 10);

    // The counter does see allocations (the test would be vacuous otherwise), and converting
    // to the owned notification is where they happen.
    let (_, genesys) = payloads
        .iter()
        .find(|(name, _)| name.contains("genesys_log_03"))
        .expect("the Asterisk NOTIFY");
    let notify = sip::parse(genesys, &options).expect("parses");
    let meta = sipnotify_agent::event::CaptureMeta {
        captured_at: std::time::SystemTime::UNIX_EPOCH,
        src: ([127, 0, 0, 1], 5060).into(),
        dst: ([127, 0, 0, 1], 5061).into(),
        iface: None,
    };
    assert!(allocations_during(|| drop(notify.to_notification(&options, meta))) > 0);
}
