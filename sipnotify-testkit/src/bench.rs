//! What the agent's live benches (`end_to_end`, `hep`, `idle`, `tcp`) share: the root check,
//! a private copy of the release agent, the `SIPNOTIFY_BENCH_*` knobs, and an agent started
//! quietly in a namespace and read through its metrics endpoint. What each bench measures,
//! and how it sends, stays in the bench.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{NetNs, metric};

/// Whether this process may run a bench that needs namespaces and XDP; says why not.
pub fn root(bench: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{bench}: needs root (network namespaces, XDP); skipped");
    }
    root
}

/// A binary copied into a temporary directory, removed on drop: the target directory may be
/// rebuilt (even without the eBPF program) while a bench runs.
pub struct PrivateBinary {
    path: String,
    _dir: tempfile::TempDir,
}

impl PrivateBinary {
    /// A private copy of `from`.
    pub fn of(from: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let name = std::path::Path::new(from).file_name().expect("a file name");
        let to = dir.path().join(name);
        std::fs::copy(from, &to).unwrap_or_else(|err| panic!("copy {from}: {err}"));
        Self {
            path: to.to_str().expect("a UTF-8 path").to_owned(),
            _dir: dir,
        }
    }

    /// A private copy of this tree's release agent; when it is not built, says how to build
    /// it and exits 1.
    pub fn release_agent(bench: &str) -> Self {
        let built = format!(
            "{}/../target/release/sipnotify-agent",
            env!("CARGO_MANIFEST_DIR")
        );
        if !std::path::Path::new(&built).is_file() {
            eprintln!(
                "{bench}: {built} is missing; build it first with\n  \
                 cargo build --release -p sipnotify-agent --bin sipnotify-agent"
            );
            std::process::exit(1);
        }
        Self::of(&built)
    }

    /// Where the copy is.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Whole seconds from the variable `name`, or `default` when it is unset.
pub fn env_seconds(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{name}: whole seconds, not `{s}`"))
    })
}

/// `SIPNOTIFY_BENCH_RATES` (per second, comma-separated), when set.
pub fn env_rates() -> Option<Vec<u32>> {
    std::env::var("SIPNOTIFY_BENCH_RATES").ok().map(|v| {
        v.split(',')
            .map(|r| {
                r.trim().parse().unwrap_or_else(|_| {
                    panic!("SIPNOTIFY_BENCH_RATES: rates per second, not `{r}`")
                })
            })
            .collect()
    })
}

/// Whether the case `name` is to run: its name contains `SIPNOTIFY_BENCH_CASE` (every case
/// when that is unset).
pub fn wants(name: &str) -> bool {
    std::env::var("SIPNOTIFY_BENCH_CASE").map_or(true, |case| name.contains(case.as_str()))
}

/// The agent as the throughput benches run it: `run` with their source flags, `--stdout`
/// into /dev/null (a pipe read at a few hundred thousand lines a second would load the
/// machine the bench measures), no bridge, no spool, metrics inside the namespace. Killed on
/// drop if still running.
pub struct QuietAgent<'a> {
    child: Child,
    ns: &'a NetNs,
    metrics: &'a str,
}

impl<'a> QuietAgent<'a> {
    /// Starts `binary run SOURCE… --stdout --no-bridge --spool off --metrics-listen METRICS`
    /// in `ns`; returns once the metrics endpoint answers with text that `ready` accepts.
    pub fn start(
        ns: &'a NetNs,
        binary: &str,
        source: &[&str],
        metrics: &'a str,
        ready: impl Fn(&str) -> bool,
    ) -> Self {
        let child = ns
            .command(binary)
            .arg("run")
            .args(source)
            .args(["--stdout", "--no-bridge", "--spool", "off"])
            .args(["--metrics-listen", metrics])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        let agent = Self { child, ns, metrics };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if agent.metrics().is_some_and(|text| ready(&text)) {
                return agent;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("the agent did not start");
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Prometheus text of `/metrics`, or `None` while the endpoint does not answer.
    pub fn metrics(&self) -> Option<String> {
        let addr = self.metrics;
        self.ns.enter(|| {
            let mut stream = TcpStream::connect(addr).ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            Some(text)
        })
    }

    /// The NOTIFYs the agent accepted (`sipnotify_notifications_total`), once there are
    /// `expected`, or once the count has not moved for `stall`.
    pub fn accepted(&self, expected: u64, stall: Duration) -> u64 {
        let mut last = (0, Instant::now());
        loop {
            let accepted = self
                .metrics()
                .and_then(|text| metric(&text, "sipnotify_notifications_total", &[]))
                .map_or(0, |v| v as u64);
            if accepted >= expected {
                return accepted;
            }
            if accepted != last.0 {
                last = (accepted, Instant::now());
            } else if last.1.elapsed() > stall {
                return accepted;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGINT and waits for it to exit.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

impl Drop for QuietAgent<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
