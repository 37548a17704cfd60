//! `ferry`, the command-line client: parses the command line, sets up logging and the runtime,
//! and hands over to `ferry_client::commands`. Errors become one line on stderr and an exit code
//! (see `ferry --help`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ferry_client::cli::Cli;
use ferry_client::error::exit;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal: logs sent to a file or a pipe stay plain text. NO_COLOR
    // (no-color.org) turns it off on a terminal too.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(exit::CONNECTION);
        }
    };
    let result = ferry_client::commands::run(cli, &runtime);
    // Background tasks (connection readers, a demo server) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
