//! Private network namespaces joined by a veth pair, and the bridge stand-in running inside
//! one: what the privileged tests, the benches and `cargo xtask demo` share. Everything is
//! removed on drop, also while unwinding from a failed assertion.
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

    /// A UDP socket bound to `addr` inside this namespace, with a receive buffer (8 MiB) that
    /// holds a test's whole burst: with the default one, a counting thread descheduled on a
    /// loaded machine sees the kernel drop datagrams the capture path had let by.
    pub fn udp(&self, addr: &str) -> std::net::UdpSocket {
        use std::os::fd::AsRawFd as _;
        let socket = self.enter(|| std::net::UdpSocket::bind(addr).expect("bind"));
        let bytes: libc::c_int = 8 << 20;
        // SAFETY: setsockopt on a descriptor this socket owns, with a c_int of the size given.
        // SO_RCVBUFFORCE (tests run as root) is not capped by net.core.rmem_max.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        socket
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
    pub bridge: crate::TestBridge,
    /// The CA certificate (PEM); removed on drop.
    pub ca_file: String,
}

impl NamespacedBridge {
    /// Starts the bridge in `ns`; its runtime's threads are named `thread_name`.
    pub fn start(ns: &NetNs, options: crate::BridgeOptions, thread_name: &str) -> Self {
        let (runtime, bridge) = ns.enter(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name(thread_name)
                .build()
                .expect("a tokio runtime");
            let bridge = runtime
                .block_on(crate::TestBridge::start(options))
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
