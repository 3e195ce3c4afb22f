//! `cargo xtask test-kernels [5.10 6.1 6.12 7]`: the real agent on stock Debian kernels, each
//! booted in QEMU with a multi-queue virtio-net NIC, proving the support matrix (issue 8).
//!
//! ```text
//! host: apt-get download (private apt config) ─▶ dpkg-deb -x ─▶ initramfs (static busybox
//!       + that kernel's virtio/9p modules) ─▶ netns + multi-queue tap ─▶ qemu (TCG, 2 vCPUs)
//! VM /init: modules, host root over 9p (read-only), eth0 ─▶ chroot: `xtask test-kernels
//!       --guest AGENT` ─▶ doctor ─▶ per capture mode: agent + UDP sockets + a TCP
//!       listener ─▶ "ready"
//! host: on "ready", NOTIFYs (one in ten large enough to leave as IP fragments) mixed with
//!       other UDP from the namespace to the VM, then NOTIFYs over TCP written in pieces
//!       ─▶ "result"
//! ```
//!
//! Modelled on aya's `cargo xtask integration-test vm`: the host and the guest are the same
//! binary (this one), so the traffic the host sends and what the guest expects are one list.
//! The guest talks to the host through its serial console, one `sipnotify-guest:` line per
//! event. Downloads and unpacked kernels are cached under `target/test-kernels/`; the
//! initramfs is rebuilt each run (a second). VMs, taps and namespaces are removed by `Drop`,
//! and namespaces a killed run left behind are removed at the next start.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// One kernel of the matrix: the Debian suite that ships it and the copy path its probe
/// must choose.
pub(crate) struct Kernel {
    pub(crate) version: &'static str,
    suite: &'static str,
    copy: &'static str,
}

pub(crate) const MATRIX: &[Kernel] = &[
    Kernel {
        version: "5.10",
        suite: "bullseye",
        copy: "linear copy",
    },
    Kernel {
        version: "6.1",
        suite: "bookworm",
        copy: "bpf_xdp_load_bytes",
    },
    Kernel {
        version: "6.12",
        suite: "trixie",
        copy: "bpf_xdp_load_bytes",
    },
    Kernel {
        version: "7",
        suite: "sid",
        copy: "bpf_xdp_load_bytes",
    },
];

/// The capture modes the agent runs in, in one boot, one after the other: a name and the
/// `run` flags that select it.
const CAPTURE_MODES: &[(&str, &[&str])] = &[
    ("xdp native", &["--capture", "xdp", "--xdp-mode", "native"]),
    (
        "xdp generic",
        &["--capture", "xdp", "--xdp-mode", "generic"],
    ),
    ("af-packet", &["--capture", "af-packet"]),
];

const HOST_ADDR: &str = "10.201.0.1";
pub(crate) const GUEST_ADDR: &str = "10.201.0.2";
pub(crate) const SIP_PORT: u16 = 5061;
const OTHER_PORT: u16 = 40000;
const NOTIFYS: usize = 100;
const OTHERS: usize = 100;
/// NOTIFYs sent over the TCP connection, after the UDP traffic.
const TCP_NOTIFYS: usize = 20;
/// Call-ID numbers of the TCP NOTIFYs start here, apart from the UDP ones.
const TCP_FIRST: usize = 2000;
/// How long the guest waits for the traffic and the agent's output after saying "ready".
const GUEST_WAIT: Duration = Duration::from_secs(60);
/// One VM's whole run: boot, doctor, every mode (TCG is slow; a boot alone takes 10–20 s).
const VM_TIMEOUT: Duration = Duration::from_secs(360);
const MARK: &str = "sipnotify-guest: ";
const NETNS_PREFIX: &str = "snkt-";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Modules the VM needs (with their dependencies): the NIC, and 9p for the host's root.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "9pnet_virtio", "9p"];

/// `test-kernels` flags.
#[derive(clap::Args, Default)]
pub(crate) struct Args {
    /// Kernels to boot: 5.10, 6.1, 6.12 and 7 (Debian bullseye, bookworm, trixie, sid), or
    /// suite names; all of them when none is given.
    kernels: Vec<String>,
    /// How many VMs run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Inside a VM: run the guest side with this agent binary (the VM's /init passes it).
    #[arg(long, hide = true, value_name = "AGENT")]
    guest: Option<PathBuf>,
}

impl Args {
    /// The agent binary when this process is the guest side inside a VM.
    pub(crate) fn guest_agent(&self) -> Option<&Path> {
        self.guest.as_deref()
    }
}

/// What one VM proved.
struct Report {
    version: &'static str,
    release: String,
    copy: String,
    doctor: String,
    modes: Vec<String>,
    elapsed: Duration,
}

/// Host side: boots every requested kernel and checks what its guest (running `agent`) reports.
pub(crate) fn run(root: &Path, agent: &Path, args: &Args) -> Result<()> {
    let kernels = select(&args.kernels)?;
    let host = Host::prepare(root, agent)?;
    let cache = &host.cache;
    let started = Instant::now();

    // Downloads and unpacking are I/O; do them all before the CPU-bound boots.
    let mut trees = Vec::new();
    for kernel in &kernels {
        trees.push(fetch_kernel(cache, kernel)?);
    }
    let jobs = args.jobs.max(1);
    let results: Vec<(usize, Result<Report>)> = thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        let mut pending = kernels.iter().zip(&trees).enumerate();
        let mut running = 0;
        let mut results = Vec::new();
        loop {
            while running < jobs {
                let Some((i, (kernel, tree))) = pending.next() else {
                    break;
                };
                let tx = tx.clone();
                let host = &host;
                scope.spawn(move || {
                    let result = boot(i, kernel, tree, host);
                    let _ = tx.send((i, result));
                });
                running += 1;
            }
            if running == 0 {
                break;
            }
            if let Ok(result) = rx.recv() {
                running -= 1;
                results.push(result);
            }
        }
        results
    });

    let mut failed = Vec::new();
    let mut sorted = results;
    sorted.sort_by_key(|(i, _)| *i);
    println!("kernel matrix ({} s in all):", started.elapsed().as_secs());
    for (i, result) in sorted {
        let kernel = &kernels[i];
        match result {
            Ok(report) => {
                println!(
                    "  {} ({}, {} s): {}; doctor: {}",
                    report.version,
                    report.release,
                    report.elapsed.as_secs(),
                    report.copy,
                    report.doctor
                );
                for mode in &report.modes {
                    println!("      {mode}");
                }
            }
            Err(err) => {
                println!("  {} ({}): FAILED: {err:#}", kernel.version, kernel.suite);
                failed.push(kernel.version);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the kernel matrix failed on {} (logs in {})",
            failed.join(", "),
            cache.join("logs").display()
        );
    }
    Ok(())
}

/// What every matrix boot needs from the host: the kernel cache, the initramfs's busybox, and
/// the two binaries the guest runs from the host's root (this xtask and the agent).
pub(crate) struct Host {
    pub(crate) cache: PathBuf,
    busybox: PathBuf,
    xtask: PathBuf,
    agent: PathBuf,
}

impl Host {
    /// Checks the agent and busybox, makes the cache, removes namespaces a killed run left.
    pub(crate) fn prepare(root: &Path, agent: &Path) -> Result<Self> {
        ensure!(
            agent.is_file(),
            "{} is missing (cargo xtask build)",
            agent.display()
        );
        let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
        let cache = root.join("target/test-kernels");
        fs::create_dir_all(cache.join("logs"))?;
        remove_stale_namespaces();
        Ok(Self {
            cache,
            busybox: static_busybox()?,
            xtask,
            agent: agent.to_path_buf(),
        })
    }

    /// Boots `kernel` in VM slot `slot` with the host's root over 9p, its /init running
    /// `xtask TASK --guest AGENT` (plus `params` as `sipnotify.KEY=VALUE` on the kernel command
    /// line), the console logged to `logs/LOG.log`; the VM must be done by `timeout`.
    pub(crate) fn boot(
        &self,
        slot: usize,
        kernel: &Kernel,
        tree: &Tree,
        guest: &GuestRun<'_>,
    ) -> Result<(Vm, Console)> {
        let started = Instant::now();
        let initrd = initramfs(&self.cache.join(kernel.suite), tree, &self.busybox)?;
        let log_path = self.cache.join(format!("logs/{}.log", guest.log));
        let mut vm = Vm::new(slot)?;
        let mut append = format!(
            "console=ttyS0 panic=-1 quiet sipnotify.xtask={} sipnotify.agent={} sipnotify.task={}",
            self.xtask.display(),
            self.agent.display(),
            guest.task
        );
        for (key, value) in guest.params {
            append.push_str(&format!(" sipnotify.{key}={value}"));
        }
        let mut qemu = vm
            .qemu_command(
                tree,
                &initrd,
                &append,
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            )
            .spawn()
            .context("cannot start qemu-system-x86_64")?;
        let console = Console::new(&mut qemu, log_path, started + guest.timeout, guest.mark)?;
        vm.set_qemu(qemu);
        Ok((vm, console))
    }
}

/// What a matrix VM's guest runs and how the host follows it (see [`Host::boot`]).
pub(crate) struct GuestRun<'a> {
    /// The hidden xtask subcommand the guest runs with `--guest AGENT`.
    pub(crate) task: &'a str,
    /// `sipnotify.KEY=VALUE` settings for the guest ([`cmdline_param`] reads them).
    pub(crate) params: &'a [(&'a str, String)],
    /// The console log's name under `target/test-kernels/logs/`.
    pub(crate) log: String,
    /// The whole boot's time limit.
    pub(crate) timeout: Duration,
    /// The prefix of the guest's lines for the host.
    pub(crate) mark: &'static str,
}

/// In the guest: the value of `sipnotify.KEY=VALUE` on the kernel command line.
pub(crate) fn cmdline_param(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    let prefix = format!("sipnotify.{key}=");
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(&prefix))
        .map(str::to_owned)
}

pub(crate) fn select(names: &[String]) -> Result<Vec<&'static Kernel>> {
    if names.is_empty() {
        return Ok(MATRIX.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            MATRIX
                .iter()
                .find(|k| k.version == name || k.suite == name)
                .with_context(|| {
                    let known: Vec<_> = MATRIX.iter().map(|k| k.version).collect();
                    format!("unknown kernel `{name}`; known: {}", known.join(", "))
                })
        })
        .collect()
}

/// The host's busybox, which must be the static one: it runs alone in the initramfs.
pub(crate) fn static_busybox() -> Result<PathBuf> {
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is missing (apt-get install busybox-static)")?;
    let bytes = fs::read(&path)?;
    // A dynamic executable names its loader; the initramfs has none.
    if bytes.windows(8).any(|w| w == b"/lib64/l") {
        bail!(
            "{} is dynamically linked; install busybox-static",
            path.display()
        );
    }
    Ok(path)
}

/// An unpacked kernel package: the image and its modules directory.
pub(crate) struct Tree {
    pub(crate) vmlinuz: PathBuf,
    pub(crate) modules: PathBuf,
}

/// Downloads (once) and unpacks (once) the suite's `linux-image-amd64` kernel.
pub(crate) fn fetch_kernel(cache: &Path, kernel: &Kernel) -> Result<Tree> {
    let dir = cache.join(kernel.suite);
    let unpacked = dir.join("root");
    if !unpacked.join(".complete").exists() {
        let debs = download(&dir, kernel)?;
        let partial = dir.join("root.partial");
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)?;
        for deb in &debs {
            command(
                "dpkg-deb",
                &["-x".as_ref(), deb.as_os_str(), partial.as_os_str()],
            )?;
        }
        let _ = fs::remove_dir_all(&unpacked);
        fs::rename(&partial, &unpacked)?;
        fs::write(unpacked.join(".complete"), b"")?;
    }
    find_tree(&unpacked).with_context(|| format!("no kernel image in {}", unpacked.display()))
}

/// The kernel image and module tree, wherever this package generation puts them
/// (`/boot/vmlinuz-*` and `/lib/modules`, or `/usr/lib/modules/*/vmlinuz`).
fn find_tree(unpacked: &Path) -> Result<Tree> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(unpacked.join(base)) else {
            continue;
        };
        for entry in entries.flatten() {
            let modules = entry.path();
            let release = entry.file_name().to_string_lossy().into_owned();
            let candidates = [
                modules.join("vmlinuz"),
                unpacked.join(format!("boot/vmlinuz-{release}")),
            ];
            if let Some(vmlinuz) = candidates.into_iter().find(|p| p.is_file()) {
                return Ok(Tree { vmlinuz, modules });
            }
        }
    }
    bail!("no vmlinuz with a module directory")
}

/// `apt-get download`s the suite's kernel packages through a private apt configuration:
/// the host's sources, lists and cache are neither read nor changed.
fn download(dir: &Path, kernel: &Kernel) -> Result<Vec<PathBuf>> {
    ensure!(
        Path::new(KEYRING).is_file(),
        "{KEYRING} is missing (apt-get install debian-archive-keyring)"
    );
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "parts", "prefs"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    fs::write(
        apt.join("sources.list"),
        format!(
            "deb [signed-by={KEYRING}] http://deb.debian.org/debian {} main\n",
            kernel.suite
        ),
    )?;
    fs::write(apt.join("status"), b"")?;
    let options = apt_options(&apt);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    eprintln!("test-kernels: apt-get update ({})", kernel.suite);
    command_quiet("apt-get", &[&options[..], &["update", "-qq"]].concat())?;

    let image = depends(&options, "linux-image-amd64")?
        .into_iter()
        .find(|p| p.starts_with("linux-image-"))
        .context("linux-image-amd64 depends on no linux-image package")?;
    let release = image.trim_start_matches("linux-image-").to_owned();
    ensure!(
        release.starts_with(&format!("{}.", kernel.version)),
        "{} ships Linux {release}, not {}",
        kernel.suite,
        kernel.version
    );
    // Newer kernels split the image package into image, binary, modules and base.
    let mut packages = vec![image.clone()];
    packages.extend(
        depends(&options, &image)?
            .into_iter()
            .filter(|p| p.starts_with("linux-") && p.ends_with(&release)),
    );
    let debs = dir.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    eprintln!("test-kernels: apt-get download {}", packages.join(" "));
    let mut args: Vec<&str> = options.clone();
    args.extend(["download", "-qq"]);
    args.extend(packages.iter().map(String::as_str));
    let status = Command::new("apt-get")
        .args(&args)
        .current_dir(&debs)
        .status()
        .context("cannot run apt-get")?;
    ensure!(status.success(), "apt-get download failed with {status}");
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    files.sort();
    ensure!(
        files.len() == packages.len(),
        "apt-get downloaded {files:?}"
    );
    Ok(files)
}

fn apt_options(apt: &Path) -> Vec<String> {
    let at = |p: &str| apt.join(p).display().to_string();
    [
        ("Dir::Etc::SourceList", at("sources.list")),
        ("Dir::Etc::SourceParts", at("parts")),
        ("Dir::Etc::PreferencesParts", at("prefs")),
        ("Dir::Etc::Preferences", at("prefs/none")),
        ("Dir::State::Lists", at("lists")),
        ("Dir::State::status", at("status")),
        ("Dir::Cache", at("cache")),
        ("APT::Architecture", "amd64".to_owned()),
        ("APT::Architectures", "amd64".to_owned()),
        ("Acquire::Languages", "none".to_owned()),
        // Only the package lists: no AppStream metadata.
        (
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
            "false".to_owned(),
        ),
        (
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
            "false".to_owned(),
        ),
        (
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
            "false".to_owned(),
        ),
        // Files land in a directory the `_apt` user cannot write.
        ("APT::Sandbox::User", "root".to_owned()),
    ]
    .into_iter()
    .flat_map(|(key, value)| ["-o".to_owned(), format!("{key}={value}")])
    .collect()
}

/// The packages `package` depends on, from `apt-cache depends`.
fn depends(options: &[&str], package: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(options)
        .args(["depends", package])
        .output()
        .context("cannot run apt-cache")?;
    ensure!(
        out.status.success(),
        "apt-cache depends {package} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(parse_depends(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_depends(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            line.trim()
                .trim_start_matches('|')
                .strip_prefix("Depends: ")
        })
        .filter(|name| !name.starts_with('<'))
        .map(str::to_owned)
        .collect()
}

fn command(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(status.success(), "{program} failed with {status}");
    Ok(())
}

fn command_quiet(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.last().copied().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// How every VM's /init starts: busybox, the kernel's file systems, the NIC and 9p modules
/// ([`initramfs_with`] puts this before the `/init` it is given).
const INIT_START: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*.ko; do insmod "$m" || echo "initramfs: insmod $m failed"; done
"#;

/// The VM's /init, after [`INIT_START`]: the host's root over 9p, the NIC, then the guest
/// side of this binary (the xtask subcommand `sipnotify.task` names, with `--guest AGENT`) in a
/// chroot of the host's root (its libc, its agent), then power off.
const INIT: &str = r#"mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host
for fs in proc sys dev; do mount -o bind /$fs /host/$fs; done
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
# A default spool or state directory under /var/lib must be writable.
mount -t tmpfs varlib /host/var/lib
echo 4194304 > /proc/sys/net/core/rmem_default
ip link set lo up
ip link set eth0 up
ip addr add 10.201.0.2/24 dev eth0
for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 10.201.0.1 >/dev/null 2>&1 && break; done
for a in $(cat /proc/cmdline); do
  case "$a" in
    sipnotify.xtask=*) XTASK="${a#*=}" ;;
    sipnotify.agent=*) AGENT="${a#*=}" ;;
    sipnotify.task=*) TASK="${a#*=}" ;;
  esac
done
chroot /host "$XTASK" "$TASK" --guest "$AGENT"
echo "sipnotify-guest: exit $?"
poweroff -f
"#;

/// Builds the initramfs: static busybox, /init, and the kernel's modules for the NIC and 9p
/// (decompressed: busybox's insmod reads plain ELF), in dependency order.
fn initramfs(dir: &Path, tree: &Tree, busybox: &Path) -> Result<PathBuf> {
    initramfs_with(dir, tree, busybox, INIT, &["host", "tmp"])
}

/// An initramfs whose `/init` is [`INIT_START`] then `init`, with these extra empty
/// directories (mount points).
pub(crate) fn initramfs_with(
    dir: &Path,
    tree: &Tree,
    busybox: &Path,
    init: &str,
    dirs: &[&str],
) -> Result<PathBuf> {
    let stage = dir.join("initramfs");
    let _ = fs::remove_dir_all(&stage);
    for sub in ["bin", "modules", "proc", "sys", "dev"].iter().chain(dirs) {
        fs::create_dir_all(stage.join(sub))?;
    }
    fs::copy(busybox, stage.join("bin/busybox"))?;
    fs::write(stage.join("init"), format!("{INIT_START}{init}"))?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;
    for (i, (name, bytes)) in module_order(&tree.modules)?.iter().enumerate() {
        fs::write(stage.join(format!("modules/{i:02}-{name}.ko")), bytes)?;
    }
    let image = dir.join("initramfs.cpio");
    let files: Vec<String> = walk(&stage)?
        .iter()
        .filter_map(|p| p.strip_prefix(&stage).ok())
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.display().to_string())
        .collect();
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&image)?)
        .spawn()
        .context("cannot run cpio")?;
    let mut stdin = cpio.stdin.take().context("cpio has no stdin")?;
    stdin.write_all(files.join("\n").as_bytes())?;
    drop(stdin);
    ensure!(cpio.wait()?.success(), "cpio failed");
    Ok(image)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// [`MODULES`] and their dependencies, dependencies first, skipping built-in ones.
///
/// Debian's packages ship no `modules.dep` (depmod runs at install), so dependencies are
/// read from each module's `.modinfo` strings (`depends=a,b`).
fn module_order(modules: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let builtin: Vec<String> = fs::read_to_string(modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut index = HashMap::new();
    for path in walk(&modules.join("kernel"))? {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if file.contains(".ko") {
            index.insert(module_name(&file), path);
        }
    }
    let mut order = Vec::new();
    let mut todo: Vec<(String, bool)> = MODULES
        .iter()
        .rev()
        .map(|m| (module_name(m), false))
        .collect();
    let mut loaded: HashMap<String, Vec<u8>> = HashMap::new();
    // Depth-first: a module is pushed again after its dependencies.
    while let Some((name, deps_done)) = todo.pop() {
        if builtin.contains(&name) || order.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if deps_done {
            let bytes = loaded.remove(&name).context("module read twice")?;
            order.push((name, bytes));
            continue;
        }
        let path = index
            .get(&name)
            .with_context(|| format!("module {name} is not in {}", modules.display()))?;
        let bytes = read_module(path)?;
        let deps = modinfo_depends(&bytes);
        todo.push((name.clone(), true));
        loaded.insert(name, bytes);
        for dep in deps {
            todo.push((dep, false));
        }
    }
    Ok(order)
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`; module names use `_` where files may use `-`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some(("xz", "-dc"))
    } else if name.ends_with(".zst") {
        Some(("zstd", "-dcq"))
    } else if name.ends_with(".gz") {
        Some(("gzip", "-dc"))
    } else {
        None
    };
    let Some((program, flag)) = tool else {
        return Ok(fs::read(path)?);
    };
    let out = Command::new(program)
        .arg(flag)
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(out.status.success(), "{program} {} failed", path.display());
    Ok(out.stdout)
}

/// The `depends=` list of a module's `.modinfo` section (NUL-separated `key=value` strings:
/// a byte search finds it without an ELF parser).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &module[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(module_name)
        .collect()
}

/// Namespaces of earlier runs whose xtask is gone (killed before its guards ran).
pub(crate) fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A namespace with the VM's tap, and the VM; both go when this is dropped.
pub(crate) struct Vm {
    netns: String,
    qemu: Option<Child>,
}

impl Vm {
    pub(crate) fn new(slot: usize) -> Result<Self> {
        let netns = format!("{NETNS_PREFIX}{}-{slot}", std::process::id());
        let vm = Self { netns, qemu: None };
        vm.ip(&["netns", "add", &vm.netns], false)?;
        // A multi-queue tap: native XDP on virtio_net wants two queues per vCPU.
        vm.ip(
            &["tuntap", "add", "dev", "tap0", "mode", "tap", "multi_queue"],
            true,
        )?;
        vm.ip(
            &["addr", "add", &format!("{HOST_ADDR}/24"), "dev", "tap0"],
            true,
        )?;
        vm.ip(&["link", "set", "tap0", "up"], true)?;
        Ok(vm)
    }

    /// QEMU (TCG, 2 vCPUs, 1 GiB) in the namespace: this kernel and initramfs, the serial
    /// console on stdout and stderr, the multi-queue tap as virtio-net, one 9p share.
    pub(crate) fn qemu_command(
        &self,
        kernel: &Tree,
        initrd: &Path,
        append: &str,
        virtfs: &str,
    ) -> Command {
        let mut qemu = Command::new("ip");
        qemu.args(["netns", "exec", &self.netns, "qemu-system-x86_64"])
            .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"])
            .args(["-m", "1024", "-nodefaults", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", append])
            .args([
                "-netdev",
                "tap,id=n0,ifname=tap0,script=no,downscript=no,queues=4",
                "-device",
                "virtio-net-pci,netdev=n0,mq=on,vectors=10",
                "-virtfs",
                virtfs,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        qemu
    }

    /// The VM's qemu, killed when this is dropped.
    pub(crate) fn set_qemu(&mut self, qemu: Child) {
        self.qemu = Some(qemu);
    }

    fn ip(&self, args: &[&str], inside: bool) -> Result<()> {
        let mut cmd = Command::new("ip");
        if inside {
            cmd.args(["netns", "exec", &self.netns, "ip"]);
        }
        let out = cmd.args(args).output().context("cannot run ip")?;
        ensure!(
            out.status.success(),
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Runs `open` on a thread inside the namespace; what it opens (a socket) stays there.
    fn inside<T: Send>(&self, open: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.netns);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns =
                        fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
                    // SAFETY: setns on a valid namespace fd; it changes only this thread,
                    // which ends right after `open`.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    open()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        })
    }

    /// A UDP socket in the namespace, bound to the tap's address, that lets the stack
    /// fragment the large NOTIFYs whatever the path-MTU default.
    pub(crate) fn socket(&self) -> Result<UdpSocket> {
        let socket = self
            .inside(|| UdpSocket::bind((HOST_ADDR, 0)).context("cannot bind in the namespace"))?;
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: a valid socket and a c_int option of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const dont).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "IP_MTU_DISCOVER: {}",
            std::io::Error::last_os_error()
        );
        Ok(socket)
    }

    /// A TCP connection from the namespace to the guest's SIP port.
    fn connect(&self) -> Result<TcpStream> {
        self.inside(|| {
            TcpStream::connect_timeout(
                &format!("{GUEST_ADDR}:{SIP_PORT}").parse()?,
                Duration::from_secs(20),
            )
            .context("cannot connect to the guest's SIP port")
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Boots one kernel and checks its guest's reports.
fn boot(slot: usize, kernel: &Kernel, tree: &Tree, host: &Host) -> Result<Report> {
    let started = Instant::now();
    let (vm, mut console) = host.boot(
        slot,
        kernel,
        tree,
        &GuestRun {
            task: "test-kernels",
            params: &[],
            log: kernel.version.to_owned(),
            timeout: VM_TIMEOUT,
            mark: MARK,
        },
    )?;
    let socket = vm.socket()?;
    let log_path = console.log_path().to_path_buf();

    let mut release = String::new();
    let mut doctor = None;
    let mut modes = Vec::new();
    let mut copies = Vec::new();
    while let Some(event) = console.next_event()? {
        let event = event.as_str();
        if let Some(r) = event.strip_prefix("kernel ") {
            release = r.to_owned();
        } else if let Some(verdict) = event.strip_prefix("doctor ") {
            doctor = Some(verdict.to_owned());
        } else if let Some(i) = event.strip_prefix("ready ") {
            let i: usize = i.parse().context("bad ready line")?;
            send_traffic(&socket, i).context("cannot send the traffic")?;
            send_stream(&vm, i).context("cannot send the TCP stream")?;
        } else if let Some(result) = event.strip_prefix("result ") {
            let (i, outcome) = result.split_once(' ').context("bad result line")?;
            let name = CAPTURE_MODES
                .get(i.parse::<usize>()?)
                .map_or("?", |(name, _)| *name);
            let Some(ok) = outcome.strip_prefix("ok ") else {
                bail!("{name}: {outcome}");
            };
            if let Some(copy) = ok.split("copy=").nth(1) {
                copies.push(copy.split(';').next().unwrap_or(copy).to_owned());
            }
            modes.push(format!("{name}: {ok}"));
        } else if event.starts_with("exit ") || event == "done" {
            if event.starts_with("exit ") && event != "exit 0" {
                bail!("the guest failed ({event}); see {}", log_path.display());
            }
        } else if let Some(failure) = event.strip_prefix("FAIL ") {
            bail!("{failure}");
        }
    }
    ensure!(
        modes.len() == CAPTURE_MODES.len(),
        "{} of {} capture modes reported; see {}",
        modes.len(),
        CAPTURE_MODES.len(),
        log_path.display()
    );
    let doctor = doctor.context("the guest reported no doctor verdict")?;
    ensure!(doctor.starts_with("ok"), "doctor: {doctor}");
    for copy in &copies {
        ensure!(
            copy == kernel.copy,
            "Linux {release} loaded the {copy} program; the probe should choose {}",
            kernel.copy
        );
    }
    ensure!(
        doctor.contains(kernel.copy),
        "doctor does not report the {} program: {doctor}",
        kernel.copy
    );
    Ok(Report {
        version: kernel.version,
        release,
        copy: kernel.copy.to_owned(),
        doctor,
        modes,
        elapsed: started.elapsed(),
    })
}

/// A VM's serial console (qemu's stdout and stderr): every line goes to a log file, and the
/// lines carrying `mark` are the guest's events for the host.
pub(crate) struct Console {
    rx: mpsc::Receiver<String>,
    log: fs::File,
    log_path: PathBuf,
    deadline: Instant,
    mark: &'static str,
}

impl Console {
    pub(crate) fn new(
        qemu: &mut Child,
        log_path: PathBuf,
        deadline: Instant,
        mark: &'static str,
    ) -> Result<Self> {
        let log = fs::File::create(&log_path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let streams = [
            qemu.stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            qemu.stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            rx,
            log,
            log_path,
            deadline,
            mark,
        })
    }

    /// Where the console is logged.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The next event (the text after the mark), `None` once the VM has exited; an error at
    /// the deadline.
    pub(crate) fn next_event(&mut self) -> Result<Option<String>> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let line = match self.rx.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no result in time; see {}", self.log_path.display())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
            };
            writeln!(self.log, "{line}")?;
            if let Some((_, event)) = line.split_once(self.mark) {
                return Ok(Some(event.trim_end().to_owned()));
            }
        }
    }
}

/// One datagram of the test traffic: destination port and payload.
type Datagram = (u16, Vec<u8>);

/// The traffic of capture mode `batch`: NOTIFYs to the SIP port, each its own dialog so the
/// agent's de-duplication keeps them all, mixed with other SIP to the same port and with
/// other UDP (one in four starting `NOTIFY ` too) to an unwatched port.
fn traffic(batch: usize) -> Vec<Datagram> {
    let mut out = Vec::with_capacity(NOTIFYS + OTHERS);
    let mut others = 0;
    for i in 0..NOTIFYS {
        out.push((SIP_PORT, notify(batch, i).into_bytes()));
        // Interleave: after each NOTIFY, one other datagram (while any are left).
        if others < OTHERS {
            out.push(other(batch, others));
            others += 1;
        }
    }
    while others < OTHERS {
        out.push(other(batch, others));
        others += 1;
    }
    out
}

fn call_id(batch: usize, i: usize) -> String {
    format!("kt{batch}-{i:04}@{HOST_ADDR}")
}

/// NOTIFY `i` of `batch`; one in ten carries a 3 000-byte body, more than the tap's MTU, so
/// it crosses as IP fragments.
pub(crate) fn notify(batch: usize, i: usize) -> String {
    let event = if i.is_multiple_of(2) { "talk" } else { "hold" };
    let body = if i % 10 == 9 {
        "x".repeat(3000)
    } else {
        String::new()
    };
    format!(
        "NOTIFY sip:{GUEST_ADDR}:{SIP_PORT} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {HOST_ADDR}:5060;branch=z9hG4bK-kt{batch}-{i}\r\n\
         From: <sip:1003@{HOST_ADDR}:5060>;tag=kt{batch}{i}\r\n\
         To: <sip:{dn}@{GUEST_ADDR}>;tag=kt-to-{i}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 2 NOTIFY\r\n\
         Event: {event}\r\n\
         Subscription-State: active\r\n\
         Max-Forwards: 70\r\n\
         X-Genesys-CallUUID: KT{batch}UUID{i:024}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len(),
        dn = 1000 + i,
        call_id = call_id(batch, i),
    )
}

/// What the host writes over TCP for `batch`: each NOTIFY followed by an OPTIONS with a body.
fn tcp_stream(batch: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in TCP_FIRST..TCP_FIRST + TCP_NOTIFYS {
        bytes.extend_from_slice(notify(batch, i).as_bytes());
        let body = "v=0\r\n";
        bytes.extend_from_slice(
            format!(
                "OPTIONS sip:{GUEST_ADDR} SIP/2.0\r\nCall-ID: kt-tcp{batch}-{i}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    bytes
}

fn other(batch: usize, i: usize) -> Datagram {
    match i % 4 {
        0 => (
            SIP_PORT,
            format!(
                "OPTIONS sip:{GUEST_ADDR}:{SIP_PORT} SIP/2.0\r\nCall-ID: kt-opt{batch}-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes(),
        ),
        1 => (
            SIP_PORT,
            format!("SIP/2.0 200 OK\r\nCall-ID: kt-ok{batch}-{i}\r\nCSeq: 1 NOTIFY\r\n\r\n")
                .into_bytes(),
        ),
        2 => (OTHER_PORT, notify(batch, 1000 + i).into_bytes()),
        _ => {
            // RTP-sized filler with a recognisable header.
            let mut bytes = format!("rtp {batch} {i} ").into_bytes();
            bytes.resize(172, (i % 251) as u8);
            (OTHER_PORT, bytes)
        }
    }
}

fn send_traffic(socket: &UdpSocket, batch: usize) -> Result<()> {
    for (port, payload) in traffic(batch) {
        socket.send_to(&payload, (GUEST_ADDR, port))?;
        // Paced: an emulated guest drains its NIC slowly, and the test is about capture,
        // not about overrunning a VM's receive ring.
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Writes [`tcp_stream`] to the guest in pieces of 1 to 199 bytes with Nagle off, so NOTIFYs
/// start mid-segment and span segments, then closes the connection.
fn send_stream(vm: &Vm, batch: usize) -> Result<()> {
    let mut stream = vm.connect()?;
    stream.set_nodelay(true)?;
    let bytes = tcp_stream(batch);
    let mut at = 0;
    let mut step = 0usize;
    while at < bytes.len() {
        step += 1;
        let end = (at + 1 + (step * 37) % 199).min(bytes.len());
        stream.write_all(&bytes[at..end])?;
        at = end;
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Guest side, inside the VM: doctor, then every capture mode; one console line each.
pub(crate) fn guest(agent: &Path) -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("{MARK}kernel {}", release.trim());
    let sockets = [SIP_PORT, OTHER_PORT]
        .map(|port| UdpSocket::bind(("0.0.0.0", port)).context("cannot bind a guest socket"));
    let [sip, other] = sockets;
    let sockets = [sip?, other?];
    for socket in &sockets {
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    }
    let listener = TcpListener::bind(("0.0.0.0", SIP_PORT)).context("cannot listen on TCP")?;
    println!("{MARK}doctor {}", guest_doctor(agent));
    for (i, (_, flags)) in CAPTURE_MODES.iter().enumerate() {
        match guest_mode(agent, i, flags, &sockets, &listener) {
            Ok(summary) => println!("{MARK}result {i} ok {summary}"),
            Err(err) => println!("{MARK}result {i} FAIL {err:#}"),
        }
    }
    println!("{MARK}done");
    Ok(())
}

/// `doctor`'s verdict: `ok` and its program-load row, or `FAIL` and its failing rows.
fn guest_doctor(agent: &Path) -> String {
    let out = match Command::new(agent)
        .args(["doctor", "--no-bridge", "--iface", "eth0"])
        .env("NO_COLOR", "1")
        .output()
    {
        Ok(out) => out,
        Err(err) => return format!("FAIL cannot run doctor: {err}"),
    };
    let report = String::from_utf8_lossy(&out.stdout);
    let load = report
        .lines()
        .find(|l| l.contains("program load"))
        .unwrap_or("no program load row")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if out.status.success() {
        format!("ok {load}")
    } else {
        let failing: Vec<&str> = report.lines().filter(|l| l.contains("FAIL")).collect();
        format!("FAIL ({}) {}", out.status, failing.join(" | "))
    }
}

/// One capture mode: start the agent, say "ready", then check that every datagram reached
/// its socket and every NOTIFY was captured exactly once.
fn guest_mode(
    agent: &Path,
    batch: usize,
    flags: &[&str],
    sockets: &[UdpSocket],
    listener: &TcpListener,
) -> Result<String> {
    let agent = GuestAgent::start(agent, flags)?;
    let (mode, copy) = agent.attached_as(flags);
    let attached = agent.attached_line().to_owned();
    // The SIP server side of the TCP connection: reads the stream to its end.
    let server = listener.try_clone()?;
    let (stream_tx, stream_rx) = mpsc::channel::<usize>();
    thread::spawn(move || {
        if let Ok((mut socket, _)) = server.accept() {
            let mut bytes = Vec::new();
            let _ = socket.read_to_end(&mut bytes);
            let _ = stream_tx.send(bytes.len());
        }
    });
    println!("{MARK}ready {batch}");

    let expected = traffic(batch);
    let deadline = Instant::now() + GUEST_WAIT;
    let mut received: Vec<Datagram> = Vec::new();
    let mut buf = vec![0u8; 65536];
    while received.len() < expected.len() && Instant::now() < deadline {
        for (socket, port) in sockets.iter().zip([SIP_PORT, OTHER_PORT]) {
            while let Ok(n) = socket.recv(&mut buf) {
                received.push((port, buf[..n].to_vec()));
            }
        }
    }
    let streamed = stream_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or(0);
    let mut lines = Vec::new();
    while lines.len() < NOTIFYS + TCP_NOTIFYS && Instant::now() < deadline {
        if let Ok(line) = agent.out.recv_timeout(Duration::from_millis(100)) {
            lines.push(line);
        }
    }
    let (rest, log) = agent.stop();
    // Whatever the agent flushed on its way out counts too (and shows duplicates).
    lines.extend(rest);

    let mut problems = Vec::new();
    let mut want = expected.clone();
    want.sort();
    let mut got = received.clone();
    got.sort();
    if want != got {
        let missing = want.iter().filter(|d| !got.contains(d)).count();
        problems.push(format!(
            "sockets got {} of {} datagrams ({missing} missing)",
            got.len(),
            want.len()
        ));
    }
    let mut call_ids: Vec<String> = lines.iter().filter_map(|l| json_call_id(l)).collect();
    call_ids.sort();
    let mut want_ids: Vec<String> = (0..NOTIFYS)
        .chain(TCP_FIRST..TCP_FIRST + TCP_NOTIFYS)
        .map(|i| call_id(batch, i))
        .collect();
    want_ids.sort();
    if call_ids != want_ids {
        let missing: Vec<&String> = want_ids
            .iter()
            .filter(|id| !call_ids.contains(id))
            .collect();
        problems.push(format!(
            "captured {} NOTIFYs for {} sent ({} missing: {missing:?}; {} lines)",
            call_ids.len(),
            want_ids.len(),
            missing.len(),
            lines.len()
        ));
    }
    if streamed != tcp_stream(batch).len() {
        problems.push(format!(
            "the TCP server read {streamed} of {} bytes",
            tcp_stream(batch).len()
        ));
    }
    if mode == "unknown" || !flags.contains(&mode) {
        problems.push(format!("attached as: {attached}"));
    }
    if !problems.is_empty() {
        let tail: Vec<&String> = log.iter().rev().take(5).collect();
        bail!("{}; agent log tail: {tail:?}", problems.join("; "));
    }
    let copy = copy.map(|c| format!("copy={c}; ")).unwrap_or_default();
    Ok(format!(
        "mode={mode}; {copy}{NOTIFYS}/{NOTIFYS} NOTIFYs captured once ({} as IP fragments) \
         and {TCP_NOTIFYS}/{TCP_NOTIFYS} over TCP in pieces; {}/{} datagrams delivered",
        NOTIFYS / 10,
        received.len(),
        expected.len()
    ))
}

fn json_call_id(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(value.get("call_id")?.as_str()?.to_owned())
}

/// In the guest: the agent capturing on eth0 (`run --stdout --no-bridge`, the SIP port, and
/// the capture flags given), stopped with SIGTERM (a clean flush and detach) by
/// [`GuestAgent::stop`] or when dropped.
pub(crate) struct GuestAgent {
    child: Child,
    /// The agent's stdout: one JSON notification a line.
    out: mpsc::Receiver<String>,
    log_rx: mpsc::Receiver<String>,
    /// Its log (stderr) so far.
    log: Vec<String>,
    /// The log line saying how the XDP program attached (empty on AF_PACKET).
    attached: String,
}

impl GuestAgent {
    /// Starts the agent and waits until it logs that it is capturing.
    pub(crate) fn start(agent: &Path, flags: &[&str]) -> Result<Self> {
        let mut child = Command::new(agent)
            .args(["run", "--iface", "eth0", "--port", &SIP_PORT.to_string()])
            .args(["--stdout", "--no-bridge", "--metrics-listen", "off"])
            .args(flags)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the agent")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let mut agent = Self {
            child,
            out: lines_of(stdout),
            log_rx: lines_of(stderr),
            log: Vec::new(),
            attached: String::new(),
        };
        // Capturing: the agent logs "capturing" once every interface is open; before that,
        // on the XDP path, the XDP mode and the copy path it chose.
        loop {
            match agent.log_rx.recv_timeout(GUEST_WAIT) {
                Ok(line) => {
                    if line.contains("XDP program attached") {
                        agent.attached.clone_from(&line);
                    }
                    let capturing = line.contains("capturing");
                    agent.log.push(line);
                    if capturing {
                        return Ok(agent);
                    }
                }
                Err(_) => bail!(
                    "the agent did not start capturing: {}",
                    agent.log.join(" / ")
                ),
            }
        }
    }

    /// The capture mode and, on XDP, the copy path the agent logged it attached with
    /// (`unknown` where its log did not say); `flags` are those it was started with.
    pub(crate) fn attached_as(&self, flags: &[&str]) -> (&'static str, Option<&'static str>) {
        if flags.contains(&"af-packet") {
            // No XDP copy on this path: the host checks the copy path of the XDP modes only.
            return ("af-packet", None);
        }
        let attached = &self.attached;
        let copy = ["bpf_xdp_load_bytes", "linear copy"]
            .into_iter()
            .find(|c| attached.contains(c))
            .unwrap_or("unknown");
        let mode = ["native", "generic"]
            .into_iter()
            .find(|m| {
                attached.contains(&format!("mode={m}"))
                    || attached.contains(&format!("mode=\"{m}\""))
            })
            .unwrap_or("unknown");
        (mode, Some(copy))
    }

    /// The agent's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log line saying how the XDP program attached.
    pub(crate) fn attached_line(&self) -> &str {
        &self.attached
    }

    /// Stops the agent and waits for it: what it printed after the last read, and its log.
    pub(crate) fn stop(mut self) -> (Vec<String>, Vec<String>) {
        self.terminate();
        let out = self.out.try_iter().collect();
        let mut log = std::mem::take(&mut self.log);
        log.extend(self.log_rx.try_iter());
        (out, log)
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The lines of `stream`, read on a thread of their own.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_depends_lists_real_packages_only() {
        let text = "linux-image-amd64\n  Depends: linux-base-amd64\n  Depends: linux-image-7.2.13+deb14-amd64\n |Depends: dracut\n  Depends: <linux-initramfs-tool>\n  Breaks: initramfs-tools\n";
        assert_eq!(
            parse_depends(text),
            [
                "linux-base-amd64",
                "linux-image-7.2.13+deb14-amd64",
                "dracut"
            ]
        );
    }

    #[test]
    fn module_names_are_normalised() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(
            module_name("kernel/drivers/net/virtio-net.ko"),
            "virtio_net"
        );
        assert_eq!(module_name("9pnet_virtio"), "9pnet_virtio");
    }

    #[test]
    fn modinfo_depends_is_read_from_the_strings() {
        let module = b"\x7fELF...\0license=GPL\0depends=9pnet,netfs\0name=9p\0vermagic=x\0";
        assert_eq!(modinfo_depends(module), ["9pnet", "netfs"]);
        assert!(modinfo_depends(b"\0depends=\0name=x\0").is_empty());
    }

    #[test]
    fn traffic_is_mixed_and_each_notify_is_its_own_dialog() {
        let batch = traffic(1);
        assert_eq!(batch.len(), NOTIFYS + OTHERS);
        let notifies: Vec<_> = batch
            .iter()
            .filter(|(port, p)| *port == SIP_PORT && p.starts_with(b"NOTIFY "))
            .collect();
        assert_eq!(notifies.len(), NOTIFYS);
        assert!(batch.iter().any(|(port, _)| *port == OTHER_PORT));
        let mut ids: Vec<_> = (0..NOTIFYS).map(|i| call_id(1, i)).collect();
        ids.dedup();
        assert_eq!(ids.len(), NOTIFYS);
        assert_ne!(traffic(0), traffic(1));
    }

    #[test]
    fn kernels_are_selected_by_version_or_suite() {
        let chosen = select(&["6.1".into(), "sid".into()]).unwrap();
        assert_eq!(
            chosen.iter().map(|k| k.suite).collect::<Vec<_>>(),
            ["bookworm", "sid"]
        );
        assert_eq!(select(&[]).unwrap().len(), MATRIX.len());
        assert!(select(&["4.19".into()]).is_err());
    }
}
