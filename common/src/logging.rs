//! The tracing subscriber every binary installs: `RUST_LOG` wins, else a level from `-v`/`-q`;
//! logs go to stderr; colour only on a terminal (and never with `NO_COLOR`, no-color.org), so a
//! log file or a pipe gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The default level for `-v` counts and `-q`: warn, then info, debug, trace; quiet is error.
pub fn level(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    }
}

/// Installs the subscriber. `targets` adds the module path to each line (daemons keep it, the
/// interactive client does not). Does nothing if one is already installed.
pub fn init(default_level: &str, format: LogFormat, targets: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(targets);
    // `try_init`: a second call (tests, a library that installed one) keeps the first.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_verbose_and_quiet() {
        assert_eq!(level(0, false), "warn");
        assert_eq!(level(1, false), "info");
        assert_eq!(level(2, false), "debug");
        assert_eq!(level(9, false), "trace");
        assert_eq!(level(3, true), "error", "quiet wins");
    }
}
