//! Log lines on stderr, for the people and the machines that read them.
//!
//! `--log-format auto` (the default) picks `journal` when stderr is the systemd journal and
//! `text` otherwise:
//! - `text`: timestamped lines; coloured only when stderr is a terminal and `NO_COLOR` is
//!   unset or empty (<https://no-color.org>), so pipes, files and journald never get escape
//!   codes.
//! - `journal`: no timestamp (journald stamps every entry) and no colour; each line starts
//!   with its syslog priority (`<4>` for a warning), which journald strips and stores as the
//!   entry's `PRIORITY` (systemd.exec `SyslogLevelPrefix=`, on by default), so
//!   `journalctl -p warning -u sipnotify` shows the warnings and errors.
//! - `json`: one JSON object per line.
//!
//! stderr is the journal when `JOURNAL_STREAM` names its device and inode, as systemd sets it
//! (a variable merely inherited by a process whose stderr was redirected does not match).

use std::{fmt, io::IsTerminal as _, time::Duration};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, Full, Writer},
    },
    registry::LookupSpan,
};

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `journal` under systemd, `text` elsewhere.
    #[default]
    Auto,
    /// Human-readable lines with timestamps.
    Text,
    /// Lines without timestamps, each prefixed with its syslog priority (`<4>`), which
    /// journald stores as the entry's priority.
    Journal,
    /// One JSON object per line (for Loki/Elasticsearch pipelines).
    Json,
}

/// What is logged and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// Log each notification's identifiers at info level (personal data; otherwise debug).
    pub log_sip: bool,
}

/// The variable that overrides the log filter (`SIPNOTIFY_LOG=debug`).
pub const FILTER_ENV: &str = "SIPNOTIFY_LOG";

/// What the process's surroundings say about stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Surroundings {
    /// stderr is a terminal.
    pub terminal: bool,
    /// `NO_COLOR` is set to something non-empty.
    pub no_color: bool,
    /// stderr is the systemd journal.
    pub journal: bool,
}

impl Surroundings {
    /// This process's.
    pub fn current() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            journal: std::env::var("JOURNAL_STREAM")
                .ok()
                .is_some_and(|stream| stderr_is(&stream)),
        }
    }
}

/// Whether stderr is the `dev:inode` pair that `JOURNAL_STREAM` holds.
fn stderr_is(journal_stream: &str) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 is only inspected, and `stat` is valid and writable for the call.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) } != 0 {
        return false;
    }
    #[allow(
        clippy::useless_conversion,
        reason = "dev_t and ino_t are not u64 on every target"
    )]
    let found = (u64::from(stat.st_dev), u64::from(stat.st_ino));
    found == (dev, ino)
}

/// The format in effect, with `auto` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Timestamped lines, with or without colour.
    Text {
        /// ANSI colours.
        colour: bool,
    },
    /// Priority-prefixed lines without timestamps or colour.
    Journal,
    /// JSON objects.
    Json,
}

/// Decides the style of `format` in `surroundings`.
pub fn style(format: LogFormat, surroundings: Surroundings) -> Style {
    let text = Style::Text {
        colour: surroundings.terminal && !surroundings.no_color,
    };
    match format {
        LogFormat::Auto if surroundings.journal => Style::Journal,
        LogFormat::Auto | LogFormat::Text => text,
        LogFormat::Journal => Style::Journal,
        LogFormat::Json => Style::Json,
    }
}

/// Installs the process's subscriber: `format` on stderr, filtered by `SIPNOTIFY_LOG`
/// (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match style(format, Surroundings::current()) {
        Style::Text { colour } => builder.with_ansi(colour).init(),
        Style::Journal => builder
            .with_ansi(false)
            .event_format(JournalLines::default())
            .init(),
        Style::Json => builder.with_ansi(false).json().init(),
    }
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `<N>message fields…`: the default line without time, level, target or colour, behind the
/// priority prefix.
struct JournalLines {
    inner: Format<Full, ()>,
}

impl Default for JournalLines {
    fn default() -> Self {
        Self {
            inner: Format::default()
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// A duration as people write it: `850ms`, `3.2s`, `4m 10s`, `2h 5m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (d.as_millis() + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    if secs < 3_600 {
        return format!("{}m {}s", secs / 60, secs % 60);
    }
    format!("{}h {}m", secs / 3_600, (secs % 3_600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        let cases = [
            (Duration::from_micros(850_400), "850ms"),
            (Duration::from_millis(3_249), "3.2s"),
            (Duration::from_millis(3_793), "3.8s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(250), "4m 10s"),
            (Duration::from_secs(7_500), "2h 5m"),
        ];
        for (d, text) in cases {
            assert_eq!(human(d), text, "{d:?}");
        }
    }

    const PIPE: Surroundings = Surroundings {
        terminal: false,
        no_color: false,
        journal: false,
    };

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let terminal = Surroundings {
            terminal: true,
            ..PIPE
        };
        assert_eq!(
            style(LogFormat::Auto, terminal),
            Style::Text { colour: true }
        );
        assert_eq!(style(LogFormat::Auto, PIPE), Style::Text { colour: false });
        let no_color = Surroundings {
            no_color: true,
            ..terminal
        };
        assert_eq!(
            style(LogFormat::Text, no_color),
            Style::Text { colour: false }
        );
    }

    #[test]
    fn auto_means_journal_lines_under_systemd() {
        let journal = Surroundings {
            journal: true,
            ..PIPE
        };
        assert_eq!(style(LogFormat::Auto, journal), Style::Journal);
        // An explicit choice wins.
        assert_eq!(
            style(LogFormat::Text, journal),
            Style::Text { colour: false }
        );
        assert_eq!(style(LogFormat::Json, journal), Style::Json);
        assert_eq!(style(LogFormat::Journal, PIPE), Style::Journal);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(!stderr_is(""));
        assert!(!stderr_is("garbage"));
        assert!(!stderr_is("0:0"));
        // SAFETY: as in `stderr_is`.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as in `stderr_is`.
        assert_eq!(unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) }, 0);
        assert!(stderr_is(&format!("{}:{}", stat.st_dev, stat.st_ino)));
    }

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
    }
}
