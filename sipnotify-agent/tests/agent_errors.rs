//! The failures an operator meets first each get one clear line and the exit code of their
//! kind (2 bad usage or configuration, 1 runtime):
//! a missing interface (2), an interface that already has an XDP program (1), and no
//! permission to load BPF (1).

mod support;

use std::process::{Command, Output};

use support::{NetNs, VethPair, start_agent};

const AGENT: &str = env!("CARGO_BIN_EXE_sipnotify-agent");

/// The agent on the test's veth, on the XDP path only (`auto` would fall back to AF_PACKET),
/// without a metrics port that could collide with another, and without a spool (which an
/// unprivileged agent could not write, failing before the capture error under test).
const RUN_ON_VETH1: &[&str] = &[
    "run",
    "--iface",
    "veth1",
    "--capture",
    "xdp",
    "--stdout",
    "--no-bridge",
    "--metrics-listen",
    "off",
    "--spool",
    "off",
];

/// Drops from root to `nobody` with no capabilities.
const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

fn stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .filter(|l| l.starts_with("sipnotify: "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_in(ns: &NetNs, prefix: &[&str], args: &[&str]) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .args(prefix)
        .arg(AGENT)
        .args(args);
    cmd.env("NO_COLOR", "1").output().expect("run the agent")
}

#[test]
fn a_missing_interface_is_a_configuration_error() {
    let output = Command::new(AGENT)
        .args(["run", "--iface", "sn-no-such0", "--stdout", "--no-bridge"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_line(&output),
        "sipnotify: interface `sn-no-such0` does not exist"
    );
}

#[test]
fn an_interface_with_an_xdp_program_is_refused() {
    if !support::privileged("an_interface_with_an_xdp_program_is_refused") {
        return;
    }
    let net = VethPair::new("busy");
    // `auto` takes AF_PACKET on veth (its native XDP copies): the first agent must hold XDP.
    let first = start_agent(&net.receiver, RUN_ON_VETH1);
    let second = run_in(&net.receiver, &[], RUN_ON_VETH1);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert_eq!(
        stderr_line(&second),
        "sipnotify: interface `veth1` already has an XDP program attached; remove it \
         (`ip link set dev veth1 xdp off`) or pick another interface"
    );
    first.stop();
}

#[test]
fn loading_without_privileges_says_which_capabilities_are_missing() {
    if !support::privileged("loading_without_privileges_says_which_capabilities_are_missing") {
        return;
    }
    let net = VethPair::new("perm");
    // Enter the namespace as root, then drop to `nobody` with no capabilities.
    let output = run_in(&net.receiver, AS_NOBODY, RUN_ON_VETH1);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        stderr_line(&output),
        "sipnotify: permission denied loading the XDP program: run as root or grant \
         CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    );
}

#[test]
fn auto_without_privileges_says_why_each_capture_path_failed() {
    if !support::privileged("auto_without_privileges_says_why_each_capture_path_failed") {
        return;
    }
    let net = VethPair::new("perma");
    let output = run_in(
        &net.receiver,
        AS_NOBODY,
        &[
            "run",
            "--iface",
            "veth1",
            "--stdout",
            "--no-bridge",
            "--metrics-listen",
            "off",
            "--spool",
            "off",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        stderr_line(&output),
        "sipnotify: xdp: loading BPF programs is not permitted; af-packet: permission denied \
         opening a packet socket on `veth1`: run as root or grant CAP_NET_RAW"
    );
}
