//! The `sipnotify-agent` binary: parse the command line (flags, environment, config file)
//! into the command's settings, set up logging, run, and map the outcome to the exit codes
//! (0 ok, 2 bad usage or configuration, 1 runtime failure) with a one-line `sipnotify: …`
//! reason.

use std::{path::Path, process::ExitCode};

use sipnotify_agent::{
    cli::{self, CommandSettings, Environment},
    doctor, logging, replay, run,
};

fn main() -> ExitCode {
    let env = Environment::from_process();
    let parsed = match cli::parse(
        std::env::args_os().collect(),
        &env,
        Path::new(cli::DEFAULT_CONFIG),
    ) {
        Ok(parsed) => parsed,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sipnotify: {}", cli::first_line(&err.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let settings = match parsed.settings(&env) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sipnotify: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    logging::init(settings.log().format);

    // One thread runs every task; file syncs go to tokio's blocking pool. Measured against two
    // workers (README, "What the agent costs"): half the CPU per notification at 100 NOTIFY/s, since
    // two workers wake each other for nearly every task hand-over, and the same lossless rate.
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
        match settings {
            CommandSettings::CheckConfig(settings) => run::check_interfaces(&settings.capture)
                .map(|()| print!("{}", parsed.effective()))
                .map_err(|e| (e.to_string(), e.exit_code())),
            CommandSettings::Run(settings) => run::run(settings)
                .await
                .map_err(|e| (e.to_string(), e.exit_code())),
            CommandSettings::Replay(settings) => replay::replay(settings)
                .await
                .map(drop)
                .map_err(|e| (e.to_string(), e.exit_code())),
            CommandSettings::Doctor(settings) => doctor::doctor(settings)
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
