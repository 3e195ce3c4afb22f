//! Helpers shared by the privileged integration tests: the skip rule, and network namespaces
//! that are removed even when a test fails.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "a module of each test binary; each uses a different subset"
)]

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

pub use sipnotify_testkit::*;

/// The agent binary with an empty config file and no `SIPNOTIFY_*` variables, so a test
/// sees only the flags it passes (and not /etc/sipnotify or the caller's environment).
/// Keep the returned file alive while the command runs.
pub fn isolated_agent() -> (std::process::Command, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().expect("a temporary config file");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sipnotify-agent"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SIPNOTIFY_") {
            command.env_remove(key);
        }
    }
    command.arg("--config").arg(config.path());
    (command, config)
}

/// The agent under test in `ns`, started with `args`.
pub fn start_agent(ns: &NetNs, args: &[&str]) -> Agent {
    Agent::start(env!("CARGO_BIN_EXE_sipnotify-agent"), ns, args)
}
