//! `sipnotify-agent doctor`: checks, before a first `run` or when one fails, everything the
//! agent depends on, and says how to fix what is missing.
//!
//! Every check ends OK, WARN (works, but worth knowing) or FAIL (the agent will not work),
//! and every WARN and FAIL carries a fix. Exit status: 0 unless a check failed.
//!
//! This file holds the report (rows, statuses, the table) and the entry point; the checks are
//! grouped by what they probe, one file each: `capture` (kernel, program, capabilities,
//! interfaces, capture path, allowed senders), `hep` (the `--hep-listen` addresses) and
//! `bridge` (the bridge's answer, its certificate, client certificates).

use std::{fmt, time::Duration};

use crate::{
    capture::source::CaptureMode, logging::LogSettings, sink::BridgeSettings,
    source_filter::SourceFilter,
};

pub mod bridge;
pub mod capture;
pub mod hep;

/// What `doctor` checks, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoctorSettings {
    /// Interfaces the agent will capture on.
    pub ifaces: Vec<String>,
    /// The capture path `run` will be asked for (`--capture`).
    pub capture: CaptureMode,
    /// The bridge to probe: `None` skips it (`--no-bridge`); an error is a bridge flag that
    /// cannot work, reported as a failed check.
    pub bridge: Option<Result<BridgeSettings, String>>,
    /// The agent will run with `--insecure`: an untrusted certificate is then a warning.
    pub insecure: bool,
    /// How long to wait for the bridge's answer.
    pub request_timeout: Duration,
    /// The networks `run` will accept NOTIFYs from (`--sip-source`).
    pub senders: SourceFilter,
    /// HEP addresses `run --hep-listen` will use.
    pub hep_listen: Vec<std::net::SocketAddr>,
    /// A running agent's metrics endpoint, asked what it read from HEP.
    pub metrics: std::net::SocketAddr,
    /// Logging.
    pub log: LogSettings,
}

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth knowing.
    Warn,
    /// The agent will not work until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (every WARN and FAIL has one).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Some checks failed.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// At least one FAIL row.
    #[error("{failed} of {total} checks failed; the fixes are listed under them")]
    Failed {
        /// FAIL rows.
        failed: usize,
        /// All rows.
        total: usize,
    },
    /// The checks themselves could not run.
    #[error("the checks could not run: {0}")]
    Internal(String),
}

impl DoctorError {
    /// Process exit code: 1 (bad usage is the command line's, exit 2, before this runs).
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// Runs every check, prints the report on stdout, and fails if a check failed.
pub async fn doctor(settings: DoctorSettings) -> Result<(), DoctorError> {
    let checks = run_checks(&settings).await?;
    print!("{}", render(&checks));
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        return Err(DoctorError::Failed {
            failed,
            total: checks.len(),
        });
    }
    Ok(())
}

/// Runs every check and returns the rows, in report order.
pub async fn run_checks(settings: &DoctorSettings) -> Result<Vec<Check>, DoctorError> {
    let ifaces = settings.ifaces.clone();
    let capture = settings.capture;
    // Syscalls, /proc reads, `ip` and the verifier: off the async workers.
    let mut checks = tokio::task::spawn_blocking(move || capture::system_checks(&ifaces, capture))
        .await
        .map_err(|e| DoctorError::Internal(e.to_string()))?;
    checks.push(capture::senders_check(&settings.senders));
    let (hep, metrics) = (settings.hep_listen.clone(), settings.metrics);
    if !hep.is_empty() {
        let rows = tokio::task::spawn_blocking(move || hep::checks(&hep, metrics))
            .await
            .map_err(|e| DoctorError::Internal(e.to_string()))?;
        checks.extend(rows);
    }
    if let Some(bridge) = &settings.bridge {
        checks.extend(bridge::checks(bridge, settings).await);
    }
    Ok(checks)
}

/// The report: a table of check, status and detail, a `fix:` line under every WARN and FAIL,
/// and a count.
pub fn render(checks: &[Check]) -> String {
    let name_width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .chain(["CHECK".len()])
        .max()
        .unwrap_or(5);
    const STATUS_WIDTH: usize = 6;
    let indent = " ".repeat(name_width + 2 + STATUS_WIDTH + 2);
    let mut out = format!(
        "{:<name_width$}  {:<STATUS_WIDTH$}  DETAIL\n",
        "CHECK", "STATUS"
    );
    for check in checks {
        out.push_str(&format!(
            "{:<name_width$}  {:<STATUS_WIDTH$}  {}\n",
            check.name,
            check.status.to_string(),
            check.detail
        ));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("{indent}fix: {fix}\n"));
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let warnings = count(Status::Warn);
    out.push_str(&format!(
        "\n{} checks: {} ok, {} {}, {} failed\n",
        checks.len(),
        count(Status::Ok),
        warnings,
        if warnings == 1 { "warning" } else { "warnings" },
        count(Status::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_a_table_with_fixes_under_failures() {
        let checks = vec![
            Check::ok("kernel", "Linux 6.18"),
            Check::fail(
                "iface nope0",
                "interface `nope0` does not exist",
                "pick another",
            ),
        ];
        let text = render(&checks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "CHECK        STATUS  DETAIL");
        assert_eq!(lines[1], "kernel       OK      Linux 6.18");
        assert_eq!(
            lines[2],
            "iface nope0  FAIL    interface `nope0` does not exist"
        );
        assert_eq!(lines[3], format!("{}fix: pick another", " ".repeat(21)));
        assert_eq!(lines[5], "2 checks: 1 ok, 0 warnings, 1 failed");
    }
}
