//! Helpers shared by the privileged integration tests: the skip rule, and network namespaces
//! that are removed even when a test fails.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::process::Command;

/// Whether privileged tests can run here. When they cannot, prints why; under `CI=true` a
/// skip is a failure, because CI runs as root with the eBPF toolchain installed.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if sipnotify_agent::bpf::OBJECT.is_empty() {
        Some("the agent was built without the eBPF object (run `cargo xtask setup`)")
    } else {
        None
    };
    let Some(reason) = reason else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot be skipped in CI: {reason}"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

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
