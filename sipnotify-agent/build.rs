//! Builds the XDP program (`sipnotify-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/bpf` embeds it, so the agent is one self-contained executable.
//!
//! The eBPF build needs the nightly toolchain with `rust-src` and `bpf-linker`, which
//! `cargo xtask setup` installs. Without them a plain `cargo build`/`cargo test` must still
//! work (the parser, sinks and CLI need no kernel), so the object is then left empty with a
//! warning, and the agent refuses to `run` with a message naming `cargo xtask setup`.
//! `SIPNOTIFY_REQUIRE_EBPF=1` (set by xtask and CI) turns the missing toolchain into an error;
//! `SIPNOTIFY_SKIP_EBPF=1` skips the eBPF build on purpose (host-only work).

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const OBJECT: &str = "sipnotify";
/// The XDP_PASS baseline the benchmarks compare against.
const NOOP_OBJECT: &str = "sipnotify-noop";
/// A program every verifier refuses, for the loader's tests.
const REJECTED_OBJECT: &str = "sipnotify-rejected";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SIPNOTIFY_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=SIPNOTIFY_SKIP_EBPF");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("agent crate has no parent")?;
    let ebpf_dir = workspace.join("sipnotify-ebpf");
    // aya-build watches the eBPF crate; the shared ABI crate is an input of it too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("sipnotify-common/src").display()
    );

    let required = env::var("SIPNOTIFY_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    let skipped = env::var("SIPNOTIFY_SKIP_EBPF").is_ok_and(|v| v == "1");
    let ready = if skipped && !required {
        Err("SIPNOTIFY_SKIP_EBPF=1".to_owned())
    } else {
        toolchain_ready()
    };
    if let Err(missing) = ready {
        if required {
            bail!("cannot build the eBPF program: {missing}; run `cargo xtask setup`");
        }
        println!(
            "cargo:warning=building without the eBPF program: {missing}; run `cargo xtask setup`"
        );
        for object in [OBJECT, NOOP_OBJECT, REJECTED_OBJECT] {
            let out = PathBuf::from(env::var("OUT_DIR")?).join(object);
            fs::write(&out, b"").with_context(|| format!("failed to write {}", out.display()))?;
        }
        return Ok(());
    }

    let ebpf_dir = ebpf_dir.to_str().context("workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sipnotify-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

/// Checks the two things the BPF build needs beyond what cargo provides.
fn toolchain_ready() -> Result<(), String> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|out| out.status.success()) {
        return Err("bpf-linker is not installed".into());
    }
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .map_err(|err| format!("cannot run the nightly rustc: {err}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let rust_src = PathBuf::from(&sysroot).join("lib/rustlib/src/rust/library/core");
    if sysroot.is_empty() || !rust_src.is_dir() {
        return Err("the nightly toolchain has no rust-src component".into());
    }
    Ok(())
}
