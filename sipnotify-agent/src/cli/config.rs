//! Where settings come from: flags > `SIPNOTIFY_*` environment variables > the TOML config
//! file > defaults.
//!
//! Every long flag of every subcommand is a key of the config file (`bridge-url` or
//! `bridge_url`) and an environment variable (`SIPNOTIFY_BRIDGE_URL`; lists are
//! comma-separated). Rather than keep a second, hand-written settings struct in step with
//! the flags, the environment and the file are turned into flag tokens for the keys that the
//! command line did not set, and the command line is parsed again; so an environment or file
//! value goes through exactly the same parsing and validation as the flag would.
//!
//! The environment and the default config path are parameters, never read here: `main`
//! passes the process's, tests pass their own.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
};

use clap::{
    ArgAction, ArgMatches, Command, CommandFactory as _, FromArgMatches as _, parser::ValueSource,
};

use super::args::Cli;

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/sipnotify/sipnotify.toml";

/// A bad config file; always exit code 2 (it reaches `main` as a clap error).
#[derive(Debug, thiserror::Error)]
enum ConfigError {
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

/// The `SIPNOTIFY_*` environment variables the command line layers under its flags.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: BTreeMap<String, OsString>,
}

impl Environment {
    /// The process's `SIPNOTIFY_*` variables.
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value)))
            .filter(|(key, _)| key.starts_with("SIPNOTIFY_"))
            .collect()
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(name).map(OsString::as_os_str)
    }

    /// The value of `name` as text, if set.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl<K: Into<String>, V: Into<OsString>> FromIterator<(K, V)> for Environment {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
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

impl Parsed {
    /// `run --check-config`'s report: the config file, then every effective value and where
    /// it came from.
    pub fn effective(&self) -> String {
        let mut out = String::new();
        match &self.config_file {
            Some(path) => out.push_str(&format!("# config file: {}\n", path.display())),
            None => out.push_str("# no config file\n"),
        }
        let width = self
            .sources
            .iter()
            .map(|(k, _, _)| k.len())
            .max()
            .unwrap_or(0);
        for (key, value, source) in &self.sources {
            out.push_str(&format!("{key:<width$} = {value}  # {source}\n"));
        }
        out
    }
}

/// The environment variable of a long flag: `--bridge-url` reads `SIPNOTIFY_BRIDGE_URL`.
fn env_name(long: &str) -> String {
    format!("SIPNOTIFY_{}", long.replace('-', "_").to_uppercase())
}

/// Long flags that are not settings.
fn is_setting(long: &str) -> bool {
    !matches!(long, "help" | "version" | "config")
}

/// The command as `--help` shows it: every setting names its environment variable.
///
/// Parsing itself never uses these annotations (clap would read the process environment);
/// the environment is applied by [`parse`] from the [`Environment`] it is given.
pub fn command() -> Command {
    Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| match arg.get_long() {
            Some(long) if is_setting(long) => {
                let env = env_name(long);
                arg.env(env)
            }
            _ => arg,
        })
    })
}

/// Parses `args` (with argv[0]) under the precedence rules, with `env` as the environment
/// and `default_config` as the file read when `--config` is not given (if it exists).
pub fn parse(
    args: Vec<OsString>,
    env: &Environment,
    default_config: &Path,
) -> Result<Parsed, clap::Error> {
    // A first pass finds the subcommand, the config file and which values flags set.
    // Required flags may still come from the environment or the file, so a missing one only
    // makes it retry leniently; every other error is the strict command's, and help is
    // rendered by the annotated command so that it names the variables.
    let first = match Cli::command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(err) if err.kind() == clap::error::ErrorKind::MissingRequiredArgument => Cli::command()
            .mut_subcommands(|sub| sub.mut_args(|arg| arg.required(false)))
            .try_get_matches_from(&args)?,
        Err(err) if err.use_stderr() => return Err(err),
        Err(err) => return Err(command().try_get_matches_from(&args).err().unwrap_or(err)),
    };
    let config_path = first
        .get_one::<PathBuf>("config")
        .cloned()
        .or_else(|| default_config.exists().then(|| default_config.to_owned()));
    let Some((sub_name, sub)) = first.subcommand() else {
        return Err(Cli::command().error(
            clap::error::ErrorKind::MissingSubcommand,
            "a subcommand is required",
        ));
    };
    let (mut tokens, from_env) = env_tokens(env, sub_name, sub);
    let (file, from_file) = match &config_path {
        Some(path) => file_tokens(path, sub_name, sub, &from_env).map_err(to_clap)?,
        None => (Vec::new(), Vec::new()),
    };
    tokens.extend(file);
    let mut layered = args.clone();
    let at = args
        .iter()
        .position(|a| a.to_str() == Some(sub_name))
        .map_or(args.len(), |i| i + 1);
    layered.splice(at..at, tokens);
    let matches = Cli::command()
        .try_get_matches_from(layered)
        .map_err(|err| {
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
    let sources = describe(
        &matches,
        &from_env,
        config_path.as_ref().map(|_| from_file.as_slice()),
    );
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Parsed {
        cli,
        config_file: config_path,
        sources,
    })
}

/// Flag tokens for the environment variables of the flags the command line did not set,
/// and the long names of those flags. Lists are comma-separated; a flag without a value is
/// set unless its variable is empty or one of `0`, `false`, `no`, `off`.
fn env_tokens(env: &Environment, sub_name: &str, sub: &ArgMatches) -> (Vec<OsString>, Vec<String>) {
    let root = Cli::command();
    let Some(this) = root.find_subcommand(sub_name) else {
        return (Vec::new(), Vec::new());
    };
    let mut tokens = Vec::new();
    let mut applied = Vec::new();
    for arg in this.get_arguments() {
        let Some(long) = arg.get_long().filter(|l| is_setting(l)) else {
            continue;
        };
        if sub.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let Some(value) = env.get(&env_name(long)) else {
            continue;
        };
        match arg.get_action() {
            ArgAction::SetTrue => {
                let text = value.to_string_lossy().to_lowercase();
                if matches!(text.trim(), "" | "0" | "false" | "no" | "off" | "n" | "f") {
                    continue;
                }
                tokens.push(OsString::from(format!("--{long}")));
            }
            ArgAction::Append => {
                for item in value.to_string_lossy().split(',') {
                    tokens.push(OsString::from(format!("--{long}={item}")));
                }
            }
            _ => {
                let mut token = OsString::from(format!("--{long}="));
                token.push(value);
                tokens.push(token);
            }
        }
        applied.push(long.to_owned());
    }
    (tokens, applied)
}

/// The key of the first `'--flag <VALUE>'` a clap message names.
fn flag_in(message: &str) -> Option<String> {
    let start = message.find("'--")? + 3;
    let rest = &message[start..];
    let end = rest.find([' ', '\''])?;
    Some(rest[..end].replace('-', "_"))
}

fn to_clap(err: ConfigError) -> clap::Error {
    Cli::command().error(clap::error::ErrorKind::ValueValidation, err.to_string())
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
    from_env: &[String],
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
    let root = Cli::command();
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
        if sub.value_source(id) == Some(ValueSource::CommandLine) || from_env.contains(&long) {
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
    from_env: &[String],
    from_file: Option<&[String]>,
) -> Vec<(String, String, &'static str)> {
    let Some((sub_name, sub)) = matches.subcommand() else {
        return Vec::new();
    };
    let root = Cli::command();
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
        let in_env = from_env.iter().any(|k| k == long);
        let in_file = from_file.is_some_and(|keys| keys.iter().any(|k| k == long));
        let source = match sub.value_source(id) {
            // Environment and file values arrive as command-line tokens, but only for keys
            // no flag set.
            Some(ValueSource::CommandLine) if in_env => "environment",
            Some(ValueSource::CommandLine) if in_file => "file",
            Some(ValueSource::CommandLine) => "flag",
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
    use crate::cli::args::{Command as Sub, RunArgs};

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// A default config path that does not exist: the tests never read the host's /etc.
    fn no_default() -> PathBuf {
        PathBuf::from("/nonexistent/sipnotify-test/sipnotify.toml")
    }

    fn parse_with(list: &[&str], env: &Environment) -> Result<Parsed, clap::Error> {
        parse(args(list), env, &no_default())
    }

    fn parse_clean(list: &[&str]) -> Result<Parsed, clap::Error> {
        parse_with(list, &Environment::default())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn run_args(parsed: &Parsed) -> &RunArgs {
        let Sub::Run(run) = &parsed.cli.command else {
            panic!("not a run");
        };
        run
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let f = file(
            "port = [5060]\nbridge_url = \"https://file/x\"\nbatch_linger = \"20ms\"\nqueue_capacity = 7\n",
        );
        let path = f.path().to_str().unwrap();
        let env: Environment = [
            ("SIPNOTIFY_BRIDGE_URL", "https://env/x"),
            ("SIPNOTIFY_QUEUE_CAPACITY", "9"),
        ]
        .into_iter()
        .collect();
        let parsed = parse_with(
            &[
                "sipnotify-agent",
                "--config",
                path,
                "run",
                "--iface",
                "eth0",
                "--queue-capacity",
                "11",
            ],
            &env,
        )
        .unwrap();
        let run = run_args(&parsed);
        assert_eq!(run.ports, [5060], "file beats default");
        assert_eq!(
            run.delivery.bridge_url.as_deref(),
            Some("https://env/x"),
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
        let env: Environment = [("SIPNOTIFY_IFACE", "a,b")].into_iter().collect();
        let parsed = parse_with(&["sipnotify-agent", "run"], &env).unwrap();
        assert_eq!(run_args(&parsed).ifaces, ["a", "b"]);

        // Flags without a value are set by any value but the false ones.
        let env: Environment = [("SIPNOTIFY_STDOUT", "1"), ("SIPNOTIFY_EXTRAS", "false")]
            .into_iter()
            .collect();
        let parsed = parse_with(&["sipnotify-agent", "run", "--iface", "a"], &env).unwrap();
        assert!(run_args(&parsed).delivery.stdout);
        assert!(!run_args(&parsed).delivery.extras);

        // Without the variable, nothing to read is reported on one line.
        let err = parse_clean(&["sipnotify-agent", "run"])
            .unwrap()
            .settings(&Environment::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "nothing to read: give --iface IFACE to capture, or --hep-listen ADDR:PORT for HEP"
        );
    }

    #[test]
    fn the_default_file_is_read_only_when_it_exists() {
        let f = file("iface = [\"file0\"]\n");
        let parsed = parse(
            args(&["sipnotify-agent", "run"]),
            &Environment::default(),
            f.path(),
        )
        .unwrap();
        assert_eq!(run_args(&parsed).ifaces, ["file0"]);
        assert_eq!(parsed.config_file.as_deref(), Some(f.path()));
        let parsed = parse_clean(&["sipnotify-agent", "run", "--iface", "a"]).unwrap();
        assert_eq!(parsed.config_file, None);
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
        first_line(&parse_clean(&list).unwrap_err().render().to_string())
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
        assert!(parse_clean(&["sipnotify-agent", "run", "--iface", "eth0"]).is_ok());
    }

    #[test]
    fn keys_of_other_subcommands_are_accepted_and_flags_override_the_file() {
        let f = file("iface = [\"file0\"]\ninsecure = true\n");
        let parsed = parse_clean(&[
            "sipnotify-agent",
            "--config",
            f.path().to_str().unwrap(),
            "run",
            "--iface",
            "cli0",
        ])
        .unwrap();
        let run = run_args(&parsed);
        assert_eq!(run.ifaces, ["cli0"]);
        assert!(run.delivery.insecure);
    }

    #[test]
    fn help_names_the_environment_variables() {
        let err = parse_clean(&["sipnotify-agent", "run", "--help"]).unwrap_err();
        let help = err.render().to_string();
        assert!(help.contains("SIPNOTIFY_BRIDGE_URL"), "{help}");
    }

    #[test]
    fn the_packaged_example_is_valid_and_documents_every_run_flag() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/sipnotify.toml");
        let parsed = parse_clean(&["sipnotify-agent", "--config", path, "run"]).unwrap();
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
