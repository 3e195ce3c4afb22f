//! `cargo xtask setup`: make a fresh machine able to build and test sipnotify.
//!
//! Each step checks before it acts, so running it again costs a few process spawns. A step
//! that cannot work says which step failed and why, in one line.
//!
//! bpf-linker is built against the nightly toolchain's own LLVM (no system LLVM needed): the
//! nightly ships `libLLVM.so.<major>.<minor>-rust-<version>`, and bpf-linker's build script
//! wants an `LLVM_PREFIX` whose `lib/` holds `libLLVM.so`, so we make such a folder of links.

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
/// kernel matrix (`test-kernels`).
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
];

/// Runs every setup step that is not already satisfied.
pub(crate) fn ensure(root: &Path) -> Result<()> {
    ensure_rust_src().context("setup step `rust-src for nightly` failed")?;
    ensure_bpf_linker(root).context("setup step `bpf-linker` failed")?;
    ensure_packages().context("setup step `debian packages` failed")?;
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
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

fn ensure_bpf_linker(root: &Path) -> Result<()> {
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

    let prefix = root.join("target/llvm-prefix");
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
            "--no-default-features",
            "--features",
            &feature,
        ],
        &[("LLVM_PREFIX", &prefix)],
    )
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
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

/// Runs each fuzz target (the SIP parser, the reassemblers) for a few seconds when cargo-fuzz
/// is available.
pub(crate) fn fuzz_smoke(root: &Path) -> Result<()> {
    let fuzz = root.join("fuzz");
    if !fuzz.join("Cargo.toml").exists() {
        return Ok(());
    }
    if output("cargo", &["fuzz", "--version"]).is_err() {
        run("cargo", &["install", "cargo-fuzz", "--locked"], &[])?;
    }
    for target in ["parse", "reassembly"] {
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

/// `PATH` with `~/.cargo/bin` and the sbin directories in it (CI may start with a bare PATH).
pub(crate) fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let extra = home
        .map(|h| h.join("bin"))
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in extra {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}
