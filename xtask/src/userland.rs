//! The `cargo xtask dist` artefacts on the userlands they are made for (part of `cargo xtask
//! test`):
//! - Debian 11 (bullseye, glibc 2.31): the .tar.gz unpacked into a minimal root filesystem;
//!   its binary runs `--version`, `doctor` and a `replay` of a corpus capture, and the shipped
//!   example configuration passes `run --check-config`; `systemd-analyze verify` accepts the
//!   unit with the CAP_SYS_ADMIN drop-in that `sipnotify-unit-caps` writes for systemd < 246
//!   or kernels without CAP_BPF, and bullseye's own systemd 247 gets none.
//! - Debian 12 (bookworm): the .deb installs with `dpkg -i`; every file the unit names is
//!   there; `systemd-analyze verify` accepts the unit and `systemd-analyze security` rates it;
//!   against a recording `systemctl`, the maintainer scripts enable and start nothing on
//!   install, restart on upgrade and stop on removal, and purge removes the configuration.
//! - The .rpm: metadata, config flags and file list read with `rpm -qp`, and its scriptlets run
//!   in the bookworm tree against the same recording `systemctl`. No RHEL userland can be had
//!   here (only Debian's archive is reachable), so the .rpm is read, not installed.
//!
//! No init runs in these trees: each command runs through `chroot` in a private mount
//! namespace (`unshare --mount`), so the /proc, /sys and /dev mounted for it disappear with
//! the process, also when a check fails. The trees come from `debootstrap --variant=minbase`
//! once and are kept as tarballs in `target/userland/`; every run unpacks a fresh copy.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    dist::{Dist, path_str, program_version},
    run_in, setup,
};

/// A Debian release as a minimal root filesystem, with the packages its checks need.
pub(crate) struct Suite {
    pub(crate) name: &'static str,
    include: &'static [&'static str],
}

/// `doctor` asks `ip -j link` about the interfaces; `systemd-analyze` (with man-db, as on
/// bookworm) verifies the unit and its drop-in; systemd-sysv makes the tree boot for
/// `test-packages`.
pub(crate) const BULLSEYE: Suite = Suite {
    name: "bullseye",
    include: &["iproute2", "systemd", "systemd-sysv", "man-db"],
};
/// `systemd-analyze` and `deb-systemd-helper` come with systemd; with man-db, `verify`
/// also opens the unit's `man:` documentation; systemd-sysv and iproute2 make the tree boot
/// for `test-packages`.
pub(crate) const BOOKWORM: Suite = Suite {
    name: "bookworm",
    include: &["systemd", "man-db", "systemd-sysv", "iproute2"],
};

/// The corpus capture replayed on bullseye, and the one notification it must yield (SIP
/// Server sends it ten times; the copies are de-duplicated).
const CAPTURE: &str = "genesys_notify_talk_retrans_SYNTHETIC.pcap";
const EXPECTED: [(&str, &str); 4] = [
    ("dn", "1002"),
    (
        "call_id",
        "640476ED-F320-46F0-975D-6290F4CB29F6-6@192.168.210.81",
    ),
    ("call_uuid", "TTL7J9EM750GP936CFL0EOACN8000002"),
    ("event", "talk"),
];

/// The worst `systemd-analyze security` exposure accepted for the unit (0 best, 10 worst):
/// the score it has now (systemd 252), so that a change that weakens the sandbox fails here.
/// What remains is what capture needs: the host's network, CAP_BPF, CAP_NET_ADMIN,
/// CAP_NET_RAW, AF_PACKET and netlink sockets, `bpf` and `perf_event_open`.
const MAX_EXPOSURE: f64 = 2.2;

/// Runs every userland check; returns how many passed (it stops at the first failure).
pub(crate) fn check(root: &Path, dist: &Dist) -> Result<u64> {
    let started = Instant::now();
    let version = program_version(&dist.deb)?;
    let version = version.as_str();
    let mut checks = Checks(0);
    bullseye(root, dist, version, &mut checks)?;
    bookworm(root, dist, &mut checks)?;
    rpm(dist, version, &mut checks)?;
    println!(
        "userland: {} checks passed in {:.0?}",
        checks.0,
        started.elapsed()
    );
    Ok(checks.0)
}

struct Checks(u64);

impl Checks {
    fn run(&mut self, name: &str, check: impl FnOnce() -> Result<()>) -> Result<()> {
        check().with_context(|| format!("userland check `{name}` failed"))?;
        println!("userland: ok {name}");
        self.0 += 1;
        Ok(())
    }
}

fn bullseye(root: &Path, dist: &Dist, version: &str, checks: &mut Checks) -> Result<()> {
    let tree = fresh_tree(root, &BULLSEYE)?;
    run_in(
        root,
        "tar",
        // As the README says to: the tree is merged-/usr, and the tarball's `lib/` must not
        // replace its `/lib -> usr/lib` link.
        &[
            "--keep-directory-symlink",
            "-xzf",
            path_str(&dist.tarball)?,
            "-C",
            path_str(&tree)?,
        ],
    )?;
    let glibc = in_tree_ok(&tree, &["ldd", "--version"])?;
    println!(
        "userland: bullseye: {}",
        glibc.lines().next().unwrap_or_default()
    );
    fs::write(tree.join("tmp/empty.toml"), "")?;
    let capture = root.join("../shared/corpus/pcaps").join(CAPTURE);
    fs::copy(&capture, tree.join("tmp").join(CAPTURE)).with_context(|| {
        format!(
            "cannot copy {}: the shared/ folder must sit beside the repository clone",
            capture.display()
        )
    })?;

    checks.run("bullseye: sipnotify-agent --version", || {
        let out = in_tree_ok(&tree, &["sipnotify-agent", "--version"])?;
        ensure!(
            out.trim() == format!("sipnotify-agent {version}"),
            "printed `{}`",
            out.trim()
        );
        Ok(())
    })?;
    checks.run("bullseye: sipnotify-agent doctor", || {
        let out = in_tree(
            &tree,
            &[
                "sipnotify-agent",
                "--config",
                "/tmp/empty.toml",
                "doctor",
                "--iface",
                "lo",
                "--no-bridge",
            ],
        )?;
        let report = String::from_utf8_lossy(&out.stdout);
        print!("{report}");
        ensure!(
            out.status.success() && !report.contains("FAIL"),
            "doctor failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        for row in ["ebpf object", "program load", "iface lo"] {
            ensure!(
                doctor_status(&report, row) == Some("OK"),
                "the `{row}` row is not OK"
            );
        }
        Ok(())
    })?;
    checks.run("bullseye: sipnotify-agent replay", || {
        let capture = format!("/tmp/{CAPTURE}");
        let out = in_tree_ok(
            &tree,
            &[
                "sipnotify-agent",
                "--config",
                "/tmp/empty.toml",
                "replay",
                &capture,
                "--stdout",
                "--no-bridge",
            ],
        )?;
        let objects: Vec<Value> = out
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("stdout is not JSON lines: {out}"))?;
        let [object] = objects.as_slice() else {
            bail!("expected one notification, got {}: {out}", objects.len());
        };
        for (key, value) in EXPECTED {
            ensure!(object[key] == value, "`{key}` is not `{value}` in {object}");
        }
        Ok(())
    })?;
    checks.run("bullseye: the shipped configuration is valid", || {
        in_tree_ok(
            &tree,
            &[
                "sipnotify-agent",
                "--config",
                "/etc/sipnotify/sipnotify.toml",
                "run",
                "--check-config",
            ],
        )
        .map(drop)
    })?;
    checks.run(
        "bullseye: systemd-analyze verify, with the CAP_SYS_ADMIN drop-in",
        || unit_caps_in_tree(&tree),
    )?;
    fs::remove_dir_all(&tree)?;
    Ok(())
}

/// Where the .deb puts the generator (`packaging/sipnotify-unit-caps`).
const UNIT_CAPS: &str = "/lib/systemd/system-generators/sipnotify-unit-caps";
const UNIT_CAPS_DROPIN: &str = "sipnotify.service.d/50-cap-sys-admin.conf";

/// The generator as systemd 245 on a 5.4 kernel (Ubuntu 20.04) would run it, writing into
/// /etc/systemd/system so that `systemd-analyze verify` reads the drop-in; then as bullseye's
/// own systemd (247) on this kernel would, which must add nothing if the kernel has CAP_BPF.
fn unit_caps_in_tree(tree: &Path) -> Result<()> {
    let dir = "/etc/systemd/system";
    let faked = [
        "env",
        "SIPNOTIFY_SYSTEMD_VERSION=245",
        "SIPNOTIFY_CAP_LAST_CAP=37",
        UNIT_CAPS,
        dir,
        dir,
        dir,
    ];
    in_tree_ok(tree, &faked)?;
    let dropin = inside(tree, dir).join(UNIT_CAPS_DROPIN);
    let text = fs::read_to_string(&dropin).context("the generator wrote no drop-in")?;
    ensure!(
        text.contains("AmbientCapabilities=CAP_SYS_ADMIN"),
        "drop-in: {text}"
    );
    analyze_verify(tree)?;
    fs::remove_file(&dropin)?;
    let last_cap: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()?;
    in_tree_ok(tree, &[UNIT_CAPS, dir, dir, dir])?;
    ensure!(
        dropin.exists() == (last_cap < 39),
        "systemd 247 on a kernel with cap_last_cap {last_cap}: drop-in written: {}",
        dropin.exists()
    );
    Ok(())
}

/// `systemd-analyze verify sipnotify.service` in the tree succeeds and says nothing.
fn analyze_verify(tree: &Path) -> Result<()> {
    let out = in_tree(tree, &["systemd-analyze", "verify", "sipnotify.service"])?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "{}: {said}",
        out.status
    );
    Ok(())
}

fn bookworm(root: &Path, dist: &Dist, checks: &mut Checks) -> Result<()> {
    let tree = fresh_tree(root, &BOOKWORM)?;
    fs::copy(&dist.deb, tree.join("tmp/sipnotify.deb"))?;
    let install = ["dpkg", "-i", "/tmp/sipnotify.deb"];
    let unit_source = fs::read_to_string(root.join("packaging/sipnotify.service"))?;

    checks.run(
        "bookworm: dpkg -i puts every file where the unit expects it",
        || {
            in_tree_ok(&tree, &install)?;
            let listed = in_tree_ok(&tree, &["dpkg", "-L", "sipnotify"])?;
            let unit = listed
                .lines()
                .find(|l| l.ends_with("/systemd/system/sipnotify.service"))
                .context("the package installs no sipnotify.service")?;
            let installed = fs::read_to_string(inside(&tree, unit))?;
            ensure!(installed == unit_source, "{unit} differs from packaging/");
            for path in unit_paths(&installed) {
                let file = inside(&tree, &path);
                let meta = fs::metadata(&file).with_context(|| format!("the unit names {path}"))?;
                if path.contains("/bin/") {
                    ensure!(
                        meta.permissions().mode() & 0o111 != 0,
                        "{path} is not executable"
                    );
                }
            }
            let wants = tree.join("etc/systemd/system/multi-user.target.wants/sipnotify.service");
            ensure!(!wants.exists(), "installing enabled the service");
            Ok(())
        },
    )?;
    checks.run(
        "bookworm: dpkg -i installs monitoring/ under /usr/share/sipnotify/monitoring/",
        || {
            for file in ["alerts.yaml", "dashboard.json"] {
                let installed = tree.join("usr/share/sipnotify/monitoring").join(file);
                let installed = fs::read(&installed)
                    .with_context(|| format!("the package installs no {}", installed.display()))?;
                ensure!(
                    installed == fs::read(root.join("monitoring").join(file))?,
                    "{file} differs from monitoring/"
                );
            }
            Ok(())
        },
    )?;
    checks.run("bookworm: systemd-analyze verify", || analyze_verify(&tree))?;
    checks.run("bookworm: systemd-analyze security", || {
        let out = in_tree_ok(
            &tree,
            &[
                "systemd-analyze",
                "security",
                "--offline=true",
                "sipnotify.service",
            ],
        )?;
        let report = root.join("target/userland/security.txt");
        fs::write(&report, &out)?;
        let verdict = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .context("no overall exposure level in the report")?;
        println!("userland: {} (table: {})", verdict.trim(), report.display());
        let score = exposure(verdict).context("unparsable exposure level")?;
        ensure!(
            score <= MAX_EXPOSURE,
            "exposure {score} is worse than {MAX_EXPOSURE}: see {}",
            report.display()
        );
        Ok(())
    })?;

    // From here on systemd "runs": the scripts see /run/systemd/system and call a systemctl
    // that records what it is asked.
    record_systemctl(&tree)?;
    checks.run("bookworm: upgrading restarts the service", || {
        let calls = systemctl_calls(&tree, &install)?;
        expect_calls(
            &calls,
            &["try-restart sipnotify.service"],
            &["enable", "start"],
        )
    })?;
    checks.run(
        "bookworm: removing stops the service and keeps the configuration",
        || {
            let calls = systemctl_calls(&tree, &["dpkg", "-r", "sipnotify"])?;
            expect_calls(&calls, &["stop sipnotify.service"], &["enable", "start"])?;
            ensure!(
                !tree.join("usr/bin/sipnotify-agent").exists(),
                "the binary is left"
            );
            ensure!(
                tree.join("etc/sipnotify/sipnotify.toml").exists(),
                "the configuration is gone"
            );
            in_tree_ok(&tree, &["dpkg", "-P", "sipnotify"])?;
            ensure!(
                !tree.join("etc/sipnotify/sipnotify.toml").exists(),
                "purge left the configuration"
            );
            Ok(())
        },
    )?;
    checks.run("bookworm: installing enables and starts nothing", || {
        let calls = systemctl_calls(&tree, &install)?;
        let forbidden = ["enable", "start", "restart", "try-restart"];
        expect_calls(&calls, &["daemon-reload"], &forbidden)?;
        let wants = tree.join("etc/systemd/system/multi-user.target.wants/sipnotify.service");
        ensure!(!wants.exists(), "installing enabled the service");
        Ok(())
    })?;

    // The .rpm's scriptlets, in the same tree: (tag, $1, expected calls, forbidden words).
    type Scriptlet<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str]);
    let scriptlets: [Scriptlet<'_>; 4] = [
        (
            "POSTIN",
            "1",
            &["daemon-reload"],
            &["enable", "start", "restart"],
        ),
        (
            "POSTUN",
            "1",
            &["try-restart sipnotify.service"],
            &["enable", "start"],
        ),
        (
            "PREUN",
            "0",
            &["disable --now sipnotify.service"],
            &["enable", "start"],
        ),
        ("PREUN", "1", &[], &["disable", "stop"]),
    ];
    for (tag, arg, expected, forbidden) in scriptlets {
        checks.run(&format!("rpm: %{tag} with $1 = {arg}"), || {
            let script = setup::output(
                "rpm",
                &["-qp", "--qf", &format!("%{{{tag}}}"), path_str(&dist.rpm)?],
            )?;
            fs::write(tree.join("tmp/scriptlet"), script)?;
            let calls = systemctl_calls(&tree, &["sh", "-e", "/tmp/scriptlet", arg])?;
            expect_calls(&calls, expected, forbidden)
        })?;
    }
    fs::remove_dir_all(&tree)?;
    Ok(())
}

fn rpm(dist: &Dist, version: &str, checks: &mut Checks) -> Result<()> {
    let rpm = path_str(&dist.rpm)?;
    checks.run("rpm: metadata", || {
        println!("{}", setup::output("rpm", &["-qip", rpm])?.trim_end());
        let fields = setup::output(
            "rpm",
            &["-qp", "--qf", "%{NAME}|%{VERSION}|%{LICENSE}", rpm],
        )?;
        ensure!(
            fields == format!("sipnotify|{version}|MIT OR Apache-2.0"),
            "name|version|licence is `{fields}`"
        );
        let requires = setup::output("rpm", &["-qpR", rpm])?;
        ensure!(
            requires.contains("libc.so.6()(64bit)"),
            "requires: {requires}"
        );
        Ok(())
    })?;
    checks.run("rpm: the configuration is %config(noreplace)", || {
        let flags = setup::output(
            "rpm",
            &["-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm],
        )?;
        let config: Vec<&str> = flags.lines().filter(|l| l.starts_with('c')).collect();
        ensure!(
            config == ["cn /etc/sipnotify/sipnotify.toml"],
            "config files: {config:?}"
        );
        Ok(())
    })?;
    checks.run("rpm: rpm -qlp lists the .deb's files", || {
        let listed = setup::output("rpm", &["-qlp", rpm])?;
        print!("{listed}");
        let rpm_files: BTreeSet<String> = listed.lines().map(usr_merged).collect();
        let deb_files: BTreeSet<String> = setup::output("dpkg-deb", &["-c", path_str(&dist.deb)?])?
            .lines()
            .filter(|l| l.starts_with('-'))
            .filter_map(|l| l.split_whitespace().last())
            .map(|p| usr_merged(p.trim_start_matches('.')))
            // cargo-deb writes Debian's copyright summary; the .rpm carries the licence texts.
            .filter(|p| p != "/usr/share/doc/sipnotify/copyright")
            .collect();
        ensure!(
            rpm_files == deb_files,
            "only in the .rpm: {:?}; only in the .deb: {:?}",
            rpm_files.difference(&deb_files).collect::<Vec<_>>(),
            deb_files.difference(&rpm_files).collect::<Vec<_>>()
        );
        Ok(())
    })?;
    Ok(())
}

/// `/lib/…` and `/usr/lib/…` are one directory on merged-/usr systems (Debian 12, RHEL 8+).
fn usr_merged(path: &str) -> String {
    match path.strip_prefix("/lib/") {
        Some(rest) => format!("/usr/lib/{rest}"),
        None => path.to_owned(),
    }
}

/// A fresh copy of `suite`'s root filesystem under `target/userland/`, from the cached tarball
/// (made by debootstrap the first time).
pub(crate) fn fresh_tree(root: &Path, suite: &Suite) -> Result<PathBuf> {
    let dir = root.join("target/userland");
    fs::create_dir_all(&dir)?;
    let tarball = dir.join(format!(
        "{}-minbase-{}.tar",
        suite.name,
        suite.include.join("-")
    ));
    if !tarball.exists() {
        let started = Instant::now();
        let build = dir.join(format!("{}.debootstrap", suite.name));
        remove_tree(&build)?;
        let include = format!("--include={}", suite.include.join(","));
        run_in(
            root,
            "debootstrap",
            &["--variant=minbase", &include, suite.name, path_str(&build)?],
        )?;
        // Written aside and renamed, so an interrupted run never leaves half a tarball.
        let partial = tarball.with_extension("partial");
        run_in(
            root,
            "tar",
            &["-cf", path_str(&partial)?, "-C", path_str(&build)?, "."],
        )?;
        fs::rename(&partial, &tarball)?;
        remove_tree(&build)?;
        println!(
            "userland: debootstrap {} took {:.0?}",
            suite.name,
            started.elapsed()
        );
    }
    let tree = dir.join(suite.name);
    remove_tree(&tree)?;
    fs::create_dir_all(&tree)?;
    run_in(
        root,
        "tar",
        &["-xf", path_str(&tarball)?, "-C", path_str(&tree)?],
    )?;
    Ok(tree)
}

fn remove_tree(tree: &Path) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    Ok(())
}

/// Mounts /proc, /sys and /dev into the tree and runs the command there; `unshare --mount`
/// gives it its own mount table, which dies with it.
const IN_TREE: &str = r#"set -e
tree=$1; shift
mount -t proc proc "$tree/proc"
mount --rbind /sys "$tree/sys"
mount --rbind /dev "$tree/dev"
exec chroot "$tree" "$@""#;

fn in_tree(tree: &Path, args: &[&str]) -> Result<Output> {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            IN_TREE,
            "sh",
        ])
        .arg(tree)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("SYSTEMD_COLORS", "0")
        .output()
        .with_context(|| format!("cannot run {} in {}", args.join(" "), tree.display()))
}

/// Runs the command in the tree; its stdout, or an error with its stderr.
pub(crate) fn in_tree_ok(tree: &Path, args: &[&str]) -> Result<String> {
    let out = in_tree(tree, args)?;
    if !out.status.success() {
        bail!(
            "`{}` failed with {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn inside(tree: &Path, path: &str) -> PathBuf {
    tree.join(path.trim_start_matches('/'))
}

/// The absolute paths a unit needs: the programs of `Exec*=`, their `--config` files,
/// `EnvironmentFile=`s not marked optional (`-`) and `file://` documentation.
fn unit_paths(unit: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in unit.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.starts_with("Exec") {
            let mut words = value
                .trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace();
            paths.extend(words.next().map(str::to_owned));
            while let Some(word) = words.next() {
                if word == "--config" {
                    paths.extend(words.next().map(str::to_owned));
                }
            }
        } else if key == "EnvironmentFile" && !value.starts_with('-') {
            paths.push(value.to_owned());
        } else if key == "Documentation" {
            paths.extend(
                value
                    .split_whitespace()
                    .filter_map(|d| d.strip_prefix("file://"))
                    .map(str::to_owned),
            );
        }
    }
    paths
}

/// The STATUS column of `doctor`'s row `name`.
fn doctor_status<'a>(report: &'a str, name: &str) -> Option<&'a str> {
    report
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|rest| rest.split_whitespace().next())
        .find(|status| ["OK", "WARN", "FAIL"].contains(status))
}

/// `→ Overall exposure level for sipnotify.service: 2.1 OK 🙂` → 2.1
fn exposure(verdict: &str) -> Option<f64> {
    verdict
        .rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Replaces the tree's systemctl with one that records its arguments (and answers that the
/// unit is neither enabled nor active), and makes the tree look booted with systemd.
fn record_systemctl(tree: &Path) -> Result<()> {
    fs::create_dir_all(tree.join("run/systemd/system"))?;
    let systemctl = tree.join("usr/bin/systemctl");
    fs::write(
        &systemctl,
        "#!/bin/sh\necho \"$*\" >> /tmp/systemctl.log\n\
         case \" $* \" in *' is-enabled '*) echo disabled; exit 1;; *' is-active '*) exit 3;; esac\n",
    )?;
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Runs the command in the tree and returns the systemctl calls it made.
fn systemctl_calls(tree: &Path, args: &[&str]) -> Result<Vec<String>> {
    let log = tree.join("tmp/systemctl.log");
    fs::write(&log, "")?;
    in_tree_ok(tree, args)?;
    Ok(fs::read_to_string(&log)?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Each expected call is among `calls`, and no call has a forbidden word.
fn expect_calls(calls: &[String], expected: &[&str], forbidden: &[&str]) -> Result<()> {
    for want in expected {
        ensure!(
            calls.iter().any(|c| c.contains(want)),
            "no `systemctl … {want}` among {calls:?}"
        );
    }
    for call in calls {
        if let Some(word) = call.split_whitespace().find(|w| forbidden.contains(w)) {
            bail!("unexpected `systemctl {call}` ({word})");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's decision on the distributions the README names, from their systemd
    /// version and their kernel's /proc/sys/kernel/cap_last_cap (CAP_BPF is 39, from 5.8).
    #[test]
    fn unit_caps_adds_cap_sys_admin_only_where_cap_bpf_is_missing() -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sipnotify-unit-caps");
        let cases = [
            ("RHEL 8: systemd 239, 4.18", "239", "37", true),
            ("Ubuntu 20.04: systemd 245, 5.4", "245", "37", true),
            ("Debian 11: systemd 247, 5.10", "247", "40", false),
            ("Ubuntu 22.04: systemd 249, 5.15", "249", "40", false),
            ("RHEL 9: systemd 252, 5.14", "252", "40", false),
            ("Ubuntu 20.04 HWE: systemd 245, 5.15", "245", "40", true),
            ("systemd 252 on 5.4", "252", "37", true),
            ("an unreadable systemd version", "unknown", "40", true),
        ];
        for (name, version, last_cap, wanted) in cases {
            let dir = std::env::temp_dir().join(format!(
                "sipnotify-unit-caps-{}-{version}-{last_cap}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            let out = Command::new("sh")
                .arg(&script)
                .args([&dir, &dir, &dir])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("SIPNOTIFY_SYSTEMD_VERSION", version)
                .env("SIPNOTIFY_CAP_LAST_CAP", last_cap)
                .output()?;
            let dropin = fs::read_to_string(dir.join(UNIT_CAPS_DROPIN)).ok();
            let _ = fs::remove_dir_all(&dir);
            ensure!(out.status.success(), "{name}: {out:?}");
            match dropin {
                Some(text) => {
                    ensure!(wanted, "{name}: unexpected drop-in:\n{text}");
                    for line in [
                        "[Service]",
                        "AmbientCapabilities=CAP_SYS_ADMIN",
                        "CapabilityBoundingSet=CAP_SYS_ADMIN",
                    ] {
                        ensure!(
                            text.lines().any(|l| l == line),
                            "{name}: no `{line}` in:\n{text}"
                        );
                    }
                }
                None => ensure!(!wanted, "{name}: no drop-in written"),
            }
        }
        Ok(())
    }

    #[test]
    fn the_unit_names_its_program_config_and_docs() {
        let unit = "[Unit]\nDocumentation=man:x(8) file:///usr/share/doc/x/README.md\n\
                    [Service]\nExecStart=/usr/bin/x --config /etc/x/x.toml run\n\
                    ExecStartPre=-/usr/bin/y\nEnvironmentFile=-/etc/x/x.env\n\
                    EnvironmentFile=/etc/x/must.env\n";
        assert_eq!(
            unit_paths(unit),
            [
                "/usr/share/doc/x/README.md",
                "/usr/bin/x",
                "/etc/x/x.toml",
                "/usr/bin/y",
                "/etc/x/must.env"
            ]
        );
    }

    #[test]
    fn doctor_rows_and_exposure_are_read() {
        let report =
            "CHECK        STATUS  DETAIL\nebpf object  OK      1 KiB\niface lo     FAIL    gone\n";
        assert_eq!(doctor_status(report, "ebpf object"), Some("OK"));
        assert_eq!(doctor_status(report, "iface lo"), Some("FAIL"));
        assert_eq!(doctor_status(report, "iface"), None);
        let verdict = "→ Overall exposure level for sipnotify.service: 2.1 OK 🙂";
        assert_eq!(exposure(verdict), Some(2.1));
    }

    #[test]
    fn calls_are_checked_word_by_word() {
        let calls = vec![
            "--system daemon-reload".to_owned(),
            "try-restart a.service".to_owned(),
        ];
        assert!(expect_calls(&calls, &["try-restart a.service"], &["start", "enable"]).is_ok());
        assert!(expect_calls(&calls, &["stop a.service"], &[]).is_err());
        assert!(expect_calls(&calls, &[], &["try-restart"]).is_err());
    }
}
