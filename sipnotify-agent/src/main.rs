//! The `sipnotify-agent` binary: parse the command line (flags, environment, config file),
//! set up logging, run, and map the outcome to design.md's exit codes with a one-line
//! `sipnotify: …` reason.

use std::process::ExitCode;

use sipnotify_agent::{
    cli::{Command, LogArgs},
    config, logging,
};

fn main() -> ExitCode {
    let parsed = match config::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!(
                "sipnotify: {}",
                config::first_line(&err.render().to_string())
            );
            return ExitCode::from(2);
        }
    };
    let log = match &parsed.cli.command {
        Command::Run(args) => args.log.clone(),
        Command::Replay(args) => args.log.clone(),
        Command::Doctor(args) => args.log.clone(),
    };
    init_logging(&log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sipnotify: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    // Each command's error knows its exit code; keep the message and the code.
    let result: Result<(), (String, u8)> = runtime.block_on(async {
        match parsed.cli.command {
            Command::Run(args) if args.check_config => sipnotify_agent::run::check_config(
                &args,
                parsed.config_file.as_deref(),
                &parsed.sources,
            )
            .map_err(|e| (e.to_string(), e.exit_code())),
            Command::Run(args) => sipnotify_agent::run::run(args)
                .await
                .map_err(|e| (e.to_string(), e.exit_code())),
            Command::Replay(args) => sipnotify_agent::replay::replay(args)
                .await
                .map(drop)
                .map_err(|e| (e.to_string(), e.exit_code())),
            Command::Doctor(args) => sipnotify_agent::doctor::doctor(args)
                .await
                .map_err(|e| (e.to_string(), e.exit_code())),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("sipnotify: {message}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(log: &LogArgs) {
    logging::init(log.log_format);
}
