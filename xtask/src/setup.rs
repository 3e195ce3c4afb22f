//! `cargo xtask setup`: make a fresh machine able to build and test sipnotify.
//!
//! Each step checks before it acts, so running it again costs a few process spawns. A step
//! that cannot work says which step failed and why, in one line.
//!
//! bpf-linker is built against the nightly toolchain's own LLVM (no system LLVM needed): the
//! nightly ships `libLLVM.so.<major>.<minor>-rust-<version>`, and bpf-linker's build script
//! wants an `LLVM_PREFIX` whose `lib/` holds `libLLVM.so`, so we make such a folder of links.
//! bpf-linker keeps that folder as its library search path, so it lives in `CARGO_HOME`,
//! beside the binary, not in a checkout's `target/` (removing one would break the linker).

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Debian packages the tests and demo use: `ip` for namespaces, `tcpdump` for the baseline
/// comparison with the field report's script, `openssl` for bridge certificates made the way
/// operators make them; QEMU, a static busybox, cpio and the module decompressors for the
/// kernel matrix (`test-kernels`); Kamailio and its TLS module send HEP in `tests/hep_kamailio.rs`
/// (the TLS module has no binary of its own: it comes with `kamailio` on a fresh machine).
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tcpdump", "tcpdump"),
    ("openssl", "openssl"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
    ("promtool", "prometheus"),
    ("kamailio", "kamailio"),
    ("kamailio", "kamailio-tls-modules"),
];

/// Runs every setup step that is not already satisfied.
pub(crate) fn ensure() -> Result<()> {
    ensure_rust_src().context("setup step `rust-src for nightly` failed")?;
    ensure_bpf_linker().context("setup step `bpf-linker` failed")?;
    ensure_packages().context("setup step `debian packages` failed")?;
    Ok(())
}

pub(crate) fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", path_with_cargo_bin())
        .output()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str], envs: &[(&str, &Path)]) -> Result<()> {
    eprintln!("setup: {program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", path_with_cargo_bin());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("the nightly toolchain is required (rustup toolchain install nightly)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
        &[],
    )
}

fn ensure_bpf_linker() -> Result<()> {
    if output("bpf-linker", &["--version"]).is_ok() {
        return Ok(());
    }
    let verbose = output("rustc", &["+nightly", "-vV"])?;
    let llvm_version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` does not report an LLVM version")?;
    let major = llvm_version
        .split('.')
        .next()
        .context("unparsable LLVM version")?;
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let lib = sysroot.join("lib");
    let soname = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib.display()))?;

    let prefix = cargo_home()
        .context("neither CARGO_HOME nor HOME is set")?
        .join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_owned(), soname.clone()] {
        let path = prefix_lib.join(&link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&soname), &path)
            .with_context(|| format!("cannot link {}", path.display()))?;
    }
    let feature = format!("llvm-{major}");
    run(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--locked",
            // An installed bpf-linker that does not run is replaced.
            "--force",
            "--no-default-features",
            "--features",
            &feature,
        ],
        &[("LLVM_PREFIX", &prefix)],
    )
}

fn ensure_packages() -> Result<()> {
    ensure_debian_packages(PACKAGES)
}

fn ensure_debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(binary, _)| which(binary).is_none())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run("apt-get", &["update", "-qq"], &[])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    run("apt-get", &args, &[])
}

/// Runs each fuzz target (the SIP parser, the reassemblers, the HEP decoder) for a few seconds when cargo-fuzz
/// is available.
pub(crate) fn fuzz_smoke(root: &Path) -> Result<()> {
    let fuzz = root.join("fuzz");
    if !fuzz.join("Cargo.toml").exists() {
        return Ok(());
    }
    if output("cargo", &["fuzz", "--version"]).is_err() {
        run("cargo", &["install", "cargo-fuzz", "--locked"], &[])?;
    }
    for target in ["parse", "reassembly", "hep"] {
        let status = Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                target,
                "--",
                "-max_total_time=20",
            ])
            .current_dir(root)
            .env("PATH", path_with_cargo_bin())
            // The targets need no XDP object; skipping it saves a BPF build under sanitizers.
            .env_remove("SIPNOTIFY_REQUIRE_EBPF")
            .env("SIPNOTIFY_SKIP_EBPF", "1")
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("the fuzz smoke run of `{target}` failed with {status}");
        }
    }
    Ok(())
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_with_cargo_bin())
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file())
}

/// What `cargo xtask dist` and its checks need beyond the build: cargo-zigbuild and zig (from
/// PyPI: both wheels ship their binaries, which saves CI a compile), cargo-deb and
/// cargo-generate-rpm, and Debian's binutils (objdump, strip), rpm (to read the .rpm) and
/// debootstrap (the Debian 11 and 12 userlands).
pub(crate) fn ensure_dist() -> Result<()> {
    ensure_debian_packages(DIST_PACKAGES)
        .context("setup step `debian packages for dist` failed")?;
    ensure_pip(DIST_WHEELS).context("setup step `zig and cargo-zigbuild` failed")?;
    for &(subcommand, krate, version) in DIST_CRATES {
        ensure_cargo_tool(subcommand, krate, version)
            .with_context(|| format!("setup step `{krate}` failed"))?;
    }
    Ok(())
}

const DIST_PACKAGES: &[(&str, &str)] = &[
    ("objdump", "binutils"),
    ("rpm", "rpm"),
    ("debootstrap", "debootstrap"),
];
/// Pinned: cargo-zigbuild follows zig's command line, which changes between zig releases.
const DIST_WHEELS: &[(&str, &str)] = &[("ziglang", "0.17.1"), ("cargo-zigbuild", "0.24.1")];
const DIST_CRATES: &[(&str, &str, &str)] = &[
    ("deb", "cargo-deb", "3.8.0"),
    ("generate-rpm", "cargo-generate-rpm", "0.21.1"),
];

fn ensure_pip(wheels: &[(&str, &str)]) -> Result<()> {
    let installed = output("python3", &["-m", "pip", "list", "--format=freeze"])
        .context("python3 with pip is required (PyPI serves zig and cargo-zigbuild)")?;
    let wanted: Vec<String> = wheels
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if wanted.iter().all(|w| installed.lines().any(|l| l == w)) {
        return Ok(());
    }
    let mut args = vec!["-m", "pip", "install", "--quiet"];
    args.extend(wanted.iter().map(String::as_str));
    run("python3", &args, &[])
}

fn ensure_cargo_tool(subcommand: &str, krate: &str, version: &str) -> Result<()> {
    let reported = output("cargo", &[subcommand, "--version"]).unwrap_or_default();
    if reported.contains(version) {
        return Ok(());
    }
    run(
        "cargo",
        &["install", krate, "--version", version, "--locked"],
        &[],
    )
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Where pip puts the programs its wheels ship (cargo-zigbuild), if python3 is there.
fn python_scripts_dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
    })
    .clone()
}

/// `PATH` with `~/.cargo/bin`, pip's programs and the sbin directories in it (CI may start
/// with a bare PATH).
pub(crate) fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let extra = cargo_home()
        .map(|h| h.join("bin"))
        .into_iter()
        .chain(python_scripts_dir())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in extra {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}
