//! Log lines as the agent binary writes them to a pipe, a terminal and the systemd journal:
//! no escape codes reach anything but a terminal (and none with NO_COLOR), and under systemd
//! the lines carry journald's priority prefix instead of a timestamp.

mod support;

use std::{
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
};

/// The retransmission capture: one notification, logged at info level with `--log-sip`.
const PCAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/corpus/pcaps/genesys_notify_talk_retrans_SYNTHETIC.pcap"
);

/// `replay PCAP --stdout --no-bridge --log-sip`, isolated, with none of the variables that
/// decide the log style.
fn replay() -> (Command, tempfile::NamedTempFile) {
    let (mut command, config) = support::isolated_agent();
    command
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .env("SIPNOTIFY_LOG", "info")
        .args(["replay", PCAP, "--stdout", "--no-bridge", "--log-sip"])
        .stdout(Stdio::null());
    (command, config)
}

/// Runs `command` with stderr on a new pipe and returns what it wrote there, the pipe's
/// `dev:inode` having been passed to `prepare` first.
fn stderr_through_pipe(mut command: Command, prepare: impl FnOnce(&mut Command, String)) -> String {
    let (mut reader, writer) = std::io::pipe().unwrap();
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a writable `stat`.
    assert_eq!(unsafe { libc::fstat(writer.as_raw_fd(), &mut stat) }, 0);
    prepare(&mut command, format!("{}:{}", stat.st_dev, stat.st_ino));
    command.stderr(writer);
    let mut child = command.spawn().unwrap();
    // The command holds the pipe's write end: drop it so the read ends with the child.
    drop(command);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert!(child.wait().unwrap().success(), "{text}");
    text
}

/// Runs `command` with stderr on a new pseudo-terminal and returns what it wrote there.
fn stderr_through_terminal(mut command: Command) -> String {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the given locations; the rest may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    command.stderr(Stdio::from(slave));
    let mut child = command.spawn().unwrap();
    drop(command);
    let mut master = std::fs::File::from(master);
    let mut bytes = Vec::new();
    // Once the child and our copy of the slave are gone, reading the master fails with EIO.
    let mut buffer = [0u8; 4096];
    loop {
        match master.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
    assert!(child.wait().unwrap().success());
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The `--log-sip` lines (the replay summary, also on stderr, is not a log line).
fn log_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("call_uuid")).collect()
}

#[test]
fn no_escape_codes_reach_a_pipe() {
    let (mut command, _config) = replay();
    let output = command.stderr(Stdio::piped()).output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!log_lines(&stderr).is_empty(), "no log line in:\n{stderr}");
    assert!(!stderr.contains('\x1b'), "escape codes in:\n{stderr:?}");
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    let (command, _config) = replay();
    let coloured = stderr_through_terminal(command);
    assert!(!log_lines(&coloured).is_empty(), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal:\n{coloured:?}"
    );

    let (mut command, _config) = replay();
    command.env("NO_COLOR", "1");
    let plain = stderr_through_terminal(command);
    assert!(!log_lines(&plain).is_empty(), "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "escape codes despite NO_COLOR:\n{plain:?}"
    );
}

#[test]
fn under_systemd_lines_carry_the_priority_and_no_timestamp() {
    let (command, _config) = replay();
    let journal = stderr_through_pipe(command, |command, stream| {
        command.env("JOURNAL_STREAM", stream);
    });
    let lines = log_lines(&journal);
    assert!(!lines.is_empty(), "{journal}");
    for line in &lines {
        assert!(line.starts_with("<6>notification "), "{line:?}");
    }
    assert!(!journal.contains('\x1b'), "{journal:?}");

    // A JOURNAL_STREAM that is not this stderr (inherited, then redirected): plain text with
    // timestamps.
    let (command, _config) = replay();
    let text = stderr_through_pipe(command, |command, _| {
        command.env("JOURNAL_STREAM", "8:12345");
    });
    let lines = log_lines(&text);
    assert!(!lines.is_empty(), "{text}");
    for line in &lines {
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit()),
            "no timestamp: {line:?}"
        );
        assert!(line.contains("INFO"), "{line:?}");
    }
}
