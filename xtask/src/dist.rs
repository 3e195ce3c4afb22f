//! `cargo xtask dist`: the agent built to start on glibc 2.17 or newer, and the packages made
//! from it, all in `target/dist/`: a .deb (cargo-deb), an .rpm (cargo-generate-rpm) and a
//! .tar.gz holding the .deb's files.
//!
//! rustup cannot add a musl standard library here, so the host target is linked by zig
//! (cargo-zigbuild, `--target x86_64-unknown-linux-gnu.2.17`) against glibc 2.17's symbol
//! versions; the agent's build script still builds and embeds the XDP program. What goes into
//! the packages is declared once, in `sipnotify-agent/Cargo.toml`; this file stages the
//! generated inputs (the stripped binary, the manual page) where those declarations expect them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, run_in, setup};

/// The host triple; zig links it against the glibc named after the dot.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The oldest glibc the binary may need: RHEL/CentOS 7's, the oldest distribution supported
/// (old FreePBX hosts, captured over AF_PACKET).
const GLIBC_FLOOR: (u32, u32) = (2, 17);

/// What `dist` made.
pub(crate) struct Dist {
    /// The agent as cargo-zigbuild left it (what the kernel matrix runs).
    pub(crate) binary: PathBuf,
    pub(crate) deb: PathBuf,
    pub(crate) rpm: PathBuf,
    pub(crate) tarball: PathBuf,
}

/// Builds the portable agent and the three artefacts, and prints their sizes.
pub(crate) fn dist(root: &Path) -> Result<Dist> {
    let started = Instant::now();
    let out = root.join("target/dist");
    // Artefacts of an older version must not be picked up by the checks.
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    let stage = out.join("stage");
    fs::create_dir_all(&stage).with_context(|| format!("cannot create {}", stage.display()))?;

    setup::ensure_dist()?;
    zigbuild(root)?;
    let built = Instant::now();
    let binary = root
        .join("target")
        .join(TARGET)
        .join("release/sipnotify-agent");
    let needed = glibc_needed(&objdump_dynamic_symbols(&binary)?)?;
    ensure!(
        needed <= GLIBC_FLOOR,
        "{} needs glibc {}.{}, above the {}.{} floor",
        binary.display(),
        needed.0,
        needed.1,
        GLIBC_FLOOR.0,
        GLIBC_FLOOR.1
    );

    let staged = stage.join("sipnotify-agent");
    fs::copy(&binary, &staged).with_context(|| format!("cannot copy {}", binary.display()))?;
    run_in(root, "strip", &[path_str(&staged)?])?;
    let man = man_page(&staged)?;
    gzip_to(man.as_bytes(), &stage.join("sipnotify-agent.8.gz"))?;

    let out_arg = format!("{}/", path_str(&out)?);
    cargo(
        root,
        &[
            "deb",
            "-p",
            "sipnotify-agent",
            "--no-build",
            "--no-strip",
            "-o",
            &out_arg,
        ],
    )?;
    cargo(
        root,
        &["generate-rpm", "-p", "sipnotify-agent", "-o", &out_arg],
    )?;
    let deb = only_file(&out, ".deb")?;
    let rpm = only_file(&out, ".rpm")?;
    let version = program_version(&deb)?;
    let tarball = out.join(format!("sipnotify-{version}-{TARGET}.tar.gz"));
    tarball_from_deb(root, &deb, &tarball)?;

    println!(
        "dist: glibc floor {}.{} (needs at most GLIBC_{}.{}); build {:.0?}, packages {:.0?}",
        GLIBC_FLOOR.0,
        GLIBC_FLOOR.1,
        needed.0,
        needed.1,
        built - started,
        built.elapsed()
    );
    for artefact in [&staged, &deb, &rpm, &tarball] {
        let size = fs::metadata(artefact)?.len();
        println!(
            "dist: {:>6.1} MiB  {}",
            size as f64 / f64::from(1 << 20),
            artefact.display()
        );
    }
    Ok(Dist {
        binary,
        deb,
        rpm,
        tarball,
    })
}

/// The release build of the agent, linked against glibc 2.17, with the XDP program embedded.
fn zigbuild(root: &Path) -> Result<()> {
    let target = format!("{TARGET}.{}.{}", GLIBC_FLOOR.0, GLIBC_FLOOR.1);
    cargo(
        root,
        &[
            "zigbuild",
            "--release",
            "--locked",
            "-p",
            "sipnotify-agent",
            "--bin",
            "sipnotify-agent",
            "--target",
            &target,
        ],
    )
}

/// `objdump -T`: the dynamic symbol table, with the version each symbol is bound to.
pub(crate) fn objdump_dynamic_symbols(binary: &Path) -> Result<String> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .context("cannot run objdump (binutils)")?;
    if !out.status.success() {
        bail!(
            "objdump -T {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest `GLIBC_x.y` version that an `objdump -T` listing refers to.
fn glibc_needed(listing: &str) -> Result<(u32, u32)> {
    let mut newest = None;
    for word in listing.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        let Some(version) = word.strip_prefix("GLIBC_") else {
            continue;
        };
        ensure!(
            version != "PRIVATE",
            "the binary uses glibc's private symbols"
        );
        let mut parts = version.split('.').map(str::parse::<u32>);
        let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
            bail!("unparsable glibc version `{word}` in objdump's listing");
        };
        newest = newest.max(Some((major, minor)));
    }
    newest.context("objdump lists no GLIBC_ symbol: is this a dynamically linked glibc binary?")
}

/// A manual page (section 8, an administrator's daemon) made of the binary's own `--help`
/// texts: roff by hand, since help2man reaches no subcommand and the help is the reference.
fn man_page(binary: &Path) -> Result<String> {
    let help = |args: &[&str]| -> Result<String> {
        let out = Command::new(binary)
            .args(args)
            .env_clear()
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        ensure!(
            out.status.success(),
            "`sipnotify-agent {}` failed",
            args.join(" ")
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version = help(&["--version"])?;
    let top = help(&["--help"])?;
    let about = top.lines().next().unwrap_or_default().trim();
    let mut page = format!(
        ".TH SIPNOTIFY-AGENT 8 \"\" \"{}\" \"System Administration\"\n\
         .SH NAME\nsipnotify-agent \\- {}\n.SH SYNOPSIS\n.nf\n{}.fi\n",
        roff(version.trim()),
        roff(about),
        roff_block(&top)
    );
    for command in subcommands(&top) {
        let text = help(&[&command, "--help"])?;
        page.push_str(&format!(
            ".SH \"{}\"\n.nf\n{}.fi\n",
            command.to_uppercase(),
            roff_block(&text)
        ));
    }
    page.push_str(
        ".SH FILES\n.TP\n/etc/sipnotify/sipnotify.toml\nthe settings (every key is a long flag)\n\
         .TP\n/usr/lib/systemd/system/sipnotify.service\nthe service\n\
         .TP\n/usr/share/doc/sipnotify/README.md\ninstallation, configuration, metrics, troubleshooting\n\
         .SH \"SEE ALSO\"\nsystemctl(1), journalctl(1)\n",
    );
    Ok(page)
}

/// The names listed under `Commands:` in clap's help, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Escapes text for roff: backslashes, and control characters at the start of a line.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e");
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

fn roff_block(text: &str) -> String {
    text.lines().map(|line| roff(line) + "\n").collect()
}

fn gzip_to(data: &[u8], path: &Path) -> Result<()> {
    use std::io::Write as _;
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot run gzip")?;
    child
        .stdin
        .take()
        .context("gzip has no stdin")?
        .write_all(data)?;
    let status = child.wait()?;
    ensure!(status.success(), "gzip failed with {status}");
    Ok(())
}

/// The one file in `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one {suffix} file in {}, found {found:?}",
            dir.display()
        ),
    }
}

/// A field of a .deb's control file.
fn deb_field(deb: &Path, field: &str) -> Result<String> {
    Ok(setup::output("dpkg-deb", &["-f", path_str(deb)?, field])?
        .trim()
        .to_owned())
}

/// The program's version: the .deb's without cargo-deb's Debian revision (`-1`).
pub(crate) fn program_version(deb: &Path) -> Result<String> {
    let version = deb_field(deb, "Version")?;
    Ok(version
        .rsplit_once('-')
        .map_or(&*version, |(upstream, _)| upstream)
        .to_owned())
}

/// A .tar.gz of exactly the files the .deb installs, relative to `/`: `tar
/// --keep-directory-symlink -xzf FILE -C /` installs them as the package would (without its
/// maintainer scripts). The flag keeps a merged-/usr host's `/lib -> usr/lib` a link; without
/// it tar replaces the link with a directory holding only the generator.
fn tarball_from_deb(root: &Path, deb: &Path, tarball: &Path) -> Result<()> {
    let tree = root.join("target/dist/tree");
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    run_in(root, "dpkg-deb", &["-x", path_str(deb)?, path_str(&tree)?])?;
    run_in(
        root,
        "tar",
        &[
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            "-czf",
            path_str(tarball)?,
            "-C",
            path_str(&tree)?,
            ".",
        ],
    )?;
    fs::remove_dir_all(&tree)?;
    Ok(())
}

pub(crate) fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_glibc_version_is_found() {
        let listing = "\
0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.2.5) write
0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.17) clock_gettime
0000000000000000  w   DF *UND*  0000000000000000 (GLIBC_2.3.2) pthread_cond_wait
";
        assert_eq!(glibc_needed(listing).unwrap(), (2, 17));
        let newer = format!("{listing}0 DF *UND* 0 GLIBC_2.34 __libc_start_main\n");
        assert_eq!(glibc_needed(&newer).unwrap(), (2, 34));
        assert!(glibc_needed("0 DF *UND* 0 (GLIBC_PRIVATE) _dl_x\n").is_err());
        assert!(glibc_needed("no versions here").is_err());
    }

    #[test]
    fn subcommands_come_from_the_commands_section() {
        let help = "about\n\nUsage: a <COMMAND>\n\nCommands:\n  run     Run\n  replay  Replay\n  \
                    help    Print this\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(subcommands(help), ["run", "replay"]);
    }

    #[test]
    fn roff_escapes_backslashes_and_leading_dots() {
        assert_eq!(roff(r"a\b"), r"a\eb");
        assert_eq!(roff(".hidden"), r"\&.hidden");
        assert_eq!(roff("'quote"), r"\&'quote");
        assert_eq!(roff("plain"), "plain");
    }
}
