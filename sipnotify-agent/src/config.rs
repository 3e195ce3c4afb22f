//! Where settings come from: flags > `SIPNOTIFY_*` environment variables > the TOML config
//! file > defaults.
//!
//! Every long flag of every subcommand is a key of the config file (`bridge-url` or
//! `bridge_url`) and an environment variable (`SIPNOTIFY_BRIDGE_URL`; lists are
//! comma-separated). Rather than keep a second, hand-written settings struct in step with
//! the flags, the file is turned into flag tokens for the keys that neither the command line
//! nor the environment set, and the command line is parsed again; so a file value goes
//! through exactly the same parsing and validation as the flag would.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use clap::{
    ArgAction, ArgMatches, Command, CommandFactory as _, FromArgMatches as _, parser::ValueSource,
};

use crate::cli::Cli;

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/sipnotify/sipnotify.toml";

/// A bad command line, environment or config file; always exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap rejected the command line or environment.
    #[error("{0}")]
    Usage(String),
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {reason}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, on one line.
        reason: String,
    },
    /// A key no subcommand knows.
    #[error("unknown key `{key}` in config file {}", path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A key with a value of the wrong shape or an invalid value.
    #[error("bad value for key `{key}` in config file {}: {reason}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The parsed command line and the config file it used, if any.
#[derive(Debug)]
pub struct Parsed {
    /// The effective command line.
    pub cli: Cli,
    /// The config file that was applied.
    pub config_file: Option<PathBuf>,
    /// Where each effective value came from, for `--check-config`.
    pub sources: Vec<(String, String, &'static str)>,
}

/// The command with a `SIPNOTIFY_*` variable attached to every long flag.
pub fn command() -> Command {
    Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| {
            let Some(long) = arg.get_long() else {
                return arg;
            };
            if matches!(long, "help" | "version" | "config") {
                return arg;
            }
            let env = format!("SIPNOTIFY_{}", long.replace('-', "_").to_uppercase());
            let arg = if matches!(arg.get_action(), ArgAction::Append) {
                arg.value_delimiter(',')
            } else {
                arg
            };
            arg.env(env)
        })
    })
}

/// Parses `args` (with argv[0]) under the precedence rules.
pub fn parse(args: Vec<OsString>) -> Result<Parsed, clap::Error> {
    // A first pass finds the subcommand, the config file and which values flags and the
    // environment set. Required flags may still come from the file, so a missing one only
    // makes it retry leniently; help and every other error are the strict command's.
    let first = match command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(err) if err.kind() == clap::error::ErrorKind::MissingRequiredArgument => command()
            .mut_subcommands(|sub| sub.mut_args(|arg| arg.required(false)))
            .try_get_matches_from(&args)?,
        Err(err) => return Err(err),
    };
    let config_path = first.get_one::<PathBuf>("config").cloned().or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| DEFAULT_CONFIG.into())
    });
    let Some((sub_name, sub)) = first.subcommand() else {
        return Err(command().error(
            clap::error::ErrorKind::MissingSubcommand,
            "a subcommand is required",
        ));
    };
    let (tokens, from_file) = match &config_path {
        Some(path) => file_tokens(path, sub_name, sub).map_err(to_clap)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut with_file = args.clone();
    let at = args
        .iter()
        .position(|a| a.to_str() == Some(sub_name))
        .map_or(args.len(), |i| i + 1);
    with_file.splice(at..at, tokens);
    let matches = command().try_get_matches_from(with_file).map_err(|err| {
        let reason = first_line(&err.render().to_string());
        match (&config_path, flag_in(&reason)) {
            // The value that failed came from the file: say so, with its key.
            (Some(path), Some(key)) if from_file.iter().any(|k| k.replace('-', "_") == key) => {
                to_clap(ConfigError::BadValue {
                    path: path.clone(),
                    key,
                    reason,
                })
            }
            _ => err,
        }
    })?;
    let sources = describe(&matches, config_path.as_ref().map(|_| from_file.as_slice()));
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Parsed {
        cli,
        config_file: config_path,
        sources,
    })
}

/// The key of the first `'--flag <VALUE>'` a clap message names.
fn flag_in(message: &str) -> Option<String> {
    let start = message.find("'--")? + 3;
    let rest = &message[start..];
    let end = rest.find([' ', '\''])?;
    Some(rest[..end].replace('-', "_"))
}

fn to_clap(err: ConfigError) -> clap::Error {
    command().error(clap::error::ErrorKind::ValueValidation, err.to_string())
}

/// The first line of a clap message, without its `error: ` prefix.
///
/// A message whose first line ends in `:` continues on the next lines (clap lists the missing
/// arguments there); those are joined up to the first blank line.
pub fn first_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut out = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    if out.ends_with(':') {
        for line in lines.take_while(|l| !l.trim().is_empty()) {
            out.push(' ');
            out.push_str(line.trim());
        }
    }
    out
}

/// Flag tokens for the file's keys that neither a flag nor the environment set.
/// Also returns the long names of the flags the file supplied.
fn file_tokens(
    path: &Path,
    sub_name: &str,
    sub: &ArgMatches,
) -> Result<(Vec<OsString>, Vec<String>), ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            reason: first_line(&err.to_string()).trim().to_owned(),
        })?;
    let root = command();
    let this = root
        .find_subcommand(sub_name)
        .ok_or_else(|| ConfigError::UnknownKey {
            path: path.to_owned(),
            key: sub_name.to_owned(),
        })?;
    let mut tokens = Vec::new();
    let mut applied = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let known = root
            .get_subcommands()
            .flat_map(Command::get_arguments)
            .any(|a| a.get_long() == Some(long.as_str()) && long != "help");
        if !known {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            });
        }
        // Keys of other subcommands (doctor's, say) are fine in a shared file.
        let Some(arg) = this
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            continue;
        };
        let id = arg.get_id().as_str();
        if matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.to_owned(),
            key: key.clone(),
            reason: reason.to_owned(),
        };
        let flag = OsString::from(format!("--{long}"));
        applied.push(long.clone());
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => tokens.push(flag),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
            (ArgAction::SetTrue, _) => return Err(bad("must be true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    tokens.push(flag.clone());
                    tokens.push(
                        scalar(item).ok_or_else(|| bad("list items must be strings or numbers"))?,
                    );
                }
            }
            (ArgAction::Append, single) => {
                tokens.push(flag);
                tokens.push(
                    scalar(single).ok_or_else(|| bad("must be a list of strings or numbers"))?,
                );
            }
            (_, single) => {
                tokens.push(flag);
                tokens.push(scalar(single).ok_or_else(|| bad("must be a string or a number"))?);
            }
        }
    }
    Ok((tokens, applied))
}

fn scalar(value: &toml::Value) -> Option<OsString> {
    match value {
        toml::Value::String(s) => Some(s.into()),
        toml::Value::Integer(i) => Some(i.to_string().into()),
        toml::Value::Float(f) => Some(f.to_string().into()),
        _ => None,
    }
}

/// `(key, value, source)` for every flag of the chosen subcommand.
fn describe(
    matches: &ArgMatches,
    from_file: Option<&[String]>,
) -> Vec<(String, String, &'static str)> {
    let Some((sub_name, sub)) = matches.subcommand() else {
        return Vec::new();
    };
    let root = command();
    let Some(cmd) = root.find_subcommand(sub_name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        let id = arg.get_id().as_str();
        let Ok(Some(raw)) = sub.try_get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let in_file = from_file.is_some_and(|keys| keys.iter().any(|k| k == long));
        let source = match sub.value_source(id) {
            // File values arrive as command-line tokens, but only for keys no flag set.
            Some(ValueSource::CommandLine) if in_file => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        let value = if values.len() == 1 {
            values[0].clone()
        } else {
            format!("[{}]", values.join(", "))
        };
        out.push((long.replace('-', "_"), value, source));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::cli::Command as Sub;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn run_args(parsed: &Parsed) -> &crate::cli::RunArgs {
        let Sub::Run(run) = &parsed.cli.command else {
            panic!("not a run");
        };
        run
    }

    // Environment variables are process-wide: every test that sets one runs in this one test.
    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let f = file(
            "port = [5060]\nbridge_url = \"https://file/x\"\nbatch_linger = \"20ms\"\nqueue_capacity = 7\n",
        );
        let path = f.path().to_str().unwrap();
        // SAFETY: no other test reads these variables.
        unsafe {
            std::env::set_var("SIPNOTIFY_BRIDGE_URL", "https://env/x");
            std::env::set_var("SIPNOTIFY_QUEUE_CAPACITY", "9");
        }
        let parsed = parse(args(&[
            "sipnotify-agent",
            "--config",
            path,
            "run",
            "--iface",
            "eth0",
            "--queue-capacity",
            "11",
        ]))
        .unwrap();
        let run = run_args(&parsed);
        assert_eq!(run.ports, [5060], "file beats default");
        assert_eq!(
            run.delivery.bridge_url, "https://env/x",
            "environment beats file"
        );
        assert_eq!(run.delivery.queue_capacity, 11, "flag beats environment");
        assert_eq!(
            run.delivery.batch_linger,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(run.delivery.max_in_flight, 64, "default");
        let source = |key: &str| parsed.sources.iter().find(|(k, _, _)| k == key).unwrap().2;
        assert_eq!(source("port"), "file");
        assert_eq!(source("bridge_url"), "environment");
        assert_eq!(source("queue_capacity"), "flag");
        assert_eq!(source("max_in_flight"), "default");

        // Lists from the environment are comma-separated.
        // SAFETY: as above.
        unsafe { std::env::set_var("SIPNOTIFY_IFACE", "a,b") };
        let parsed = parse(args(&["sipnotify-agent", "run"])).unwrap();
        assert_eq!(run_args(&parsed).ifaces, ["a", "b"]);
        // SAFETY: as above.
        unsafe {
            std::env::remove_var("SIPNOTIFY_BRIDGE_URL");
            std::env::remove_var("SIPNOTIFY_QUEUE_CAPACITY");
            std::env::remove_var("SIPNOTIFY_IFACE");
        }

        // Without the variable, a missing --iface is reported on one line.
        let err = parse(args(&["sipnotify-agent", "run"])).unwrap_err();
        assert_eq!(
            first_line(&err.render().to_string()),
            "the following required arguments were not provided: --iface <IFACE>"
        );
    }

    fn error_of(text: &str, extra: &[&str]) -> String {
        let f = file(text);
        let mut list = vec![
            "sipnotify-agent",
            "--config",
            f.path().to_str().unwrap(),
            "run",
            "--iface",
            "eth0",
        ];
        list.extend_from_slice(extra);
        first_line(&parse(args(&list)).unwrap_err().render().to_string())
            .replace(f.path().to_str().unwrap(), "FILE")
    }

    #[test]
    fn bad_files_name_the_key_and_the_reason() {
        assert_eq!(
            error_of("bogus = 1\n", &[]),
            "unknown key `bogus` in config file FILE"
        );
        assert_eq!(
            error_of("port = [\"abc\"]\n", &[]),
            "bad value for key `port` in config file FILE: invalid value 'abc' for '--port <PORT>': invalid digit found in string"
        );
        assert_eq!(
            error_of("insecure = \"yes\"\n", &[]),
            "bad value for key `insecure` in config file FILE: must be true or false"
        );
        assert!(error_of("port = [\n", &[]).starts_with("config file FILE is not valid TOML"));
        // A bad value the command line overrides is never parsed.
        assert!(parse(args(&["sipnotify-agent", "run", "--iface", "eth0"])).is_ok());
    }

    #[test]
    fn keys_of_other_subcommands_are_accepted_and_flags_override_the_file() {
        let f = file("iface = [\"file0\"]\ninsecure = true\n");
        let parsed = parse(args(&[
            "sipnotify-agent",
            "--config",
            f.path().to_str().unwrap(),
            "run",
            "--iface",
            "cli0",
        ]))
        .unwrap();
        let run = run_args(&parsed);
        assert_eq!(run.ifaces, ["cli0"]);
        assert!(run.delivery.insecure);
    }

    #[test]
    fn the_packaged_example_is_valid_and_documents_every_run_flag() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/sipnotify.toml");
        let parsed = parse(args(&["sipnotify-agent", "--config", path, "run"])).unwrap();
        assert_eq!(run_args(&parsed).ifaces, ["eth0"]);
        let text = fs::read_to_string(path).unwrap();
        let root = command();
        let run = root.find_subcommand("run").unwrap();
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "check-config") {
                continue;
            }
            let key = long.replace('-', "_");
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                "packaging/sipnotify.toml does not document `{key}`"
            );
        }
    }
}
