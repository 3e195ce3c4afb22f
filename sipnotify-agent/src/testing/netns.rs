//! Private network namespaces joined by a veth pair, the agent process running in one, and
//! Genesys-like SIP traffic: what the privileged tests, the benches and `cargo xtask demo`
//! share. Everything is removed on drop, also while unwinding from a failed assertion.
//!
//! These helpers panic on failure: they are for tests and demos, where a panic with the
//! failing command's stderr is the most useful report.
#![allow(
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    reason = "test support: a panic with context is the report"
)]

use std::process::Command;

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace deleted on drop (also while unwinding from a failed assertion).
pub struct NetNs {
    /// The namespace name.
    pub name: String,
}

impl NetNs {
    /// Creates `sn-<tag>-<pid>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("sn-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> …`
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: `sender` (10.200.0.1/veth0) and `receiver`
/// (10.200.0.2/veth1), with IPv6 addresses fd00:200::1 and ::2 too.
pub struct VethPair {
    /// Sending side.
    pub sender: NetNs,
    /// Receiving side, where the agent attaches to `veth1`.
    pub receiver: NetNs,
}

impl VethPair {
    /// Creates and configures both namespaces.
    pub fn new(tag: &str) -> Self {
        let sender = NetNs::new(&format!("{tag}s"));
        let receiver = NetNs::new(&format!("{tag}r"));
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            &sender.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &receiver.name,
        ]);
        sender.ip(&["addr", "add", "10.200.0.1/24", "dev", "veth0"]);
        receiver.ip(&["addr", "add", "10.200.0.2/24", "dev", "veth1"]);
        sender.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:200::1/64",
            "dev",
            "veth0",
            "nodad",
        ]);
        receiver.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:200::2/64",
            "dev",
            "veth1",
            "nodad",
        ]);
        sender.ip(&["link", "set", "veth0", "up"]);
        receiver.ip(&["link", "set", "veth1", "up"]);
        Self { sender, receiver }
    }
}

impl NetNs {
    /// Runs `f` on a thread that has joined this namespace; sockets created there stay in it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).expect("open the namespace");
                    use std::os::fd::AsRawFd as _;
                    // SAFETY: a valid namespace fd; setns only affects this thread.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp(&self, addr: &str) -> std::net::UdpSocket {
        self.enter(|| std::net::UdpSocket::bind(addr).expect("bind"))
    }
}

/// A Genesys SIP Server `NOTIFY` like the one in the corpus (539 bytes for `i = 0`), with a
/// Call-ID, CSeq and Via branch unique to `i`.
pub fn genesys_notify(i: u32, dn: &str, event: &str) -> Vec<u8> {
    format!(
        "NOTIFY sip:192.168.210.54:5061 SIP/2.0\r\n\
From: sip:1003@192.168.210.81:5060;tag=A2BB77D7-EABF-4274-8BD4-6D98F1BD8715-24\r\n\
To: <sip:{dn}@192.168.210.81>;tag=f90c6227-8e6d-4205-a84d-6eda8248601f\r\n\
Call-ID: {i:08X}-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81\r\n\
CSeq: 2 NOTIFY\r\n\
Content-Length: 0\r\n\
Via: SIP/2.0/UDP 192.168.210.81:5060;branch=z9hG4bKD15025DA-835B-4C9E-9D96-{i:012X}\r\n\
Contact: <sip:1003@192.168.210.81:5060>\r\n\
Event: {event}\r\n\
Subscription-State: active\r\n\
Max-Forwards: 70\r\n\
X-Genesys-CallUUID: {}\r\n\r\n",
        call_uuid(i)
    )
    .into_bytes()
}

/// The CallUUID [`genesys_notify`] puts in message `i`.
pub fn call_uuid(i: u32) -> String {
    format!("TTL7J9EM750GP936CFL0EO{i:010}")
}

/// The Call-ID [`genesys_notify`] puts in message `i`.
pub fn call_id(i: u32) -> String {
    format!("{i:08X}-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81")
}

/// The agent binary running in a namespace; killed on drop if still running.
pub struct Agent {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Agent {
    /// Starts the agent `binary` with `args` in `ns` and waits until it is capturing.
    pub fn start(binary: &str, ns: &NetNs, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = ns
            .command(binary)
            .args(args)
            .env("SIPNOTIFY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            child,
            stderr: rx,
            stderr_seen: Vec::new(),
        };
        agent.wait_for_log("capturing", std::time::Duration::from_secs(20));
        agent
    }

    /// The agent's process id (`ip netns exec` replaces itself with the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "agent did not log `{needle}`; stderr so far:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// Sends SIGINT and returns stdout once the agent has exited successfully.
    pub fn stop(mut self) -> String {
        use std::io::Read as _;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let status = self.child.wait().expect("wait for the agent");
        while let Ok(line) = self
            .stderr
            .recv_timeout(std::time::Duration::from_millis(200))
        {
            self.stderr_seen.push(line);
        }
        assert!(
            status.success(),
            "agent exited with {status}; stderr:\n{}",
            self.stderr_seen.join("\n")
        );
        stdout
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NetNs {
    /// `GET path` from `addr` inside this namespace; returns (status line, body).
    pub fn http_get(&self, addr: &str, path: &str) -> (String, String) {
        use std::io::{Read as _, Write as _};
        self.enter(|| {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            (
                head.lines().next().unwrap_or_default().to_owned(),
                body.to_owned(),
            )
        })
    }
}

/// The value of the Prometheus sample `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The HTTPS bridge stand-in listening inside a namespace, with its CA certificate written to
/// a file for the agent's `--ca-file`.
///
/// Threads inherit the namespace of the thread that creates them, so the runtime is built
/// inside the namespace: its workers, and every socket the bridge opens (including the
/// listener it re-opens after a simulated outage), stay there.
pub struct NamespacedBridge {
    /// Serves the bridge.
    pub runtime: tokio::runtime::Runtime,
    /// The bridge.
    pub bridge: super::TestBridge,
    /// The CA certificate (PEM); removed on drop.
    pub ca_file: String,
}

impl NamespacedBridge {
    /// Starts the bridge in `ns`; its runtime's threads are named `thread_name`.
    pub fn start(ns: &NetNs, options: super::BridgeOptions, thread_name: &str) -> Self {
        let (runtime, bridge) = ns.enter(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name(thread_name)
                .build()
                .expect("a tokio runtime");
            let bridge = runtime
                .block_on(super::TestBridge::start(options))
                .expect("start the bridge stand-in");
            (runtime, bridge)
        });
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ca = std::env::temp_dir().join(format!(
            "sipnotify-bridge-ca-{}-{n}.pem",
            std::process::id()
        ));
        bridge.write_ca_file(&ca).expect("write the CA file");
        Self {
            runtime,
            bridge,
            ca_file: ca.to_str().expect("a UTF-8 path").to_owned(),
        }
    }

    /// The agent flags that point it at this bridge and trust its certificate.
    pub fn agent_args(&self) -> [&str; 4] {
        [
            "--bridge-url",
            self.bridge.url(),
            "--ca-file",
            &self.ca_file,
        ]
    }

    /// Waits until `count` objects were acknowledged; false on timeout.
    pub fn wait_for(&self, count: u64, timeout: std::time::Duration) -> bool {
        self.runtime
            .block_on(self.bridge.wait_for_acknowledged(count, timeout))
    }
}

impl Drop for NamespacedBridge {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
