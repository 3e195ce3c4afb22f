//! Project tasks: `cargo xtask setup | build-ebpf | build | build-and-load | test | test-kernels |
//! demo | bench [NAME] [KERNEL…] | dist`.
//!
//! Every task first runs the idempotent `setup` checks, so a fresh machine (and CI) needs no
//! manual step. The eBPF object itself is built by `sipnotify-agent/build.rs` (aya-build), the
//! single source of truth; xtask only makes sure the toolchain it needs is there and asks for
//! it to be mandatory with `SIPNOTIFY_REQUIRE_EBPF=1`.

mod dist;
mod kernels;
mod packages;
mod setup;
mod userland;
mod vmtax;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "sipnotify project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): rust-src, bpf-linker, packages,
    /// and the packaging tools of `dist`.
    Setup,
    /// Build the XDP program (through the agent's build script).
    BuildEbpf,
    /// Build the agent in release mode with the XDP program embedded.
    Build,
    /// Build, then run the agent with the given arguments (as root).
    BuildAndLoad {
        /// Arguments for `sipnotify-agent`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every check and test: fmt, clippy, unit, integration and privileged tests, the
    /// kernel matrix and the packaged service under systemd.
    Test,
    /// Boot stock Debian kernels in QEMU and run the agent in each (the support matrix).
    TestKernels(kernels::Args),
    /// Package the agent, then boot Debian 11 and 12 under their own kernels with the .deb
    /// installed and `sipnotify.service` enabled: capture, delivery, stop.
    TestPackages {
        /// Install this .deb instead of building one (`cargo xtask dist`).
        #[arg(long)]
        deb: Option<PathBuf>,
    },
    /// Run the main job end to end in private network namespaces (see README).
    Demo,
    /// Run the benchmarks and print their figures (the criterion benches, then `vm-tax`:
    /// per-packet cost of each capture path in the kernel-matrix VMs, a few minutes a kernel).
    Bench {
        /// Only benchmarks whose name contains this.
        filter: Option<String>,
        /// For `vm-tax`: the kernels to boot (5.10, 6.1, 6.12, 7 or suite names); all when none.
        kernels: Vec<String>,
    },
    /// Inside a `bench vm-tax` VM: the guest side (the VM's /init runs it).
    #[command(hide = true)]
    VmTaxGuest {
        #[arg(long, value_name = "AGENT")]
        guest: PathBuf,
    },
    /// Build the agent for glibc 2.17+ and package it: .deb, .rpm, .tar.gz in target/dist/.
    Dist {
        /// Then try them on Debian 11 and 12 root filesystems (as `test` does).
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Task::TestKernels(args) = &cli.task {
        if let Some(agent) = args.guest_agent() {
            // Inside a test VM: no toolchain, no setup.
            return kernels::guest(agent);
        }
    }
    if let Task::VmTaxGuest { guest } = &cli.task {
        return vmtax::guest(guest);
    }
    let root = workspace_root()?;
    setup::ensure()?;
    match cli.task {
        Task::Setup => setup::ensure_dist(),
        Task::BuildEbpf => cargo(&root, &["build", "-p", "sipnotify-agent", "--lib"]),
        Task::Build => build_release(&root),
        Task::BuildAndLoad { args } => {
            build_release(&root)?;
            let agent = root.join("target/release/sipnotify-agent");
            let status = Command::new(&agent)
                .args(args)
                .status()
                .with_context(|| format!("cannot run {}", agent.display()))?;
            if !status.success() {
                bail!("sipnotify-agent exited with {status}");
            }
            Ok(())
        }
        Task::Test => test(&root),
        Task::TestKernels(args) => {
            build_release(&root)?;
            kernels::run(&root, &root.join("target/release/sipnotify-agent"), &args)
        }
        Task::Demo => {
            build_release(&root)?;
            cargo(
                &root,
                &[
                    "run",
                    "--release",
                    "-p",
                    "sipnotify-testkit",
                    "--example",
                    "demo",
                    "--",
                ],
            )
        }
        Task::Bench { filter, kernels } => bench(&root, filter.as_deref(), &kernels),
        Task::VmTaxGuest { .. } => bail!("vm-tax-guest runs only inside a vm-tax VM"),
        Task::TestPackages { deb } => match deb {
            Some(deb) => packages::run(&root, &deb),
            None => packages::run(&root, &dist::dist(&root)?.deb),
        },
        Task::Dist { check } => {
            let dist = dist::dist(&root)?;
            if check {
                userland::check(&root, &dist)?;
            }
            Ok(())
        }
    }
}

fn build_release(root: &Path) -> Result<()> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "sipnotify-agent",
            "--bin",
            "sipnotify-agent",
        ],
    )
}

fn test(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--check"])?;
    // The default members: everything but the eBPF crate, which only builds for BPF.
    cargo(root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The eBPF crate, for its own target (its panic handler clashes with std on the host).
    run_in(
        root,
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "sipnotify-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The one release build of the run: the portable one, packaged and tried on Debian 11/12.
    let dist = dist::dist(root)?;
    let userland = userland::check(root, &dist)?;
    setup::fuzz_smoke(root)?;
    let (passed, failed) = cargo_test(root)?;
    // One closing line for CI, summed over every test binary and the userland checks.
    println!("{} passed, {failed} failed", passed + userland);
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    // The kernel matrix runs the same portable binary that the packages ship.
    kernels::run(root, &dist.binary, &kernels::Args::default())?;
    packages::run(root, &dist.deb)
}

/// Runs `cargo test`, echoing its output, and sums its `test result:` lines.
fn cargo_test(root: &Path) -> Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["test"])
        .current_dir(root)
        .env("SIPNOTIFY_REQUIRE_EBPF", "1")
        .env("PATH", setup::path_with_cargo_bin())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait().context("cannot wait for cargo test")?;
    if !status.success() && failed == 0 {
        bail!("`cargo test` failed with {status}");
    }
    Ok((passed, failed))
}

/// The number just before `label` in a `test result:` line.
fn count_before(line: &str, label: &str) -> u64 {
    line.find(label)
        .and_then(|end| line[..end].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}

fn bench(root: &Path, filter: Option<&str>, kernels: &[String]) -> Result<()> {
    let vm_tax = filter.is_none_or(|f| "vm-tax".contains(f));
    if !kernels.is_empty() && !vm_tax {
        bail!("kernels ({}) apply to `vm-tax` only", kernels.join(" "));
    }
    build_release(root)?;
    let benches = [
        "xdp",
        "capture",
        "parse",
        "scan",
        "delivery",
        "end_to_end",
        "tcp",
        "idle",
        "hep",
    ];
    let mut ran = 0;
    for name in benches {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        if !root
            .join(format!("sipnotify-agent/benches/{name}.rs"))
            .exists()
        {
            continue;
        }
        ran += 1;
        cargo(root, &["bench", "-p", "sipnotify-agent", "--bench", name])?;
    }
    // Last: boots VMs (see xtask/src/vmtax.rs).
    if vm_tax {
        ran += 1;
        vmtax::run(root, &root.join("target/release/sipnotify-agent"), kernels)?;
    }
    if ran == 0 {
        bail!("no benchmark matches `{}`", filter.unwrap_or(""));
    }
    Ok(())
}

/// Runs cargo at the workspace root with the eBPF build made mandatory.
pub(crate) fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_in(root, &cargo.to_string_lossy(), args)
}

pub(crate) fn run_in(root: &Path, program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .env("SIPNOTIFY_REQUIRE_EBPF", "1")
        .env("PATH", setup::path_with_cargo_bin())
        .status()
        .with_context(|| format!("cannot run {program} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn sums_come_from_cargo_test_result_lines() {
        let line =
            "ok. 127 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.40s";
        assert_eq!(count_before(line, " passed"), 127);
        assert_eq!(count_before(line, " failed"), 3);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " passed"), 0);
    }
}
