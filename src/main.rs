//! The `flowcast` binary: parse the command line, start tracing, dispatch to the command's
//! module, map the result to an exit code (0 ok, 1 runtime failure, 2 usage or
//! configuration error).

use std::process::ExitCode;

use clap::Parser;
use flowcast::cli::{Cli, Command};
use flowcast::run::{backtest, bench, demo, sidecar};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWCAST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        Command::Run(args) => sidecar::run_command(args),
        Command::CheckConfig(args) => sidecar::check_config(args),
        Command::Demo(args) => demo::command(args),
        Command::Backtest(args) => backtest::command(args),
        Command::Bench(args) => bench::command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error());
            ExitCode::from(failure.exit_code())
        }
    }
}
