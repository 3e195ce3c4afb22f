//! `cargo xtask test-packages` (part of `cargo xtask test`): the .deb's service under a real
//! systemd. Debian 11 and 12, debootstrapped with `systemd-sysv`, boot as the root of a matrix
//! VM on their own kernels (5.10, 6.1), with the .deb installed and `sipnotify.service`
//! enabled as an operator would (`systemctl enable`; the unit, its sandbox and the
//! `sipnotify-unit-caps` generator as shipped).
//!
//! ```text
//! host: fresh tree ─▶ dpkg -i, settings (eth0, stdout), systemctl enable ─▶ initramfs
//!       (busybox, NIC + 9p modules) ─▶ qemu in a netns with a multi-queue tap
//! VM:   /init mounts the tree read-write over 9p ─▶ switch_root /sbin/init (systemd)
//!       ─▶ sipnotify.service ─▶ pkgtest.service waits for "capturing", says "ready"
//! host: NOTIFYs from the namespace ─▶ the guest prints the unit's journal, CapEff, the XDP
//!       program on eth0, `systemctl stop sipnotify`, eth0 again ─▶ poweroff
//! ```
//!
//! One boot per suite; the VM and its namespace go with `Vm`'s `Drop`, also on failure.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    dist::path_str,
    kernels::{self, Console, GUEST_ADDR, MATRIX, SIP_PORT, Vm},
    userland::{self, Suite},
};

/// One whole boot: systemd under TCG on a loaded 2-core machine takes 2–4 minutes to reach
/// `multi-user.target`.
const VM_TIMEOUT: Duration = Duration::from_secs(540);
const MARK: &str = "sipnotify-pkg: ";
const NOTIFYS: usize = 10;
/// The agent's start line naming the capabilities it holds; an agent that logs it also drops
/// them all once attached, keeping at most CAP_BPF (bit 39) where the kernel needs it to read
/// the program's counters, and says so.
const CAPS_LINE: &str = "capabilities at start";
const CAP_BPF_KEPT: &str = "capabilities dropped but one";
const CAP_BPF_ONLY: &str = "0000008000000000";

/// The settings the test installs: capture on the VM's NIC, print each notification (the
/// journal is the bridge stand-in).
const SETTINGS: &str = "iface = \"eth0\"\nport = 5061\nstdout = true\n";

/// Brings eth0 up with the address the host's namespace expects, before the agent starts.
const NET_UNIT: &str = "[Unit]
Description=pkgtest: eth0 for the test
Before=network-online.target sipnotify.service
Wants=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set lo up
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr add 10.201.0.2/24 dev eth0
[Install]
WantedBy=multi-user.target
";

const DRIVER_UNIT: &str = "[Unit]
Description=pkgtest: the guest side of xtask test-packages
After=sipnotify.service
[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/usr/local/sbin/pkgtest
[Install]
WantedBy=multi-user.target
";

/// The guest side: every line for the host starts with [`MARK`].
const DRIVER: &str = r#"#!/bin/sh
say() { echo "sipnotify-pkg: $*"; }
journal() { journalctl -u sipnotify -o cat --no-pager; }
finish() { journal | sed 's/^/sipnotify-pkg: log /'; say done; systemctl poweroff --force; exit 0; }
n=0
until journal | grep -q 'capturing'; do
  n=$((n + 1))
  if [ "$n" -gt 240 ] || ! systemctl -q is-active sipnotify; then
    say "FAIL the agent is not capturing: $(systemctl is-active sipnotify)"; finish
  fi
  sleep 1
done
pid=$(systemctl show -p MainPID --value sipnotify)
say "capeff $(sed -n 's/^CapEff:[[:space:]]*//p' /proc/$pid/status)"
say "xdp-before $(ip -o link show eth0)"
say ready
n=0
until [ "$(journal | grep -c '"call_uuid"')" -ge __NOTIFYS__ ] || [ "$n" -gt 120 ]; do
  n=$((n + 1)); sleep 1
done
systemctl stop sipnotify
say "stopped $(systemctl is-active sipnotify)"
say "xdp-after $(ip -o link show eth0)"
finish
"#;

/// One suite's boot: what it showed.
struct Report {
    suite: &'static str,
    release: String,
    capeff: String,
    delivered: usize,
    elapsed: Duration,
}

/// Boots Debian 11 and 12 with the .deb installed; fails on the first suite that does not
/// show the service capturing, delivering and detaching.
pub(crate) fn run(root: &Path, deb: &Path) -> Result<()> {
    let cache = root.join("target/test-kernels");
    fs::create_dir_all(cache.join("logs"))?;
    kernels::remove_stale_namespaces();
    let busybox = kernels::static_busybox()?;
    let mut reports = Vec::new();
    for (suite, version) in [(&userland::BULLSEYE, "5.10"), (&userland::BOOKWORM, "6.1")] {
        let kernel = MATRIX
            .iter()
            .find(|k| k.version == version)
            .context("no such kernel in the matrix")?;
        let tree = kernels::fetch_kernel(&cache, kernel)?;
        reports.push(
            boot(root, suite, &tree, &cache, &busybox, deb)
                .with_context(|| format!("test-packages: {}", suite.name))?,
        );
    }
    for r in &reports {
        println!(
            "test-packages: {} on Linux {} ({} s): {} NOTIFYs delivered through the journal, \
             CapEff {} after attach, XDP detached on stop",
            r.suite,
            r.release,
            r.elapsed.as_secs(),
            r.delivered,
            r.capeff
        );
    }
    Ok(())
}

/// The suite's tree with the .deb installed and the service enabled, ready to boot.
fn prepare(root: &Path, suite: &Suite, deb: &Path) -> Result<std::path::PathBuf> {
    let tree = userland::fresh_tree(root, suite)?;
    fs::copy(deb, tree.join("tmp/sipnotify.deb"))?;
    userland::in_tree_ok(&tree, &["dpkg", "-i", "/tmp/sipnotify.deb"])?;
    fs::write(tree.join("etc/sipnotify/sipnotify.toml"), SETTINGS)?;
    fs::write(
        tree.join("etc/systemd/system/pkgtest-net.service"),
        NET_UNIT,
    )?;
    fs::write(tree.join("etc/systemd/system/pkgtest.service"), DRIVER_UNIT)?;
    let driver = tree.join("usr/local/sbin/pkgtest");
    fs::create_dir_all(tree.join("usr/local/sbin"))?;
    fs::write(&driver, DRIVER.replace("__NOTIFYS__", &NOTIFYS.to_string()))?;
    fs::set_permissions(&driver, fs::Permissions::from_mode(0o755))?;
    fs::write(tree.join("etc/hostname"), "pkgtest\n")?;
    // The serial console carries the test's lines; no login prompt on it.
    std::os::unix::fs::symlink(
        "/dev/null",
        tree.join("etc/systemd/system/serial-getty@ttyS0.service"),
    )?;
    userland::in_tree_ok(
        &tree,
        &[
            "systemctl",
            "enable",
            "sipnotify.service",
            "pkgtest-net.service",
            "pkgtest.service",
        ],
    )?;
    Ok(tree)
}

/// The VM's /init (after the modules): the tree over 9p, read-write, as the root systemd
/// boots from.
const INIT: &str = r#"mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 pkgroot /newroot || {
  echo "sipnotify-pkg: FAIL cannot mount the tree"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#;

fn boot(
    root: &Path,
    suite: &'static Suite,
    kernel: &kernels::Tree,
    cache: &Path,
    busybox: &Path,
    deb: &Path,
) -> Result<Report> {
    let started = Instant::now();
    let tree = prepare(root, suite, deb)?;
    let dir = cache.join(format!("pkg-{}", suite.name));
    fs::create_dir_all(&dir)?;
    let initrd = kernels::initramfs_with(&dir, kernel, busybox, INIT, &["newroot"])?;
    let log_path = cache.join(format!("logs/packages-{}.log", suite.name));
    let mut vm = Vm::new(9)?;
    let socket = vm.socket()?;
    let virtfs = format!(
        "local,path={},mount_tag=pkgroot,security_model=passthrough,multidevs=remap",
        path_str(&tree)?
    );
    let mut qemu = vm
        .qemu_command(kernel, &initrd, "console=ttyS0 panic=-1 quiet", &virtfs)
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let mut console = Console::new(&mut qemu, log_path.clone(), started + VM_TIMEOUT, MARK)?;
    vm.set_qemu(qemu);

    let release = kernel
        .modules
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut capeff, mut before, mut after, mut stopped) = (None, None, None, None);
    let mut logs = Vec::new();
    while let Some(event) = console.next_event()? {
        let event = event.as_str();
        if let Some(v) = event.strip_prefix("capeff ") {
            capeff = Some(v.to_owned());
        } else if let Some(v) = event.strip_prefix("xdp-before ") {
            before = Some(v.to_owned());
        } else if let Some(v) = event.strip_prefix("xdp-after ") {
            after = Some(v.to_owned());
        } else if let Some(v) = event.strip_prefix("stopped ") {
            stopped = Some(v.to_owned());
        } else if let Some(v) = event.strip_prefix("log ") {
            logs.push(v.to_owned());
        } else if event == "ready" {
            for i in 0..NOTIFYS {
                socket
                    .send_to(kernels::notify(7, i).as_bytes(), (GUEST_ADDR, SIP_PORT))
                    .context("cannot send a NOTIFY")?;
            }
        } else if event == "done" {
            break;
        } else if let Some(failure) = event.strip_prefix("FAIL ") {
            bail!("{failure}; journal: {}", logs.join(" | "));
        }
    }
    drop(vm);
    fs::remove_dir_all(&tree)?;
    let journal = logs.join("\n");
    println!(
        "test-packages: {} journal of sipnotify.service:\n{journal}",
        suite.name
    );
    let delivered = (0..NOTIFYS)
        .filter(|&i| journal.contains(&format!("KT7UUID{i:024}")))
        .count();
    ensure!(
        delivered == NOTIFYS,
        "{delivered} of {NOTIFYS} NOTIFYs delivered; see {}",
        log_path.display()
    );
    let before = before.context("the guest did not show eth0 before stop")?;
    ensure!(before.contains("xdp"), "no XDP program on eth0: {before}");
    ensure!(
        stopped.as_deref() == Some("inactive"),
        "after systemctl stop the unit is {stopped:?}"
    );
    let after = after.context("the guest did not show eth0 after stop")?;
    ensure!(
        !after.contains("xdp"),
        "XDP left on eth0 after stop: {after}"
    );
    let capeff = capeff.context("the guest did not report CapEff")?;
    let caps = logs.iter().find(|l| l.contains(CAPS_LINE));
    match caps {
        Some(line) => {
            println!("test-packages: {}: {line}", suite.name);
            let zero = capeff.trim_start_matches('0').is_empty();
            let bpf_kept = capeff == CAP_BPF_ONLY && journal.contains(CAP_BPF_KEPT);
            ensure!(zero || bpf_kept, "CapEff {capeff} after attach, not 0");
        }
        // An agent from before the capability drop: CapEff is reported, not required.
        None => println!(
            "test-packages: {}: this agent logs no capabilities line and drops nothing",
            suite.name
        ),
    }
    Ok(Report {
        suite: suite.name,
        release,
        capeff,
        delivered,
        elapsed: started.elapsed(),
    })
}
