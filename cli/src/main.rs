//! `ferry`, the command-line client: parses the command line, sets up logging and the runtime,
//! and hands over to `ferry_cli::commands`. Errors become one line on stderr and an exit code
//! (see `ferry --help`).

use std::process::ExitCode;

use clap::Parser;
use ferry_cli::cli::Cli;
use ferry_common::exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_common::logging::init(
        ferry_common::logging::level(cli.global.verbose, cli.global.quiet),
        ferry_common::logging::LogFormat::Text,
        false,
    );

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(exit::CONNECTION);
        }
    };
    let result = ferry_cli::commands::run(cli, &runtime);
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
